"""ΠGDM — Pseudoinverse-Guided Diffusion Models (Song, Vahdat, Mardani, Kautz, ICLR 2023).

Approximates ``p(x0 | x_t) ~ N(x0_hat, r_t^2 I)`` so that ``p(y | x_t) ~ N(A x0_hat, r_t^2 A A^T + sigma_y^2 I)``
and guides with one vector-Jacobian product per step (METHODS_SPEC §4.2, VP form of the RED-diff
reimplementation by co-authors)::

    v   = (r_t^2 A A^T + sigma_y^2 I)^{-1} (y - A x0_hat)          (SVD closed form, else CG)
    g_t = J^T A^T v,  J = d x0_hat / d x_t                            (one VJP)
    x_s = DDIM_eta(x0_hat, eps_hat) + w * alpha_s * alpha_t * r_t^2 * g_t

with ``r_t^2 = 1 - alpha_bar_t`` (``sigma_t^2`` of the VP schedule; the paper's default for data of
unit scale) unless ``r2`` is given. Needs a GaussianMeasurement with a LINEAR operator (A^T and a
solve with ``r^2 A A^T + sigma^2 I``). Defaults: 100 steps, ``eta = 1``, ``w = 1``.
"""
from __future__ import annotations

import torch

from ...models.operators import conjugate_gradient

from ..problem import Problem
from ..sampler import Hook, StepState
from .base import DiffusionGuide
from .dps import reject_unknown

__all__ = ["PiGDM", "solve_gram"]


def solve_gram(op, b: torch.Tensor, r2: float, sigma2: float, nb: int = 1, maxiter: int = 50) -> torch.Tensor:
    """``(r2 A A^T + sigma2 I)^{-1} b`` for a linear operator: closed form through the SVD when the
    operator has one, else batched CG on ``u -> r2 A A^T u + sigma2 u``."""
    if getattr(op, "has_svd", False):
        c = op.Ut(b)
        s = torch.as_tensor(op.singular_values, dtype=b.dtype, device=b.device).flatten()
        m = c.shape[-1]
        s2 = torch.zeros(m, dtype=b.dtype, device=b.device)
        k = min(m, s.numel())
        s2[:k] = s[:k] ** 2
        den = (r2 * s2 + sigma2).clamp(min=1e-30)
        return op.U(c / den)
    return conjugate_gradient(lambda u: r2 * op(op.adjoint(u)) + sigma2 * u, b, max_iter=maxiter, tol=1e-8,
                              event_dim=b.dim() - nb)


class _PiGDMHook(Hook):
    needs_grad = True

    def __init__(self, problem: Problem, w: float, r2):
        lg = problem.linear_gaussian("PiGDM")
        self.op, self.y, self.sigma2 = lg.operator, lg.y, float(lg.noise_std) ** 2
        self.w, self.r2 = w, r2
        self.ne = len(problem.event_shape)

    def correct_step(self, state: StepState, x_next: torch.Tensor) -> torch.Tensor:
        r2 = float(state.sigma_t) ** 2 if self.r2 is None else float(self.r2(state) if callable(self.r2) else self.r2)
        nb = state.x.dim() - self.ne
        with torch.no_grad():
            b = self.y - self.op(state.x0.detach())
            v = solve_gram(self.op, b, r2, self.sigma2, nb)
            u = self.op.adjoint(v)
        (g,) = torch.autograd.grad((u * state.x0).sum(), state.x)
        return x_next.detach() + self.w * state.alpha_s * state.alpha_t * r2 * g


class PiGDM(DiffusionGuide):
    """ΠGDM (Song et al., ICLR 2023). Options: ``w`` (guidance weight, default 1), ``r2`` (the
    variance of ``p(x0 | x_t)``: ``None`` = ``1 - alpha_bar_t``, a float, or a callable of the step
    state). Needs a Gaussian likelihood with a linear operator. Cost: 1 NFE + 1 VJP per step."""

    name = "PiGDM"
    requires = ("linear",)
    default_steps = 100
    default_eta = 1.0

    def configure(self, w: float = 1.0, r2=None, **unknown) -> None:
        reject_unknown(self.name, unknown)
        if not w >= 0:
            raise ValueError(f"PiGDM: w must be >= 0, got {w}")
        if r2 is not None and not callable(r2) and not float(r2) > 0:
            raise ValueError(f"PiGDM: r2 must be None, a positive float or a callable, got {r2!r}")
        self.w, self.r2 = float(w), r2

    def make_hook(self, problem: Problem, n: int) -> Hook:
        return _PiGDMHook(problem, self.w, self.r2)


from ... import benchmarking as _benchmarking  # noqa: E402

_benchmarking.register_guide("pigdm", PiGDM)
