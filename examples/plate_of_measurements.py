"""Several measurements in one plate: one batched run, each draw conditioned on its own measurement.

Four held-out digits, 2x super-resolution, ``with pyro.plate("images", 4)`` around the prior and the
likelihood. DDRM draws ``n`` samples per measurement in ONE reverse diffusion (one network call per
step for all ``4 n`` images); the InferenceData carries a ``measurement`` dim.
Run:  python examples/plate_of_measurements.py [--fast]
"""
import pyro
import torch

from _common import fast_mode, heldout, out_dir, prior_name
from ppl_diffusion.inference.guides import DDRM
from ppl_diffusion.metrics import psnr
from ppl_diffusion.models import operators
from ppl_diffusion.models.measurement import GaussianMeasurement
from ppl_diffusion.models.zoo import load_prior

fast = fast_mode()
torch.manual_seed(0)
prior = load_prior(prior_name())
B = 4
x_true = torch.stack([heldout(i) for i in range(B)])             # (4, C, H, W)
A = operators.SuperResolution(2, x_true.shape[1:])
sigma_y = 0.05


def model(y=None):
    with pyro.plate("images", B):
        x = pyro.sample("x", prior)
        return pyro.sample("y", GaussianMeasurement(A, x, sigma_y), obs=y)


y = A(x_true) + sigma_y * torch.randn((B,) + tuple(A.out_shape))  # (4, *out)
draws = DDRM(model, steps=5 if fast else 50).draw(2 if fast else 8, y=y, generator=torch.Generator().manual_seed(0))
x = draws.samples[0]                                             # (draws, measurement, C, H, W)
for b in range(B):
    print(f"measurement {b}: PSNR of the posterior mean {float(psnr(x[:, b].mean(0), x_true[b])):.2f} dB")
print(f"{draws.nfe_per_sample:.0f} network evaluations per draw; one batched call per step for all {x.shape[0] * B}")
idata = draws.to_inference_data()
print(dict(idata.posterior["x"].sizes))
idata.to_netcdf(f"{out_dir('plate_of_measurements')}/posterior.nc")
