"""DDS — Decomposed Diffusion Sampler (Chung, Lee, Ye, ICLR 2024).

Per step (METHODS_SPEC §4.8): ``x0_hat`` from the denoiser, then ``cg_iters`` conjugate-gradient
iterations of data consistency started at ``x0_hat``:

* noisy (``sigma_y > 0``): ``(I + gamma A^T A) x = x0_hat + gamma A^T y``;
* noiseless: ``A^T A x = A^T y``;

then the DDRM-eta step ``x_s = alpha_s x0' + eta sigma_s z + sqrt(1 - eta^2) sigma_s eps_hat`` with the
*original* eps_hat. Defaults: 50 steps, eta = 0.85, 5 CG iterations, gamma = 1. Needs a linear
operator (A and A^T only, matrix-free). 1 network call per step, no backpropagation; CG step sizes
are per sample.
"""
from __future__ import annotations

import torch

from ...models.operators import conjugate_gradient
from ..sampler import Hook, StepState
from .base import DiffusionGuide

__all__ = ["DDS"]


class _DDSHook(Hook):
    def __init__(self, op, y, noise_std, gamma, iters, n_event):
        self.op, self.y, self.noisy, self.gamma, self.iters, self.ne = op, y, noise_std > 0, gamma, iters, n_event
        self.aty = op.adjoint(y)

    def correct_x0(self, st: StepState):
        x0 = st.x0
        if self.noisy:
            g = self.gamma
            b = x0 + g * self.aty
            x0c = conjugate_gradient(lambda v: v + g * self.op.normal(v), b, x0, max_iter=self.iters, tol=0.0,
                                     event_dim=self.ne)
        else:
            b = self.aty.expand_as(x0)
            x0c = conjugate_gradient(self.op.normal, b, x0, max_iter=self.iters, tol=0.0, event_dim=self.ne)
        a = (1.0 - st.eta**2) ** 0.5
        return {"x_next": st.alpha_s * x0c + st.sigma_s * (st.eta * st.noise() + a * st.eps)}


class DDS(DiffusionGuide):
    """DDS (module docstring). ``DDS(model, steps=50, eta=0.85, cg_iters=5, gamma=1.0)``."""

    name = "DDS"
    default_steps = 50
    default_eta = 0.85
    requires = ("linear",)

    def configure(self, cg_iters: int = 5, gamma: float = 1.0, **options):
        super().configure(**options)
        self.cg_iters, self.gamma = int(cg_iters), float(gamma)
        if self.cg_iters < 1:
            raise ValueError(f"{self.name}: cg_iters must be >= 1, got {cg_iters}")
        if not self.gamma > 0:
            raise ValueError(f"{self.name}: gamma must be > 0, got {gamma}")

    def make_hook(self, problem, n):
        lg = problem.linear_gaussian(self.name)
        return _DDSHook(lg.operator, lg.y.to(problem.dtype), lg.noise_std, self.gamma, self.cg_iters,
                        len(problem.event_shape))

    def run(self, problem, n, generator=None):
        with torch.no_grad():
            return super().run(problem, n, generator)
