"""Joint approximate inference of latent sites theta beside the diffusion prior: joint DPS (theta per
sample, moved at every diffusion step) and the SVI solvers with an autoguide on theta (RED-Diff,
Score Prior). These are approximations: the tests check what the methods guarantee (theta leaves
its prior for the exact posterior where the posterior is sharp, draws pair theta with x, the options
do what they say, unsupported theta sites are refused), not closeness to the exact posterior; the
measured errors are in benchmarks/results/latents_joint.md."""
import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from ppl_diffusion.inference.guides import DDRM, DPS
from ppl_diffusion.inference.problem import Problem
from ppl_diffusion.inference.solver import OptionError
from ppl_diffusion.inference.theta import JointTheta, ThetaLikelihood, autoguide_draws, prior_draws
from ppl_diffusion.inference.variational import EfficientScorePrior, REDDiff
from ppl_diffusion.models.gmm import gaussian_check_problem
from ppl_diffusion.models.gmm_theta import theta_posterior, unknown_gain_problem, unknown_noise_problem
from ppl_diffusion.models.measurement import GaussianMeasurement
from ppl_diffusion.models.operators import Matrix
from ppl_diffusion.schedules import VPSchedule

SCHED = VPSchedule.gmm_benchmark("mcgdiff")
F64 = torch.float64
LOGNORMAL = dist.LogNormal(torch.tensor(-1.0, dtype=F64), torch.tensor(0.5, dtype=F64))


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(autouse=True)
def _clean_store():
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()


@pytest.fixture(scope="module")
def sharp():
    """A Gaussian prior (d = 8) seen through 32 measurements with an unknown noise level: sigma's
    exact posterior (0.135 +- 0.021) lies far from its LogNormal(-1, 0.5) prior (mean 0.42)."""
    gmm = gaussian_check_problem(8, 4, seed=0).prior
    g = _gen(0)
    A = torch.randn(32, 8, generator=g, dtype=F64) / math.sqrt(8)
    y = A @ gmm.sample(1, generator=g)[0] + 0.1 * torch.randn(32, generator=g, dtype=F64)
    prior, op = gmm.diffusion_prior(SCHED), Matrix(A)

    def model(y=None):
        sigma = pyro.sample("sigma", LOGNORMAL)
        x = pyro.sample("x", prior)
        return pyro.sample("y", GaussianMeasurement(op, x, sigma), obs=y)

    exact = theta_posterior(gmm, y, torch.exp(torch.linspace(-6, 1, 400, dtype=F64)), LOGNORMAL.log_prob,
                            lambda s: (A, s))
    return model, y, exact


@pytest.fixture(scope="module")
def noise():
    return unknown_noise_problem(d=8, d_y=4, seed=0, schedule=SCHED)


def _moved_toward(draws, exact, fraction=0.5):
    """Whether the draws' mean lies closer to the exact posterior mean than ``fraction`` of the
    distance from the prior mean."""
    prior_mean = float(LOGNORMAL.mean)
    return abs(float(draws.mean()) - exact.mean) < fraction * abs(prior_mean - exact.mean)


# -- the theta machinery ---------------------------------------------------------------------------
def test_batched_theta_likelihood_equals_one_trace_per_sample(noise):
    problem = Problem.from_model(noise.model, y=noise.y)
    x = torch.randn(5, 8, generator=_gen(1), dtype=F64)
    theta = prior_draws(problem, 5, _gen(2))
    assert theta["sigma"].shape == (5,) and (theta["sigma"] > 0).all()
    batched = ThetaLikelihood(problem)
    ll, lp = batched(x, theta)
    assert batched.vectorized is True
    ll1, lp1 = ThetaLikelihood(problem, vectorized=False)(x, theta)
    assert torch.allclose(ll, ll1) and torch.allclose(lp, lp1)
    s = theta["sigma"]
    A = problem.gaussian().operator
    manual = torch.distributions.Normal(A(x), s[:, None]).log_prob(noise.y).sum(-1)
    assert torch.allclose(ll, manual) and torch.allclose(lp, LOGNORMAL.log_prob(s))


