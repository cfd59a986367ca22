"""RePaint (Lugmayr, Danelljan, Romero, Yu, Timofte, Van Gool, CVPR 2022).

Step ``t -> s`` (Algorithm 1 of the paper): the unknown pixels take a DDPM ancestral step, the
known ones are the observation noised to level ``s``::

    x_s = m * (alpha_s y + sigma_s z) + (1 - m) * DDPM(x_t)

with *resampling*: following the jump schedule (jump length ``jump_length``, ``jump_n_sample``
repeats) the state is re-noised from ``s`` back to a later time and denoised again, so that known
and unknown regions harmonise. The jumps are the shared loop's time travel (grid entries going up).
Defaults (paper): 250 steps, jump_length = 10, jump_n_sample = 10 (about 2,500 network calls).
Needs: an inpainting (mask) operator; ``spectral=True`` also accepts any operator with an SVD
(the mask is then applied to the spectral coordinates ``V^T x`` with ``ybar = U^T y / s``). The
measurement noise is ignored (known pixels are replaced by y). No backpropagation.
"""
from __future__ import annotations

import torch

from ...schedules import time_grid
from ..problem import Problem
from ..sampler import Hook, StepState
from ..solver import check_choice, check_int
from ..spectral import SpectralView
from .base import DiffusionGuide

__all__ = ["RePaint", "jump_schedule", "ReplaceHook", "jump_times"]


def jump_schedule(steps: int, jump_length: int = 1, jump_n_sample: int = 1) -> list:
    """Level indices (``steps`` = noise, ``0`` = clean) of RePaint's ``get_schedule_jump``.

    After reaching level ``j + 1`` for ``j`` in ``range(0, steps - jump_length, jump_length)`` the
    walk goes back up ``jump_length`` levels, ``jump_n_sample - 1`` times per such level."""
    if jump_length < 1 or jump_n_sample < 1:
        raise ValueError("jump_length and jump_n_sample must be >= 1")
    jumps = {j + 1: jump_n_sample - 1 for j in range(0, steps - jump_length, jump_length)}
    n = steps
    levels = [n]
    while n > 0:
        n -= 1
        levels.append(n)
        if jumps.get(n, 0) > 0:
            jumps[n] -= 1
            for _ in range(jump_length):
                n += 1
                levels.append(n)
    return levels


def jump_times(schedule, steps: int, grid: str, jump_length: int, jump_n_sample: int) -> torch.Tensor:
    """The time grid of :func:`jump_schedule` (entries going up are time-travel jumps)."""
    base = time_grid(schedule, steps, grid)  # base[k] is level steps - k
    levels = torch.tensor(jump_schedule(steps, jump_length, jump_n_sample))
    return base[steps - levels]


class ReplaceHook(Hook):
    """After each step, set the known coordinates to ``alpha_s ybar + sigma_s z`` (spectral view)."""

    def __init__(self, view: SpectralView):
        self.view = view

    def correct_step(self, st: StepState, x_next: torch.Tensor) -> torch.Tensor:
        return self.view.replace_known(x_next, st.alpha_s, st.sigma_s, st.generator)


class RePaint(DiffusionGuide):
    """RePaint with resampling jumps (Lugmayr et al., CVPR 2022; module docstring).

    Args:
        model: Pyro model with a diffusion-prior site and a ``GaussianMeasurement`` with an
            inpainting (mask) operator, or any operator with an SVD when ``spectral=True``.
        jump_length: levels gone back up at each resampling jump (paper: 10).
        jump_n_sample: times each jump is taken (``r`` of the paper: 10; 1 = no resampling).
        spectral: accept any SVD operator, inpainting its spectral coordinates (default False).
        steps: reverse-diffusion steps before the jumps (paper: 250).
        eta: DDIM noise of the unknown pixels' step (1 = DDPM ancestral step, the paper's).
        grid: time grid (see ``ppl_diffusion.schedules.time_grid``).
        prior_site: name of the diffusion-prior site when the model has several.
        progress: show a progress bar.

    Cost: 1 network call per step of the jump schedule.
    """

    name = "RePaint"
    requires = ("linear", "mask")

    def __init__(self, model, *, jump_length: int = 10, jump_n_sample: int = 10, spectral: bool = False,
                 steps: int = 250, eta: float = 1.0, grid: str = "uniform", prior_site: str | None = None,
                 progress: bool = False):
        self.jump_length = check_int("jump_length", jump_length, self.name)
        self.jump_n_sample = check_int("jump_n_sample", jump_n_sample, self.name)
        self.spectral = bool(check_choice("spectral", spectral, (False, True), self.name))
        if self.spectral:
            self.requires = ("linear", "svd")
        super().__init__(model, steps=steps, eta=eta, grid=grid, prior_site=prior_site, progress=progress)

    def times(self, problem: Problem) -> torch.Tensor:
        return jump_times(problem.prior.schedule, self.steps, self.grid, self.jump_length, self.jump_n_sample)

    def make_hook(self, problem: Problem, n: int) -> Hook:
        return ReplaceHook(SpectralView.of(problem, self.name))
