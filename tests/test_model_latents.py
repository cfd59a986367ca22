"""The model is the problem: extra latent sites, conditioned latents, plates of measurements, tensor
noise levels, and second derivatives through the shipped prior."""
import math

import arviz as az
import pyro
import pyro.distributions as dist
import pytest
import torch

from ppl_diffusion.inference.problem import Problem
from ppl_diffusion.inference.registry import SOLVERS
from ppl_diffusion.metrics import sliced_wasserstein
from ppl_diffusion.models.gmm import gmm_benchmark_problem
from ppl_diffusion.models.gmm_theta import unknown_noise_problem
from ppl_diffusion.models.measurement import GaussianMeasurement
from ppl_diffusion.models.operators import Inpainting, Matrix
from ppl_diffusion.schedules import VPSchedule

SCHED = VPSchedule.gmm_benchmark("mcgdiff")


@pytest.fixture(scope="module")
def pb():
    return gmm_benchmark_problem(8, 2, seed=0)


def _sigma_model(pb):
    prior = pb.prior.diffusion_prior(SCHED)
    op = Matrix(pb.A)

    def model(y=None):
        sigma = pyro.sample("sigma", dist.LogNormal(-3.0, 1.0))
        x = pyro.sample("x", prior)
        pyro.sample("y", GaussianMeasurement(op, x, sigma), obs=y)

    return model


def _plate_model(pb, B, mask=False):
    prior = pb.prior.diffusion_prior(SCHED)
    op = Inpainting(torch.tensor([True] * 6 + [False] * 2), shape=(8,)) if mask else Matrix(pb.A)

    def model(y=None):
        with pyro.plate("images", B):
            x = pyro.sample("x", prior)
            pyro.sample("y", GaussianMeasurement(op, x, pb.noise_std), obs=y)

    return model


def test_problem_finds_theta_and_plates(pb):
    prob = Problem.from_model(_sigma_model(pb), allow_unobserved=True)
    assert list(prob.observed) == ["y"] and prob.free_latents == ["sigma"] and not prob.plates
    sigma = torch.tensor(0.1, dtype=torch.float64)
    fixed = Problem.from_model(pyro.condition(_sigma_model(pb), data={"sigma": sigma}), y=pb.y)
    assert fixed.free_latents == [] and list(fixed.observed) == ["y"] and fixed.linear_gaussian().noise_std == 0.1
    plated = Problem.from_model(_plate_model(pb, 3), y=torch.zeros(3, 2, dtype=torch.float64))
    assert [f.name for f in plated.plates] == ["images"] and plated.num_measurements == 3
    assert not plated.latent and list(plated.observed) == ["y"]  # the plate is not a latent site


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_every_solver_infers_or_refuses_a_free_latent_site_by_name(pb, name):
    """Never silently frozen: a solver that does not infer theta refuses the model at construction,
    naming the site and the ways forward."""
    cls = SOLVERS[name].load()
    if name in ("blind_dps", "gibbs_ddrm"):  # blind: sigma is no operator parameter they can handle
        with pytest.raises(ValueError, match=r"site 'sigma'.*(ParameterDiffusionPrior|KernelBlur)"):
            cls(_sigma_model(pb))
        return
    if cls.infers_latents:
        cls(_sigma_model(pb))
        return
    with pytest.raises(ValueError, match=r"\['sigma'\].*pyro\.condition.*PMMH.*Gibbs"):
        cls(_sigma_model(pb))


@pytest.mark.parametrize("name", sorted(n for n, i in SOLVERS.items() if not i.load().supports_plates))
def test_solvers_without_plates_refuse_a_plate(pb, name):
    cls = SOLVERS[name].load()
    with pytest.raises(ValueError, match=r"plate\(s\) \['images'\]"):
        cls(_plate_model(pb, 3, mask=name == "smcdiff"))


def test_conditioned_latent_equals_the_fixed_model(pb):
    from ppl_diffusion.inference.guides import DDRM

    cond = pyro.condition(_sigma_model(pb), data={"sigma": torch.tensor(pb.noise_std, dtype=torch.float64)})
    a = DDRM(cond, steps=20).sample(4, y=pb.y, generator=torch.Generator().manual_seed(0))
    b = DDRM(pb.model(SCHED), steps=20).sample(4, y=pb.y, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)


def test_batched_y_without_a_plate_is_an_error(pb):
    from ppl_diffusion.inference.guides import DPS

    with pytest.raises(ValueError, match=r"3 measurements.*no plate.*pyro\.plate"):
        DPS(pb.model(SCHED), steps=5).sample(2, y=pb.y.expand(3, 2))