def test_a_batch_that_broadcasts_wrongly_is_caught():
    """gain * A with 8 gains and an (4, 8) matrix broadcasts (per column) without an error: the
    check against per-sample traces sends such a model to one trace per sample."""
    pb = unknown_gain_problem(d=8, d_y=4, seed=0, schedule=SCHED)
    problem = Problem.from_model(pb.model, y=pb.y)
    lik = ThetaLikelihood(problem)
    x = torch.randn(8, 8, generator=_gen(1), dtype=F64)
    theta = prior_draws(problem, 8, _gen(2))
    ll, _ = lik(x, theta)
    assert lik.vectorized is False
    one = [float(problem.log_likelihood_theta(x[i:i + 1], {"gain": theta["gain"][i]}, batched=False)[0])
           for i in range(8)]
    assert torch.allclose(ll, torch.tensor(one, dtype=F64))


def test_prior_draws_leave_the_global_rng_alone_and_follow_the_generator(noise):
    problem = Problem.from_model(noise.model, y=noise.y)
    state = torch.get_rng_state()
    a = prior_draws(problem, 4, _gen(3))["sigma"]
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, prior_draws(problem, 4, _gen(3))["sigma"])


def test_theta_grad_steps_reach_the_conditional_maximiser(noise):
    """With x fixed, 'grad' steps converge to argmax_sigma log p(y | x, sigma) + log p(sigma) +
    log sigma (the unconstrained target), found here on a fine grid."""
    problem = Problem.from_model(noise.model, y=noise.y)
    x = noise.x_true.expand(3, 8) + 0.3 * torch.randn(3, 8, generator=_gen(0), dtype=F64)
    joint = JointTheta(problem, 3, update="grad", lr=0.5, generator=_gen(1))
    for _ in range(60):
        joint.update(x)
    grid = torch.exp(torch.linspace(-5, 2, 20001, dtype=F64))
    A = problem.gaussian().operator
    r2 = (noise.y - A(x)).pow(2).sum(-1)
    f = -0.5 * r2[:, None] / grid**2 - 4 * torch.log(grid) + LOGNORMAL.log_prob(grid) + torch.log(grid)
    best = grid[f.argmax(-1)]
    assert torch.allclose(joint.values()["sigma"], best, rtol=1e-3)


# -- joint DPS -------------------------------------------------------------------------------------
def test_joint_dps_moves_sigma_from_its_prior_toward_the_sharp_exact_posterior(sharp):
    model, y, exact = sharp
    d = DPS(model, steps=300, zeta=0.5).draw(64, y=y, generator=_gen(0))
    sigma = d.extra["theta"]["sigma"]
    assert sigma.shape == (1, 64) and d.samples.shape == (1, 64, 8)
    assert _moved_toward(sigma, exact), (float(sigma.mean()), exact.mean)
    assert d.extra["theta_trace"]["sigma"].shape == (300,)


def test_joint_dps_langevin_spreads_theta_wider_than_grad(noise):
    """'grad' steps put each sample's sigma at its own maximiser (spread only from x); Langevin steps
    add the conditional spread (measured: std 0.026 vs 0.098; exact posterior std 0.122)."""
    opts = dict(steps=100)
    grad = DPS(noise.model, **opts).draw(300, y=noise.y, generator=_gen(0)).extra["theta"]["sigma"]
    lang = DPS(noise.model, theta_update="langevin", **opts).draw(300, y=noise.y, generator=_gen(0))
    lang = lang.extra["theta"]["sigma"]
    assert float(lang.std()) > 2 * float(grad.std())


