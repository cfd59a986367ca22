"""MCMC family: the PnP-DM split-Gibbs kernel in ``pyro.infer.MCMC``, diagnosed with ArviZ.

Task: Gaussian deblurring (sigma = 1 px), sigma_y = 0.05.
Run:  python examples/mcmc_pnpdm.py [--fast]
"""
import arviz as az
import pyro
import torch
from pyro.infer import MCMC

from _common import fast_mode, heldout, out_dir, prior_name
from ppl_diffusion.diagnostics import rhat, to_inference_data
from ppl_diffusion.inference.kernels import PnPDM
from ppl_diffusion.metrics import psnr
from ppl_diffusion.models import operators
from ppl_diffusion.models.measurement import GaussianMeasurement
from ppl_diffusion.models.zoo import load_prior
from ppl_diffusion.plotting import posterior_grid

fast = fast_mode()
torch.manual_seed(0)
pyro.set_rng_seed(0)
prior = load_prior(prior_name())
x_true = heldout(2)
A = operators.Blur.gaussian(x_true.shape, 1.0)
sigma_y = 0.05


def model(y=None):
    x = pyro.sample("x", prior)
    return pyro.sample("y", GaussianMeasurement(A, x, sigma_y), obs=y)


y = A(x_true) + sigma_y * torch.randn(A.out_shape)
kernel = PnPDM(model, rho0=2.0, decay=0.8, rho_min=0.3, num_grid=10 if fast else 40)
mcmc = MCMC(kernel, num_samples=2 if fast else 20, warmup_steps=1 if fast else 10, num_chains=1,
            disable_progbar=fast)
mcmc.run(y=y)
x = mcmc.get_samples()["x"]                                   # (draws, C, H, W)
idata = az.from_pyro(mcmc) if not fast else to_inference_data(x[None])
print(az.summary(idata.posterior["x"].isel(row=slice(7, 9), col=slice(7, 9)) if "row" in idata.posterior["x"].dims
                 else idata, kind="stats").head())
print(f"PnP-DM: {x.shape[0]} draws, PSNR of the mean {float(psnr(x.mean(0), x_true)):.2f} dB")

# several chains at once: vectorised (one batched network call per step for all chains)
res = kernel.run_chains(y=y, num_chains=2 if fast else 4, num_samples=2 if fast else 10, warmup_steps=1 if fast else 10)
r = rhat(res.samples)
print(f"vectorised chains {tuple(res.samples.shape)}; pixel R-hat median {float(r.median()):.3f}")
posterior_grid([dict(samples=res.flat(), truth=x_true, y=y, operator=A, label="PnP-DM")],
               path=f"{out_dir('mcmc_pnpdm')}/posterior.png")
res.to_inference_data().to_netcdf(f"{out_dir('mcmc_pnpdm')}/posterior.nc")