@pytest.mark.parametrize("name", ["ddrm", "dps"])
def test_plate_of_measurements_conditions_each_sample_on_its_own(name):
    """B = 3 measurements of one problem in one plate: each measurement's draws are as close to its
    exact posterior as a separate run's are (sliced W, 400 draws; exact draws score the floor)."""
    from ppl_diffusion.inference.registry import solver_class

    pb = gmm_benchmark_problem(8, 4, seed=3)
    g = torch.Generator().manual_seed(7)
    xs = pb.prior.sample(3, generator=g)
    Y = xs @ pb.A.T + pb.noise_std * torch.randn(3, 4, generator=g, dtype=torch.float64)
    cls = solver_class(name)
    opts = {"steps": 50}
    plated = cls(_plate_model(pb, 3), **opts).draw(400, y=Y, generator=torch.Generator().manual_seed(1))
    assert plated.samples.shape == (1, 400, 3, 8)
    for b in range(3):
        exact = pb.prior.posterior(pb.A, Y[b], pb.noise_std)
        ref = exact.sample(4000, generator=g)
        one = pb.model(SCHED)
        alone = cls(one, **opts).sample(400, y=Y[b], generator=torch.Generator().manual_seed(2 + b))
        sw_plate = float(sliced_wasserstein(plated.samples[0, :, b], ref, generator=torch.Generator().manual_seed(0)))
        sw_alone = float(sliced_wasserstein(alone, ref, generator=torch.Generator().manual_seed(0)))
        floor = float(sliced_wasserstein(exact.sample(400, generator=g), ref,
                                         generator=torch.Generator().manual_seed(0)))
        # a sample conditioned on another measurement scores far away (measured: 5-20x the floor)
        assert sw_plate < 1.5 * sw_alone + 2 * floor, (b, sw_plate, sw_alone, floor)


def test_a_plate_is_one_batched_run_also_through_predictive(pb):
    from ppl_diffusion.inference.guides import DDRM

    model = _plate_model(pb, 3)
    guide = DDRM(model, steps=10)
    Y = pb.y.expand(3, 2).clone()
    den = Problem.from_model(model, allow_unobserved=True).denoiser
    den.reset_nfe()
    d = guide.draw(5, y=Y)
    assert den.nfe == 10 and den.sample_evals == 10 * 5 * 3  # 10 calls of 15 = 5 samples x 3 measurements
    assert d.nfe_per_sample == 10
    out = pyro.infer.Predictive(model, guide=guide, num_samples=5, parallel=True)(y=Y)
    assert out["x"].shape == (5, 3, 8) and out["y"].shape == (5, 3, 2)


def test_tensor_noise_level_keeps_gradients_and_broadcasts():
    op = Matrix(torch.eye(3, dtype=torch.float64))
    x = torch.randn(4, 3, dtype=torch.float64)
    y = torch.randn(3, dtype=torch.float64)
    sigma = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    lp = GaussianMeasurement(op, x, sigma).log_prob(y)
    (g,) = torch.autograd.grad(lp.sum(), sigma)
    r2 = ((y - x) ** 2).sum(-1)
    assert torch.allclose(g, (r2 / 0.3**3 - 3 / 0.3).sum())
    per_sample = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    lp = GaussianMeasurement(op, x, per_sample).log_prob(y)
    expect = torch.distributions.Normal(x, per_sample[:, None]).log_prob(y).sum(-1)
    assert torch.allclose(lp, expect)
    with pytest.raises(ValueError, match="does not broadcast"):
        GaussianMeasurement(op, x, torch.ones(5, dtype=torch.float64))


def test_predictive_parallel_with_an_unknown_noise_level(pb):
    """The prior predictive of a model with a latent sigma (the tensor noise level Pyro passes in)."""
    out = pyro.infer.Predictive(_sigma_model(pb), num_samples=6, parallel=True)()
    assert out["sigma"].shape == (6,) and out["y"].shape == (6, 2)


def test_prior_support_has_the_event_dims():
    from ppl_diffusion import load_prior

    prior = load_prior("digits")
    assert prior.support.event_dim == len(prior.event_shape) == 3


@pytest.mark.parametrize("name", ["digits", "patches"])
def test_second_derivative_through_the_shipped_priors(name):
    """Score Prior / Trace_ELBO need grad-of-grad through the UNet's attention (fails with the fused
    CPU attention kernel: 'derivative for aten::_scaled_dot_product_flash_attention_for_cpu_backward')."""
    from ppl_diffusion import load_prior

    den = load_prior(name).denoiser
    x = torch.randn(2, *den.event_shape, requires_grad=True)
    x0 = den(x, torch.tensor(0.5))
    (g,) = torch.autograd.grad(x0.sum(), x, create_graph=True)
    (h,) = torch.autograd.grad((g**2).sum(), x)
    assert h.shape == x.shape and torch.isfinite(h).all() and h.abs().sum() > 0


