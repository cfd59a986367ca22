"""Projection / optimisation guides (issue 3): DDRM, DDNM, DDNM+, DDS, DiffPIR, RePaint, ILVR,
Score-SDE, Kadkhodaie-Simoncelli.

Thresholds were set from measured values (seeds fixed) with the margin stated next to each."""
import pyro
import pytest
import torch
from pyro.infer import Predictive

from .conftest import SCHEDULER_CONFIG, tiny_unet
from ppl_diffusion.denoisers import UNetDenoiser
from ppl_diffusion.inference.guides import (DDNM, DDRM, DDS, ILVR, DDNMPlus, DiffPIR, KadkhodaieSimoncelli,
                                            RePaint, ScoreSDE)
from ppl_diffusion.metrics import empirical_gaussian_fit, gaussian_w2, sliced_wasserstein
from ppl_diffusion.models import DiffusionPrior, GaussianMeasurement
from ppl_diffusion.models.gmm import gaussian_check_problem, gmm_benchmark_problem
from ppl_diffusion.models.operators import Blur, CallableOperator, Inpainting, SuperResolution
from ppl_diffusion.schedules import VPSchedule

# (guide, options, SW-ratio bound, residual kind)
#   measured SW ratios (d=8, d_y=4, seed 1, 300 samples, 50 steps): DDRM/DDNM+ 0.035, DiffPIR 0.048,
#   DDS 0.097, DDNM 0.105, ILVR 0.104, ScoreSDE 0.104, KS 0.105, RePaint(spectral) 0.104.
#   bounds: about 2x the measured value.
GMM_CASES = {
    "ddrm": (DDRM, {}, 0.08, "noisy"),
    "ddnm_plus": (DDNMPlus, {}, 0.08, "noisy"),
    "diffpir": (DiffPIR, {}, 0.1, "noisy"),
    "dds": (DDS, {}, 0.2, "dds"),
    "ddnm": (DDNM, {}, 0.2, "projection"),
    "ilvr": (ILVR, {}, 0.2, "projection"),
    "score_sde": (ScoreSDE, {}, 0.2, "projection"),
    "ks": (KadkhodaieSimoncelli, {"sigma_0": 20.0}, 0.2, "projection"),
    "repaint": (RePaint, {"spectral": True, "jump_length": 5, "jump_n_sample": 3}, 0.2, "projection"),
}


@pytest.fixture(scope="module")
def gmm():
    pb = gmm_benchmark_problem(8, 4, seed=1)
    model = pb.model(VPSchedule.gmm_benchmark("mcgdiff"))
    g = torch.Generator().manual_seed(0)
    ref = pb.posterior.sample(2000, generator=g)
    prior = pb.prior.sample(300, generator=g)
    post = pb.posterior.sample(300, generator=g)

    def sw(x):
        return float(sliced_wasserstein(x, ref, n_projections=200, generator=torch.Generator().manual_seed(1)))

    def res(x):
        return float(((x @ pb.A.T - pb.y) ** 2).sum(-1).mean())

    return pb, model, sw, res, sw(prior), res(post)


@pytest.mark.parametrize("name", sorted(GMM_CASES))
def test_gmm_exact_posterior(gmm, name):
    pb, model, sw, res, sw_prior, res_post = gmm
    cls, opts, bound, kind = GMM_CASES[name]
    x = cls(model, steps=50, **opts).sample(300, y=pb.y, generator=torch.Generator().manual_seed(2))
    assert x.shape == (300, 8) and torch.isfinite(x).all()
    ratio = sw(x) / sw_prior
    assert ratio < bound, f"{name}: SW ratio to the exact posterior vs the prior {ratio:.3f} >= {bound}"
    r = res(x)  # exact posterior samples: E||Ax - y||^2 = res_post (2.35 here)
    if kind == "noisy":      # noise-aware updates: measured 0.87x (DiffPIR) - 0.97x (DDRM); bound [0.5, 2]
        assert 0.5 * res_post < r < 2.0 * res_post, (name, r, res_post)
    elif kind == "dds":      # gamma = 1 under-weights the data here: measured 2.7x; bound 4x
        assert r < 4.0 * res_post, (name, r, res_post)
    else:                    # projections ignore the noise and fit y (known bias): measured <= 0.34x; bound 0.5x
        assert r < 0.5 * res_post, (name, r, res_post)


def test_gaussian_check_small():
    """The Gaussian closed-form check of docs/benchmarks.md, smaller (d=20, d_y=10): W2 of DDRM's /
    DDNM's Gaussian fit to the closed-form posterior, within a stated multiple of the noise floor (W2 of
    the fit of as many exact draws)."""
    pb = gaussian_check_problem(d=20, d_y=10, seed=0)
    model = pb.model(VPSchedule.linear())
    m_p, C_p = pb.posterior.means[0], pb.posterior.full_covs()[0]
    r = pb.posterior.sample(1000, generator=torch.Generator().manual_seed(0))
    w2_floor = float(gaussian_w2(*empirical_gaussian_fit(r), m_p, C_p))
    out = {}
    for name, cls in [("ddrm", DDRM), ("ddnm", DDNM)]:
        x = cls(model, steps=100).sample(1000, y=pb.y, generator=torch.Generator().manual_seed(0))
        out[name] = float(gaussian_w2(*empirical_gaussian_fit(x), m_p, C_p))
    # measured (1000 samples, seeds above): floor 0.195, DDRM 0.570 (2.92x the floor), DDNM 0.486 (2.49x);
    # bounds 1.5x the measured ratios: 4.4x and 3.7x the floor (the floor itself varies 0.13 - 0.19 over
    # 20 other seeds of the exact draws), and 1.0 absolute
    assert out["ddrm"] < 4.4 * w2_floor, (out, w2_floor)
    assert out["ddnm"] < 3.7 * w2_floor, (out, w2_floor)
    assert out["ddrm"] < 1.0 and out["ddnm"] < 1.0, out


