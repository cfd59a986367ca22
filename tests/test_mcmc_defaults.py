"""MCMC defaults that do not mislead (issue 16): PnP-DM warns when its annealing of rho runs past
the warm-up, its draw() defaults end the annealing inside the warm-up and keep >= 4 draws per chain
(R-hat / ESS defined), and the demo's PnP-DM settings satisfy both."""
import math
import warnings

import pyro
import pytest
import torch
from pyro.infer import MCMC

from ppl_diffusion import GaussianMeasurement, load_prior
from ppl_diffusion.inference.kernels import PnPDM
from ppl_diffusion.inference.kernels.pnpdm import AnnealingWarning
from ppl_diffusion.models.operators import SuperResolution


@pytest.fixture(scope="module")
def model():
    prior = load_prior("digits")
    op = SuperResolution(4, (1, 16, 16))

    def model(y=None):
        x = pyro.sample("x", prior)
        return pyro.sample("y", GaussianMeasurement(op, x, 0.1), obs=y)

    return model, torch.zeros(op.out_shape)


def test_annealing_steps_closed_form(model):
    m, _ = model
    k = PnPDM(m, rho0=2.0, decay=0.8, rho_min=0.3)
    assert k.annealing_steps == 9 == math.ceil(math.log(0.3 / 2.0) / math.log(0.8))
    assert k.rho(8) > 0.3 and k.rho(9) == 0.3
    assert PnPDM(m, rho0=0.3, rho_min=0.3).annealing_steps == 0
    assert PnPDM(m).annealing_steps == 34  # official defaults: rho0 = 10, decay 0.9, rho_min 0.3


def test_pyro_mcmc_warns_when_warmup_ends_before_annealing(model):
    m, y = model
    kernel = PnPDM(m, rho0=2.0, decay=0.8, rho_min=0.3, num_grid=3, langevin_steps=1)
    with pytest.warns(AnnealingWarning, match="warmup_steps .*>= 9"):
        MCMC(kernel, num_samples=1, warmup_steps=5, disable_progbar=True).run(y=y)
    with warnings.catch_warnings():
        warnings.simplefilter("error", AnnealingWarning)
        MCMC(kernel, num_samples=1, warmup_steps=9, disable_progbar=True).run(y=y)


def test_draw_defaults(model):
    m, y = model
    kernel = PnPDM(m, rho0=2.0, decay=0.5, rho_min=0.3, num_grid=3, langevin_steps=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", AnnealingWarning)
        d = kernel.draw(8, y=y, generator=torch.Generator().manual_seed(0))
    assert d.samples.shape[:2] == (2, 4)  # >= 4 draws per chain by default
    with pytest.warns(AnnealingWarning):
        kernel.draw(4, y=y, warmup=1, chains=1)


def test_demo_pnpdm_settings():
    from ppl_diffusion.demo import demo_config

    cfg = demo_config()
    opts = dict(cfg["phase"]["pnpdm"])
    per_chain = -(-cfg["samples"] // opts["chains"])
    assert per_chain >= 4
    k = math.ceil(math.log(opts["rho_min"] / opts["rho0"]) / math.log(opts["decay"]))
    assert opts["warmup"] >= k
