"""DDS — Decomposed Diffusion Sampler (Chung, Lee, Ye, ICLR 2024).

Per step (the paper's update with its conjugate-gradient data consistency): ``x0_hat`` from the
denoiser, then ``cg_iters`` conjugate-gradient iterations of data consistency started at ``x0_hat``:

* noisy (``sigma_y > 0``): ``(I + gamma A^T A) x = x0_hat + gamma A^T y``;
* noiseless: ``A^T A x = A^T y``;

then the DDRM-eta step ``x_s = alpha_s x0' + eta sigma_s z + sqrt(1 - eta^2) sigma_s eps_hat`` with the
*original* eps_hat. Defaults: 50 steps, eta = 0.85, 5 CG iterations, gamma = 1. Needs a linear
operator (A and A^T only, matrix-free). 1 network call per step, no backpropagation; CG step sizes
are per sample.
"""
from __future__ import annotations

from ...models.operators import conjugate_gradient
from ..problem import Problem
from ..sampler import Correction, Hook, StepState
from ..solver import check_int, check_number
from .base import DiffusionGuide

__all__ = ["DDS"]


class _DDSHook(Hook):
    def __init__(self, op, y, noise_std, gamma, iters, n_event):
        self.op, self.y, self.noisy, self.gamma, self.iters, self.ne = op, y, noise_std > 0, gamma, iters, n_event
        self.aty = op.adjoint(y)

    def correct_x0(self, st: StepState) -> Correction:
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
        return Correction(x_next=st.alpha_s * x0c + st.sigma_s * (st.eta * st.noise() + a * st.eps))


class DDS(DiffusionGuide):
    """DDS (Chung et al., ICLR 2024; module docstring).

    Args:
        model: Pyro model with a diffusion-prior site and a ``GaussianMeasurement`` with a linear
            operator (``A`` and ``A^T``).
        cg_iters: conjugate-gradient iterations per step (default 5).
        gamma: weight of the data term in the noisy case (``> 0``; default 1).
        steps: reverse-diffusion steps (default 50).
        eta: share of fresh noise in the step (DDRM convention, in ``[0, 1]``; default 0.85).
        grid: time grid (see ``ppl_diffusion.schedules.time_grid``).
        prior_site: name of the diffusion-prior site when the model has several.
        progress: show a progress bar.

    Cost: 1 network call per step (and ``cg_iters`` products with ``A^T A``).
    """

    name = "DDS"
    requires = ("linear",)

    def __init__(self, model, *, cg_iters: int = 5, gamma: float = 1.0, steps: int = 50, eta: float = 0.85,
                 grid: str = "uniform", prior_site: str | None = None, progress: bool = False):
        self.cg_iters = check_int("cg_iters", cg_iters, self.name)
        self.gamma = check_number("gamma", gamma, self.name, low=0.0, low_open=True)
        super().__init__(model, steps=steps, eta=eta, grid=grid, prior_site=prior_site, progress=progress)

    def make_hook(self, problem: Problem, n: int) -> Hook:
        lg = problem.linear_gaussian(self.name)
        return _DDSHook(lg.operator, lg.y.to(problem.dtype), lg.noise_std, self.gamma, self.cg_iters,
                        len(problem.event_shape))
