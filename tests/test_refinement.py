"""The refinement check (ppl_diffusion/refinement.py): two sets of draws from a coarse and a fine
discretisation, compared by permutation tests over independent units."""
import math

import pytest
import torch

from ppl_diffusion.bench.exactness import exactness_problem
from ppl_diffusion.bench.refinement_check import perturbed, planted_draws
from ppl_diffusion.refinement import refinement_check

F64 = torch.float64


@pytest.fixture(scope="module")
def problem():
    return exactness_problem("uneven", 8, 2, seed=1)


def _ll(pb):
    return lambda z: -0.5 * ((z @ pb.A.T - pb.y) ** 2).sum(-1) / pb.noise_std ** 2


def test_interval_content_and_sliced_w1_match_direct_computations():
    """``coverage``: per coordinate, the share of the fine draws between the coarse draws' 5th and 95th
    order statistics (ranks ceil(0.05 n), ceil(0.95 n)), averaged; ``sw`` in one dimension (every
    direction is +-1) is W1 between two equal-size samples, the mean gap of their sorted values."""
    g = torch.Generator().manual_seed(3)
    a = torch.randn(300, 3, generator=g, dtype=F64) * torch.tensor([1.0, 0.5, 2.0], dtype=F64)
    b = torch.randn(300, 3, generator=g, dtype=F64) + 0.2
    r = refinement_check(a, b, permutations=50, generator=g)
    sa = a.sort(0).values
    lo, hi = sa[math.ceil(0.05 * 300) - 1], sa[math.ceil(0.95 * 300) - 1]
    direct = ((b >= lo) & (b <= hi)).double().mean()
    assert r["coverage"] == pytest.approx(float(direct), abs=1e-12)
    sb = b.sort(0).values
    lo_b, hi_b = sb[math.ceil(0.05 * 300) - 1], sb[math.ceil(0.95 * 300) - 1]
    assert r["coverage_of_coarse"] == pytest.approx(float(((a >= lo_b) & (a <= hi_b)).double().mean()), abs=1e-12)
    a1, b1 = a[:, :1], b[:, :1]
    r1 = refinement_check(a1, b1, permutations=50, generator=g)
    w1 = float((a1.sort(0).values - b1.sort(0).values).abs().mean())
    assert r1["sw"] == pytest.approx(w1, rel=1e-5)  # the CDF integral in float32 against the sorted gaps


def test_false_alarms_on_draws_of_the_same_law_stay_at_the_level(problem):
    """Both sets exact posterior draws (30 seeds, 150 draws each): under "no change" the units are
    exchangeable, so the Bonferroni-combined flag fires at most at alpha = 0.01 per run. Bound: <= 2 of 30
    (binomial(30, 0.01) >= 3: p = 0.003)."""
    flagged = 0
    for seed in range(30):
        g = torch.Generator().manual_seed(seed)
        x, y = (planted_draws(problem.posterior, 150, "same law", g) for _ in range(2))
        flagged += not refinement_check(x, y, _ll(problem), permutations=300, generator=g)["ok"]
    assert flagged <= 2, flagged


def test_flags_narrower_components_with_the_coverage_test(problem):
    """Every component's covariance scaled by 0.85^2 against exact draws (1,000 each): the coarse
    intervals hold less of the fine draws than the fine intervals of the coarse ones, and the coverage
    test names it."""
    post = problem.posterior
    g = torch.Generator().manual_seed(5)
    narrow = perturbed(post, scale=0.85).sample(1000, generator=g)
    r = refinement_check(narrow, post.sample(1000, generator=g), _ll(problem), generator=g)
    assert not r["ok"]
    assert r["coverage"] < r["coverage_of_coarse"] - 0.02
    assert any("intervals hold" in f for f in r["flags"]), r["flags"]
    assert "coverage" in r["failed"]


def test_flags_a_moved_mode_weight_in_regions_or_log_likelihood(problem):
    """0.15 of weight moved from the heaviest component to the second (1,000 draws each): a region
    weight or the log-likelihood's law differs, and the flag says which."""
    post = problem.posterior
    g = torch.Generator().manual_seed(6)
    x = perturbed(post, moved=0.15).sample(1000, generator=g)
    r = refinement_check(x, post.sample(1000, generator=g), _ll(problem), generator=g)
    assert not r["ok"]
    assert any("region weights" in f or "log-likelihood" in f for f in r["flags"]), r["flags"]


def test_chains_are_the_permuted_units():
    """Chains that repeat one draw 10 times are 40 independent units, not 400: with chains=True the check
    keeps its level on draws of the same law (<= 1 of 20 flagged), while the same rows taken as
    independent draws are flagged far more often (the copies shrink the permutation null)."""
    as_chains = as_rows = 0
    for seed in range(20):
        g = torch.Generator().manual_seed(100 + seed)
        a = torch.randn(40, 1, 4, generator=g, dtype=F64).expand(40, 10, 4)
        b = torch.randn(40, 1, 4, generator=g, dtype=F64).expand(40, 10, 4)
        as_chains += not refinement_check(a, b, chains=True, permutations=300, generator=g)["ok"]
        as_rows += not refinement_check(a.reshape(400, 4), b.reshape(400, 4), permutations=300, generator=g)["ok"]
    assert as_chains <= 1, as_chains
    assert as_rows >= 8, as_rows


def test_refuses_layouts_it_cannot_compare():
    x = torch.randn(10, 5, 3, dtype=F64)
    with pytest.raises(ValueError, match="same draws per chain"):
        refinement_check(x, x[:, :4], chains=True)
    with pytest.raises(ValueError, match="at least 2 units"):
        refinement_check(x[:1], x, chains=True)
    with pytest.raises(ValueError, match=r"expected \(chain, draw, \*event\)"):
        refinement_check(x[0], x[0], chains=True)
    with pytest.raises(ValueError, match="level"):
        refinement_check(x[:, 0], x[:, 1], level=1.5)
    with pytest.raises(ValueError, match="non-finite"):
        refinement_check(x[:, 0], x[:, 1], lambda z: torch.full((z.shape[0],), float("nan")))


def test_bench_writes_its_two_tables(tmp_path):
    """``benchmarks/refinement_check.py`` end to end at toy sizes: one row per case and per coarse level."""
    from ppl_diffusion.bench.refinement_check import CASES, main

    main(["--part", "planted", "--reps", "2", "--sizes", "100", "--problems", "uneven,8,2,1", "--out", str(tmp_path)])
    main(["--part", "solvers", "--method", "mcgdiff:particles=8", "--coarse", "5", "--fine", "10", "--draws", "40",
          "--problems", "uneven,8,2,100", "--out", str(tmp_path)])
    planted = (tmp_path / "refinement_check_planted.md").read_text()
    assert [case in planted for case in CASES] == [True] * len(CASES)
    rows = [r for r in (tmp_path / "refinement_check_solvers.md").read_text().splitlines() if r.startswith("| (")]
    assert len(rows) == 1 and "| mcgdiff:particles=8 | 5 |" in rows[0]


def test_perturbed_mixture_has_the_stated_law(problem):
    """The planted laws: covariances times scale^2, ``moved`` of weight from the heaviest component to the
    second-heaviest, means unchanged."""
    post = problem.posterior
    m = perturbed(post, scale=0.9, moved=0.03)
    top = post.weights.argsort(descending=True)
    want = post.weights.clone()
    want[top[0]] -= 0.03
    want[top[1]] += 0.03
    assert torch.allclose(m.weights, want, atol=1e-12)
    assert torch.allclose(m.full_covs(), 0.81 * post.full_covs(), atol=1e-10)
    assert torch.equal(m.means, post.means)
