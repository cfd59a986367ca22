"""ILVR — Iterative Latent Variable Refinement (Choi, Kim, Jeong, Gwon, Yoon, ICCV 2021).

Per step (Algorithm 1 of the paper): an ancestral step ``x'_s`` from ``x_t``, then the low-pass
content of ``x'_s`` is replaced by that of the reference noised to level ``s``::

    x_s = x'_s - phi(x'_s) + phi(alpha_s y_ref + sigma_s z)

The paper's low-pass ``phi_N`` = up(down(., N)) is, for a general linear operator, the projector
``phi = A^+ A`` onto the row space of ``A`` (for block-average super-resolution it is exactly
nearest-upsampled block means), and ``y_ref = A^+ y``. Conditioning is applied while the next time
``s >= t_stop`` (the "conditioning range"; default 0 = every step). Measurement noise is ignored.
Defaults: 100 steps, DDPM (eta = 1). Needs a linear operator (``A^+``). 1 network call per step.
"""
from __future__ import annotations

import torch

from ..problem import Problem
from ..sampler import Hook, StepState
from ..solver import check_number
from .base import DiffusionGuide

__all__ = ["ILVR"]


class _ILVRHook(Hook):
    def __init__(self, op, y, t_stop):
        self.op, self.t_stop = op, t_stop
        self.y_ref = op.pinv(y)

    def phi(self, x: torch.Tensor) -> torch.Tensor:
        return self.op.pinv(self.op(x))

    def correct_step(self, st: StepState, x_next: torch.Tensor) -> torch.Tensor:
        if float(st.s) < self.t_stop:
            return x_next
        z = st.noise(x_next)
        return x_next - self.phi(x_next) + st.alpha_s * self.y_ref + st.sigma_s * self.phi(z)


class ILVR(DiffusionGuide):
    """ILVR (Choi et al., ICCV 2021; module docstring).

    Args:
        model: Pyro model with a diffusion-prior site and a ``GaussianMeasurement`` with a linear
            operator (``A^+`` is used).
        t_stop: condition while the next time is ``>= t_stop`` (in ``[0, 1]``; default 0 = every step).
        steps: reverse-diffusion steps (default 100).
        eta: DDIM noise (1 = DDPM ancestral steps, the paper's sampler).
        grid: time grid (see ``ppl_diffusion.schedules.time_grid``).
        prior_site: name of the diffusion-prior site when the model has several.
        progress: show a progress bar.

    Cost: 1 network call per step.
    """

    name = "ILVR"
    requires = ("linear",)

    def __init__(self, model, *, t_stop: float = 0.0, steps: int = 100, eta: float = 1.0, grid: str = "uniform",
                 prior_site: str | None = None, progress: bool = False):
        self.t_stop = check_number("t_stop", t_stop, self.name, 0.0, 1.0)
        super().__init__(model, steps=steps, eta=eta, grid=grid, prior_site=prior_site, progress=progress)

    def make_hook(self, problem: Problem, n: int) -> Hook:
        lg = problem.linear_gaussian(self.name)
        return _ILVRHook(lg.operator, lg.y.to(problem.dtype), self.t_stop)
