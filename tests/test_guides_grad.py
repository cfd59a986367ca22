"""Gradient-type guides (DPS, PiGDM, MMPS, MCG, Score-ALD, SNIPS) against exact GMM posteriors and on
a tiny diffusers UNet prior. Thresholds were set from measured values (stated beside each) with a
margin; every run is seeded."""
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Predictive

from .conftest import SCHEDULER_CONFIG, tiny_unet
from ppl_diffusion.denoisers import UNetDenoiser
from ppl_diffusion.inference.guides import DPS, MCG, MMPS, SNIPS, PiGDM, ScoreALD
from ppl_diffusion.metrics import sliced_wasserstein
from ppl_diffusion.models import DiffusionPrior, GaussianMeasurement
from ppl_diffusion.models.gmm import gmm_benchmark_problem
from ppl_diffusion.models.operators import (Blur, Inpainting, LinearCallableOperator, PhaseRetrieval,
                                            SuperResolution)
from ppl_diffusion.schedules import VPSchedule

GUIDES = {"dps": DPS, "pigdm": PiGDM, "mmps": MMPS, "mcg": MCG, "score_ald": ScoreALD, "snips": SNIPS}


@pytest.fixture(scope="module")
def gmm_case():
    """d = 8, d_y = 4, seed 1 (sigma_y = 0.615): exact posterior, prior and reference samples; the noise
    floor is the SW of 300 exact draws (as many as the guides draw) with the guides' projections."""
    pb = gmm_benchmark_problem(8, 4, seed=1)
    model = pb.model(VPSchedule.gmm_benchmark("mcgdiff"))
    g = torch.Generator().manual_seed(0)
    ref = pb.posterior.sample(2000, generator=g)
    sw_prior = float(sliced_wasserstein(pb.prior.sample(400, generator=g), ref, generator=g))
    floor = float(sliced_wasserstein(pb.posterior.sample(300, generator=g), ref,
                                     generator=torch.Generator().manual_seed(2)))
    return pb, model, ref, sw_prior, floor


# measured (300 samples, 100 steps): SW ratio to the prior's SW (7.47), SW ratio to the noise floor (0.0800;
# 0.056 - 0.090 over 20 other seeds of the exact draws), rms residual / (sigma_y sqrt(d_y))
#   dps 0.044 / 4.08 / 1.05, pigdm 0.024 / 2.20 / 1.17, mmps 0.024 / 2.20 / 1.20, mcg 0.33 / 31.3 / 2.7,
#   score_ald 0.26 / 24.3 / 3.8, snips 0.065 / 6.12 / 0.71
# bounds: prior ratio <= ~2x measured (and < 1 everywhere), floor ratio 1.5x measured, residual ratio
# within [0.4, 1.5] where the method fits the noise level, looser bound where it does not (MCG,
# Score-ALD, stated).
GMM_BOUNDS = {"dps": (0.1, 6.1, 0.6, 1.5), "pigdm": (0.06, 3.3, 0.6, 1.5), "mmps": (0.06, 3.3, 0.6, 1.5),
              "mcg": (0.6, 47.0, 0.4, 4.5), "score_ald": (0.5, 36.5, 0.4, 5.5), "snips": (0.15, 9.2, 0.3, 1.5)}


@pytest.mark.parametrize("name", sorted(GUIDES))
def test_gmm_posterior(gmm_case, name):
    pb, model, ref, sw_prior, floor = gmm_case
    guide = GUIDES[name](model, steps=100)
    x = guide.sample(300, y=pb.y, generator=torch.Generator().manual_seed(1))
    assert x.shape == (300, 8) and torch.isfinite(x).all()
    sw = float(sliced_wasserstein(x, ref, generator=torch.Generator().manual_seed(2)))
    max_ratio, max_floor_ratio, res_lo, res_hi = GMM_BOUNDS[name]
    assert sw / sw_prior < max_ratio, (name, sw, sw_prior, floor)
    assert sw < max_floor_ratio * floor, (name, sw, floor, sw / floor)
    rms = float(((x @ pb.A.T - pb.y) ** 2).sum(-1).mean().sqrt()) / (pb.noise_std * 4**0.5)
    assert res_lo < rms < res_hi, (name, rms)
    assert guide.last_nfe == 100 * getattr(guide, "steps_each", 1)  # one network call per step


