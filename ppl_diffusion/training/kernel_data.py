"""Our generator of blur kernels (the training data of the shipped ``kernels`` prior).

Two families, drawn half and half, on a ``size x size`` grid (default 7), each kernel nonnegative and
summing to one:

* **motion**: a random camera-shake trajectory, a random walk with momentum of 32-64 sub-pixel points
  (each step turns the direction by a Gaussian angle of random spread, the "intensity"), centred,
  scaled to a random length of 1 to ``size - 1`` pixels and splatted bilinearly on the grid;
* **Gaussian**: an anisotropic Gaussian with standard deviations in [0.3, 1.5] px and a random angle.

The diffusion model is trained on BlindDPS's representation (Chung et al., CVPR 2023, official
code): ``kappa = 2 k / max(k) - 1`` in [-1, 1], zero-padded (``kappa = -1``) to the next even size
so that the UNet can downsample once; :func:`kappa_to_kernel` maps back with
``k = ((kappa + 1) / 2) / sum((kappa + 1) / 2)`` on the cropped grid.

Only torch is imported (the training package runs on a bare machine).
"""
from __future__ import annotations

import math

import torch

__all__ = ["KERNEL_SIZE", "KERNEL_FAMILIES", "motion_kernels", "gaussian_kernels", "random_kernels",
           "kernel_to_kappa", "kappa_to_kernel", "padded_size"]

KERNEL_SIZE = 7
KERNEL_FAMILIES = ("motion", "gaussian", "mixed")


def padded_size(size: int) -> int:
    """The (even) grid of the diffusion model for kernels of ``size``: ``size`` rounded up to even."""
    return int(size) + (int(size) % 2)


