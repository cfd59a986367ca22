"""The plug-in DDPM step drops variance: the closed form of bench/variance_loss against the library's
own reverse diffusion with an exact Gaussian denoiser (Monte Carlo, fixed seed)."""
import math

import pytest
import torch

from ppl_diffusion.bench.variance_loss import implied_coverage, plugin_variance
from ppl_diffusion.inference.sampler import reverse_diffusion
from ppl_diffusion.inference.smc.tail import refine_tail
from ppl_diffusion.models.gmm import GaussianMixture
from ppl_diffusion.schedules import VPSchedule, time_grid


@pytest.mark.parametrize("c,steps,tail", [(0.2, 100, 0), (0.05, 40, 10), (1.0, 30, 0)])
def test_closed_form_variance_matches_reverse_diffusion(c, steps, tail):
    sched = VPSchedule.gmm_benchmark("mcgdiff")
    times = refine_tail(sched, time_grid(sched, steps, "alpha"), tail)
    gmm = GaussianMixture(torch.ones(1), torch.zeros(1, 4, dtype=torch.float64), torch.full((1,), c))
    den = gmm.denoiser(sched)
    g = torch.Generator().manual_seed(0)
    n = 20_000
    a0, s0 = float(sched.alpha(times[0])), float(sched.sigma(times[0]))
    x_T = math.sqrt(a0**2 * c + s0**2) * torch.randn(n, 4, generator=g, dtype=torch.float64)
    x0 = reverse_diffusion(den, x_T, times, eta=1.0, generator=g)
    mc = float(x0.var()) / c
    cf = plugin_variance(sched, times, c) / c
    # variance of 80,000 Gaussian values: relative standard error sqrt(2 / 80000) = 0.5 %
    assert abs(mc - cf) < 0.025 * cf
    assert cf < 0.97  # the loss is real at these step counts: the check can tell it from no loss


def test_fine_grid_loses_almost_nothing_and_coverage_map():
    sched = VPSchedule.gmm_benchmark("mcgdiff")
    times = time_grid(sched, 400, "edm")
    assert plugin_variance(sched, times, 1.0) > 0.96
    assert implied_coverage(1.0) == pytest.approx(0.90, abs=1e-9)
    assert implied_coverage(0.9) < 0.89


def test_alpha_log_grid_keeps_the_variance_of_small_coordinates():
    """The ``alpha_log`` grid (``alpha`` above sigma = 0.3, a quarter of the steps log-uniform in sigma
    below, to 1e-3): at 200 steps the closed-form implied 90 % coverage of a coordinate of prior variance
    0.01 / 0.05 / 1 is 0.880 / 0.881 / 0.893 (measured), where ``alpha`` with 200 + 10 tail steps keeps
    0.829 / 0.859 / 0.893: the same cost, no coordinate below 0.88."""
    sched = VPSchedule.gmm_benchmark("mcgdiff")
    t = time_grid(sched, 200, "alpha_log")
    sig = sched.sigma(t).double()
    assert t.numel() == 201 and bool((t[:-1] > t[1:]).all()) and float(t[-1]) == 0.0 and float(t[0]) == 1.0
    assert abs(float(sig[-2]) - 1e-3) < 1e-6 and abs(float(sig[150]) - 0.3) < 1e-6  # 150 alpha steps, 50 below
    ratio = torch.diff(torch.log(sig[150:-1]))
    assert torch.allclose(ratio, ratio.mean().expand_as(ratio), atol=1e-6)  # log-uniform below the cut
    base = refine_tail(sched, time_grid(sched, 200, "alpha"), 10)
    for c, lo_new, hi_old in ((0.01, 0.875, 0.84), (0.05, 0.875, 0.865), (1.0, 0.89, 0.90)):
        new = implied_coverage(plugin_variance(sched, t, c) / c)
        old = implied_coverage(plugin_variance(sched, base, c) / c)
        assert new >= lo_new and old <= hi_old, (c, new, old)
    with pytest.raises(ValueError, match="t_min = 0"):
        time_grid(sched, 10, "alpha_log", t_min=0.1)
