"""The refinement check (ppl_diffusion/refinement.py): two sets of draws from a coarse and a fine
discretisation, compared by permutation tests over independent units."""
import math
import warnings

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
    assert "flag" in rows[0].lower()  # the runs' own reliability report, coarse / fine


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


@pytest.fixture(scope="module")
def gmm_model(problem):
    from ppl_diffusion.schedules import VPSchedule

    return problem.model(VPSchedule.gmm_benchmark())


def test_refine_flags_a_coarse_step_count_and_not_a_repeat(problem, gmm_model):
    """``refine`` runs the solver at both values of the option: DPS with 10 steps against 100 moves the draws far
    (coverage of the fine draws in the coarse intervals 0.5 here) and is flagged with a warning naming the option;
    100 against 100 (two independent runs of one setting) is not, and raises no warning."""
    from ppl_diffusion.refinement import RefinementWarning, refine

    with pytest.warns(RefinementWarning, match="steps=10 and steps=100 give different draws"):
        r = refine("dps", gmm_model, "steps", (10, 100), y=problem.y, num_samples=400)
    assert not r["ok"] and "SW" in r["failed"]
    assert r["values"] == (10, 100) and r["units"] == (400, 400)
    assert r["coarse_draws"].method == "DPS" and r["coarse_draws"].samples.shape == (1, 400, 8)
    assert r["loglik_ks"] is not None  # the problem's Gaussian likelihood was used
    with warnings.catch_warnings():
        warnings.simplefilter("error", RefinementWarning)
        same = refine("dps", gmm_model, "steps", (100, 100), y=problem.y, num_samples=400)
    assert same["ok"], same["flags"]
    assert not torch.equal(same["coarse_draws"].samples, same["fine_draws"].samples)  # two runs, not one twice


def test_refine_doubles_the_value_and_reads_smc_draws_one_per_run(problem, gmm_model):
    """Without values the option's value (here from solver_options) is checked against twice it; SMC draws are
    one per run (pooled=False), the runs the units."""
    from ppl_diffusion.refinement import refine

    r = refine("mcgdiff", gmm_model, "steps", y=problem.y, num_samples=60,
               solver_options={"particles": 8, "steps": 10})
    assert r["values"] == (10, 20) and r["units"] == (60, 60)
    assert r["fine_draws"].extra["pooled"] is False and r["fine_draws"].extra["independent"] is True
    assert r["coarse_draws"].extra["result"].log_evidence.shape == (60,)  # 60 runs, one draw each


def test_refinement_check_takes_draws_with_their_units_and_likelihood(problem, gmm_model):
    """Two Draws of a kernel are compared chain by chain with the problem's log-likelihood: the same numbers as the
    tensor call with ``chains=True`` and the closed-form likelihood."""
    from ppl_diffusion.inference.kernels import PnPDM

    a = PnPDM(gmm_model, num_grid=10).draw(80, y=problem.y, chains=40, warmup=60,
                                            generator=torch.Generator().manual_seed(1))
    b = PnPDM(gmm_model, num_grid=50).draw(80, y=problem.y, chains=40, warmup=60,
                                            generator=torch.Generator().manual_seed(2))
    r = refinement_check(a, b, permutations=200, generator=torch.Generator().manual_seed(5))
    t = refinement_check(a.samples, b.samples, _ll(problem), chains=True, permutations=200,
                         generator=torch.Generator().manual_seed(5))
    for k in ("p_coverage", "p_sw", "p_regions", "p_loglik", "sw", "loglik_ks"):
        assert r[k] == pytest.approx(t[k], rel=1e-9), k
    swapped = refinement_check(a.samples.flatten(0, 1), b.samples.flatten(0, 1), _ll(problem), permutations=200,
                               generator=torch.Generator().manual_seed(5))
    assert swapped["sw"] == pytest.approx(t["sw"], rel=1e-9) and swapped["p_sw"] != t["p_sw"]  # other units


