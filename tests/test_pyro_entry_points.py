"""Pyro's own entry points on a diffusion-prior model cost what the solver costs (issue 16):
``Predictive`` with a guide makes the guide's network calls (its shape-only runs make none),
RED-Diff's ``Predictive`` draws from the fitted ``q`` at no network call, and ``Trace_ELBO`` on the
exact prior density stops at once with an error naming the cheap ways forward."""
import time

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Predictive, Trace_ELBO

from ppl_diffusion import GaussianMeasurement, load_prior
from ppl_diffusion.inference.guides import DDRM, DPS
from ppl_diffusion.inference.variational import REDDiff
from ppl_diffusion.models.operators import SuperResolution
from ppl_diffusion.models.prior import TraceLogProbError
from ppl_diffusion.models.zoo import heldout_images


@pytest.fixture(scope="module")
def setup():
    prior = load_prior("digits")  # prior.steps = 100: a full reverse diffusion is 100 calls
    op = SuperResolution(2, (1, 16, 16))
    y = op(heldout_images("digits")[0]) + 0.05 * torch.randn(op.out_shape, generator=torch.Generator().manual_seed(0))

    def model(y=None):
        x = pyro.sample("x", prior)
        return pyro.sample("y", GaussianMeasurement(op, x, 0.05), obs=y)

    return prior, op, y, model


@pytest.mark.parametrize("parallel", [True, False])
def test_predictive_with_guide_costs_the_guide(setup, parallel):
    prior, op, y, model = setup
    den = prior.denoiser
    guide = DDRM(model, steps=6)
    n = 3
    start = den.nfe
    guide.sample(n, y=y)
    own = den.nfe - start
    start = den.nfe
    out = Predictive(model, guide=guide, num_samples=n, parallel=parallel)(y=y)
    calls = den.nfe - start
    assert out["x"].shape == (n, 1, 16, 16) and out["y"].shape == (n, 1, 8, 8)
    assert out["x"].abs().sum() > 0  # real draws, not the placeholder of the shape-only runs
    # one batched run (parallel) or one run per sample (sequential): the guide's calls, tolerance one trace
    expected = own if parallel else n * own
    assert expected <= calls <= expected + guide.steps, (calls, own)
    # before the fix: + 2 guide runs + 2 full prior reverse diffusions (100 calls each)
    assert calls < prior.steps


def test_predictive_joint_theta_shapes(setup):
    """A guide that samples theta too (joint DPS): the shape-only runs give theta placeholders."""
    prior, op, y, _ = setup

    def model(y=None):
        sigma = pyro.sample("sigma", dist.LogNormal(torch.log(torch.tensor(0.05)), 0.5))
        x = pyro.sample("x", prior)
        return pyro.sample("y", GaussianMeasurement(op, x, sigma), obs=y)

    den = prior.denoiser
    start = den.nfe
    out = Predictive(model, guide=DPS(model, steps=4), num_samples=3, parallel=True)(y=y)
    assert den.nfe - start <= 8
    assert out["sigma"].shape == (3,) and out["x"].shape == (3, 1, 16, 16)


def test_red_diff_predictive_is_free_and_fast(setup):
    prior, op, y, model = setup
    red = REDDiff(model, steps=3, progress=False, name="red_pred_test")
    red.run(y=y)
    den = prior.denoiser
    start, t0 = den.nfe, time.perf_counter()
    out = Predictive(model, guide=red.guide, num_samples=16)(y=y)
    seconds = time.perf_counter() - t0
    assert den.nfe == start  # draws from the fitted q: no network call
    assert seconds < 1.0
    assert torch.allclose(out["x"][0], red.estimate())


def test_prior_predictive_still_samples_the_prior(setup):
    prior, op, y, model = setup
    den = prior.denoiser
    small = prior.with_options(steps=3)

    def m(y=None):
        x = pyro.sample("x", small)
        return pyro.sample("y", GaussianMeasurement(op, x, 0.05), obs=y)

    start = den.nfe
    out = Predictive(m, num_samples=2, parallel=True)()
    assert den.nfe - start == 3  # the real run only (one batched reverse diffusion)
    assert out["x"].std() > 0.1


def test_trace_elbo_stops_at_once_with_a_way_forward(setup):
    prior, op, y, model = setup
    red = REDDiff(model, steps=3, progress=False, name="red_elbo_test")
    svi = SVI(model, red.guide, pyro.optim.Adam({"lr": 0.01}), loss=Trace_ELBO())
    t0 = time.perf_counter()
    with pytest.raises(TraceLogProbError, match="loss=red.loss") as err:
        svi.step(y=y)
    assert time.perf_counter() - t0 < 2.0
    assert "prior.elbo" in str(err.value) and "trace_log_prob='ode'" in str(err.value)
    # direct calls still give the exact ODE density
    small = prior.with_options(ode_steps=2, hutchinson_probes=1)
    assert torch.isfinite(small.log_prob(torch.zeros(1, 1, 16, 16))).all()


def test_trace_elbo_with_the_elbo_opt_in(setup):
    prior, op, y, _ = setup
    p = prior.with_options(trace_log_prob="elbo")

    def model(y=None):
        x = pyro.sample("x", p)
        return pyro.sample("y", GaussianMeasurement(op, x, 0.05), obs=y)

    den = prior.denoiser
    red = REDDiff(model, steps=3, progress=False, name="red_elbo_opt_in")
    svi = SVI(model, red.guide, pyro.optim.Adam({"lr": 0.01}), loss=Trace_ELBO())
    start = den.nfe
    loss = svi.step(y=y)
    assert den.nfe - start == 1  # one network call: the denoising bound of one point
    assert torch.isfinite(torch.tensor(loss))
