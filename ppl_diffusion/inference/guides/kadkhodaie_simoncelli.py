"""Kadkhodaie & Simoncelli, "Solving linear inverse problems using the prior implicit in a denoiser"
(NeurIPS 2021), official ``universal_inverse_problem/code/algorithm_inv_prob.py``.

Constrained coarse-to-fine stochastic ascent with an adaptive step (METHODS_SPEC §4.15). The
measurement is ``x_c = M^T x`` with orthonormal ``M``; here ``M`` spans the spectral coordinates
``V^T x`` with a non-zero singular value and ``x_c = U^T y / s`` (for a mask: the known pixels).
With ``f(y) = y - D(y)`` the denoiser residual, iterate ``k = 1, 2, ...`` per sample while
``sigma > sigma_L``::

    h_k   = h0 k / (1 + h0 (k - 1))
    d     = (I - M M^T) f(y) + M (M^T y - x_c)
    sigma = ||(I - M M^T) d|| / sqrt(N - r)
    gamma = sigma sqrt((1 - beta h)^2 - (1 - h)^2)
    y    <- y - h d + gamma z

and return ``D(y)``. The original uses a *blind* denoiser; ours is noise-conditional, so it is called
at the running estimate of the noise level (``D(y, sigma_prev)`` in VE units), and sigma is measured
on the unconstrained coordinates (the official ``||d|| / sqrt(N)`` counts the constrained ones, where
the residual is ~0, and underestimates it). Start: ``y = M x_c + (I - M M^T) sigma_0 z`` (the official
start adds 0.5 grey for [0, 1] images; our images are centred). The iteration count is adaptive
(capped by ``max_iters``); samples that have converged stop moving. Defaults: h0 = 0.01,
beta = 0.01, sigma_0 = 1, sigma_L = 0.01. Measurement noise is ignored. Needs a linear operator
with an SVD (a mask or any SVD operator). 1 network call per iteration, no backpropagation.
"""
from __future__ import annotations

import math

import torch

from .base import DiffusionGuide
from .ddrm import SpectralView

__all__ = ["KadkhodaieSimoncelli"]


class KadkhodaieSimoncelli(DiffusionGuide):
    """Kadkhodaie–Simoncelli constrained sampling (module docstring).

    ``KadkhodaieSimoncelli(model, h0=0.01, beta=0.01, sigma_0=1.0, sigma_L=0.01, max_iters=3000)``.
    ``steps`` / ``eta`` are unused (the schedule is adaptive)."""

    name = "KadkhodaieSimoncelli"
    default_steps = 1
    requires = ("linear", "svd")

    def configure(self, h0: float = 0.01, beta: float = 0.01, sigma_0: float = 1.0, sigma_L: float = 0.01,
                  max_iters: int = 3000, **options):
        super().configure(**options)
        self.h0, self.beta, self.sigma_0, self.sigma_L = float(h0), float(beta), float(sigma_0), float(sigma_L)
        self.max_iters = int(max_iters)
        if not (0 < self.h0 <= 1 and 0 < self.beta <= 1 and self.sigma_0 > self.sigma_L > 0 and self.max_iters >= 1):
            raise ValueError(f"{self.name}: need 0 < h0 <= 1, 0 < beta <= 1, sigma_0 > sigma_L > 0, max_iters >= 1")

    def run(self, problem, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        lg = problem.require_svd(self.name)
        dtype, device = problem.dtype, problem.device
        view = SpectralView(lg.operator, lg.y, lg.noise_std, dtype, device)
        den = problem.denoiser
        sched = problem.prior.schedule
        rho_hi = sched.rho_max
        free = ~view.obs
        n_free = max(int(free.sum()), 1)
        D = view.obs.numel()
        self.last_iters = 0
        with torch.no_grad():
            z = torch.randn((n, D), generator=generator, dtype=dtype, device=device)
            c = torch.where(view.obs, view.ybar, self.sigma_0 * z)
            sig = torch.full((n,), self.sigma_0, dtype=dtype, device=device)
            active = torch.ones(n, dtype=torch.bool, device=device)
            for k in range(1, self.max_iters + 1):
                h = self.h0 * k / (1.0 + self.h0 * (k - 1))
                x = view.inv(c)
                x0 = den.denoise_ve(x, sig.clamp(min=1e-4, max=rho_hi))
                cf = view.fwd(x - x0)
                d = torch.where(view.obs, c - view.ybar, cf)
                s_new = torch.where(free, d, torch.zeros_like(d)).norm(dim=1) / math.sqrt(n_free)
                gam = s_new * math.sqrt(max((1 - self.beta * h) ** 2 - (1 - h) ** 2, 0.0))
                z = torch.randn((n, D), generator=generator, dtype=dtype, device=device)
                step = -h * d + gam[:, None] * z
                c = torch.where(active[:, None], c + step, c)
                sig = torch.where(active, s_new, sig)
                active = active & (sig > self.sigma_L)
                if not torch.isfinite(c).all():
                    raise RuntimeError(f"{self.name} diverged at iteration {k} (non-finite state)")
                if not bool(active.any()):
                    break
            self.last_iters = k
            x = view.inv(c)
            return den.denoise_ve(x, sig.clamp(min=1e-4, max=rho_hi))
