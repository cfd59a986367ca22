"""Consistent-CSGM: compressed sensing with a consistency model as the generator (the CSGM-type
method of the survey of Daras et al., "A survey on diffusion models for inverse problems", 2024,
Sec. 3.4.2): ``z* = argmin_z |y - A G(z)|^2`` with the one-step generator
``G(z) = f_theta(sigma_max z, sigma_max)`` of a consistency model (Song et al., ICML 2023). The
survey gives no constants; ours: Adam at lr 1e-2, ``z`` projected on the sphere of radius
``sqrt(dim)`` as in SHRED (``sphere=False`` leaves it free), optional ``k``-step generation with
re-noising draws frozen at the start (so G stays deterministic). Cost per iteration: ``k`` network
calls and their backward pass.

The consistency model is NOT the model's prior: it is a generator derived from it
(``load_consistency("digits_cm")`` was distilled from the shipped ``digits`` prior, Song et al. 2023
Algorithm 2, then fine-tuned by consistency training on the training digits, Algorithm 3;
``python -m ppl_diffusion.training.consistency``, commands in its training.json). The model's prior site
fixes the event shape.

Point estimates: each draw is one random restart (see :mod:`.base`).
"""
from __future__ import annotations

import math

import torch

from ...models.consistency import ConsistencyModel, karras_sigmas, load_consistency
from ..problem import Problem
from ..solver import OptionError, check_int
from .base import InputOptimiser

__all__ = ["ConsistentCSGM"]


class ConsistentCSGM(InputOptimiser):
    """CSGM through a consistency model's one-step (or frozen-noise k-step) sampler.

    Args:
        model: Pyro model with a DiffusionPrior site (its event shape must match the consistency
            model's) and a differentiable likelihood.
        consistency_model: a :class:`~ppl_diffusion.models.consistency.ConsistencyModel`, or a name /
            folder for :func:`~ppl_diffusion.models.consistency.load_consistency` (default the shipped
            ``"digits_cm"``, distilled from the ``digits`` prior, then consistency-trained on its data).
        cm_steps: consistency-model steps of the generator (1: ``f(sigma_max z, sigma_max)``).
        iterations: optimiser iterations.
        optimizer: "adam" or "sgd".
        lr: learning rate.
        loss: "mse" (needs a GaussianMeasurement) or "nll" (any likelihood).
        sphere: project z onto the sphere of radius sqrt(dim) after every step.
        early_stopping: "none" or "wmv" (see :class:`~ppl_diffusion.inference.optimise.dmplug.DMPlug`).
        es_window: WMV window.
        es_patience: WMV patience.
        init: initial inputs ``(restarts, *event)`` or ``(*event)``; None draws N(0, I).
        prior_site: name of the diffusion-prior site when the model has several.
        generator: random generator of the initial inputs and frozen re-noise draws.
        progress: unused (kept for the shared contract).
    """

    name = "consistent_csgm"

    def __init__(self, model, *, consistency_model="digits_cm", cm_steps: int = 1, iterations: int = 500,
                 optimizer: str = "adam", lr: float = 1e-2, loss: str = "mse", sphere: bool = True,
                 early_stopping: str = "none", es_window: int = 50, es_patience: int = 200, init=None,
                 prior_site: str | None = None, generator: torch.Generator | None = None, progress: bool = False):
        structure = self.setup_solver(model, prior_site, progress)
        m = type(self).name
        self.consistency_model = consistency_model
        cm = consistency_model
        if not isinstance(cm, ConsistencyModel):
            cm = load_consistency(cm)
        if tuple(cm.event_shape) != tuple(structure.event_shape):
            raise OptionError(f"{m}: the consistency model makes samples of shape {tuple(cm.event_shape)}, the prior "
                              f"site {structure.prior_site!r} has shape {tuple(structure.event_shape)}; pass a "
                              "consistency model distilled from this prior")
        self.cm = cm
        self.cm_steps = check_int("cm_steps", cm_steps, m)
        self._set_common(structure, iterations=iterations, optimizer=optimizer, lr=lr, loss=loss, sphere=sphere,
                         early_stopping=early_stopping, es_window=es_window, es_patience=es_patience, init=init,
                         generator=generator)
        self._noise = None

    def counter(self, problem: Problem):
        return self.cm

    def optimise(self, problem: Problem, n: int, generator=None) -> dict:
        levels = karras_sigmas(self.cm_steps + 1, self.cm.sigma_min, self.cm.sigma_max)[1:-1].tolist()
        shape = (n,) + tuple(problem.event_shape)
        self._noise = [(s, torch.randn(shape, generator=generator, dtype=problem.dtype, device=problem.device))
                       for s in levels]  # frozen: G is deterministic during the fit
        return super().optimise(problem, n, generator)

    def generate(self, problem: Problem, z: torch.Tensor) -> torch.Tensor:
        cm = self.cm
        x = cm(cm.sigma_max * z, cm.sigma_max)
        for s, e in self._noise or []:
            x = cm(x + math.sqrt(max(s**2 - cm.sigma_min**2, 0.0)) * e[: x.shape[0]], s)
        return x
