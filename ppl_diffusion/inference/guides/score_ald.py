"""Score-ALD — annealed Langevin dynamics with a likelihood score (Jalal, Arvinte, Daras, Price,
Dimakis, Tamir, NeurIPS 2021; METHODS_SPEC §4.9).

In the VE view ``x~ = x_t / alpha_t = x0 + rho eps`` and for each noise level ``rho_i`` of the grid
(``steps_each`` Langevin steps per level, one network call each, no backprop)::

    x~ <- x~ + a_i [ s(x~, rho_i) + grad_x~ log N(y; A x~, (sigma_y^2 + gamma rho_i^2) I) ] + sqrt(2 a_i) z
    a_i = step_size * rho_i^2,      s(x~, rho) = (D(x~, rho) - x~) / rho^2

The likelihood variance is inflated by ``gamma rho_i^2`` (the annealed ``gamma_i`` of the paper), so
the likelihood is tempered while the prior score is still broad. The official implementation's
variant normalises the likelihood gradient per sample, ``g <- weight ||s|| g / ||g||``
(``weight=`` option, off by default). Needs any differentiable likelihood: Gaussian measurements
(also nonlinear operators) get the inflated variance; other Pyro likelihoods use
``grad log p(y | x~)`` as is (with ``weight`` recommended). The last step adds no noise.
Implemented on the shared loop: every grid level is repeated ``steps_each`` times and each loop step
takes over the whole update (``Hook.correct_x0`` returns ``x_next``).
"""
from __future__ import annotations


import torch

from ...schedules import time_grid
from ..problem import Problem
from ..sampler import Hook, StepState
from .base import DiffusionGuide
from .dps import reject_unknown, per_sample_sq_norm

__all__ = ["ScoreALD", "LangevinGuide"]


def _bc(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.reshape(v.shape + (1,) * (like.dim() - v.dim()))


class LangevinGuide(DiffusionGuide):
    """Base of the annealed-Langevin guides: the grid repeats each level ``steps_each`` times."""

    default_eta = 1.0

    def configure_langevin(self, step_size: float, steps_each: int) -> None:
        if not step_size > 0:
            raise ValueError(f"{self.name}: step_size must be > 0, got {step_size}")
        if int(steps_each) < 1:
            raise ValueError(f"{self.name}: steps_each must be >= 1, got {steps_each}")
        self.step_size, self.steps_each = float(step_size), int(steps_each)

    def times(self, problem: Problem) -> torch.Tensor:
        t = time_grid(problem.prior.schedule, self.steps, self.grid)
        levels = t[:-1].repeat_interleave(self.steps_each)
        return torch.cat([levels, t[-1:]])


class _ScoreALDHook(Hook):
    def __init__(self, problem: Problem, step_size: float, gamma: float, weight: float | None):
        self.problem, self.step_size, self.gamma, self.weight = problem, step_size, gamma, weight
        self.ne = len(problem.event_shape)
        self.g = problem._gaussian

    def lik_grad(self, xt: torch.Tensor, rho2: float) -> torch.Tensor:
        if self.g is None:
            return self.problem.grad_log_likelihood(xt)[1]
        var = self.g.noise_std**2 + self.gamma * rho2
        y, op = self.problem.observation, self.g.operator
        with torch.enable_grad():
            xx = xt.detach().requires_grad_(True)
            L = -0.5 * per_sample_sq_norm(y - op(xx), xx.dim() - self.ne).sum() / var
            (gr,) = torch.autograd.grad(L, xx)
        return gr

    def correct_x0(self, state: StepState):
        a_t, rho = state.alpha_t, state.sigma_t / state.alpha_t
        xt = state.x / a_t
        score = (state.x0 - xt) / rho**2
        g = self.lik_grad(xt, float(rho) ** 2)
        if self.weight is not None:
            nb = xt.dim() - self.ne
            ratio = torch.sqrt(per_sample_sq_norm(score, nb) / per_sample_sq_norm(g, nb).clamp(min=1e-300))
            g = self.weight * _bc(ratio, g) * g
        a = self.step_size * rho**2
        x_new = xt + a * (score + g)
        if not state.is_last:
            x_new = x_new + torch.sqrt(2 * a) * state.noise()
        return {"x_next": state.alpha_s * x_new}


class ScoreALD(LangevinGuide):
    """Score-ALD (Jalal et al., NeurIPS 2021). Options: ``step_size`` (``a_i = step_size * rho_i^2``,
    default 0.5), ``steps_each`` (Langevin steps per level, default 1; the paper uses 3), ``gamma``
    (likelihood variance inflation ``gamma rho_i^2``, default 1), ``weight`` (official-code
    normalisation, default off). Needs any differentiable likelihood. Cost: 1 NFE per Langevin step."""

    name = "ScoreALD"
    requires = ("likelihood",)
    default_steps = 100

    def configure(self, step_size: float = 0.5, steps_each: int = 1, gamma: float = 1.0,
                  weight: float | None = None, **unknown) -> None:
        reject_unknown(self.name, unknown)
        self.configure_langevin(step_size, steps_each)
        if not gamma >= 0:
            raise ValueError(f"ScoreALD: gamma must be >= 0, got {gamma}")
        if weight is not None and not weight > 0:
            raise ValueError(f"ScoreALD: weight must be None or > 0, got {weight}")
        self.gamma, self.weight = float(gamma), weight

    def make_hook(self, problem: Problem, n: int) -> Hook:
        g = problem._gaussian
        if g is not None and g.noise_std == 0 and self.gamma == 0:
            raise ValueError("ScoreALD: a noiseless measurement needs gamma > 0 (the likelihood variance "
                             "sigma_y^2 + gamma rho^2 would be 0)")
        return _ScoreALDHook(problem, self.step_size, self.gamma, self.weight)


from ... import benchmarking as _benchmarking  # noqa: E402

_benchmarking.register_guide("score_ald", ScoreALD)
