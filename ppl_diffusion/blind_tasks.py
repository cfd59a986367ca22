"""Blind deblurring as a task of ``ppl-diffusion demo`` and ``ppl-diffusion solve``: the image is
blurred (circularly) by an UNKNOWN 7x7 kernel, and a blind solver infers the kernel with the image.

The model is the one of ``docs/blind.md``::

    k = pyro.sample("k", kernel_prior)        # the shipped ``kernels`` prior: 7x7 kernels on the simplex
    x = pyro.sample("x", image_prior)
    y = pyro.sample("y", GaussianMeasurement(KernelBlur(k, shape), x, sigma_y), obs=y)

The true kernel of a simulated measurement comes from our kernel generator
(:func:`ppl_diffusion.training.kernel_data.random_kernels`: motion or anisotropic Gaussian, seeded),
or from a ``.npy`` file. :class:`BlindDeblur` holds the task's settings and does what the demo and the
CLI need: the model, the measurement, the log-likelihood of paired ``(x, k)`` draws and the kernel
metrics (MSE of the posterior-mean kernel, the true kernel's rank among the draws).
"""
from __future__ import annotations

from pathlib import Path

import torch

__all__ = ["BLIND_TASKS", "BLIND_METHODS", "BlindDeblur", "true_kernel", "check_blind_method", "kernel_metrics",
           "add_true_kernel"]

#: the blind solvers of the registry (they infer the operator parameter with the image)
BLIND_METHODS = ("blind_dps", "gibbs_ddrm", "blind_red_diff")

#: task -> description (the ``--op-args`` it takes)
BLIND_TASKS = {
    "blind_deblur": "blind deblurring: circular blur by an unknown 7x7 kernel k with the shipped 'kernels' prior "
                    "on k; --op-args family=mixed (true kernel from our generator: motion, gaussian or mixed), "
                    "kernel_seed=0, kernel=K.npy (a 7x7 true kernel instead), kernel_prior=kernels",
}

_FAMILIES = ("motion", "gaussian", "mixed")


def true_kernel(family: str = "mixed", seed: int = 0, size: int = 7) -> torch.Tensor:
    """A ``(size, size)`` float32 kernel on the simplex from our generator, seeded."""
    from .training.kernel_data import random_kernels

    if family not in _FAMILIES:
        raise ValueError(f"blind_deblur: family must be one of {', '.join(_FAMILIES)}, got {family!r}")
    return random_kernels(1, size, torch.Generator().manual_seed(int(seed)), family)[0]


def check_blind_method(key: str, blind: bool) -> None:
    """ValueError unless a blind task gets a blind solver and a known-operator task a non-blind one."""
    if blind and key not in BLIND_METHODS:
        raise ValueError(f"--task blind_deblur needs a blind solver (the kernel is unknown): --method "
                         f"{' / '.join(BLIND_METHODS)}; {key!r} needs the operator known (use --operator blur)")
    if not blind and key in BLIND_METHODS:
        raise ValueError(f"--method {key} infers an unknown operator: use --task blind_deblur (a blur by an "
                         "unknown 7x7 kernel) instead of --operator")


def kernel_metrics(kernels: torch.Tensor, k_true: torch.Tensor, prior_mean: torch.Tensor | None = None) -> dict:
    """``kernel_mse``: mean squared error of the posterior-mean kernel; ``kernel_rank``: the fraction of
    draws farther (Frobenius) from the draws' mean than the true kernel (about 0.5 when the true kernel
    looks like a draw, 1 when it sits closer than every draw, 0 when outside all); with ``prior_mean``,
    ``kernel_mse_prior_mean``: the MSE of the kernel prior's mean (the baseline without data)."""
    k = kernels.detach().to(torch.float64).reshape((-1,) + tuple(k_true.shape[-2:]))
    kt = k_true.detach().to(torch.float64)
    km = k.mean(0)
    dist = ((k - km) ** 2).sum((-2, -1))
    out = {"kernel_mse": float(((km - kt) ** 2).mean()),
           "kernel_rank": float((dist > ((kt - km) ** 2).sum()).double().mean())}
    if prior_mean is not None:
        out["kernel_mse_prior_mean"] = float(((prior_mean.detach().to(torch.float64) - kt) ** 2).mean())
    return out


def add_true_kernel(idata, k_true: torch.Tensor, images=None):
    """Store the true kernel in ``idata.constant_data["k_true"]``: dims ``(k_row, k_col)``, or
    ``(image, k_row, k_col)`` for a stack ``(n, kh, kw)`` with ``images`` its image coordinates."""
    import numpy as np
    import xarray as xr

    kt = k_true.detach().to("cpu", torch.float32).numpy()
    coords = {"k_row": np.arange(kt.shape[-2]), "k_col": np.arange(kt.shape[-1])}
    dims = ("k_row", "k_col")
    if images is not None:
        dims, coords["image"] = ("image", *dims), list(images)
    idata.add_groups(constant_data=xr.Dataset({"k_true": (dims, kt)}, coords=coords))
    return idata


