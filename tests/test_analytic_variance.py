"""Analytic-DPM reverse variance (Bao et al., ICLR 2022): the denoising error against the closed form of
a Gaussian prior, and MCGDiff / TDS keeping the exact posterior variance at a coarse grid where the
plug-in DDPM step loses ~40 % of it."""
import pyro
import pytest
import torch

from ppl_diffusion.bench.variance_loss import plugin_variance
from ppl_diffusion.inference.analytic_variance import AnalyticVariance, denoising_error, resolve_reverse_variance
from ppl_diffusion.inference.smc import MCGDiff, TDS
from ppl_diffusion.inference.solver import OptionError
from ppl_diffusion.models.gmm import GaussianMixture
from ppl_diffusion.models.measurement import GaussianMeasurement
from ppl_diffusion.models.operators import Matrix
from ppl_diffusion.schedules import VPSchedule, time_grid

F64 = torch.float64


def test_denoising_error_matches_gaussian_closed_form():
    """For ``x_0 ~ N(0, diag(v))`` the optimal denoiser's error is ``mean_i v_i s^2 / (a^2 v_i + s^2)``;
    4,096 draws in d = 8: relative standard error ~ sqrt(2 / 32768) = 0.8 %, tolerance 4 %."""
    sched = VPSchedule.gmm_benchmark("mcgdiff")
    v = torch.tensor([0.01, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 3.0], dtype=F64)
    gmm = GaussianMixture(torch.ones(1, dtype=F64), torch.zeros(1, 8, dtype=F64), torch.diag(v)[None])
    g = torch.Generator().manual_seed(0)
    times = time_grid(sched, 12, "alpha_log")
    err = denoising_error(gmm.denoiser(sched), sched, times, gmm.sample(4096, generator=g), g)
    a, s = sched.alpha(times).double()[:, None], sched.sigma(times).double()[:, None]
    exact = (v * s**2 / (a**2 * v + s**2)).mean(1)
    assert float(err[-1]) == 0.0  # t = 0
    assert torch.allclose(err[:-1], exact[:-1], rtol=0.04), (err / exact)
    # the same through AnalyticVariance: given data (4,096 draws, 4 %), and from the mixture's own exact
    # draws ("auto": 256 in d = 8; with these unequal variances the large coordinates dominate the error:
    # measured within 9.6 %, tolerance 15 %), clipped at the Theorem 2 bound (sigma / alpha)^2
    den = gmm.denoiser(sched)
    for rv, tol in ((AnalyticVariance(data=gmm.sample(4096, generator=g)), 0.04), (AnalyticVariance(), 0.15)):
        e = rv.error(den, None, times, (8,), F64, "cpu")
        assert torch.allclose(e[:-1], exact[:-1], rtol=tol), (rv, e / exact)
        assert bool((e <= (s / a).squeeze(1) ** 2 + 1e-15).all())


def test_analytic_variance_exact_for_isotropic_gaussian_closed_form():
    """The chain with Analytic-DPM's variance keeps the variance of isotropic Gaussian data exactly at any
    grid (the exact kernel is then Gaussian with that variance); the plug-in chain does not."""
    sched = VPSchedule.gmm_benchmark("mcgdiff")
    for steps in (10, 50):
        times = time_grid(sched, steps, "alpha_log")
        assert plugin_variance(sched, times, 0.3, analytic_over=(0.3,)) == pytest.approx(0.3, rel=1e-9)
        assert plugin_variance(sched, times, 0.3) < 0.3 * 0.9


def _gaussian_model(d=6, c=0.3, noise=0.3, seed=1):
    sched = VPSchedule.gmm_benchmark("mcgdiff")
    gmm = GaussianMixture(torch.ones(1, dtype=F64), torch.zeros(1, d, dtype=F64), torch.full((1,), c, dtype=F64))
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(2, d, generator=g, dtype=F64)
    y = A @ gmm.sample(1, generator=g)[0] + noise * torch.randn(2, generator=g, dtype=F64)
    post = gmm.posterior(A, y, noise)
    prior, op = gmm.diffusion_prior(sched), Matrix(A)

    def model(y=None):
        x = pyro.sample("x", prior)
        return pyro.sample("y", GaussianMeasurement(op, x, noise), obs=y)

    return model, y, post.means[0], post.full_covs()[0].diagonal()