def _gibbs_run(problem, chains, draws, warmup, seed):
    """Gibbs.draw: ``chains`` Pyro MCMC runs, x and theta ``(chain, draw, ...)``. The x kernel is the
    conditional sweep alone (``pimh=False``): the posterior of x given sigma is unimodal here, and the
    independent move, which would double each x step, is tested in test_particle_gibbs / test_pg_target."""
    from pyro.infer import NUTS

    from ppl_diffusion.inference.kernels import Gibbs, ParticleGibbs
    from ppl_diffusion.inference.smc.tds import TDS

    pyro.set_rng_seed(seed)
    kernel = Gibbs(problem.model, x_kernel=lambda m: ParticleGibbs(TDS(m, particles=32, steps=20), pimh=False),
                    theta_kernel=NUTS)
    d = kernel.draw(chains * draws, y=problem.y, chains=chains, warmup=warmup)
    theta = d.extra["theta"][problem.theta_site]
    assert d.samples.shape == (chains, draws, 8) and theta.shape == (chains, draws) and d.nfe_per_sample > 0
    idata = d.to_inference_data()
    assert idata.posterior[problem.theta_site].dims == ("chain", "draw")
    return theta, d.samples


def test_gibbs_recovers_the_exact_noise_posterior():
    """Gibbs(ParticleGibbs(TDS) for x, NUTS for sigma) against quadrature over sigma: the chains mix
    (bulk ESS > 25 of 300 draws; measured 71-100 over seeds 0-3), sigma's posterior mean lies within 4 Monte Carlo
    standard errors of the exact one, and x is far closer to the exact marginal posterior than the
    prior is. (An unknown gain couples theta and x so strongly that Gibbs mixes slowly: measured
    R-hat 1.7-3.1 over 8 x 400 draws, benchmarks/results/latents_gibbs_gain.md.)"""
    problem = unknown_noise_problem(d=8, d_y=4, seed=0, schedule=SCHED)
    theta, x = _gibbs_run(problem, chains=2, draws=150, warmup=60, seed=0)
    ess = float(az.ess(az.convert_to_dataset(theta.numpy()))["x"])
    assert ess > 25, ess
    exact = problem.exact
    se = exact.std / math.sqrt(max(ess, 1.0))
    assert abs(float(theta.mean()) - exact.mean) < 4 * se + 0.02 * exact.std, (float(theta.mean()), exact.mean, ess)
    g = torch.Generator().manual_seed(0)
    _, ref = exact.sample(2000, generator=g)
    sw = float(sliced_wasserstein(x.reshape(-1, 8).double(), ref, generator=g))
    sw_prior = float(sliced_wasserstein(problem.prior.sample(300, generator=g), ref, generator=g))
    assert sw < 0.25 * sw_prior, (sw, sw_prior)


def test_gibbs_refuses_mcgdiff_and_models_without_theta(pb):
    from ppl_diffusion.inference.kernels import Gibbs, ParticleGibbs
    from ppl_diffusion.inference.smc import MCGDiff

    with pytest.raises(ValueError, match="matching times"):
        Gibbs(_sigma_model(pb), x_kernel=lambda m: ParticleGibbs(MCGDiff(m, particles=8)))
    with pytest.raises(ValueError, match="no latent site besides"):
        Gibbs(pb.model(SCHED), x_kernel=lambda m: ParticleGibbs(MCGDiff(m, particles=8)))


def test_score_prior_svi_steps_on_the_shipped_digits_prior():
    """The SVI family on a shipped UNet prior: Score Prior's exact-ODE prior term differentiates the
    network twice; two SVI steps run and change the flow's parameters."""
    from ppl_diffusion import load_prior
    from ppl_diffusion.inference.variational import ScorePrior
    from ppl_diffusion.models.operators import SuperResolution
    from ppl_diffusion.models.zoo import heldout_images

    prior = load_prior("digits")
    x_true = heldout_images("digits")[0]
    op = SuperResolution(2, x_true.shape)

    def model(y=None):
        x = pyro.sample("x", prior)
        return pyro.sample("y", GaussianMeasurement(op, x, 0.05), obs=y)

    pyro.clear_param_store()
    sp = ScorePrior(model, progress=False, n_layers=2, hidden=(32,), num_particles=2, ode_steps=2)
    sp.run(y=op(x_true), steps=1)
    before = {k: v.detach().clone() for k, v in pyro.get_param_store().items()}
    trace = sp.run(y=op(x_true), steps=1)  # continues from the param store
    after = dict(pyro.get_param_store().items())
    assert torch.isfinite(torch.as_tensor(trace)).all()
    assert before and any(not torch.equal(before[k], after[k].detach()) for k in before)


