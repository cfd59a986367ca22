"""DDNM and DDNM+ — Denoising Diffusion Null-space Models (Wang, Yu, Zhang, ICLR 2023).

DDNM: range/null-space decomposition of the denoised estimate,
``x0|t = x0_hat - A^+ (A x0_hat - y)``, then the DDRM-eta step
``x_s = alpha_s x0|t + eta sigma_s z + sqrt(1 - eta^2) sigma_s eps_hat`` (c1 / c2 of the paper; the
*original* eps_hat is kept). Noiseless by design; needs a linear operator (``A^+`` from the
operator: closed form or SVD, CG otherwise).

DDNM+ (``DDNM(model, plus=True)`` or ``DDNMPlus(model)``): the noise-aware SVD version, per spectral
coordinate ``lambda_i = 1`` where ``sigma_s >= alpha_s sigma_y / s_i`` else
``s_i sigma_s sqrt(1-eta^2) / (alpha_s sigma_y)``, with the matching noise. It is algebraically the
DDRM update with eta_b = 1 (we use that code path); needs an SVD.

Both support the paper's time-travel trick (RePaint's jump schedule, ``travel_length`` L,
``travel_repeat`` r; off by default L = r = 1) through the shared loop. Defaults: 100 steps,
eta = 0.85. 1 network call per step, no backpropagation.
"""
from __future__ import annotations

import torch

from ..problem import Problem
from ..sampler import Correction, Hook, StepState
from ..solver import check_choice, check_int
from ..spectral import SpectralView
from .base import DiffusionGuide
from .ddrm import DDRMHook, SpectralGuide
from .repaint import jump_times

__all__ = ["DDNM", "DDNMPlus"]


class _DDNMHook(Hook):
    def __init__(self, operator, y, eta: float):
        self.op, self.y, self.eta = operator, y, eta
        self.y_pinv = operator.pinv(y)

    def correct_x0(self, st: StepState) -> Correction:
        x0c = st.x0 - self.op.pinv(self.op(st.x0)) + self.y_pinv
        a = (1.0 - self.eta**2) ** 0.5
        return Correction(x_next=st.alpha_s * x0c + st.sigma_s * (self.eta * st.noise() + a * st.eps))


class DDNM(SpectralGuide):
    """DDNM / DDNM+ (Wang et al., ICLR 2023; module docstring).

    Args:
        model: Pyro model with a diffusion-prior site and a ``GaussianMeasurement`` with a linear
            operator that has a pseudo-inverse (DDNM) or an SVD (DDNM+).
        plus: run the noise-aware DDNM+ (needs an SVD) instead of DDNM (default False).
        travel_length: time-travel jump length ``L`` (1 = no time travel).
        travel_repeat: time-travel repeats ``r`` per jump (1 = no time travel).
        steps: reverse-diffusion steps (default 100).
        eta: share of fresh noise in the step (DDRM convention, in ``[0, 1]``; default 0.85).
        grid: time grid (see ``ppl_diffusion.schedules.time_grid``).
        prior_site: name of the diffusion-prior site when the model has several.
        progress: show a progress bar.

    Cost: 1 network call per step of the (possibly time-travelling) grid.
    """

    name = "DDNM"
    requires = ("linear",)

    def __init__(self, model, *, plus: bool = False, travel_length: int = 1, travel_repeat: int = 1,
                 steps: int = 100, eta: float = 0.85, grid: str = "uniform", prior_site: str | None = None,
                 progress: bool = False):
        self.plus = bool(check_choice("plus", plus, (False, True), self.name))
        self.travel_length = check_int("travel_length", travel_length, self.name)
        self.travel_repeat = check_int("travel_repeat", travel_repeat, self.name)
        if self.plus:
            self.name = "DDNM+"
            self.requires = ("linear", "svd")
        super().__init__(model, steps=steps, eta=eta, grid=grid, prior_site=prior_site, progress=progress)

    def check(self, problem: Problem) -> None:
        super().check(problem)
        if not self.plus:
            op = problem.linear_gaussian(self.name).operator
            if not callable(getattr(op, "pinv", None)):
                raise ValueError(f"{self.name} needs an operator with a pseudo-inverse (pinv)")

    def times(self, problem: Problem) -> torch.Tensor:
        return jump_times(problem.prior.schedule, self.steps, self.grid, self.travel_length, self.travel_repeat)

    def spectral_hook(self, view: SpectralView) -> Hook:
        return DDRMHook(view, self.eta, 1.0)

    def make_hook(self, problem: Problem, n: int) -> Hook:
        lg = problem.linear_gaussian(self.name)
        return _DDNMHook(lg.operator, lg.y.to(problem.dtype), self.eta)

    def run(self, problem: Problem, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """DDNM+ starts from DDRM's spectral state; DDNM from the prior's terminal noise."""
        if self.plus:
            return super().run(problem, n, generator)
        return DiffusionGuide.run(self, problem, n, generator)


class DDNMPlus(DDNM):
    """DDNM+ (noise-aware, needs an SVD): ``DDNM(model, plus=True)``.

    Args:
        model: Pyro model with a diffusion-prior site and a ``GaussianMeasurement`` whose linear
            operator has an SVD.
        travel_length: time-travel jump length ``L`` (1 = no time travel).
        travel_repeat: time-travel repeats ``r`` per jump (1 = no time travel).
        steps: reverse-diffusion steps (default 100).
        eta: share of fresh noise in the step (DDRM convention, in ``[0, 1]``; default 0.85).
        grid: time grid (see ``ppl_diffusion.schedules.time_grid``).
        prior_site: name of the diffusion-prior site when the model has several.
        progress: show a progress bar.
    """

    name = "DDNM+"
    requires = ("linear", "svd")

    def __init__(self, model, *, travel_length: int = 1, travel_repeat: int = 1, steps: int = 100,
                 eta: float = 0.85, grid: str = "uniform", prior_site: str | None = None, progress: bool = False):
        super().__init__(model, plus=True, travel_length=travel_length, travel_repeat=travel_repeat, steps=steps,
                         eta=eta, grid=grid, prior_site=prior_site, progress=progress)
