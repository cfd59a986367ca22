"""Kadkhodaie & Simoncelli, "Solving linear inverse problems using the prior implicit in a denoiser"
(NeurIPS 2021), as in the authors' ``algorithm_inv_prob.py``.

Constrained coarse-to-fine stochastic ascent with an adaptive step (the paper's algorithm for
linear inverse problems). The measurement is ``x_c = M^T x`` with orthonormal ``M``; here ``M``
spans the spectral coordinates ``V^T x`` with a non-zero singular value and ``x_c = U^T y / s`` (for
a mask: the known pixels).
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

from ..problem import Problem
from ..solver import check_int, check_number
from ..spectral import SpectralView
from .base import DiffusionGuide

__all__ = ["KadkhodaieSimoncelli"]


class KadkhodaieSimoncelli(DiffusionGuide):
    """Kadkhodaie-Simoncelli constrained sampling (NeurIPS 2021; module docstring).

    Args:
        model: Pyro model with a diffusion-prior site and a ``GaussianMeasurement`` whose linear
            operator has an SVD (a mask or any SVD operator).
        h0: initial step ``h_0`` of the adaptive schedule (in ``(0, 1]``; default 0.01).
        beta: noise-injection parameter ``beta`` (in ``(0, 1]``; 1 = no added noise; default 0.01).
        sigma_0: initial noise level of the unconstrained coordinates (``> sigma_L``; default 1).
        sigma_L: stop once a sample's estimated noise level falls below it (``> 0``; default 0.01).
        max_iters: cap on the adaptive iteration count (default 3000).
        steps: unused (the schedule is adaptive); kept for the shared interface (default 1).
        eta: unused (default 1).
        grid: unused (default ``"uniform"``).
        prior_site: name of the diffusion-prior site when the model has several.
        progress: unused (no progress bar for the adaptive loop).

    Cost: 1 network call per iteration (plus one final denoising), iterations chosen adaptively.
    """

    name = "KadkhodaieSimoncelli"
    requires = ("linear", "svd")

    def __init__(self, model, *, h0: float = 0.01, beta: float = 0.01, sigma_0: float = 1.0, sigma_L: float = 0.01,
                 max_iters: int = 3000, steps: int = 1, eta: float = 1.0, grid: str = "uniform",
                 prior_site: str | None = None, progress: bool = False):
        self.h0 = check_number("h0", h0, self.name, 0.0, 1.0, low_open=True)
        self.beta = check_number("beta", beta, self.name, 0.0, 1.0, low_open=True)
        self.sigma_L = check_number("sigma_L", sigma_L, self.name, low=0.0, low_open=True)
        self.sigma_0 = check_number("sigma_0", sigma_0, self.name, low=self.sigma_L, low_open=True)
        self.max_iters = check_int("max_iters", max_iters, self.name)
        super().__init__(model, steps=steps, eta=eta, grid=grid, prior_site=prior_site, progress=progress)

    def run(self, problem: Problem, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """The adaptive iteration (its own loop, not the shared reverse diffusion)."""
        view = SpectralView.of(problem, self.name)
        dtype, device = problem.dtype, problem.device
        den = problem.denoiser
        rho_hi = problem.prior.schedule.rho_max
        free = ~view.obs
        n_free = max(int(free.sum()), 1)
        D = view.obs.numel()
        with torch.no_grad():  # the network is called directly here, outside the shared loop
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
            return den.denoise_ve(view.inv(c), sig.clamp(min=1e-4, max=rho_hi))
