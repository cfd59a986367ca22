"""MMPS — Moment Matching Posterior Sampling (Rozet, Andry, Lanusse, Louppe, NeurIPS 2024).

Uses the second-order Tweedie covariance ``Cov[x0 | x_t] = (sigma_t^2 / alpha_t) J``, ``J = d x0_hat / d x_t``
(VP form of the paper's Tweedie covariance), so that ``p(y | x_t) ~ N(A x0_hat, sigma_y^2 I + A Cov A^T)``, and
replaces the denoiser by the posterior denoiser::

    b  = y - A x0_hat
    v  = (sigma_y^2 I + (sigma_t^2/alpha_t) A J A^T)^{-1} b     (conjugate gradients, maxiter = 1)
    x0 = x0_hat + (sigma_t^2/alpha_t) J^T A^T v

Every CG matrix-vector product is one vector-Jacobian product ``J^T`` used in place of ``J``
(the ideal denoiser Jacobian is symmetric), so no forward-mode AD is needed; one network call per
step, ``maxiter + 1`` VJPs. The corrected ``x0`` (and the matching ``eps``) then go through the
shared DDIM(eta) step. Needs a GaussianMeasurement with a linear operator (A and A^T).
Defaults: 100 steps, ``eta = 1`` (DDPM-like), CG ``maxiter = 1``, ``rtol = 1e-3``.
"""
from __future__ import annotations

import torch

from ...models.operators import conjugate_gradient
from ..problem import Problem
from ..sampler import Correction, Hook, StepState
from ..solver import check_int, check_number
from .base import DiffusionGuide

__all__ = ["MMPS"]


class _MMPSHook(Hook):
    needs_grad = True

    def __init__(self, problem: Problem, maxiter: int, rtol: float):
        lg = problem.linear_gaussian("MMPS")
        self.op, self.y, self.sigma2 = lg.operator, lg.y, float(lg.noise_std) ** 2
        self.maxiter, self.rtol = maxiter, rtol
        self.ne = len(problem.event_shape)

    def correct_x0(self, state: StepState) -> Correction:
        op, x0, x = self.op, state.x0, state.x
        nb = x.dim() - self.ne
        c = state.sigma_t**2 / state.alpha_t

        def vjp(u):  # (sigma^2/alpha) J^T u
            (g,) = torch.autograd.grad(x0, x, grad_outputs=u, retain_graph=True)
            return c * g

        b = (self.y - op(x0)).detach()
        v = conjugate_gradient(lambda w: self.sigma2 * w + op(vjp(op.adjoint(w))), b, max_iter=self.maxiter,
                               tol=self.rtol, event_dim=b.dim() - nb)
        x0_new = x0.detach() + vjp(op.adjoint(v))
        return Correction(x0=x0_new, eps=(x.detach() - state.alpha_t * x0_new) / state.sigma_t)


class MMPS(DiffusionGuide):
    """Moment Matching Posterior Sampling (Rozet et al., NeurIPS 2024; module docstring).

    Args:
        model: Pyro model with a diffusion-prior site and a ``GaussianMeasurement`` with a linear
            operator (``A`` and ``A^T``).
        maxiter: conjugate-gradient iterations per step (default 1).
        rtol: relative tolerance of the conjugate gradients (``>= 0``; default 1e-3).
        steps: reverse-diffusion steps (default 100).
        eta: DDIM noise (1 = DDPM-like steps; default 1).
        grid: time grid (see ``ppl_diffusion.schedules.time_grid``).
        prior_site: name of the diffusion-prior site when the model has several.
        progress: show a progress bar.

    Cost: 1 network call + (maxiter + 1) vector-Jacobian products per step.
    """

    name = "MMPS"
    requires = ("linear",)

    def __init__(self, model, *, maxiter: int = 1, rtol: float = 1e-3, steps: int = 100, eta: float = 1.0,
                 grid: str = "uniform", prior_site: str | None = None, progress: bool = False):
        self.maxiter = check_int("maxiter", maxiter, self.name)
        self.rtol = check_number("rtol", rtol, self.name, low=0.0)
        super().__init__(model, steps=steps, eta=eta, grid=grid, prior_site=prior_site, progress=progress)

    def make_hook(self, problem: Problem, n: int) -> Hook:
        return _MMPSHook(problem, self.maxiter, self.rtol)