def test_pmmh_recovers_a_sharp_gain_posterior():
    """PMMH(TDS) moves the gain and x jointly (by the SMC evidence), where Gibbs mixes slowly: on a
    problem whose exact gain posterior is sharp (std 0.036), the posterior mean of 2 chains x 150
    draws lies within 4 Monte Carlo standard errors of the exact one and the chains mix (ESS > 20;
    measured: see the assertion message)."""
    from ppl_diffusion.inference.kernels import PMMH
    from ppl_diffusion.inference.smc.tds import TDS
    from ppl_diffusion.models.gmm_theta import unknown_gain_problem

    problem = unknown_gain_problem(d=8, d_y=4, seed=1, schedule=SCHED)
    pyro.set_rng_seed(0)
    kernel = PMMH(problem.model, sampler=lambda m: TDS(m, particles=64, steps=30, grid="alpha", tail_steps=10))
    d = kernel.draw(300, y=problem.y, chains=2, warmup=50)  # two Pyro MCMC runs of 150 draws
    theta = d.extra["theta"]["gain"].double()
    assert theta.shape == (2, 150) and d.samples.shape == (2, 150, 8)
    assert ((d.extra["accept_rate"] > 0.05) & (d.extra["accept_rate"] < 0.9)).all(), d.extra["accept_rate"]
    ess = float(az.ess(az.convert_to_dataset(theta.numpy()))["x"])
    exact = problem.exact
    se = exact.std / math.sqrt(max(ess, 1.0))
    msg = (float(theta.mean()), exact.mean, exact.std, ess)
    assert ess > 20, msg
    assert abs(float(theta.mean()) - exact.mean) < 4 * se + 0.05 * exact.std, msg


def test_pmmh_refuses_models_without_theta(pb):
    from ppl_diffusion.inference.kernels import PMMH
    from ppl_diffusion.inference.smc import MCGDiff

    with pytest.raises(ValueError, match="no latent site besides"):
        PMMH(pb.model(SCHED), sampler=lambda m: MCGDiff(m, particles=8))


def test_inference_data_carries_jointly_inferred_theta():
    from ppl_diffusion.inference.guides import DPS

    problem = unknown_noise_problem(d=8, d_y=4, seed=0, schedule=SCHED)
    d = DPS(problem.model, steps=10).draw(5, y=problem.y, generator=torch.Generator().manual_seed(0))
    post = d.to_inference_data().posterior
    assert post["sigma"].dims == ("chain", "draw") and post["x"].shape == (1, 5, 8)
    assert torch.allclose(torch.as_tensor(post["sigma"].values), d.extra["theta"]["sigma"].double())


def test_theta_kernels_refuse_a_discrete_theta_at_construction(pb):
    from ppl_diffusion.inference.kernels import PMMH, Gibbs, PnPDM
    from ppl_diffusion.inference.smc.tds import TDS

    prior = pb.prior.diffusion_prior(SCHED)
    op = Matrix(pb.A)

    def model(y=None):
        k = pyro.sample("k", dist.Categorical(torch.tensor([0.5, 0.5])))
        x = pyro.sample("x", prior)
        pyro.sample("y", GaussianMeasurement(op, x, 0.1 * (1.0 + k)), obs=y)

    with pytest.raises(ValueError, match="'k'"):
        PMMH(model, sampler=lambda m: TDS(m, particles=8))
    with pytest.raises(ValueError, match="'k'"):
        Gibbs(model, x_kernel=PnPDM)


def test_a_proposed_noise_level_that_overflows_is_rejected_not_raised():
    """NUTS on a latent sigma can step to sigma = inf or 0 in float32 during warm-up: the likelihood
    must give a non-finite log-density (a rejected proposal), not raise; a fixed level still raises."""
    op = Matrix(torch.eye(3))
    x = torch.zeros(3)
    for bad in (float("inf"), 0.0):
        sigma = torch.tensor(bad, requires_grad=True)
        lp = GaussianMeasurement(op, x, sigma).log_prob(torch.ones(3))
        assert not torch.isfinite(lp).all()
    with pytest.raises(ValueError, match="finite"):
        GaussianMeasurement(op, x, float("inf"))
    with pytest.raises(ValueError, match="noiseless"):
        GaussianMeasurement(op, x, 0.0).log_prob(torch.ones(3))
