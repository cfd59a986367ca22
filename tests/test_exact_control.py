"""The exact control as a distribution (ppl_diffusion/bench/exact_control.py): its Poisson-binomial count,
its per-problem inside rates against the order-statistic closed form, and the reading of a table."""
import itertools
import math

import pytest
import torch

from ppl_diffusion.bench.exact_control import (control_rates, count_pvalue, poisson_binomial, read_verdicts,
                                               run_control)
from ppl_diffusion.bench.exactness import run_exactness


def test_poisson_binomial_matches_the_binomial_and_enumeration():
    """Equal probabilities give the binomial; unequal ones the sum over all 2^5 outcomes; P(C <= k) is its
    cumulative sum (1 at the top)."""
    pmf = poisson_binomial([0.3] * 6)
    binom = torch.tensor([math.comb(6, k) * 0.3**k * 0.7 ** (6 - k) for k in range(7)], dtype=torch.float64)
    assert torch.allclose(pmf, binom, atol=1e-6)
    p = [0.9, 0.75, 0.5, 0.2, 0.97]
    brute = torch.zeros(6, dtype=torch.float64)
    for outcome in itertools.product((0, 1), repeat=5):
        prob = 1.0
        for o, q in zip(outcome, p):
            prob *= q if o else 1 - q
        brute[sum(outcome)] += prob
    assert torch.allclose(poisson_binomial(p), brute, atol=1e-12)
    assert count_pvalue(2, p) == pytest.approx(float(brute[:3].sum()))
    assert count_pvalue(5, p) == pytest.approx(1.0)


def test_control_rates_match_the_order_statistic_closed_form():
    """A further exact set lands below the interpolated 95 % point of 20 exchangeable values with
    probability ~19.05 / 21 = 0.907 and inside their 2.5-97.5 % range with ~18.05 / 21 = 0.860, on average
    over problems (each problem's rate varies with where its 20 sets fell: sd ~0.06, so ~0.025 over these 6
    problems). SW and coverage are continuous (TV ties at 0 on one-mode posteriors)."""
    rates = control_rates(8, 2, range(6), 100, reps=60)
    sw = sum(r["sw"] for r in rates) / 6
    cov = sum(r["cov"] for r in rates) / 6
    assert abs(sw - 19.05 / 21) < 0.08, sw
    assert abs(cov - 18.05 / 21) < 0.09, cov
    assert all(r["all"] <= min(r["sw"], r["tv"], r["cov"]) for r in rates)


def test_control_reads_an_exact_table_as_indistinguishable_and_a_planted_one_as_below(tmp_path):
    """A table of exact draws (the `exact` method) reads as indistinguishable; the same table with every
    other problem's verdict planted OUT reads as below exact; a table of another sample size is refused."""
    run_exactness(8, [2], 8, ["exact"], n_samples=100, out=tmp_path, name="ctrl")
    text = (tmp_path / "ctrl.md").read_text()
    lines, k = [], 0
    for line in text.splitlines():
        if line.startswith("| (") and "| in/in/in |" in line:
            k += 1
            if k % 2:
                line = line.replace("| in/in/in |", "| in/OUT/in |")
        lines.append(line)
    (tmp_path / "planted.md").write_text("\n".join(lines))
    n, rows = read_verdicts(str(tmp_path / "planted.md"))
    assert n == 100 and len(rows["exact"]) == 8
    run_control(8, [2], 8, 100, reps=40, against=(str(tmp_path / "ctrl.md"), str(tmp_path / "planted.md")),
                out=tmp_path, name="dist")
    out = (tmp_path / "dist.md").read_text()
    ctrl_row = next(ln for ln in out.splitlines() if ln.startswith("| ctrl.md |"))
    planted_row = next(ln for ln in out.splitlines() if ln.startswith("| planted.md |"))
    assert ctrl_row.endswith("| indistinguishable |")
    assert planted_row.endswith("| below exact (5 %) |")
    with pytest.raises(ValueError, match="200"):
        run_control(8, [2], 2, 200, reps=2, against=(str(tmp_path / "ctrl.md"),), out=tmp_path, name="x")

