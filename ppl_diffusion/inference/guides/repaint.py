"""RePaint (Lugmayr, Danelljan, Romero, Yu, Timofte, Van Gool, CVPR 2022).

Step ``t -> s`` (METHODS_SPEC §4.11): the unknown pixels take a DDPM ancestral step, the known ones
are the observation noised to level ``s``::

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
from ..sampler import Hook, StepState
from .base import DiffusionGuide
from .ddrm import SpectralView

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
    base = time_grid(schedule, steps, grid)  # base[k] is level steps - k
    levels = torch.tensor(jump_schedule(steps, jump_length, jump_n_sample))
    return base[steps - levels]


class ReplaceHook(Hook):
    """After each step, set the known coordinates to ``alpha_s ybar + sigma_s z`` (spectral view)."""

    def __init__(self, view: SpectralView):
        self.view = view

    def replace(self, x: torch.Tensor, alpha, sigma, generator) -> torch.Tensor:
        v = self.view
        c = v.fwd(x)
        z = torch.randn(c.shape, generator=generator, dtype=c.dtype, device=c.device)
        known = alpha * v.ybar + sigma * z
        return v.inv(torch.where(v.obs, known, c))

    def correct_step(self, st: StepState, x_next):
        return self.replace(x_next, st.alpha_s, st.sigma_s, st.generator)


class RePaint(DiffusionGuide):
    """RePaint with resampling jumps (module docstring). ``RePaint(model, steps=250, jump_length=10,
    jump_n_sample=10, spectral=False)``. Needs a mask operator (or an SVD with ``spectral=True``)."""

    name = "RePaint"
    default_steps = 250
    default_eta = 1.0
    requires = ("linear", "mask")

    def configure(self, jump_length: int = 10, jump_n_sample: int = 10, spectral: bool = False, **options):
        super().configure(**options)
        self.jump_length, self.jump_n_sample = int(jump_length), int(jump_n_sample)
        if self.jump_length < 1 or self.jump_n_sample < 1:
            raise ValueError(f"{self.name}: jump_length and jump_n_sample must be >= 1")
        self.spectral = bool(spectral)
        if self.spectral:
            self.requires = ("linear", "svd")

    def times(self, problem):
        return jump_times(problem.prior.schedule, self.steps, self.grid, self.jump_length, self.jump_n_sample)

    def make_hook(self, problem, n):
        lg = problem.require_svd(self.name)
        return ReplaceHook(SpectralView(lg.operator, lg.y, lg.noise_std, problem.dtype, problem.device))

    def run(self, problem, n, generator=None):
        with torch.no_grad():
            return super().run(problem, n, generator)