# --------------------------------------------------------------------------------------------
# tiny diffusers UNet prior, images 1x16x16

def _unet_model(op, noise_std=0.05):
    prior = DiffusionPrior(UNetDenoiser(tiny_unet(16, 1), SCHEDULER_CONFIG), steps=10)

    def model(y=None):
        x = pyro.sample("x", prior)
        return pyro.sample("y", GaussianMeasurement(op, x, noise_std), obs=y)

    return model, prior


def _truth():
    u = torch.linspace(-1, 1, 16, dtype=torch.float64)
    return (0.8 * torch.sin(3 * u)[:, None] * torch.cos(2 * u)[None, :])[None]


def _ops():
    shape = (1, 16, 16)
    return {
        "inpainting": Inpainting.random(shape, 0.5, generator=torch.Generator().manual_seed(0), dtype=torch.float64),
        "sr2": SuperResolution(2, shape, dtype=torch.float64),
        "blur": Blur.gaussian(shape, 1.0, dtype=torch.float64),
    }


UNET_GUIDES = {
    "ddrm": (DDRM, {}), "ddnm": (DDNM, {"travel_length": 2, "travel_repeat": 2}), "ddnm_plus": (DDNMPlus, {}),
    "dds": (DDS, {}), "diffpir": (DiffPIR, {}), "ilvr": (ILVR, {}), "score_sde": (ScoreSDE, {}),
    "ks": (KadkhodaieSimoncelli, {"max_iters": 20}), "repaint": (RePaint, {"jump_length": 2, "jump_n_sample": 2}),
}


@pytest.mark.parametrize("task", ["inpainting", "sr2", "blur"])
@pytest.mark.parametrize("name", sorted(UNET_GUIDES))
def test_tiny_unet(name, task):
    if name == "repaint" and task != "inpainting":
        pytest.skip("RePaint is mask-only")
    op = _ops()[task]
    model, prior = _unet_model(op)
    g = torch.Generator().manual_seed(0)
    y = op(_truth()) + 0.05 * torch.randn(op.out_shape, generator=g, dtype=torch.float64)
    cls, opts = UNET_GUIDES[name]
    x = cls(model, steps=10, **opts).sample(2, y=y, generator=g)
    assert x.shape == (2, 1, 16, 16) and torch.isfinite(x).all()
    x_prior = prior.sample((2,), generator=g)
    r = (op(x) - y).flatten(1).norm(dim=1).mean()
    r_prior = (op(x_prior) - y).flatten(1).norm(dim=1).mean()
    # measured ratio <= 0.23 (DDS on blur; the projections ~1e-8 to 3e-3); bound 0.4
    assert r < 0.4 * r_prior, (name, task, float(r), float(r_prior))


def test_predictive_parallel_distinct():
    pb = gmm_benchmark_problem(8, 2, seed=0)
    model = pb.model(VPSchedule.gmm_benchmark("mcgdiff"))
    out = Predictive(model, guide=DDRM(model), num_samples=6, parallel=True, return_sites=["x"])(y=pb.y)
    x = out["x"].reshape(6, 8)
    assert torch.isfinite(x).all()
    assert torch.cdist(x, x)[~torch.eye(6, dtype=torch.bool)].min() > 1e-6


def test_bad_input_errors():
    shape = (1, 16, 16)
    nolinear = CallableOperator(lambda x: x**2, shape, shape)
    model, _ = _unet_model(nolinear)
    for cls in (DDRM, DDNM, DDS, DiffPIR, ILVR, ScoreSDE, RePaint, KadkhodaieSimoncelli):
        with pytest.raises(ValueError, match="linear"):
            cls(model)
    lin_nosvd = CallableOperator(lambda x: 2.0 * x, shape, shape, linear=True)
    model, _ = _unet_model(lin_nosvd)
    for cls in (DDRM, DDNMPlus, ScoreSDE, KadkhodaieSimoncelli):
        with pytest.raises(ValueError, match="SVD"):
            cls(model)
    with pytest.raises(ValueError, match="SVD"):
        DDNM(model, plus=True)
    DDNM(model), DDS(model), ILVR(model)  # fine without an SVD
    model, _ = _unet_model(Blur.gaussian(shape, 1.0, dtype=torch.float64))
    with pytest.raises(ValueError, match="mask"):
        RePaint(model)
    RePaint(model, spectral=True)
    with pytest.raises(ValueError, match="unknown options"):
        DDRM(model, zeta=0.3)
    with pytest.raises(ValueError, match="eta"):
        DDRM(model, eta=1.5)
