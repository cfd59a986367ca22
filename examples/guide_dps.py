"""Explicit-approximation family: DPS as a Pyro guide, sampled with ``pyro.infer.Predictive``.

Task: 2x super-resolution of a held-out digit, sigma_y = 0.05 on [-1, 1].
Run:  python examples/guide_dps.py [--fast]
"""
import pyro
import torch
from pyro.infer import Predictive

from _common import fast_mode, heldout, out_dir, prior_name
from ppl_diffusion.inference.guides import DPS
from ppl_diffusion.metrics import psnr
from ppl_diffusion.models import operators
from ppl_diffusion.models.measurement import GaussianMeasurement
from ppl_diffusion.models.zoo import load_prior
from ppl_diffusion.plotting import posterior_grid

fast = fast_mode()
torch.manual_seed(0)
prior = load_prior(prior_name())
x_true = heldout(0)
A = operators.SuperResolution(2, x_true.shape)
sigma_y = 0.05


def model(y=None):
    x = pyro.sample("x", prior)                                         # diffusion prior
    return pyro.sample("y", GaussianMeasurement(A, x, sigma_y), obs=y)  # likelihood


y = A(x_true) + sigma_y * torch.randn(A.out_shape)
guide = DPS(model, steps=5 if fast else 200, zeta=1.0)
predictive = Predictive(model, guide=guide, num_samples=2 if fast else 8, parallel=True, return_sites=["x"])
x = predictive(y=y)["x"].reshape(-1, *x_true.shape)                    # (draws, C, H, W)

print(f"DPS: {x.shape[0]} draws, PSNR of the posterior mean {float(psnr(x.mean(0), x_true)):.2f} dB")
posterior_grid([dict(samples=x, truth=x_true, y=y, operator=A, label="DPS")],
               path=f"{out_dir('guide_dps')}/posterior.png")
