"""RED-Diff's prior weight (issue 16): ``paper_balance="auto"`` applies the paper's balance
``lam * m / (d sigma_y^2)`` where the noise level is known, and leaves ``lam`` otherwise."""
import pyro
import pyro.distributions as dist
import pytest
import torch

from ppl_diffusion import GaussianMeasurement, load_prior
from ppl_diffusion.inference.problem import Problem
from ppl_diffusion.inference.solver import OptionError
from ppl_diffusion.inference.variational import REDDiff
from ppl_diffusion.methods import METHOD_DEFAULTS
from ppl_diffusion.models.operators import SuperResolution


@pytest.fixture(scope="module")
def parts():
    return load_prior("digits"), SuperResolution(2, (1, 16, 16))


def test_auto_balance_known_noise(parts):
    prior, op = parts

    def model(y=None):
        x = pyro.sample("x", prior)
        return pyro.sample("y", GaussianMeasurement(op, x, 0.05), obs=y)

    y = torch.zeros(op.out_shape)
    problem = Problem.from_model(model, y=y)
    red = REDDiff(model, paper_balance="auto", progress=False)
    assert red.lam_effective(problem) == pytest.approx(0.25 * 64 / (256 * 0.05**2))  # 25: 100x lam
    assert REDDiff(model, progress=False).lam_effective(problem) == 0.25
    assert METHOD_DEFAULTS["red_diff"]["paper_balance"] == "auto"
    with pytest.raises(OptionError, match="paper_balance"):
        REDDiff(model, paper_balance="yes")


def test_auto_balance_unknown_noise_keeps_lam(parts):
    prior, op = parts

    def model(y=None):
        sigma = pyro.sample("sigma", dist.LogNormal(-3.0, 0.5))
        x = pyro.sample("x", prior)
        return pyro.sample("y", GaussianMeasurement(op, x, sigma), obs=y)

    red = REDDiff(model, paper_balance="auto", progress=False)  # True would refuse this model
    problem = Problem.from_model(model, y=torch.zeros(op.out_shape))
    assert red.lam_effective(problem) == 0.25
    with pytest.raises(OptionError, match="known noise level"):
        REDDiff(model, paper_balance=True)