class BlindDeblur:
    """Blind deblurring of images of ``shape`` ``(C, H, W)`` with noise ``noise_std`` (see the module
    docstring). ``family`` / ``kernel_seed``: the true kernel of a simulated measurement; ``kernel``: a
    ``.npy`` file (or tensor) of a ``(7, 7)`` true kernel instead; ``kernel_prior``: the prior on ``k``
    (a shipped name or a folder trained like ``kernels``)."""

    name = "blind_deblur"
    size = 7

    def __init__(self, shape, noise_std: float, family: str = "mixed", kernel_seed: int = 0, kernel=None,
                 kernel_prior="kernels"):
        from .models.blind import ParameterDiffusionPrior, load_kernel_prior

        self.shape = tuple(int(s) for s in shape)
        if len(self.shape) != 3:
            raise ValueError(f"blind_deblur: images of shape (C, H, W) needed, got {self.shape}")
        if noise_std <= 0:
            raise ValueError(f"blind_deblur: the noise level must be > 0 (a Gaussian likelihood), got {noise_std}")
        if family not in _FAMILIES:
            raise ValueError(f"blind_deblur: family must be one of {', '.join(_FAMILIES)}, got {family!r}")
        self.noise_std, self.family, self.kernel_seed = float(noise_std), family, int(kernel_seed)
        self.kernel_prior = kernel_prior if isinstance(kernel_prior, ParameterDiffusionPrior) else \
            load_kernel_prior(kernel_prior, size=self.size, steps=50)  # steps: of its own draws (prior_mean)
        if not isinstance(self.kernel_prior, ParameterDiffusionPrior) or \
                tuple(self.kernel_prior.event_shape) != (self.size, self.size):
            raise ValueError(f"blind_deblur: kernel_prior {kernel_prior!r} is not a prior on {self.size}x{self.size} "
                             "kernels (use the shipped 'kernels' prior)")
        self.given = None if kernel is None else self._read_kernel(kernel)

    def _read_kernel(self, kernel) -> torch.Tensor:
        import numpy as np

        from .models.operators.kernel_blur import check_kernel

        if not isinstance(kernel, torch.Tensor):
            p = Path(str(kernel))
            if not p.is_file():
                raise ValueError(f"blind_deblur: kernel={kernel}: no such file (a .npy of shape (7, 7))")
            try:
                kernel = torch.as_tensor(np.load(p, allow_pickle=False).astype(np.float32))
            except Exception as e:
                raise ValueError(f"blind_deblur: cannot read kernel={kernel} as .npy ({e})") from e
        return check_kernel(kernel.to(torch.float32), "kernel", simplex=True, size=(self.size, self.size))

    def true_kernel(self, offset: int = 0) -> torch.Tensor:
        """The given kernel, else our generator's kernel of seed ``kernel_seed + offset``."""
        if self.given is not None:
            return self.given
        return true_kernel(self.family, self.kernel_seed + int(offset), self.size)

    def operator(self, k: torch.Tensor):
        from .models.operators import KernelBlur

        return KernelBlur(k, self.shape)

    def measure(self, x: torch.Tensor, k: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """``y = k (*) x + noise_std * n``."""
        y = self.operator(k.to(x.dtype))(x)
        return y + self.noise_std * torch.randn(y.shape, generator=generator, dtype=y.dtype)

    def model(self, image_prior):
        """The blind Pyro model (sites ``k``, ``x``, ``y``)."""
        import pyro

        from .models.measurement import GaussianMeasurement

        kp, noise, op = self.kernel_prior, self.noise_std, self.operator

        def blind_deblur(y=None):
            k = pyro.sample("k", kp)
            x = pyro.sample("x", image_prior)
            return pyro.sample("y", GaussianMeasurement(op(k), x, noise), obs=y)

        return blind_deblur

    def log_likelihood(self, x: torch.Tensor, k: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``log p(y | x_i, k_i)`` of paired draws ``x (n, *shape)``, ``k (n, 7, 7)`` -> ``(n,)``."""
        from .models.measurement import GaussianMeasurement

        with torch.no_grad():
            return GaussianMeasurement(self.operator(k.to(x.dtype)), x, self.noise_std).log_prob(y.to(x.dtype))

    def prior_mean(self, n: int = 64, seed: int = 0) -> torch.Tensor:
        """The kernel prior's mean, from ``n`` seeded draws (a baseline for the kernel MSE)."""
        with torch.no_grad():
            return self.kernel_prior.sample((int(n),), generator=torch.Generator().manual_seed(int(seed))).mean(0)
