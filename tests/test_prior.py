import pyro
import pytest
import torch

from ppl_diffusion.denoisers import UNetDenoiser
from ppl_diffusion.metrics import sliced_wasserstein
from ppl_diffusion.models.gmm import gmm_benchmark_problem
from ppl_diffusion.models.prior import DiffusionPrior
from ppl_diffusion.schedules import VPSchedule

from .conftest import SCHEDULER_CONFIG, tiny_unet


def _sw_ratio(prior, gmm, d, n=4000, reps=3):
    """Mean SW to the GMM over ``reps`` seeds divided by the mean two-sample noise floor."""
    r, f = [], []
    for rep in range(reps):
        g = torch.Generator().manual_seed(rep)
        x = prior.sample((n,), generator=g)
        ref, ref2 = gmm.sample(n, g), gmm.sample(n, g)
        P = torch.randn(d, 200, generator=g, dtype=torch.float64)
        P = P / P.norm(dim=0)
        r.append(float(sliced_wasserstein(x, ref, projections=P)))
        f.append(float(sliced_wasserstein(ref2, ref, projections=P)))
    return sum(r) / sum(f)


@pytest.mark.parametrize("eta", [1.0, 0.0])
def test_sample_matches_gmm_d8(eta):
    pb = gmm_benchmark_problem(8, 1, seed=0)
    prior = pb.prior.diffusion_prior(VPSchedule.gmm_benchmark(), steps=100, eta=eta, grid="quadratic")
    assert _sw_ratio(prior, pb.prior, 8) < 1.5


@pytest.mark.slow
@pytest.mark.parametrize("eta", [1.0, 0.0])
def test_sample_matches_gmm_d80(eta):
    pb = gmm_benchmark_problem(80, 1, seed=0)
    prior = pb.prior.diffusion_prior(VPSchedule.gmm_benchmark(), steps=200, eta=eta, grid="quadratic")
    assert _sw_ratio(prior, pb.prior, 80, n=2000) < 1.5


def test_log_prob_exact_divergence_d8():
    pb = gmm_benchmark_problem(8, 1, seed=1)
    prior = pb.prior.diffusion_prior(VPSchedule.gmm_benchmark(), ode_steps=100, rho_min=1e-3)
    x = pb.prior.sample(100, torch.Generator().manual_seed(3))
    lp, err = prior.log_prob_with_error(x)
    assert torch.all(err == 0)
    mae = (lp - pb.prior.log_prob(x)).abs().mean()
    assert mae < 0.05, mae  # measured 8e-5 nats


def test_log_prob_hutchinson_d80():
    pb = gmm_benchmark_problem(80, 1, seed=1)
    prior = pb.prior.diffusion_prior(VPSchedule.gmm_benchmark(), ode_steps=40, rho_min=1e-3, hutchinson_probes=8)
    x = pb.prior.sample(20, torch.Generator().manual_seed(3))
    lp, err = prior.log_prob_with_error(x, generator=torch.Generator().manual_seed(0))
    assert torch.all(err > 0)
    z = (lp - pb.prior.log_prob(x)) / err
    # each point within 4 standard errors, and the errors are not absurdly loose
    assert torch.all(z.abs() < 4), z
    assert float(err.mean()) < 2.0


def test_log_prob_is_differentiable():
    pb = gmm_benchmark_problem(8, 1, seed=1)
    prior = pb.prior.diffusion_prior(VPSchedule.gmm_benchmark(), ode_steps=30, rho_min=1e-3)
    x = pb.prior.sample(4, torch.Generator().manual_seed(3)).requires_grad_(True)
    (g,) = torch.autograd.grad(prior.log_prob(x).sum(), x)
    xe = x.detach().requires_grad_(True)
    (ge,) = torch.autograd.grad(pb.prior.log_prob(xe).sum(), xe)
    assert torch.allclose(g, ge, atol=2e-2, rtol=2e-2)


