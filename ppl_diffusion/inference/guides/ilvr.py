"""ILVR — Iterative Latent Variable Refinement (Choi, Kim, Jeong, Gwon, Yoon, ICCV 2021).

Per step (METHODS_SPEC §4.12): an ancestral step ``x'_s`` from ``x_t``, then the low-pass content of
``x'_s`` is replaced by that of the reference noised to level ``s``::

    x_s = x'_s - phi(x'_s) + phi(alpha_s y_ref + sigma_s z)

The paper's low-pass ``phi_N`` = up(down(., N)) is, for a general linear operator, the projector
``phi = A^+ A`` onto the row space of ``A`` (for block-average super-resolution it is exactly
nearest-upsampled block means), and ``y_ref = A^+ y``. Conditioning is applied while the next time
``s >= t_stop`` (the "conditioning range"; default 0 = every step). Measurement noise is ignored.
Defaults: 100 steps, DDPM (eta = 1). Needs a linear operator (``A^+``). 1 network call per step.
"""
from __future__ import annotations

import torch

from ..sampler import Hook, StepState
from .base import DiffusionGuide

__all__ = ["ILVR"]


class _ILVRHook(Hook):
    def __init__(self, op, y, t_stop):
        self.op, self.t_stop = op, t_stop
        self.y_ref = op.pinv(y)

    def phi(self, x):
        return self.op.pinv(self.op(x))

    def correct_step(self, st: StepState, x_next):
        if float(st.s) < self.t_stop:
            return x_next
        z = st.noise(x_next)
        return x_next - self.phi(x_next) + st.alpha_s * self.y_ref + st.sigma_s * self.phi(z)


class ILVR(DiffusionGuide):
    """ILVR (module docstring). ``ILVR(model, steps=100, t_stop=0.0)``. Needs a linear operator."""

    name = "ILVR"
    default_steps = 100
    default_eta = 1.0
    requires = ("linear",)

    def configure(self, t_stop: float = 0.0, **options):
        super().configure(**options)
        self.t_stop = float(t_stop)
        if not 0.0 <= self.t_stop <= 1.0:
            raise ValueError(f"{self.name}: t_stop must lie in [0, 1], got {t_stop}")

    def make_hook(self, problem, n):
        lg = problem.linear_gaussian(self.name)
        return _ILVRHook(lg.operator, lg.y.to(problem.dtype), self.t_stop)

    def run(self, problem, n, generator=None):
        with torch.no_grad():
            return super().run(problem, n, generator)
