"""DDNM and DDNM+ — Denoising Diffusion Null-space Models (Wang, Yu, Zhang, ICLR 2023).

DDNM (METHODS_SPEC §4.6): range/null-space decomposition of the denoised estimate,
``x0|t = x0_hat - A^+ (A x0_hat - y)``, then the DDRM-eta step
``x_s = alpha_s x0|t + eta sigma_s z + sqrt(1 - eta^2) sigma_s eps_hat`` (c1 / c2 of the paper; the
*original* eps_hat is kept). Noiseless by design; needs a linear operator (``A^+`` from the
operator: closed form or SVD, CG otherwise).

DDNM+ (``DDNM(model, plus=True)`` or ``DDNMPlus(model)``): the noise-aware SVD version, per spectral
coordinate ``lambda_i = 1`` where ``sigma_s >= alpha_s sigma_y / s_i`` else
``s_i sigma_s sqrt(1-eta^2) / (alpha_s sigma_y)``, with the matching noise. It is algebraically the
DDRM update with eta_b = 1 (we use that code path); needs an SVD.

Both support time travel (RePaint's jump schedule, ``travel_length`` L, ``travel_repeat`` r; off by
default L = r = 1) through the shared loop. Defaults: 100 steps, eta = 0.85. 1 network call per
step, no backpropagation.
"""
from __future__ import annotations

import torch

from ..sampler import Hook, StepState, reverse_diffusion
from .base import DiffusionGuide
from .ddrm import DDRMHook, SpectralGuide
from .repaint import jump_times

__all__ = ["DDNM", "DDNMPlus"]


class _DDNMHook(Hook):
    def __init__(self, operator, y, eta: float):
        self.op, self.y, self.eta = operator, y, eta
        self.y_pinv = operator.pinv(y)

    def correct_x0(self, st: StepState):
        x0c = st.x0 - self.op.pinv(self.op(st.x0)) + self.y_pinv
        a = (1.0 - self.eta**2) ** 0.5
        x_next = st.alpha_s * x0c + st.sigma_s * (self.eta * st.noise() + a * st.eps)
        return {"x_next": x_next}


class DDNM(SpectralGuide):
    """DDNM / DDNM+ (module docstring). ``DDNM(model, steps=100, eta=0.85, plus=False,
    travel_length=1, travel_repeat=1)``. DDNM needs a linear operator (A^+); DDNM+ an SVD."""

    name = "DDNM"
    default_steps = 100
    default_eta = 0.85
    default_plus = False

    def configure(self, plus: bool | None = None, travel_length: int = 1, travel_repeat: int = 1, **options):
        DiffusionGuide.configure(self, **options)
        self.plus = self.default_plus if plus is None else bool(plus)
        self.travel_length, self.travel_repeat = int(travel_length), int(travel_repeat)
        if self.travel_length < 1 or self.travel_repeat < 1:
            raise ValueError(f"{self.name}: travel_length and travel_repeat must be >= 1")
        if self.plus:
            self.name = "DDNM+"
            self.requires = ("linear", "svd")
        else:
            self.requires = ("linear",)

    def check(self, problem):
        super().check(problem)
        if not self.plus:
            op = problem.linear_gaussian(self.name).operator
            if not callable(getattr(op, "pinv", None)):
                raise ValueError(f"{self.name} needs an operator with a pseudo-inverse (pinv)")

    def times(self, problem):
        return jump_times(problem.prior.schedule, self.steps, self.grid, self.travel_length, self.travel_repeat)

    def spectral_hook(self, view):
        return DDRMHook(view, self.eta, 1.0)

    def run(self, problem, n, generator=None):
        if self.plus:
            return super().run(problem, n, generator)
        lg = problem.linear_gaussian(self.name)
        with torch.no_grad():
            hook = _DDNMHook(lg.operator, lg.y.to(problem.dtype), self.eta)
            x = self.initial_state(problem, n, generator)
            return reverse_diffusion(problem.denoiser, x, self.times(problem), eta=self.eta, hook=hook,
                                     generator=generator, progress=self.progress, desc=self.name)


class DDNMPlus(DDNM):
    """DDNM+ (noise-aware, SVD): ``DDNM(model, plus=True)``."""

    name = "DDNM+"
    default_plus = True
