"""PnP-DM: split-Gibbs posterior sampling with a diffusion prior (Wu, Sun, Chen, Zhang, Yue, Bouman,
"Principled Probabilistic Imaging using Diffusion Models as Plug-and-Play Priors", NeurIPS 2024).

Target (at a fixed coupling ``rho``): ``pi(x, z) ∝ p(x) exp(-f(z; y) - ||x - z||^2 / (2 rho^2))``.
Its x-marginal is the posterior of a relaxed model: for ``y = A x + sigma_y n`` it is exactly the
posterior under ``y ~ N(A x, sigma_y^2 I + rho^2 A A^T)`` (-> the true posterior as rho -> 0).
One Gibbs sweep at iteration k, with ``rho_k = max(rho_0 decay^k, rho_min)`` (METHODS_SPEC §2.5):

1. likelihood step ``z ~ pi(z | x, y) ∝ exp(-f(z) - ||z - x||^2 / (2 rho^2))``:
   - linear Gaussian with an SVD: closed form in the V basis, eigenvalues ``1 / (s^2/sigma_y^2 + 1/rho^2)``
     (noiseless: the observed spectral coordinates are pinned to ``Ut(y)/s``);
   - linear Gaussian with a proximal map only: exact perturb-and-MAP,
     ``z = prox(x + rho xi1, y + sigma_y xi2, sigma_y^2/rho^2)``;
   - anything else (nonlinear operators, any differentiable Pyro likelihood): ``langevin_steps``
     unadjusted Langevin steps of size ``langevin_step`` from ``z = x``
     (``z <- z + gamma grad log p(y|z) - gamma/rho^2 (z - x) + sqrt(2 gamma) xi``);
2. prior step ``x ~ p(x | z)`` with ``z = x + rho eps``: the EDM reverse process from rho to 0 with
   ``denoiser.denoise_ve`` on the 100-point EDM grid (sigma_max 80, sigma_min 0.002, exponent 7)
   restricted below rho, Euler-Maruyama steps of the reverse SDE (``prior_solver="sde"``, official),
   or DDPM ancestral bridge steps (``"ddpm"``) or the PF-ODE (``"ode"``); the last step returns the
   denoiser output. Unlike the official code, the process starts exactly at rho (not at the next grid
   point below), which is what the Gibbs conditional asks for.

Needs: any likelihood (closed forms for GaussianMeasurement with a linear operator). Cost per
iteration: the grid points below rho_k network calls (about 30 at rho = 0.3), no backprop through
the network.

Limit (measured, benchmarks/results/kernels_*.md): a local kernel; its chains do not move between
well-separated posterior modes once rho is small (GMM setting B: 90 % coverage 0.37-0.59 on
multimodal posteriors, 0.88-0.89 on unimodal ones). Use ParticleGibbs(MCGDiff) for multimodal targets.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from ..problem import Problem
from .base import DiffusionKernel, positive, require_differentiable

__all__ = ["PnPDM", "edm_sigmas"]


def edm_sigmas(n: int = 100, sigma_max: float = 80.0, sigma_min: float = 0.002, rho_exp: float = 7.0,
               dtype=torch.float64) -> torch.Tensor:
    """EDM (Karras et al. 2022) noise levels, decreasing, length ``n``."""
    i = torch.arange(n, dtype=dtype)
    a, b = sigma_max ** (1 / rho_exp), sigma_min ** (1 / rho_exp)
    return (a + i / max(n - 1, 1) * (b - a)) ** rho_exp


class PnPDM(DiffusionKernel):
    """PnP-DM split-Gibbs kernel (see module docstring).

    Args:
        model: Pyro model with a DiffusionPrior site and an observed likelihood.
        rho0, decay, rho_min: annealing ``rho_k = max(rho0 decay^k, rho_min)`` (official linear
            defaults 10, 0.9, 0.3; use ``rho0 = rho_min`` for a fixed-rho Gibbs chain).
        prior_solver: ``"sde"`` (official), ``"ddpm"`` or ``"ode"``.
        num_grid, sigma_max, sigma_min: the EDM grid of the prior step.
        likelihood_step: ``"auto"`` (SVD > prox > Langevin), ``"svd"``, ``"prox"``, ``"langevin"``.
        langevin_steps, langevin_step: the Langevin likelihood step (official 100, 1e-4).
        init: ``"randn"`` (default), ``"zeros"``, ``"pinv"`` or a tensor.
    """

    name = "PnP-DM"

    def __init__(self, model, rho0: float = 10.0, decay: float = 0.9, rho_min: float = 0.3,
                 prior_solver: str = "sde", num_grid: int = 100, sigma_max: float = 80.0,
                 sigma_min: float = 0.002, likelihood_step: str = "auto", langevin_steps: int = 100,
                 langevin_step: float = 1e-4, prior_site: Optional[str] = None, init="randn",
                 init_scale: float = 1.0):
        n = self.name
        self.rho0 = positive("rho0", rho0, n)
        self.rho_min = positive("rho_min", rho_min, n)
        self.decay = positive("decay", decay, n)
        if self.decay > 1:
            raise ValueError(f"{n}: decay must lie in (0, 1], got {decay}")
        if self.rho_min > self.rho0:
            raise ValueError(f"{n}: rho_min ({rho_min}) must not exceed rho0 ({rho0})")
        if prior_solver not in ("sde", "ddpm", "ode"):
            raise ValueError(f"{n}: prior_solver must be 'sde', 'ddpm' or 'ode', got {prior_solver!r}")
        self.prior_solver = prior_solver
        if int(num_grid) != num_grid or num_grid < 2:
            raise ValueError(f"{n}: num_grid must be an integer >= 2, got {num_grid!r}")
        self.sigma_max = positive("sigma_max", sigma_max, n)
        self.sigma_min = positive("sigma_min", sigma_min, n)
        if self.sigma_min >= self.sigma_max:
            raise ValueError(f"{n}: sigma_min must be < sigma_max")
        self.grid = edm_sigmas(int(num_grid), self.sigma_max, self.sigma_min)
        if likelihood_step not in ("auto", "svd", "prox", "langevin"):
            raise ValueError(f"{n}: likelihood_step must be 'auto', 'svd', 'prox' or 'langevin', got {likelihood_step!r}")
        self.likelihood_step = likelihood_step
        if int(langevin_steps) != langevin_steps or langevin_steps < 1:
            raise ValueError(f"{n}: langevin_steps must be a positive integer, got {langevin_steps!r}")
        self.langevin_steps = int(langevin_steps)
        self.langevin_step = positive("langevin_step", langevin_step, n)
        super().__init__(model, prior_site=prior_site, init=init, init_scale=init_scale)

    # ------------------------------------------------------------------------------------
    def rho(self, k: int) -> float:
        return max(self.rho0 * self.decay**k, self.rho_min)

    def schedule_info(self, k: int) -> dict:
        return {"rho": self.rho(k)}

    def _mode(self, problem: Problem) -> str:
        lg = None
        try:
            lg = problem.linear_gaussian(self.name)
        except ValueError:
            pass
        op = None if lg is None else lg.operator
        has_svd = op is not None and getattr(op, "has_svd", False)
        has_prox = op is not None and getattr(op, "has_prox", False)
        if self.likelihood_step == "auto":
            return "svd" if has_svd else ("prox" if has_prox else "langevin")
        if self.likelihood_step == "svd" and not has_svd:
            problem.require_svd(f"{self.name} (likelihood_step='svd')")
        if self.likelihood_step == "prox" and not has_prox:
            raise ValueError(f"{self.name} (likelihood_step='prox') needs a linear Gaussian operator with prox")
        return self.likelihood_step

    def check(self, problem: Problem) -> None:
        mode = self._mode(problem)
        if mode == "langevin" and problem.is_gaussian and problem._gaussian.noise_std == 0:
            raise ValueError(f"{self.name}: a noiseless measurement (noise_std=0) needs a linear operator "
                             "with an SVD (the Langevin likelihood step needs a finite log-likelihood)")
        if mode == "prox" and problem._gaussian.noise_std == 0:
            raise ValueError(f"{self.name}: a noiseless measurement needs an operator with an SVD, not only prox")
        if mode == "langevin":
            require_differentiable(problem, self.name)

    def prepare(self, problem: Problem) -> None:
        self.mode = self._mode(problem)
        self._ne = len(problem.event_shape)
        if self.mode in ("svd", "prox"):
            lg = problem.linear_gaussian(self.name)
            self.op, self.y, self.noise_std = lg.operator, lg.y.to(problem.dtype), float(lg.noise_std)
        if self.mode == "svd":
            s = self.op.singular_values.to(problem.dtype).to(problem.device).reshape(-1)
            self.s = s
            self.ybar = self.op.Ut(self.y).reshape(-1)[: s.numel()]  # spectral observation coordinates

    # ------------------------------------------------------------------------------------
    def _likelihood_svd(self, x, rho, generator):
        op, s, sy = self.op, self.s, self.noise_std
        r = s.numel()
        xb = op.Vt(x)                                    # (C, D)
        noise = torch.randn(xb.shape, generator=generator, dtype=x.dtype, device=x.device)
        zb = xb + rho * noise                            # unobserved coordinates: N(x, rho^2)
        xo, no = xb[:, :r], noise[:, :r]
        nz = s > 0
        if sy > 0:
            prec = s**2 / sy**2 + 1.0 / rho**2
            lam = 1.0 / prec
            mean = lam * (s * self.ybar / sy**2 + xo / rho**2)
            zo = mean + lam.sqrt() * no
        else:
            zo = torch.where(nz, self.ybar / torch.where(nz, s, torch.ones_like(s)), xo + rho * no)
        zb = torch.cat([zo, zb[:, r:]], -1)
        return op.V(zb).reshape(x.shape)

    def _likelihood_prox(self, x, rho, generator):
        sy = self.noise_std
        xp = x + rho * torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        y = self.y.expand((x.shape[0],) + tuple(self.y.shape))
        yp = y + sy * torch.randn(y.shape, generator=generator, dtype=x.dtype, device=x.device)
        return self.op.prox(xp, yp, sy**2 / rho**2)

    def _likelihood_langevin(self, x, rho, generator):
        gamma = self.langevin_step
        z = x.clone()
        for _ in range(self.langevin_steps):
            _, g = self.problem.grad_log_likelihood(z)
            z = z + gamma * g - (gamma / rho**2) * (z - x) + math.sqrt(2 * gamma) * torch.randn(
                z.shape, generator=generator, dtype=z.dtype, device=z.device)
        return z

    def _prior(self, z, rho, generator):
        den = self.problem.denoiser
        g = self.grid.to(z.device)
        sig = torch.cat([torch.tensor([rho], dtype=torch.float64, device=z.device), g[g < rho]])
        sig = sig.tolist()
        x = z
        for i, s in enumerate(sig):
            D = den.denoise_ve(x, s)
            if i == len(sig) - 1:
                return D
            s_next = sig[i + 1]
            if self.prior_solver == "sde":
                x = x + (s_next - s) * 2.0 * (x - D) / s + math.sqrt(2 * s * (s - s_next)) * torch.randn(
                    x.shape, generator=generator, dtype=x.dtype, device=x.device)
            elif self.prior_solver == "ode":
                x = x + (s_next - s) * (x - D) / s
            else:  # DDPM bridge: x_s | x_t, x0 = D
                r = (s_next / s) ** 2
                x = D + r * (x - D) + s_next * math.sqrt(1 - r) * torch.randn(
                    x.shape, generator=generator, dtype=x.dtype, device=x.device)
        return x

    def step(self, x, k, generator=None):
        rho = self.rho(k)
        if self.mode == "svd":
            z = self._likelihood_svd(x, rho, generator)
        elif self.mode == "prox":
            z = self._likelihood_prox(x, rho, generator)
        else:
            z = self._likelihood_langevin(x, rho, generator)
        return self._prior(z, rho, generator)

    def nfe_per_iteration(self, k: int) -> int:
        rho = self.rho(k)
        return 1 + int((self.grid < rho).sum())
