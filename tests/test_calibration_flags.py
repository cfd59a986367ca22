"""The report says which intervals are calibrated (issue 16): the coverage an exact sampler gives
with n draws, a flag when a result's coverage on the known truth is far from it, and per family
whether its intervals are calibrated."""
import pytest
import torch

from ppl_diffusion.evaluation import CALIBRATION, coverage_flag, evaluate, expected_coverage
from ppl_diffusion.metrics import coverage


@pytest.mark.parametrize("n", [8, 16, 64])
def test_expected_coverage_of_exact_draws(n):
    """Truth and draws from the same Gaussian: mean coverage over 300 truths within 0.03 of the formula."""
    g = torch.Generator().manual_seed(n)
    x = torch.randn(300, n + 1, 64, generator=g, dtype=torch.float64)
    c = torch.stack([coverage(x[i, 1:], x[i, 0]) for i in range(300)]).mean()
    assert abs(float(c) - expected_coverage(n)) < 0.03, (float(c), expected_coverage(n))
    assert expected_coverage(16) == pytest.approx(0.9 * 15 / 17)


def test_every_registered_family_has_a_calibration_statement():
    from ppl_diffusion.inference.registry import FAMILIES

    assert set(FAMILIES) <= set(CALIBRATION)


def test_flags():
    g = torch.Generator().manual_seed(0)
    truth = torch.randn(1, 16, 16, generator=g)
    exact = torch.randn(16, 1, 16, 16, generator=g)
    narrow = 0.4 * torch.randn(16, 1, 16, 16, generator=g)
    wide = 3.0 * torch.randn(16, 1, 16, 16, generator=g)
    m = evaluate(exact, truth)
    assert m["coverage90_exact"] == pytest.approx(expected_coverage(16))
    assert coverage_flag(m["coverage90"], 16) == ""
    assert coverage_flag(evaluate(narrow, truth)["coverage90"], 16) == "over-confident"
    assert coverage_flag(evaluate(wide, truth)["coverage90"], 16) == "under-confident"
    assert coverage_flag(float("nan"), 16) == ""


def test_demo_summary_flags_and_families(tmp_path):
    from ppl_diffusion.demo import _write_summary

    base = dict(operator="sr", image=0, psnr=20.0, ssim=0.5, std_err_corr=0.3, nfe=10.0, seconds=1.0)
    rows = [dict(base, task="sr2", method="ddrm", family="guide", coverage90=0.51),
            dict(base, task="sr2", method="mcgdiff", family="smc", coverage90=0.80)]
    _write_summary(tmp_path, rows, 1.0, dict(prior="digits", fast=False, images=[0], samples=16, noise_std=0.05,
                                             seed=0, config={}))
    text = (tmp_path / "summary.md").read_text()
    assert "| sr2 | ddrm | guide | 20.00 | 0.500 | 0.510 | over-confident |" in text
    assert "| sr2 | mcgdiff | smc | 20.00 | 0.500 | 0.800 | ok |" in text
    assert "Flagged (coverage far from what exact draws give): sr2 / ddrm" in text
    assert CALIBRATION["guide"] in text and CALIBRATION["smc"] in text
    assert "0.79 with 16 draws" in text