def _splat(px: torch.Tensor, py: torch.Tensor, w: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear splatting of weighted points ``(n, P)`` (pixel coordinates) on ``(n, size, size)``."""
    n = px.shape[0]
    x0, y0 = torch.floor(px), torch.floor(py)
    fx, fy = px - x0, py - y0
    out = torch.zeros(n, size * size, dtype=px.dtype)
    for dx, dy, ww in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
        xi, yi = (x0 + dx).long(), (y0 + dy).long()
        inside = (xi >= 0) & (xi < size) & (yi >= 0) & (yi < size)
        idx = (yi.clamp(0, size - 1) * size + xi.clamp(0, size - 1))
        out.scatter_add_(1, idx, torch.where(inside, ww * w, torch.zeros_like(ww)))
    return out.reshape(n, size, size)


def motion_kernels(n: int, size: int = KERNEL_SIZE, generator: torch.Generator | None = None,
                   dtype=torch.float32) -> torch.Tensor:
    """``n`` random motion-blur kernels ``(n, size, size)`` (see the module docstring)."""
    P = 64
    g = generator
    f64 = torch.float64
    npts = torch.randint(32, 65, (n, 1), generator=g)                       # points per trajectory
    active = (torch.arange(P).unsqueeze(0) < npts).to(f64)
    spread = 0.05 + 0.6 * torch.rand(n, 1, generator=g, dtype=f64)         # turning "intensity"
    turn = spread * torch.randn(n, P, generator=g, dtype=f64)
    # momentum: the turning rate itself is smoothed, so trajectories curve instead of jittering
    rate = torch.cumsum(turn, 1) * 0.3
    angle = 2 * math.pi * torch.rand(n, 1, generator=g, dtype=f64) + torch.cumsum(rate, 1) / P * 4
    dx, dy = torch.cos(angle) * active, torch.sin(angle) * active
    x, y = torch.cumsum(dx, 1), torch.cumsum(dy, 1)
    w = active / active.sum(1, keepdim=True)
    x = x - (w * x).sum(1, keepdim=True)
    y = y - (w * y).sum(1, keepdim=True)
    ext = torch.maximum((x.abs() * active).amax(1, keepdim=True), (y.abs() * active).amax(1, keepdim=True))
    length = 1.0 + (size - 2.0) * torch.rand(n, 1, generator=g, dtype=f64)  # half-extent in [0.5, (size-1)/2]
    scale = 0.5 * length / ext.clamp(min=1e-9)
    c = (size - 1) / 2
    jitter = (torch.rand(n, 2, generator=g, dtype=f64) - 0.5) * 0.5
    px = (c + jitter[:, :1] + x * scale).clamp(0, size - 1)
    py = (c + jitter[:, 1:] + y * scale).clamp(0, size - 1)
    k = _splat(px, py, w, size)
    return (k / k.sum((-2, -1), keepdim=True)).to(dtype)


def gaussian_kernels(n: int, size: int = KERNEL_SIZE, generator: torch.Generator | None = None,
                     dtype=torch.float32, sigma_range=(0.3, 1.5)) -> torch.Tensor:
    """``n`` anisotropic Gaussian kernels ``(n, size, size)``: stds uniform in ``sigma_range``, angle uniform."""
    g = generator
    f64 = torch.float64
    lo, hi = sigma_range
    s = lo + (hi - lo) * torch.rand(n, 2, generator=g, dtype=f64)
    theta = math.pi * torch.rand(n, generator=g, dtype=f64)
    return anisotropic_gaussian(s[:, 0], s[:, 1], theta, size).to(dtype)


def anisotropic_gaussian(sigma_u: torch.Tensor, sigma_v: torch.Tensor, theta: torch.Tensor,
                         size: int = KERNEL_SIZE) -> torch.Tensor:
    """Normalised Gaussian kernels ``(*batch, size, size)`` with stds ``sigma_u``, ``sigma_v`` along axes
    rotated by ``theta`` (radians); differentiable in all three (batched alike)."""
    sigma_u, sigma_v, theta = torch.broadcast_tensors(torch.as_tensor(sigma_u), torch.as_tensor(sigma_v),
                                                      torch.as_tensor(theta))
    dtype = sigma_u.dtype if sigma_u.is_floating_point() else torch.float64
    t = torch.arange(int(size), dtype=dtype, device=sigma_u.device) - (int(size) - 1) / 2
    yy, xx = torch.meshgrid(t, t, indexing="ij")
    c, s_ = torch.cos(theta)[..., None, None], torch.sin(theta)[..., None, None]
    u = c * xx + s_ * yy
    v = -s_ * xx + c * yy
    q = (u / sigma_u[..., None, None]) ** 2 + (v / sigma_v[..., None, None]) ** 2
    k = torch.exp(-0.5 * q)
    return k / k.sum((-2, -1), keepdim=True)


def random_kernels(n: int, size: int = KERNEL_SIZE, generator: torch.Generator | None = None,
                   family: str = "mixed", dtype=torch.float32) -> torch.Tensor:
    """``n`` kernels of ``family`` (``"motion"``, ``"gaussian"`` or ``"mixed"``: each 50 % / 50 %)."""
    if family not in KERNEL_FAMILIES:
        raise ValueError(f"family must be one of {KERNEL_FAMILIES}, got {family!r}")
    if family == "motion":
        return motion_kernels(n, size, generator, dtype)
    if family == "gaussian":
        return gaussian_kernels(n, size, generator, dtype)
    m = motion_kernels(n, size, generator, dtype)
    ga = gaussian_kernels(n, size, generator, dtype)
    pick = torch.rand(n, generator=generator) < 0.5
    return torch.where(pick[:, None, None], m, ga)


def kernel_to_kappa(k: torch.Tensor, padded: int | None = None) -> torch.Tensor:
    """``kappa = 2 k / max(k) - 1`` per kernel, zero-padded (kappa = -1) at the bottom / right to ``padded``."""
    kappa = 2 * k / k.amax((-2, -1), keepdim=True) - 1
    size = k.shape[-1]
    padded = padded_size(size) if padded is None else int(padded)
    if padded > size:
        kappa = torch.nn.functional.pad(kappa, (0, padded - size, 0, padded - size), value=-1.0)
    return kappa


def kappa_to_kernel(kappa: torch.Tensor, size: int) -> torch.Tensor:
    """Inverse map: crop to ``size``, clip to [-1, 1], ``k = ((kappa + 1) / 2) / sum`` per kernel
    (a uniform kernel where all of it is -1)."""
    kappa = kappa[..., :size, :size].clamp(-1, 1)
    w = (kappa + 1) / 2
    tot = w.sum((-2, -1), keepdim=True)
    uniform = torch.full_like(w, 1.0 / (size * size))
    return torch.where(tot > 1e-12, w / tot.clamp(min=1e-12), uniform)


class KernelSource:
    """Training source of the ``kernels`` data set: fresh kernels every batch (the generator is the
    data set), in the padded kappa representation ``(B, 1, p, p)``; ``train`` / ``test`` are fixed
    draws (seeds 1 and 2) for the loss and sample statistics of ``training.json``."""

    name = "kernels"

    def __init__(self, device, size: int = KERNEL_SIZE, family: str = "mixed", num_fixed: int = 512):
        self.size, self.family, self.device = int(size), family, device
        self.train = self._draw(num_fixed, torch.Generator().manual_seed(1)).to(device)
        self.test = self._draw(num_fixed, torch.Generator().manual_seed(2)).to(device)
        self.description = (f"{size}x{size} blur kernels from ppl_diffusion.training.kernel_data ({family}: motion "
                            "random walks with momentum, 32-64 points, bilinear splat; anisotropic Gaussians, "
                            "std 0.3-1.5 px), kappa = 2k/max(k) - 1 padded with -1 to "
                            f"{padded_size(size)}x{padded_size(size)}; a fresh batch every step")
        self.split_note = "generated on the fly (fixed draws: seed 1 train statistics, seed 2 held out)"

    def _draw(self, n: int, g: torch.Generator) -> torch.Tensor:
        return kernel_to_kappa(random_kernels(n, self.size, g, self.family)).unsqueeze(1)

    def sample(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        # the training generator may live on another device: draw a CPU seed from it
        seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
        return self._draw(batch, torch.Generator().manual_seed(seed)).to(self.device)