def test_per_sample_independence(gmm_case):
    """A sample does not depend on the batch it is drawn with (per-sample norms and steps)."""
    pb, model, *_ = gmm_case
    x0 = torch.randn(6, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 10
    for cls in (DPS, MCG, PiGDM, MMPS):
        guide = cls(model, steps=5, eta=0.0)
        prob = guide.problem(y=pb.y)
        hook = guide.make_hook(prob, 6)
        from ppl_diffusion.inference.sampler import reverse_diffusion
        a = reverse_diffusion(prob.denoiser, x0, guide.times(prob), eta=0.0, hook=guide.make_hook(prob, 6))
        b = reverse_diffusion(prob.denoiser, x0[:2], guide.times(prob), eta=0.0, hook=guide.make_hook(prob, 2))
        assert torch.allclose(a[:2], b, atol=1e-9), cls.__name__
        del hook


def test_predictive_parallel(gmm_case):
    pb, model, *_ = gmm_case
    guide = PiGDM(model, steps=20)
    out = Predictive(model, guide=guide, num_samples=7, parallel=True, return_sites=["x"])(y=pb.y)
    x = out["x"].reshape(7, 8)
    assert torch.isfinite(x).all()
    assert torch.cdist(x, x)[~torch.eye(7, dtype=torch.bool)].min() > 1e-6  # 7 distinct samples
    guide = DPS(model, steps=20)
    out = Predictive(model, guide=guide, num_samples=5, parallel=True, return_sites=["x"])(y=pb.y)
    assert out["x"].reshape(5, 8).unique(dim=0).shape[0] == 5


# ------------------------------------------------------------------------------------------
# tiny UNet prior with random weights. DPS / MCG run with x0 clamped to [-1, 1] as in DPS's official
# code (clip_denoised); the others without (their official codes do not clamp, and MMPS's J^T is 0
# on saturated pixels, so a clamped random network gives it no signal there).

@pytest.fixture(scope="module")
def unet():
    return tiny_unet()


@pytest.fixture(scope="module")
def unet_prior(unet):
    return DiffusionPrior(UNetDenoiser(unet, SCHEDULER_CONFIG, clip_x0=True), steps=10)


@pytest.fixture(scope="module")
def unet_prior_noclip(unet):
    return DiffusionPrior(UNetDenoiser(unet, SCHEDULER_CONFIG), steps=10)


def _image_problem(prior, op, sigma=0.05, seed=0):
    g = torch.Generator().manual_seed(seed)
    x_true = torch.rand(op.in_shape, generator=g) * 2 - 1
    y = op(x_true) + sigma * torch.randn(op.out_shape, generator=g)

    def model(y=None):
        x = pyro.sample("x", prior)
        return pyro.sample("y", GaussianMeasurement(op, x, sigma), obs=y)

    return model, y


SHAPE = (1, 16, 16)
OPS = {"inpaint": lambda: Inpainting.random(SHAPE, 0.5, generator=torch.Generator().manual_seed(0)),
       "sr2": lambda: SuperResolution(2, SHAPE), "blur": lambda: Blur.gaussian(SHAPE, 1.0)}


def _resid(op, x, y):
    return ((op(x) - y) ** 2).flatten(1).sum(-1).sqrt()


@pytest.mark.parametrize("task", sorted(OPS))
@pytest.mark.parametrize("name", sorted(GUIDES))
def test_unet_tasks(unet_prior, unet_prior_noclip, task, name):
    """Finite output and a residual below the prior samples' (measured: guide/prior mean residual
    0.6-0.9 for DPS / MCG with clamping, < 0.5 for the others; bound 1)."""
    op = OPS[task]()
    if name not in ("dps", "mcg"):
        unet_prior = unet_prior_noclip
    model, y = _image_problem(unet_prior, op)
    x = GUIDES[name](model, steps=10).sample(4, y=y, generator=torch.Generator().manual_seed(1))
    assert x.shape == (4,) + SHAPE and torch.isfinite(x).all()
    xp = unet_prior.sample((4,), generator=torch.Generator().manual_seed(1))
    assert _resid(op, x, y).mean() < _resid(op, xp, y).mean()


def test_dps_phase_retrieval(unet_prior):
    op = PhaseRetrieval(SHAPE)
    model, y = _image_problem(unet_prior, op)
    x = DPS(model, steps=10).sample(4, y=y, generator=torch.Generator().manual_seed(1))
    assert torch.isfinite(x).all()
    xp = unet_prior.sample((4,), generator=torch.Generator().manual_seed(1))
    assert _resid(op, x, y).mean() < _resid(op, xp, y).mean()  # measured 7.4 vs 8.1


def test_mcg_noiseless_projection(unet_prior):
    """With sigma_y = 0 MCG projects onto the measurement: the final residual vanishes."""
    op = OPS["inpaint"]()
    model, y = _image_problem(unet_prior, op, sigma=0.0)
    x = MCG(model, steps=10).sample(2, y=y, generator=torch.Generator().manual_seed(1))
    assert float(_resid(op, x, y).max()) < 1e-4


def test_non_gaussian_likelihood_dps(unet_prior):
    """DPS and Score-ALD take any differentiable Pyro likelihood (here a Laplace one)."""
    op = OPS["sr2"]()
    g = torch.Generator().manual_seed(0)
    y = op(torch.rand(SHAPE, generator=g) * 2 - 1)

    def model(y=None):
        x = pyro.sample("x", unet_prior)
        return pyro.sample("y", dist.Laplace(op(x), 0.1).to_event(3), obs=y)

    xp = unet_prior.sample((3,), generator=torch.Generator().manual_seed(1))
    for cls, opts in ((DPS, {"zeta": 0.01}), (ScoreALD, {"weight": 1.0})):
        x = cls(model, steps=10, **opts).sample(3, y=y, generator=torch.Generator().manual_seed(1))
        assert torch.isfinite(x).all()
        assert (op(x) - y).abs().sum() < (op(xp) - y).abs().sum(), cls.__name__


# ------------------------------------------------------------------------------------------
# bad input: clear errors at construction

def test_bad_inputs(unet_prior):
    pr_model, _ = _image_problem(unet_prior, PhaseRetrieval(SHAPE))
    with pytest.raises(ValueError, match="linear"):
        PiGDM(pr_model)
    with pytest.raises(ValueError, match="linear"):
        MMPS(pr_model)
    no_svd = LinearCallableOperator(lambda x: 0.5 * x, SHAPE, SHAPE)
    model, _ = _image_problem(unet_prior, no_svd)
    with pytest.raises(ValueError, match="SVD"):
        SNIPS(model)
    PiGDM(model)  # a linear operator without SVD is fine for PiGDM (CG)

    def laplace_model(y=None):
        x = pyro.sample("x", unet_prior)
        return pyro.sample("y", dist.Laplace(x, 0.1).to_event(3), obs=y)

    for cls in (PiGDM, MMPS, SNIPS):
        with pytest.raises(ValueError, match="Gaussian"):
            cls(laplace_model)
    with pytest.raises(ValueError, match="zeta"):
        DPS(model, zeta=-1.0)
    with pytest.raises(ValueError, match="unknown"):
        PiGDM(model, zeta=1.0)
    with pytest.raises(ValueError, match="maxiter"):
        MMPS(model, maxiter=0)