@pytest.mark.parametrize("cls", [MCGDiff, TDS])
def test_samplers_keep_posterior_variance_at_a_coarse_grid(cls):
    """Isotropic Gaussian prior N(0, 0.3 I_6), two noisy measurements, 20 steps, 16 particles, 2,000
    independent runs (one draw each). Posterior variance over the exact one, averaged over the 6
    coordinates (standard error ~ sqrt(2 / 2000 / 6) = 1.3 %): measured 1.00 / 1.01 with Analytic-DPM's
    variance, 0.62 / 0.59 with the plug-in one; the posterior mean stays within 0.1 exact std."""
    model, y, mean, var = _gaussian_model()
    ratios = {}
    for rv in ("analytic", "ddpm"):
        x = cls(model, particles=16, steps=20, reverse_variance=rv).sample(
            2000, y=y, generator=torch.Generator().manual_seed(0))
        ratios[rv] = float((x.var(0) / var).mean())
        assert float(((x.mean(0) - mean) / var.sqrt()).abs().max()) < 0.1
    assert abs(ratios["analytic"] - 1.0) < 0.06, ratios
    assert ratios["ddpm"] < 0.75, ratios


def test_estimate_is_cached_and_options_checked():
    model, y, _, _ = _gaussian_model()
    rv = AnalyticVariance(samples=64)
    solver = MCGDiff(model, particles=4, steps=10, reverse_variance=rv)
    res = solver.run(y=y, runs=2, generator=torch.Generator().manual_seed(0))
    nfe = rv.nfe
    assert nfe == AnalyticVariance.TABLE_POINTS  # one batched call of the 64 draws per noise level of the table
    assert res.extra["variance_evals"] == 64 * nfe  # reported with the run that paid for it
    res = solver.run(y=y, runs=2, generator=torch.Generator().manual_seed(1))
    assert rv.nfe == nfe and res.extra["variance_evals"] == 0  # same grid: no new estimate
    assert resolve_reverse_variance("ddpm", "m") is None
    assert isinstance(resolve_reverse_variance("analytic", "m"), AnalyticVariance)
    with pytest.raises(OptionError, match="reverse_variance must be"):
        TDS(model, reverse_variance="optimal")
    with pytest.raises(ValueError, match="data must be"):
        bad = AnalyticVariance(data=torch.zeros(5, 3, dtype=F64))
        MCGDiff(model, particles=4, steps=10, reverse_variance=bad).run(y=y, runs=1)


def test_default_estimate_is_shared_by_solvers_on_the_same_prior():
    """``reverse_variance="analytic"`` is one process-wide estimator with one table per prior: a second
    solver on the same prior (a study building one per image), on another grid too, pays nothing; another
    prior pays again."""
    model, y, _, _ = _gaussian_model(seed=3)
    g = torch.Generator().manual_seed(0)
    first = MCGDiff(model, particles=4, steps=10).run(y=y, runs=1, generator=g).extra["variance_evals"]
    again = TDS(model, particles=4, steps=13).run(y=y, runs=1, generator=g).extra["variance_evals"]
    model2, y2, _, _ = _gaussian_model(seed=3)
    other = MCGDiff(model2, particles=4, steps=10).run(y=y2, runs=1, generator=g).extra["variance_evals"]
    assert first > 0 and again == 0 and other > 0, (first, again, other)


def test_interpolated_error_matches_direct_estimate_on_any_grid():
    """The table (128 noise levels, interpolated in log rho as a fraction of rho^2) against the closed
    form at the times of a grid it was not built on, including MCGDiff-like inserted times and
    sigma below the table: 4,096 exact draws of a Gaussian with variances 0.01-3, measured within 2.2 %
    (the Monte Carlo error of the direct estimate, test above), tolerance 4 %."""
    sched = VPSchedule.gmm_benchmark("mcgdiff")
    v = torch.tensor([0.01, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 3.0], dtype=F64)
    gmm = GaussianMixture(torch.ones(1, dtype=F64), torch.zeros(1, 8, dtype=F64), torch.diag(v)[None])
    g = torch.Generator().manual_seed(5)
    rv = AnalyticVariance(data=gmm.sample(4096, generator=g))
    extra = sched.t_of_rho(torch.tensor([0.3, 1e-5], dtype=F64))
    times = torch.cat([time_grid(sched, 37, "alpha_log")[:-1], extra, torch.zeros(1, dtype=F64)])
    times = times.sort(descending=True).values
    e = rv.error(gmm.denoiser(sched), None, times, (8,), F64, "cpu")
    a, s = sched.alpha(times).double()[:, None], sched.sigma(times).double()[:, None]
    exact = (v * s**2 / (a**2 * v + s**2)).mean(1)
    assert float(e[-1]) == 0.0
    assert torch.allclose(e[:-1], exact[:-1], rtol=0.04), e[:-1] / exact[:-1]
