"""Variational family: RED-Diff driven by ``pyro.infer.SVI`` with its own loss (one Adam step per
diffusion time of a descending sweep), here with a learned diagonal Gaussian q.

Task: random inpainting (70 % of the pixels missing), sigma_y = 0.05.
Run:  python examples/variational_red_diff.py [--fast]
"""
import pyro
import torch
from pyro.infer import SVI
from pyro.optim import ClippedAdam

from _common import fast_mode, heldout, out_dir, prior_name
from ppl_diffusion.inference.variational import REDDiff
from ppl_diffusion.metrics import psnr
from ppl_diffusion.models import operators
from ppl_diffusion.models.measurement import GaussianMeasurement
from ppl_diffusion.models.zoo import load_prior
from ppl_diffusion.plotting import posterior_grid

fast = fast_mode()
torch.manual_seed(0)
pyro.set_rng_seed(0)
prior = load_prior(prior_name())
x_true = heldout(1)
A = operators.Inpainting.random(x_true.shape, 0.7, generator=torch.Generator().manual_seed(0))
sigma_y = 0.05


def model(y=None):
    x = pyro.sample("x", prior)
    return pyro.sample("y", GaussianMeasurement(A, x, sigma_y), obs=y)


y = A(x_true) + sigma_y * torch.randn(A.out_shape)
steps = 10 if fast else 300
red = REDDiff(model, steps=steps, learn_scale=True, progress=False)
pyro.clear_param_store()
svi = SVI(model, red.guide, ClippedAdam({"lr": 0.1, "betas": (0.9, 0.99)}), loss=red.loss)
for step in range(steps):                 # the loss walks the diffusion time from t=1 down to 0
    loss = svi.step(y=y)
    if step % max(1, steps // 5) == 0:
        print(f"step {step:4d}  t={red.loss.current_time():.3f}  loss={loss:.4g}")

mu = pyro.param(red.mean_name).detach()
scale = pyro.param(red.scale_name).detach()
x = mu + scale * torch.randn((8,) + tuple(mu.shape))  # draws from the fitted q
print(f"RED-Diff: PSNR of the mean {float(psnr(mu, x_true)):.2f} dB, mean q std {float(scale.mean()):.3f}")
posterior_grid([dict(samples=x, truth=x_true, y=y, operator=A, label="RED-Diff")],
               path=f"{out_dir('variational_red_diff')}/posterior.png")