def test_refine_and_draws_refuse_what_has_no_independent_units(problem, gmm_model):
    from ppl_diffusion.inference.solver import Draws, OptionError
    from ppl_diffusion.refinement import refine

    x = torch.randn(1, 50, 8, dtype=F64)
    one = Draws(x, 1.0, 0.0, "mcgdiff", "smc", extra={"independent": True, "pooled": "truncated"})
    ok = Draws(x, 1.0, 0.0, "mcgdiff", "smc", extra={"independent": True, "pooled": False})
    with pytest.raises(ValueError, match="pooled=False"):
        refinement_check(one, ok)
    with pytest.raises(ValueError, match="one run"):
        refinement_check(Draws(x, 1.0, 0.0, "mcgdiff", "smc", extra={"independent": False, "pooled": False}), ok)
    with pytest.raises(ValueError, match="plate"):
        refinement_check(Draws(x[:, :, None], 1.0, 0.0, "dps", "guide", plate_dims=("measurement",)), ok)
    with pytest.raises(ValueError, match="share one fit"):
        refinement_check(Draws(x, 1.0, 0.0, "red_diff", "variational"), ok)
    with pytest.raises(TypeError, match="two Draws or two tensors"):
        refinement_check(ok, x[0])
    same = Draws(x + 0.0, 1.0, 0.0, "dps", "guide")
    assert refinement_check(ok, same, permutations=20)["sw"] < 1e-6  # identical sets
    with pytest.raises(OptionError, match="no option 'stepz'"):
        refine("dps", gmm_model, "stepz", y=problem.y)
    with pytest.raises(ValueError, match="share one fit"):
        refine("red_diff", gmm_model, "steps", y=problem.y)
    with pytest.raises(OptionError, match="both in values and in solver_options"):
        refine("dps", gmm_model, "steps", (10, 20), y=problem.y, solver_options={"steps": 10})
    with pytest.raises(OptionError, match="one per run"):
        refine("mcgdiff", gmm_model, "steps", (10, 20), y=problem.y, draw_options={"pooled": True})


def test_refine_keeps_the_coarse_draws_when_the_fine_run_is_interrupted(problem, gmm_model, monkeypatch):
    from ppl_diffusion.inference import registry
    from ppl_diffusion.inference.health import RunInterrupted
    from ppl_diffusion.refinement import refine

    real = registry.build_solver

    def build(name, model, **options):
        solver = real(name, model, **options)
        if options["steps"] == 20:
            def stop(*a, **k):
                raise KeyboardInterrupt
            solver.draw = stop
        return solver

    monkeypatch.setattr(registry, "build_solver", build)
    with pytest.raises(RunInterrupted) as info:
        refine("dps", gmm_model, "steps", (10, 20), y=problem.y, num_samples=30)
    assert info.value.partial.samples.shape == (1, 30, 8) and info.value.partial.method == "DPS"


def test_refine_on_the_shipped_image_prior_flags_ddrm_at_five_steps():
    """Images: draws ``(1, n, 1, 16, 16)`` of the shipped digits prior under random inpainting; DDRM at 5 against
    50 steps is flagged (its 5-step draws are far wider: the fine draws fill its intervals, not the reverse), with
    the measurement's Gaussian log-likelihood read from the draws' problem."""
    import pyro

    from ppl_diffusion import GaussianMeasurement, load_prior
    from ppl_diffusion.models.operators import Inpainting
    from ppl_diffusion.models.zoo import heldout_images
    from ppl_diffusion.refinement import RefinementWarning, refine

    prior = load_prior("digits")
    op = Inpainting.random((1, 16, 16), missing_fraction=0.7, generator=torch.Generator().manual_seed(0))

    def model(y=None):
        x = pyro.sample("x", prior)
        return pyro.sample("y", GaussianMeasurement(op, x, noise_std=0.05), obs=y)

    y = op(heldout_images("digits")[0]) + 0.05 * torch.randn(op.out_shape, generator=torch.Generator().manual_seed(1))
    with pytest.warns(RefinementWarning, match="steps=5 and steps=50"):
        r = refine("ddrm", model, "steps", (5, 50), y=y, num_samples=64)
    assert r["coarse_draws"].samples.shape == (1, 64, 1, 16, 16)
    assert "coverage" in r["failed"] and r["coverage"] > r["coverage_of_coarse"] + 0.2
    assert r["loglik_ks"] is not None


def test_refine_checks_both_settings_before_the_first_run(problem, gmm_model, monkeypatch):
    """A fine value the solver refuses (steps=0) stops refine at construction: no draw is made at the coarse one."""
    from ppl_diffusion.inference import registry
    from ppl_diffusion.inference.solver import OptionError
    from ppl_diffusion.refinement import refine

    real, drawn = registry.build_solver, []

    def build(name, model, **options):
        solver = real(name, model, **options)
        solver.draw = lambda *a, **k: drawn.append(options["steps"])
        return solver

    monkeypatch.setattr(registry, "build_solver", build)
    with pytest.raises(OptionError, match="steps must be a positive integer"):
        refine("dps", gmm_model, "steps", (10, 0), y=problem.y, num_samples=30)
    assert drawn == []
