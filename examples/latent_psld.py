"""Latent diffusion prior: box inpainting of a held-out digit with the shipped ``digits-latent`` prior
(an AutoencoderKL to 4x4x4 latents + a latent UNet), solved by PSLD and Latent DPS.

The model is the same as with a pixel prior: ``x = pyro.sample("x", prior)`` draws an image (latent
reverse diffusion, then the decoder). Latent solvers return images in ``draws.samples`` and their
latents in ``draws.extra["latents"]``; pixel-space solvers refuse this prior by name.
Run:  python examples/latent_psld.py [--fast]
"""
import pyro
import torch

from _common import fast_mode, heldout, out_dir
from ppl_diffusion.inference.latent import PSLD, LatentDPS
from ppl_diffusion.metrics import psnr
from ppl_diffusion.models import operators
from ppl_diffusion.models.measurement import GaussianMeasurement
from ppl_diffusion.models.zoo import list_priors, load_prior
from ppl_diffusion.plotting import posterior_grid

fast = fast_mode()
torch.manual_seed(0)
if "digits-latent" not in list_priors():
    raise SystemExit("the shipped digits-latent prior is missing; train it with python -m "
                     "ppl_diffusion.training.latent --dataset digits --out ppl_diffusion/weights/digits-latent")
prior = load_prior("digits-latent")
x_true = heldout(0, "digits-latent")
A = operators.Inpainting.box(x_true.shape, 4, 4, 8, 8)                  # hide the centre 8x8
sigma_y = 0.05


def model(y=None):
    x = pyro.sample("x", prior)                                         # latent diffusion prior on x
    return pyro.sample("y", GaussianMeasurement(A, x, sigma_y), obs=y)  # likelihood on x


y = A(x_true) + sigma_y * torch.randn(A.out_shape)
steps, n = (5, 2) if fast else (200, 16)
rows = []
for solver in (PSLD(model, steps=steps), LatentDPS(model, steps=steps)):
    draws = solver.draw(n, y=y, generator=torch.Generator().manual_seed(1))
    x = draws.samples[0]
    print(f"{solver.name}: {n} draws, PSNR of the posterior mean {float(psnr(x.mean(0), x_true)):.2f} dB, "
          f"{draws.extra['network_calls_per_sample']:.0f} network calls per draw (denoiser + decoder + encoder)")
    rows.append(dict(samples=x, truth=x_true, y=y, operator=A, label=solver.name))
posterior_grid(rows, path=f"{out_dir('latent_psld')}/posterior.png")
