"""Score-ALD — annealed Langevin dynamics with a likelihood score (Jalal, Arvinte, Daras, Price,
Dimakis, Tamir, NeurIPS 2021), the paper's annealed Langevin posterior sampler.

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
from ..likelihood import per_sample_sq_norm
from ..problem import Problem
from ..sampler import Correction, Hook, StepState
from ..solver import OptionError, check_int, check_number
from .base import DiffusionGuide

__all__ = ["ScoreALD", "LangevinGuide"]


def _bc(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.reshape(v.shape + (1,) * (like.dim() - v.dim()))


class LangevinGuide(DiffusionGuide):
    """Base of the annealed-Langevin guides (Score-ALD, SNIPS): the grid repeats each noise level
    ``steps_each`` times and the hook takes over every step. Subclasses validate their Langevin
    options with :meth:`_langevin_options` before ``super().__init__``."""

    def _langevin_options(self, step_size, steps_each) -> None:
        self.step_size = check_number("step_size", step_size, self.name, low=0.0, low_open=True)
        self.steps_each = check_int("steps_each", steps_each, self.name)

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
        with torch.enable_grad():  # the loop runs the network without autograd
            xx = xt.detach().requires_grad_(True)
            L = -0.5 * per_sample_sq_norm(y - op(xx), xx.dim() - self.ne).sum() / var
            (gr,) = torch.autograd.grad(L, xx)
        return gr

    def correct_x0(self, state: StepState) -> Correction:
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
        return Correction(x_next=state.alpha_s * x_new)


class ScoreALD(LangevinGuide):
    """Score-ALD (Jalal et al., NeurIPS 2021; module docstring).

    Args:
        model: Pyro model with a diffusion-prior site and a differentiable likelihood.
        step_size: Langevin step factor ``c`` of ``a_i = c rho_i^2`` (``> 0``; default 0.5).
        steps_each: Langevin steps per noise level (default 1; the paper uses 3).
        gamma: likelihood variance inflation ``gamma rho_i^2`` (``>= 0``; default 1; a noiseless
            measurement needs ``gamma > 0``).
        weight: ``None`` (default) or the official code's per-sample normalisation of the
            likelihood gradient, ``weight ||s|| / ||g||`` (``> 0``; recommended for non-Gaussian
            likelihoods).
        steps: number of noise levels (default 100).
        eta: unused (each Langevin step sets the next state itself; default 1).
        grid: time grid of the noise levels (see ``ppl_diffusion.schedules.time_grid``).
        prior_site: name of the diffusion-prior site when the model has several.
        progress: show a progress bar.

    Cost: 1 network call per Langevin step, no backpropagation through the network.
    """

    name = "ScoreALD"
    requires = ("likelihood",)

    def __init__(self, model, *, step_size: float = 0.5, steps_each: int = 1, gamma: float = 1.0,
                 weight: float | None = None, steps: int = 100, eta: float = 1.0, grid: str = "uniform",
                 prior_site: str | None = None, progress: bool = False):
        self._langevin_options(step_size, steps_each)
        self.gamma = check_number("gamma", gamma, self.name, low=0.0)
        if weight is not None and not (isinstance(weight, (int, float)) and weight > 0):
            raise OptionError(f"ScoreALD: weight must be None or > 0, got {weight!r}")
        self.weight = weight
        super().__init__(model, steps=steps, eta=eta, grid=grid, prior_site=prior_site, progress=progress)

    def make_hook(self, problem: Problem, n: int) -> Hook:
        g = problem._gaussian
        if g is not None and g.noise_std == 0 and self.gamma == 0:
            raise ValueError("ScoreALD: a noiseless measurement needs gamma > 0 (the likelihood variance "
                             "sigma_y^2 + gamma rho^2 would be 0)")
        return _ScoreALDHook(problem, self.step_size, self.gamma, self.weight)