def test_predictive_returns_sigma_paired_with_its_own_x(noise):
    """Pyro's Predictive with the joint DPS guide returns sigma draws paired with x: each sigma is
    the conditional maximiser for its own x (theta_update='grad' with the final theta steps on the
    returned x), not for another sample's."""
    guide = DPS(noise.model, steps=60, theta_lr=0.5)
    pyro.set_rng_seed(0)
    out = pyro.infer.Predictive(noise.model, guide=guide, num_samples=8, parallel=True)(y=noise.y)
    sigma, x = out["sigma"], out["x"]
    assert sigma.shape == (8,) and x.shape == (8, 8) and out["y"].shape == (8, 4)
    A = Problem.from_model(noise.model, y=noise.y).gaussian().operator
    grid = torch.exp(torch.linspace(-5, 2, 20001, dtype=F64))
    r2 = (noise.y - A(x)).pow(2).sum(-1)
    f = -0.5 * r2[:, None] / grid**2 - 4 * torch.log(grid) + LOGNORMAL.log_prob(grid) + torch.log(grid)
    best = grid[f.argmax(-1)]
    err = (sigma.log() - best.log()).abs()
    shuffled = (sigma.log() - best.roll(1).log()).abs()
    # measured: max 5e-4 (grid step 3.5e-4) against a median 0.4 for a shuffled pairing
    assert float(err.max()) < 5e-3 and float(shuffled.median()) > 0.05, (err, shuffled)


def test_joint_dps_follows_the_generator(noise):
    a = DPS(noise.model, steps=20, theta_update="langevin").draw(6, y=noise.y, generator=_gen(4))
    b = DPS(noise.model, steps=20, theta_update="langevin").draw(6, y=noise.y, generator=_gen(4))
    assert torch.equal(a.samples, b.samples) and torch.equal(a.extra["theta"]["sigma"], b.extra["theta"]["sigma"])


def test_joint_dps_runs_a_model_that_cannot_batch_theta():
    """Matrix(gain * A) cannot take a batch of gains: one trace per sample, same draws shape."""
    pb = unknown_gain_problem(d=8, d_y=4, seed=1, schedule=SCHED)
    guide = DPS(pb.model, steps=10)
    d = guide.draw(3, y=pb.y, generator=_gen(0))
    assert guide.joint.likelihood.vectorized is False
    assert d.extra["theta"]["gain"].shape == (1, 3) and torch.isfinite(d.samples).all()


def test_joint_dps_on_a_plate_shares_a_global_sigma_per_draw():
    pb = unknown_noise_problem(d=8, d_y=4, seed=2, schedule=SCHED)
    prior, A = pb.prior.diffusion_prior(SCHED), Problem.from_model(pb.model, y=pb.y).gaussian().operator

    def model(y=None):
        sigma = pyro.sample("sigma", LOGNORMAL)
        with pyro.plate("images", 3):
            x = pyro.sample("x", prior)
            pyro.sample("y", GaussianMeasurement(A, x, sigma), obs=y)

    Y = pb.y.expand(3, 4).clone()
    guide = DPS(model, steps=10)
    d = guide.draw(5, y=Y, generator=_gen(0))
    assert d.samples.shape == (1, 5, 3, 8) and d.extra["theta"]["sigma"].shape == (1, 5)
    assert guide.joint.likelihood.vectorized is True


def test_guides_without_a_joint_mode_still_refuse_the_model(noise):
    with pytest.raises(ValueError, match=r"DDRM.*\['sigma'\].*pyro\.condition"):
        DDRM(noise.model)


def test_a_discrete_theta_site_is_refused_at_construction(noise):
    prior = noise.prior.diffusion_prior(SCHED)
    A = Problem.from_model(noise.model, y=noise.y).gaussian().operator

    def model(y=None):
        k = pyro.sample("k", dist.Categorical(torch.ones(3, dtype=F64) / 3))
        x = pyro.sample("x", prior)
        pyro.sample("y", GaussianMeasurement(A, x, 0.1 * (1.0 + k)), obs=y)

    for cls in (DPS, REDDiff):
        with pytest.raises(ValueError, match=r"latent site 'k'.*continuous latent sites only.*pyro\.condition"):
            cls(model)


def test_theta_options_are_checked(noise):
    with pytest.raises(OptionError, match="theta_update"):
        DPS(noise.model, theta_update="newton")
    with pytest.raises(OptionError, match="theta_lr"):
        DPS(noise.model, theta_lr=0.0)
    with pytest.raises(OptionError, match="theta_guide"):
        REDDiff(noise.model, theta_guide="flow")
    with pytest.raises(OptionError, match="paper_balance needs a known noise level"):
        REDDiff(noise.model, paper_balance=True)


