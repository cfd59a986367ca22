"""SHRED (Chihaoui, Lemkhenter, Favaro, "Zero-shot image restoration via diffusion inversion",
arXiv 2405.19572 v2, 2024; its code is that of v1, BIRD, "Blind image restoration via fast diffusion
inversion").

The input of a deterministic DDIM (eta = 0) with a large step (delta t = 100: timesteps 900, 800,
..., 0 of 1000) is optimised so that the output fits the measurement, with ``z`` kept on the sphere
of radius ``sqrt(dim)`` where N(0, I) concentrates (a projection after every Adam step). The code's
"fast inversion" evaluates the network WITHOUT gradient: the gradient reaches ``z`` only through the
linear DDIM combinations and the clip (``grad="straight_through"``, the default; ``dx_s/dx_t`` is
``alpha_s / alpha_t`` per step, so the z-update is the x0-space gradient rescaled by ``1 / alpha_0``,
zero where the final clip is active). ``grad="full"`` backpropagates through the network (DMPlug's
gradient). The code's settings: 200 iterations at lr 1e-2 (inpainting, denoising), 100 at 1e-3
(super-resolution), clipping on. Cost per iteration: ``steps`` network calls, no backward pass
through the network with the straight-through gradient.

Point estimates: each draw is one random restart (see :mod:`.base`).
"""
from __future__ import annotations

import torch

from ..problem import Problem
from ..solver import check_choice, check_int
from .base import InputOptimiser, ddim_map, ddim_times

__all__ = ["SHRED"]


class SHRED(InputOptimiser):
    """SHRED: sphere-constrained inversion of a 10-step DDIM with a straight-through gradient.

    Args:
        model: Pyro model with a DiffusionPrior site on a discrete VP schedule and a differentiable likelihood.
        steps: DDIM steps (code: 10, i.e. delta t = 100).
        clip: clip each ``x0_hat`` (and the output) to [-1, 1] as the code does.
        grad: "straight_through" (the code: network calls without gradient) or "full".
        iterations: optimiser iterations (code: 200 for inpainting and denoising, 100 for SR).
        optimizer: "adam" (code) or "sgd".
        lr: learning rate (code: 1e-2 inpainting / denoising, 1e-3 SR).
        loss: "mse" (needs a GaussianMeasurement) or "nll" (any likelihood).
        sphere: project z onto the sphere of radius sqrt(dim) after every step (the method; on).
        early_stopping: "none" or "wmv" (see :class:`~ppl_diffusion.inference.optimise.dmplug.DMPlug`).
        es_window: WMV window.
        es_patience: WMV patience.
        init: initial inputs ``(restarts, *event)`` or ``(*event)``; None draws N(0, I).
        prior_site: name of the diffusion-prior site when the model has several.
        generator: random generator of the initial inputs (``draw(generator=)`` overrides it).
        progress: unused (kept for the shared contract).
    """

    name = "shred"

    def __init__(self, model, *, steps: int = 10, clip: bool = True, grad: str = "straight_through",
                 iterations: int = 200, optimizer: str = "adam", lr: float = 1e-2, loss: str = "mse",
                 sphere: bool = True, early_stopping: str = "none", es_window: int = 20, es_patience: int = 50,
                 init=None, prior_site: str | None = None, generator: torch.Generator | None = None,
                 progress: bool = False):
        structure = self.setup_solver(model, prior_site, progress)
        m = type(self).name
        self.steps = check_int("steps", steps, m)
        self.clip = bool(clip)
        self.grad = check_choice("grad", grad, ("straight_through", "full"), m)
        self.times = ddim_times(structure.prior.schedule, self.steps, m)
        self._set_common(structure, iterations=iterations, optimizer=optimizer, lr=lr, loss=loss, sphere=sphere,
                         early_stopping=early_stopping, es_window=es_window, es_patience=es_patience, init=init,
                         generator=generator)

    def generate(self, problem: Problem, z: torch.Tensor) -> torch.Tensor:
        return ddim_map(problem.denoiser, z, self.times, clip=self.clip, grad=self.grad)
