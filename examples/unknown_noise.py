"""A model with more than one latent: an unknown noise level, inferred jointly with the image.

``sigma ~ LogNormal``, ``x ~`` the shipped digits prior, ``y = A x + sigma n`` (4x4-block
inpainting). ``Gibbs`` alternates ``x | sigma, y`` (PnP-DM, our kernel) and ``sigma | x, y`` (Pyro's
NUTS on the model with x fixed); both sites come back from ``pyro.infer.MCMC`` and ArviZ summarises
them. A solver that cannot infer sigma refuses this model and says how to fix it.
Run:  python examples/unknown_noise.py [--fast]
"""
import arviz as az
import pyro
import pyro.distributions as dist
import torch
from pyro.infer import MCMC, NUTS

from _common import fast_mode, heldout, out_dir, prior_name
from ppl_diffusion.inference.guides import DDRM
from ppl_diffusion.inference.kernels import Gibbs, PnPDM
from ppl_diffusion.metrics import psnr
from ppl_diffusion.models import operators
from ppl_diffusion.models.measurement import GaussianMeasurement
from ppl_diffusion.models.zoo import load_prior

fast = fast_mode()
torch.manual_seed(0)
pyro.set_rng_seed(0)
prior = load_prior(prior_name())
x_true = heldout(1)
A = operators.SuperResolution(2, x_true.shape)
sigma_true = 0.1


def model(y=None):
    sigma = pyro.sample("sigma", dist.LogNormal(torch.log(torch.tensor(0.05)), 1.0))   # unknown noise level
    x = pyro.sample("x", prior)                                                       # diffusion prior
    return pyro.sample("y", GaussianMeasurement(A, x, sigma), obs=y)


y = A(x_true) + sigma_true * torch.randn(A.out_shape)

try:  # never silently frozen: a solver that does not infer sigma says so
    DDRM(model)
except ValueError as e:
    print("DDRM refuses:", str(e).split(". Either")[0])

kernel = Gibbs(model, x_kernel=lambda m: PnPDM(m, rho0=2.0, decay=0.8, rho_min=0.3, num_grid=5 if fast else 20),
               theta_kernel=NUTS)
mcmc = MCMC(kernel, num_samples=3 if fast else 100, warmup_steps=2 if fast else 50, disable_progbar=fast)
mcmc.run(y=y)
s = mcmc.get_samples()
print(az.summary(az.convert_to_inference_data({"sigma": s["sigma"][None].numpy()}), kind="stats"))
print(f"true sigma {sigma_true}; posterior mean {float(s['sigma'].mean()):.3f}; "
      f"PSNR of the mean image {float(psnr(s['x'].mean(0), x_true)):.2f} dB")
torch.save({k: v for k, v in s.items()}, f"{out_dir('unknown_noise')}/samples.pt")
