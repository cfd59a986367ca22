"""MMPS — Moment Matching Posterior Sampling (Rozet, Andry, Lanusse, Louppe, NeurIPS 2024).

Uses the second-order Tweedie covariance ``Cov[x0 | x_t] = (sigma_t^2 / alpha_t) J``, ``J = d x0_hat / d x_t``
(VP form of METHODS_SPEC §4.3), so that ``p(y | x_t) ~ N(A x0_hat, sigma_y^2 I + A Cov A^T)``, and
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
from ..sampler import Hook, StepState
from .base import DiffusionGuide
from .dps import reject_unknown

__all__ = ["MMPS"]


class _MMPSHook(Hook):
    needs_grad = True

    def __init__(self, problem: Problem, maxiter: int, rtol: float):
        lg = problem.linear_gaussian("MMPS")
        self.op, self.y, self.sigma2 = lg.operator, lg.y, float(lg.noise_std) ** 2
        self.maxiter, self.rtol = maxiter, rtol
        self.ne = len(problem.event_shape)

    def correct_x0(self, state: StepState):
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
        eps_new = (x.detach() - state.alpha_t * x0_new) / state.sigma_t
        return x0_new, eps_new


class MMPS(DiffusionGuide):
    """Moment Matching Posterior Sampling (Rozet et al., 2024). Options: ``maxiter`` (CG iterations,
    default 1), ``rtol`` (CG relative tolerance, default 1e-3). Needs a Gaussian likelihood with a
    linear operator. Cost: 1 NFE + (maxiter + 1) VJPs per step."""

    name = "MMPS"
    requires = ("linear",)
    default_steps = 100
    default_eta = 1.0

    def configure(self, maxiter: int = 1, rtol: float = 1e-3, **unknown) -> None:
        reject_unknown(self.name, unknown)
        if int(maxiter) < 1:
            raise ValueError(f"MMPS: maxiter must be >= 1, got {maxiter}")
        if not rtol >= 0:
            raise ValueError(f"MMPS: rtol must be >= 0, got {rtol}")
        self.maxiter, self.rtol = int(maxiter), float(rtol)

    def make_hook(self, problem: Problem, n: int) -> Hook:
        return _MMPSHook(problem, self.maxiter, self.rtol)


from ... import benchmarking as _benchmarking  # noqa: E402

_benchmarking.register_guide("mmps", MMPS)
