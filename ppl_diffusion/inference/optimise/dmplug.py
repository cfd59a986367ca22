"""DMPlug (Wang, Zhang, Li, Wan, Chen, Sun, "DMPlug: a plug-in method for solving inverse problems
with diffusion models", NeurIPS 2024).

The whole reverse process of a few-step deterministic DDIM is one generator ``G`` (the paper's Eq. 6):
``z* = argmin_z L(y, A(G(z)))`` (Eq. 7), ``x = G(z*)``. The official code runs a 3-step DDIM (eta = 0)
over the timesteps 666, 333, 0 of a 1000-step linear schedule ("leading" spacing), clips each
``x0_hat`` to [-1, 1] and recomputes ``eps_hat`` from it, and fits ``z`` (initialised from N(0, I),
no norm constraint) with Adam at lr 1e-2 on the mean squared residual for 5000 (super-resolution,
inpainting) or 10000 (nonlinear deblur) iterations, backpropagating through every network call.
The code reports the iterate with the best PSNR against the ground truth, an oracle that is not
copied here; the paper's early stopping is ES-WMV (``early_stopping="wmv"``). Cost per iteration:
``steps`` network calls and their backward pass. Any differentiable likelihood works
(``loss="nll"``), nonlinear operators included.

Point estimates: each draw is one random restart (see :mod:`.base`).
"""
from __future__ import annotations

import torch

from ..problem import Problem
from ..solver import check_int
from .base import InputOptimiser, ddim_map, ddim_times

__all__ = ["DMPlug"]


class DMPlug(InputOptimiser):
    """DMPlug: optimise the initial noise of a few-step DDIM so that its output fits the measurement.

    Args:
        model: Pyro model with a DiffusionPrior site on a discrete VP schedule and a differentiable likelihood.
        steps: DDIM steps of the generator (paper code: 3, timesteps 666, 333, 0).
        clip: clip each ``x0_hat`` (and the output) to [-1, 1] as the paper's code does.
        iterations: optimiser iterations (paper code: 5000; 500-2000 suffice on 16x16 digits).
        optimizer: "adam" (paper) or "sgd" (plain gradient descent).
        lr: learning rate (paper code: 1e-2).
        loss: "mse" (the code's mean squared residual; needs a GaussianMeasurement) or "nll"
            (``-log p(y | x)`` of any likelihood).
        sphere: project z onto the sphere of radius sqrt(dim) after every step (off in DMPlug).
        early_stopping: "none" (return the last iterate) or "wmv" (the iterate where the windowed
            moving variance of the outputs was smallest; stop when every restart has gone
            ``es_patience`` iterations without a new minimum). Never looks at the ground truth.
        es_window: WMV window (paper: 100, from memory of the ES-WMV paper; unverified).
        es_patience: WMV patience.
        init: initial inputs ``(restarts, *event)`` or ``(*event)``; None draws N(0, I).
        prior_site: name of the diffusion-prior site when the model has several.
        generator: random generator of the initial inputs (``draw(generator=)`` overrides it).
        progress: unused (kept for the shared contract).
    """

    name = "dmplug"

    def __init__(self, model, *, steps: int = 3, clip: bool = True, iterations: int = 1000, optimizer: str = "adam",
                 lr: float = 1e-2, loss: str = "mse", sphere: bool = False, early_stopping: str = "none",
                 es_window: int = 100, es_patience: int = 1000, init=None, prior_site: str | None = None,
                 generator: torch.Generator | None = None, progress: bool = False):
        structure = self.setup_solver(model, prior_site, progress)
        self.steps = check_int("steps", steps, type(self).name)
        self.clip = bool(clip)
        self.times = ddim_times(structure.prior.schedule, self.steps, type(self).name)
        self._set_common(structure, iterations=iterations, optimizer=optimizer, lr=lr, loss=loss, sphere=sphere,
                         early_stopping=early_stopping, es_window=es_window, es_patience=es_patience, init=init,
                         generator=generator)

    def generate(self, problem: Problem, z: torch.Tensor) -> torch.Tensor:
        return ddim_map(problem.denoiser, z, self.times, clip=self.clip, grad="full")