def test_elbo_is_a_lower_bound():
    pb = gmm_benchmark_problem(8, 1, seed=2)
    prior = pb.prior.diffusion_prior(VPSchedule.gmm_benchmark(), rho_min=1e-3)
    x = pb.prior.sample(8, torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([prior.elbo(x, n_samples=500, generator=g) for _ in range(8)])
    mean, se = draws.mean(0), draws.std(0) / 8**0.5
    exact = pb.prior.log_prob(x)
    assert torch.all(mean <= exact + 3 * se + 1e-6), (mean - exact, se)
    assert torch.all(mean >= exact - 1.0)  # and reasonably tight with the exact denoiser


def test_pyro_integration_and_validation():
    pb = gmm_benchmark_problem(8, 1, seed=0)
    prior = pb.prior.diffusion_prior(VPSchedule.linear(), steps=20)
    assert prior.event_shape == (8,) and prior.batch_shape == ()
    e = prior.expand((5,))
    assert e.sample().shape == (5, 8)
    assert prior.sample((3, 2)).shape == (3, 2, 8)
    with pyro.plate("p", 7):
        x = pyro.sample("x", prior)
    assert x.shape == (7, 8)
    with pytest.raises(ValueError, match="shape"):
        prior.log_prob(torch.zeros(3, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match="NaN"):
        prior.log_prob(torch.full((8,), float("nan"), dtype=torch.float64))
    with pytest.raises(ValueError, match="Denoiser.*function"):
        DiffusionPrior(lambda x, t: x)
    with pytest.raises(ValueError, match=r"eta\b.*2\.0"):
        prior.with_options(eta=2.0)


def test_unet_prior_sample_and_elbo():
    den = UNetDenoiser(tiny_unet(), SCHEDULER_CONFIG)
    prior = DiffusionPrior(den, steps=5)
    assert prior.event_shape == (1, 16, 16)
    g = torch.Generator().manual_seed(0)
    x = prior.sample((3,), generator=g)
    assert x.shape == (3, 1, 16, 16) and torch.isfinite(x).all()
    assert den.nfe == 5
    b = prior.elbo(x, n_samples=2, generator=g)
    assert b.shape == (3,) and torch.isfinite(b).all()
    lp, err = prior.with_options(ode_steps=2, hutchinson_probes=2).log_prob_with_error(x, generator=g)
    assert lp.shape == (3,) and torch.isfinite(lp).all() and torch.all(err > 0)


def test_unet_denoiser_parameterisations():
    unet = tiny_unet()
    x = torch.randn(2, 1, 16, 16)
    t = torch.tensor(0.5)
    out = unet(x, VPSchedule.linear().model_timestep(t).expand(2).float()).sample
    s = VPSchedule.linear()
    a, sg = s.alpha(t), s.sigma(t)
    for ptype, expect in [("epsilon", (x - sg * out) / a), ("v_prediction", a * x - sg * out), ("sample", out)]:
        den = UNetDenoiser(unet, dict(SCHEDULER_CONFIG, prediction_type=ptype))
        assert torch.allclose(den(x, t), expect, atol=1e-5)
    with pytest.raises(ValueError, match="prediction_type.*'bogus'"):
        UNetDenoiser(unet, dict(SCHEDULER_CONFIG, prediction_type="bogus"))


def test_solvers_start_where_the_prior_starts():
    """Guides (default run), SMC samplers and DiffusionPrior.sample draw x_1 from the same place: the exact noised
    marginal of a Gaussian-mixture prior (terminal="auto"), the reference N(0, sigma_1^2) otherwise.
    A Gaussian prior with mean 1000 (alpha_1 * 1000 ~ 6 on this schedule): 4,000 draws, mean within
    0.2 (s.e. ~0.02) of alpha_1 mu, against ~6 for the reference start."""
    from ppl_diffusion.inference.guides import DPS
    from ppl_diffusion.inference.problem import Problem
    from ppl_diffusion.inference.sampler import terminal_noise
    from ppl_diffusion.inference.smc import TDS, MCGDiff
    from ppl_diffusion.models import GaussianMeasurement, GaussianMixture
    from ppl_diffusion.models.operators import Matrix

    f64 = torch.float64
    sched = VPSchedule.linear()
    mu = torch.tensor([1000.0, -1000.0], dtype=f64)
    mix = GaussianMixture(torch.ones(1, dtype=f64), mu[None], torch.ones(1, dtype=f64))
    a1 = float(sched.alpha(torch.tensor(1.0, dtype=f64)))
    target = a1 * mu
    assert target.abs().min() > 5
    g = torch.Generator().manual_seed(0)
    for terminal, expected in (("auto", target), ("reference", torch.zeros(2, dtype=f64))):
        prior = mix.diffusion_prior(sched, terminal=terminal)
        x = terminal_noise(prior, (4000, 2), g, f64)
        assert (x.mean(0) - expected).abs().max() < 0.2, (terminal, x.mean(0))

    prior = mix.diffusion_prior(sched)

    def model(y=None):
        x = pyro.sample("x", prior)
        return pyro.sample("y", GaussianMeasurement(Matrix(torch.eye(2, dtype=f64)), x, 1.0), obs=y)

    problem = Problem.from_model(model, y=torch.zeros(2, dtype=f64))
    x_guide = DPS(model).initial_state(problem, 4000, g)  # what DiffusionGuide.run starts from
    assert (x_guide.mean(0) - target).abs().max() < 0.2
    x_smc = TDS(model, particles=2).fk_model(problem).sample_initial(1, 4000, g)[0]
    assert (x_smc.mean(0) - target).abs().max() < 0.2
    fk = MCGDiff(model, particles=2).fk_model(problem)  # works in the V basis of the operator
    x_mcg = fk.op.V(fk.sample_initial(1, 4000, g)[0])
    assert (x_mcg.mean(0) - target).abs().max() < 0.2