# -- SVI with an autoguide on theta ---------------------------------------------------------------
def test_red_diff_moves_sigma_from_its_prior_toward_the_sharp_exact_posterior(sharp):
    model, y, exact = sharp
    pyro.set_rng_seed(0)
    red = REDDiff(model, steps=200, progress=False)
    d = red.draw(64, y=y, generator=_gen(0))
    sigma = d.extra["theta"]["sigma"]
    assert sigma.shape == (1, 64) and float(sigma.std()) > 0  # AutoNormal: a spread
    assert _moved_toward(sigma, exact), (float(sigma.mean()), exact.mean)
    assert any(n.startswith("red_diff.theta.") for n in pyro.get_param_store().keys())


def test_red_diff_guide_fits_theta_through_pyro_svi(sharp):
    """The documented native route: pyro.infer.SVI(model, red.guide, optim, loss=red.loss)."""
    model, y, exact = sharp
    pyro.set_rng_seed(0)
    red = REDDiff(model, steps=200, theta_guide="delta", progress=False)
    svi = pyro.infer.SVI(model, red.guide, pyro.optim.Adam({"lr": 0.1}), loss=red.loss)
    for _ in range(200):
        svi.step(y=y)
    sigma = red.theta_draws(4, y=y)["sigma"]
    assert torch.all(sigma == sigma[0])  # AutoDelta: a point estimate
    assert _moved_toward(sigma, exact), (float(sigma[0]), exact.mean)


def test_red_diff_on_a_plate_equals_separate_runs():
    """Gaussian prior + antithetic probes: the regulariser's gradient is exact, so a plate of three
    measurements fits each mu exactly as three separate runs do (Adam is elementwise)."""
    pb = gaussian_check_problem(6, 3, seed=1)
    gmm = pb.prior
    prior, op = gmm.diffusion_prior(SCHED), Matrix(pb.A)
    Y = pb.A @ gmm.sample(3, generator=_gen(5)).T
    Y = (Y.T + 0.1 * torch.randn(3, 3, generator=_gen(6), dtype=F64)).contiguous()

    def plated(y=None):
        with pyro.plate("images", 3):
            x = pyro.sample("x", prior)
            pyro.sample("y", GaussianMeasurement(op, x, 0.1), obs=y)

    def single(y=None):
        x = pyro.sample("x", prior)
        pyro.sample("y", GaussianMeasurement(op, x, 0.1), obs=y)

    opts = dict(steps=50, antithetic=True, progress=False)
    d = REDDiff(plated, **opts).draw(2, y=Y)
    assert d.samples.shape == (1, 2, 3, 6) and d.plate_dims == ("measurement",)
    for b in range(3):
        alone = REDDiff(single, **opts).draw(1, y=Y[b]).samples[0, 0]
        assert torch.allclose(d.samples[0, 0, b], alone, atol=1e-8), b


def test_efficient_score_prior_fits_theta_beside_the_flow(noise):
    pyro.set_rng_seed(0)
    esp = EfficientScorePrior(noise.model, steps=20, num_particles=4, n_layers=2, hidden=(16,), progress=False)
    d = esp.draw(32, y=noise.y, generator=_gen(0))
    sigma = d.extra["theta"]["sigma"]
    assert sigma.shape == (1, 32) and (sigma > 0).all() and esp._vectorize is True
    x, theta, log_w = esp.importance_sample(16, y=noise.y, ode_steps=2, return_theta=True)
    assert x.shape == (16, 8) and theta["sigma"].shape == (16,) and torch.isfinite(log_w).all()


def test_autoguide_draws_have_one_value_per_draw(noise):
    red = REDDiff(noise.model, steps=1, progress=False)
    red.guide(y=noise.y)
    draws, log_q = autoguide_draws(red.theta_autoguide, ["sigma"], 7, y=noise.y, generator=_gen(0))
    assert draws["sigma"].shape == (7,) and log_q.shape == (7,) and draws["sigma"].unique().numel() == 7
