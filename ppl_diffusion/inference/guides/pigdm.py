"""ΠGDM — Pseudoinverse-Guided Diffusion Models (Song, Vahdat, Mardani, Kautz, ICLR 2023).

Approximates ``p(x0 | x_t) ~ N(x0_hat, r_t^2 I)`` so that ``p(y | x_t) ~ N(A x0_hat, r_t^2 A A^T + sigma_y^2 I)``
and guides with one vector-Jacobian product per step (Algorithm 1 of the paper, in the VP form of
the co-authors' reimplementation in the RED-diff code)::

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
from ..solver import check_number
from .base import DiffusionGuide

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
    """PiGDM (Song et al., ICLR 2023; module docstring).

    Args:
        model: Pyro model with a diffusion-prior site and a ``GaussianMeasurement`` with a linear
            operator (``A^T`` and a solve with ``r^2 A A^T + sigma_y^2 I``: SVD closed form, else CG).
        w: guidance weight (``>= 0``; default 1).
        r2: variance ``r_t^2`` of ``p(x0 | x_t)``: ``None`` (default) = ``1 - alpha_bar_t``, a
            positive float, or a callable of the step state.
        steps: reverse-diffusion steps (default 100).
        eta: DDIM noise (1 = DDPM ancestral steps; default 1).
        grid: time grid (see ``ppl_diffusion.schedules.time_grid``).
        prior_site: name of the diffusion-prior site when the model has several.
        progress: show a progress bar.

    Cost: 1 network call + 1 vector-Jacobian product per step.
    """

    name = "PiGDM"
    requires = ("linear",)

    def __init__(self, model, *, w: float = 1.0, r2=None, steps: int = 100, eta: float = 1.0, grid: str = "uniform",
                 prior_site: str | None = None, progress: bool = False):
        self.w = check_number("w", w, self.name, low=0.0)
        self.r2 = r2 if r2 is None or callable(r2) else check_number("r2", r2, self.name, low=0.0, low_open=True)
        super().__init__(model, steps=steps, eta=eta, grid=grid, prior_site=prior_site, progress=progress)

    def make_hook(self, problem: Problem, n: int) -> Hook:
        return _PiGDMHook(problem, self.w, self.r2)
