"""One InferenceData convention for every family (issue 16): dims ``chain, draw, channel, row, col``,
pointwise ``log_likelihood``, ``posterior_predictive`` and ``observed_data``; SMC runs as chains with
their weights kept; ``az.loo`` and ``az.plot_ppc`` run on a guide's, a kernel's (Pyro MCMC and the
vectorised draw) and an SMC result."""
import math
import warnings

import arviz as az
import matplotlib
import pyro
import pytest
import torch
from pyro.infer import MCMC

import ppl_diffusion
from ppl_diffusion import GaussianMeasurement, load_prior
from ppl_diffusion.inference.guides import DDRM
from ppl_diffusion.inference.kernels import PnPDM
from ppl_diffusion.inference.smc.mcgdiff import MCGDiff
from ppl_diffusion.models.operators import SuperResolution
from ppl_diffusion.models.zoo import heldout_images

matplotlib.use("Agg")
IMAGE = ("channel", "row", "col")
Y = ("y_channel", "y_row", "y_col")


@pytest.fixture(scope="module")
def setup():
    prior = load_prior("digits").with_options(steps=5)
    op = SuperResolution(4, (1, 16, 16))  # 4 x 4 measurement: 16 pointwise terms
    sigma = 0.1
    y = op(heldout_images("digits")[0]) + sigma * torch.randn(op.out_shape, generator=torch.Generator().manual_seed(0))

    def model(y=None):
        x = pyro.sample("x", prior)
        return pyro.sample("y", GaussianMeasurement(op, x, sigma), obs=y)

    return op, y, sigma, model


def _check(idata, op, y, sigma, chains, draws):
    post = idata.posterior["x"]
    assert post.dims == ("chain", "draw", *IMAGE) and post.shape[:2] == (chains, draws)
    ll = idata.log_likelihood["y"]
    assert ll.dims == ("chain", "draw", *Y) and ll.shape == (chains, draws, 1, 4, 4)
    assert idata.posterior_predictive["y"].dims == ("chain", "draw", *Y)
    assert idata.observed_data["y"].dims == Y
    # pointwise terms are the Gaussian log-density of each measured pixel at that draw
    x = torch.as_tensor(post.values[0, 0])
    r = (y - op(x[None])[0]) / sigma
    want = -0.5 * r**2 - math.log(sigma) - 0.5 * math.log(2 * math.pi)
    assert torch.allclose(torch.as_tensor(ll.values[0, 0]), want.double(), atol=1e-4)
    # the posterior predictive scatters around A x with the noise level
    rep = torch.as_tensor(idata.posterior_predictive["y"].values)
    mean = op(torch.as_tensor(post.values).reshape(-1, 1, 16, 16)).reshape(rep.shape)
    assert abs(float((rep - mean).std()) - sigma) < 0.35 * sigma
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loo = az.loo(idata, pointwise=True)
        assert loo.loo_i.shape == (1, 4, 4) and math.isfinite(float(loo.elpd_loo))
        az.plot_ppc(idata, num_pp_samples=min(4, chains * draws))
    matplotlib.pyplot.close("all")
    # the coords that work on one family work on all of them
    az.summary(idata, var_names=["x"], coords={"row": [8], "col": [8]}, kind="stats")


def test_guide_draws(setup):
    op, y, sigma, model = setup
    d = DDRM(model, steps=5).draw(6, y=y, generator=torch.Generator().manual_seed(1))
    idata = d.to_inference_data()
    _check(idata, op, y, sigma, 1, 6)
    # the same through the package-level converter
    assert ppl_diffusion.to_inference_data(d).posterior["x"].dims == ("chain", "draw", *IMAGE)


def test_kernel_pyro_mcmc_and_draw(setup):
    op, y, sigma, model = setup
    kernel = PnPDM(model, rho0=1.0, decay=0.5, rho_min=0.3, num_grid=3, langevin_steps=2)
    pyro.set_rng_seed(0)
    mcmc = MCMC(kernel, num_samples=4, warmup_steps=2, num_chains=1, disable_progbar=True)
    mcmc.run(y=y)
    _check(ppl_diffusion.to_inference_data(mcmc), op, y, sigma, 1, 4)
    # az.from_pyro with the documented dims gives the same posterior dims
    idata = az.from_pyro(mcmc, dims={"x": list(IMAGE)}, log_likelihood=False)
    assert idata.posterior["x"].dims == ("chain", "draw", *IMAGE)
    d = kernel.draw(8, y=y, chains=2, warmup=2, generator=torch.Generator().manual_seed(0))
    _check(d.to_inference_data(), op, y, sigma, 2, 4)


def test_smc_result_runs_as_chains_with_weights(setup):
    op, y, sigma, model = setup
    sampler = MCGDiff(model, particles=8, steps=5)
    res = sampler.run(y=y, runs=2, generator=torch.Generator().manual_seed(2))
    # without the model: posterior and weights (this raised "expected (chain, draw, *event)" before)
    bare = ppl_diffusion.to_inference_data(res)
    assert bare.posterior["x"].dims == ("chain", "draw", *IMAGE) and bare.posterior["x"].shape[:2] == (2, 8)
    lw = torch.as_tensor(bare.sample_stats["log_weight"].values)
    assert bare.sample_stats["log_weight"].dims == ("chain", "particle")
    assert torch.allclose(torch.logsumexp(lw, -1), torch.zeros(2, dtype=lw.dtype), atol=1e-9)
    idx = torch.as_tensor(bare.sample_stats["particle_index"].values)
    assert torch.allclose(torch.as_tensor(bare.posterior["x"].values[1, 3]), res.particles[1, idx[1, 3]])
    assert bare.sample_stats["log_evidence"].dims == ("chain",)
    r = az.rhat(bare, var_names=["x"])["x"].values
    assert torch.isfinite(torch.as_tensor(r)).any()  # two runs = two chains: R-hat is defined
    _check(ppl_diffusion.to_inference_data(res, model, y=y), op, y, sigma, 2, 8)
    _check(res.to_inference_data(model, y=y), op, y, sigma, 2, 8)
    # an SMC solver's Draws carry the model: the same groups without passing it
    d = sampler.draw(6, y=y, generator=torch.Generator().manual_seed(3))
    _check(d.to_inference_data(), op, y, sigma, 1, 6)
    # the former signature to_inference_data(n, generator) still works
    assert res.to_inference_data(5, torch.Generator().manual_seed(0)).posterior["x"].shape[:2] == (2, 5)
    text = repr(res)
    assert len(text) < 400 and "runs=2" in text and "tensor(" not in text
