"""DeepInverse's DPS, DDRM and DiffPIR against ours, side by side in one run, on the SAME denoiser.

Our ``UNetDenoiser`` (the shipped ``digits`` prior, else a tiny random UNet at seed 0) is wrapped as a
deepinv denoiser ``D(x, sigma)`` (:class:`DeepinvDenoiser`, exactly ``denoiser.denoise_ve``), so both
sides call the same network on the same inputs; same operator (random inpainting, 50 % missing, the
same mask), same measurement noise (sigma_y = 0.05 on [-1, 1]), same NFE (counted on both sides).
Reported: median wall time over ``--repeats`` interleaved runs, time ratio deepinv/ours pair by pair,
PSNR / SSIM of the sample mean against the truth.

``deepinv`` (optional group ``peers``) is installed with ``pip install deepinv --no-deps`` plus its
light dependencies (einops, natsort, torchmetrics, lightning-utilities): its ``torchvision``
requirement would otherwise replace torch 2.13. deepinv imports torchvision at import time; the only
torchvision wheel for torch 2.13 on PyPI is a CUDA build whose C ops cannot load with CPU torch, so
it is installed OUTSIDE site-packages (``pip install torchvision==0.28.0 --no-deps --target
$PPL_DIFFUSION_PEERS_SITE``, default ``~/.cache/ppl_diffusion/peers-site``; in site-packages it
breaks ``import diffusers``) and :func:`import_deepinv` puts it on ``sys.path`` after declaring the
two operator schemas (``torchvision::nms``/``qnms``) its meta registrations expect. No torchvision
op is used by the solvers benchmarked here.

    python benchmarks/peers.py [--steps 50] [--n 4] [--repeats 3]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import pyro
import torch

from . import image_denoiser, results_path, set_threads

__all__ = ["import_deepinv", "DeepinvDenoiser", "main", "run_pair", "setup"]

PEERS_SITE = os.environ.get("PPL_DIFFUSION_PEERS_SITE",
                            os.path.join(os.path.expanduser("~"), ".cache", "ppl_diffusion", "peers-site"))


def import_deepinv():
    """Import ``deepinv`` (see the module docstring for the torchvision arrangement); ImportError if absent."""
    if "deepinv" in sys.modules:
        return sys.modules["deepinv"]
    import importlib.util

    if importlib.util.find_spec("deepinv") is None:
        raise ImportError("deepinv is not installed (pip install deepinv --no-deps; see ppl_diffusion.bench.peers)")
    if importlib.util.find_spec("torchvision") is None and os.path.isdir(PEERS_SITE):
        sys.path.append(PEERS_SITE)
    if "torchvision" not in sys.modules:
        for name in ("nms", "qnms"):
            try:
                torch.library.define(f"torchvision::{name}",
                                     "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
            except RuntimeError:  # already defined (real torchvision ops loaded)
                pass
    import deepinv

    return deepinv


class DeepinvDenoiser(torch.nn.Module):
    """Our denoiser in deepinv's convention ``D(x, sigma)`` with ``x = x0 + sigma * n``.

    ``scale="pm1"``: images in [-1, 1] (our units): ``D = denoiser.denoise_ve(x, sigma)``.
    ``scale="01"``: images in [0, 1] (DiffPIR's convention): ``D = (denoise_ve(2x - 1, 2 sigma) + 1) / 2``.
    ``calls`` counts network evaluations (batched calls)."""

    def __init__(self, denoiser, scale: str = "pm1"):
        super().__init__()
        if scale not in ("pm1", "01"):
            raise ValueError(f"scale must be 'pm1' or '01', got {scale!r}")
        self.den, self.scale, self.calls = denoiser, scale, 0

    def forward(self, x, sigma, *args, **kwargs):
        self.calls += 1
        rho = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).flatten()
        rho = rho[0] if rho.numel() == 1 or bool((rho == rho[0]).all()) else rho.reshape((-1,) + (1,) * (x.dim() - 1))
        if self.scale == "01":
            return (self.den.denoise_ve(2 * x - 1, 2 * rho) + 1) / 2
        return self.den.denoise_ve(x, rho)


def setup(seed: int = 0, noise_std: float = 0.05):
    """``(model, den, op, mask, x_true, y, label)``: random inpainting (50 % missing) on 1x16x16, float32."""
    from ..models import DiffusionPrior, GaussianMeasurement
    from ..models.operators import Inpainting
    from . import heldout

    den, label = image_denoiser()
    shape = tuple(den.event_shape)
    g = torch.Generator().manual_seed(seed)
    op = Inpainting.random(shape, 0.5, generator=g, dtype=torch.float32)
    mask = op(torch.ones(shape)).reshape(shape)
    x_true = heldout(1)[0][0].reshape(shape)
    y = op(x_true) + noise_std * torch.randn(op.out_shape, generator=g)
    prior = DiffusionPrior(den, steps=10)

    def model(y=None):
        x = pyro.sample("x", prior)
        return pyro.sample("y", GaussianMeasurement(op, x, noise_std), obs=y)

    return model, den, op, mask, x_true, y, label


def _ours(method, model, y, n, steps, seed):
    from ..inference.guides import DDRM, DPS, DiffPIR

    g = torch.Generator().manual_seed(seed)
    if method == "dps":
        guide = DPS(model, steps=steps, eta=1.0, zeta=1.0)
    elif method == "ddrm":
        guide = DDRM(model, steps=steps, eta=0.85, eta_b=1.0)
    else:
        guide = DiffPIR(model, steps=steps, lam=1.75, zeta=0.3)
    x = guide.sample(n, y=y, generator=g)
    return x, guide.last_nfe


def _theirs(method, dinv, den, mask, y, n, steps, seed, noise_std=0.05):
    """deepinv's solver with our wrapped denoiser; returns ``(samples in [-1, 1], NFE)``."""
    from ..schedules import time_grid

    torch.manual_seed(seed)
    shape = (n,) + tuple(mask.shape)
    yb = y.reshape(mask.shape).expand(shape).contiguous()
    mask_b = mask.expand(shape).contiguous()
    if method == "diffpir":
        D = DeepinvDenoiser(den, "01")
        phys = dinv.physics.Inpainting(img_size=tuple(mask.shape), mask=mask,
                                       noise_model=dinv.physics.GaussianNoise(sigma=noise_std / 2))
        solver = dinv.sampling.DiffPIR(D, data_fidelity=dinv.optim.data_fidelity.L2(), sigma=noise_std / 2,
                                       max_iter=steps, zeta=0.3, lambda_=7.0)
        out = 2 * solver((yb + mask_b) / 2, phys) - 1
        return out, D.calls
    D = DeepinvDenoiser(den, "pm1")
    phys = dinv.physics.Inpainting(img_size=tuple(mask.shape), mask=mask,
                                   noise_model=dinv.physics.GaussianNoise(sigma=noise_std))
    if method == "ddrm":
        sch = den.schedule
        t = time_grid(sch, steps, "uniform")[:-1]
        sigmas = (sch.sigma(t) / sch.alpha(t)).numpy()  # our DDRM grid, in VE noise levels
        solver = dinv.sampling.DDRM(D, sigmas=sigmas, eta=0.85, etab=1.0)
        with torch.no_grad():
            return solver(yb, phys), D.calls
    solver = dinv.sampling.DPS(D, num_steps=steps + 1, weight=1.0, dtype=torch.float32,
                               rng=torch.Generator().manual_seed(seed))
    return solver(yb, phys), D.calls


def run_pair(method, setup_out, dinv, n=4, steps=50, repeats=3, seed=0):
    """One row: timings (median of interleaved runs), NFE, PSNR / SSIM of the sample mean."""
    from ..metrics import psnr, ssim

    model, den, op, mask, x_true, y, label = setup_out
    to, tt = [], []
    xo = xt = None
    for k in range(repeats + 1):
        t0 = time.perf_counter()
        xo, nfe_o = _ours(method, model, y, n, steps, seed + k)
        t1 = time.perf_counter()
        xt, nfe_t = _theirs(method, dinv, den, mask, y, n, steps, seed + k)
        t2 = time.perf_counter()
        if k:  # first pair is warm-up
            to.append(t1 - t0)
            tt.append(t2 - t1)
    to.sort()
    tt.sort()
    t_o, t_t = to[len(to) // 2], tt[len(tt) // 2]
    xo, xt = xo.detach().reshape((n,) + x_true.shape), xt.detach().reshape((n,) + x_true.shape)

    def q(x):
        m = x.mean(0)
        return float(psnr(m, x_true)), float(ssim(m[None], x_true[None]).mean()), \
            float((op(x) - y).flatten(1).norm(dim=1).mean())

    return dict(method=method, nfe_ours=nfe_o, nfe_theirs=nfe_t, t_ours=t_o, t_theirs=t_t,
                ours=q(xo), theirs=q(xt))


def table(rows) -> str:
    lines = ["| method | NFE ours / deepinv | ours (s) | deepinv (s) | time ratio deepinv/ours | "
             "PSNR ours / deepinv | SSIM ours / deepinv | residual ‖y-A x‖ ours / deepinv |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        o, t = r["ours"], r["theirs"]
        lines.append(f"| {r['method']} | {r['nfe_ours']} / {r['nfe_theirs']} | {r['t_ours']:.3f} | {r['t_theirs']:.3f} | "
                     f"{r['t_theirs'] / r['t_ours']:.2f} | {o[0]:.2f} / {t[0]:.2f} | {o[1]:.3f} / {t[1]:.3f} | "
                     f"{o[2]:.3f} / {t[2]:.3f} |")
    return "\n".join(lines)


NOTES = """What differs between the implementations (read from deepinv 0.5.0's `sampling/diffusion.py`,
`diffusion_sde.py`, `noisy_datafidelity.py`):

- **DPS**: deepinv integrates the VP reverse SDE (beta 0.1..20, the continuous limit of our DDPM
  linear schedule) with its `DDPMSolver` on `linspace(1, 0, NFE+1)` in float64 state, clips the
  denoised estimate to [-1, 1] and adds `weight * grad ||y - A D(x)||` inside the SDE drift (scaled by
  the solver step), whereas ours takes the DDPM (eta = 1) step on our discrete-time grid and then
  subtracts `zeta * grad ||y - A x0_hat||` (the official DPS code). Same NFE and one VJP per step on
  both sides, so times are comparable; samples are not identical.
- **DDRM**: deepinv gets our time grid as VE noise levels (`sigmas = sigma(t)/alpha(t)`), works in VE
  variables throughout, divides every fresh noise draw by sqrt(2) (`torch.randn_like(x) / np.sqrt(2.0)`,
  a deepinv particularity absent from the paper and the official code), derives the spectral update
  with boolean-mask indexing (several full-size temporaries per step), and outputs the last denoised
  estimate; ours follows the official `efficient_generalized_steps` with `torch.where`.
- **DiffPIR**: deepinv runs in [0, 1] pixel units (the wrapper maps to ours: `D01(x, s) = (D(2x-1, 2s)+1)/2`),
  uses its own quadratic time sequence `sqrt(linspace(0, 1000^2, NFE))` on the 1000-step table (ours:
  our uniform grid), starts from `A^T y` plus noise rather than pure noise, clips x0 to [-1, 1], and
  skips the data step at the last iteration. lambda = 7 in [0, 1] units equals our lam = 1.75 in
  [-1, 1] units (same `rho_t`); zeta = 0.3 on both sides.

With a random (untrained) UNet the PSNR/SSIM compare the solvers' data consistency, not image quality;
the residual column is the per-sample mean of ||y - A x||. GMM SW comparison against deepinv: not done."""


def main(argv=None):
    p = argparse.ArgumentParser(prog="ppl-diffusion benchmark peers", description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--n", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--methods", default="dps,ddrm,diffpir")
    p.add_argument("--out", default=results_path("peers"))
    a = p.parse_args(argv)
    set_threads()
    dinv = import_deepinv()
    s = setup(a.seed)
    rows = [run_pair(m, s, dinv, a.n, a.steps, a.repeats, a.seed) for m in a.methods.split(",")]
    body = (f"deepinv {dinv.__version__}. Denoiser: {s[-1]}; image: first held-out digit; random inpainting "
            f"(50 % missing) 1x16x16, sigma_y = 0.05, {a.n} samples per run, seeds {a.seed}..{a.seed + a.repeats}, "
            f"median of {a.repeats} interleaved runs after one warm-up.\n\n" + table(rows))
    cmd = ("python benchmarks/peers.py " + " ".join(argv or [])).strip()
    from .overhead import write_table_safe

    text = write_table_safe(a.out, "DeepInverse vs ppl_diffusion (same denoiser, operator, noise, NFE)", cmd, body, NOTES)
    print(text)
    return rows


if __name__ == "__main__":  # pragma: no cover
    main()
