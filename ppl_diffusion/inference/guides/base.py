"""Base class of the explicit-approximation solvers: a Pyro guide that runs one batched reverse
diffusion with a method-specific :class:`~ppl_diffusion.inference.sampler.Hook`.

Use it three ways::

    guide = DPS(model, steps=100)                    # requirements checked here
    x = guide.sample(16, y=y)                        # (16, *event_shape), one batched run
    Predictive(model, guide=guide, num_samples=16, parallel=True)(y=y)   # same, through Pyro

Under ``Predictive(..., parallel=True)`` the guide finds Pyro's ``_num_predictive_samples`` plate and
produces that many samples from ONE batched run; it enables autograd itself where the method needs
it (Predictive runs guides under ``torch.no_grad``).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro.poutine.runtime import get_plates

from ...schedules import time_grid
from ..problem import Problem
from ..sampler import Hook, reverse_diffusion, terminal_noise

__all__ = ["DiffusionGuide", "REQUIREMENTS"]

#: requirement name -> human description used in error messages
REQUIREMENTS = {
    "likelihood": "any differentiable Pyro likelihood",
    "gaussian": "a GaussianMeasurement likelihood",
    "linear": "a GaussianMeasurement with a linear operator",
    "svd": "a linear operator with an SVD",
    "prox": "a linear operator with a closed-form proximal step",
    "mask": "an inpainting (mask) operator",
}


class DiffusionGuide:
    """Base class. Subclasses set ``requires``, ``default_steps``, ``default_eta`` and implement
    :meth:`make_hook` (or override :meth:`run`)."""

    name = "guide"
    requires: Sequence[str] = ("likelihood",)
    default_steps = 100
    default_eta = 1.0
    default_grid = "uniform"

    def __init__(self, model, steps: int | None = None, eta: float | None = None,
                 grid: str | None = None, prior_site: str | None = None, progress: bool = False,
                 **options):
        self.model = model
        self.steps = int(steps if steps is not None else self.default_steps)
        self.eta = float(eta if eta is not None else self.default_eta)
        self.grid = grid or self.default_grid
        self.prior_site = prior_site
        self.progress = progress
        if self.steps < 1:
            raise ValueError(f"{self.name}: steps must be >= 1, got {self.steps}")
        if not 0.0 <= self.eta <= 1.0:
            raise ValueError(f"{self.name}: eta must lie in [0, 1], got {self.eta}")
        self.options = options
        self.configure(**options)
        structure = Problem.from_model(model, prior_site=prior_site, allow_unobserved=True)
        self.check(structure)
        self.last_nfe = 0

    # -- subclass API --------------------------------------------------------------------
    def configure(self, **options) -> None:
        """Store method options; unknown ones are an error."""
        if options:
            raise ValueError(f"{self.name}: unknown options {sorted(options)}")

    def check(self, problem: Problem) -> None:
        """Raise ValueError naming the missing piece if the problem lacks a requirement."""
        problem.require(self.requires, self.name)

    def make_hook(self, problem: Problem, n: int) -> Hook:  # pragma: no cover - abstract
        raise NotImplementedError

    def times(self, problem: Problem) -> torch.Tensor:
        return time_grid(problem.prior.schedule, self.steps, self.grid)

    def initial_state(self, problem: Problem, n: int, generator) -> torch.Tensor:
        shape = (n,) + tuple(problem.event_shape)
        return terminal_noise(problem.prior, shape, generator, problem.dtype, problem.device)

    def run(self, problem: Problem, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Default: the shared reverse-diffusion loop with this method's hook."""
        hook = self.make_hook(problem, n)
        x = self.initial_state(problem, n, generator)
        return reverse_diffusion(problem.denoiser, x, self.times(problem), eta=self.eta, hook=hook,
                                 generator=generator, progress=self.progress, desc=self.name)

    # -- user API ------------------------------------------------------------------------
    def problem(self, *args, **kwargs) -> Problem:
        return Problem.from_model(self.model, *args, prior_site=self.prior_site, **kwargs)

    def sample(self, num_samples: int, *args, generator: torch.Generator | None = None, **kwargs) -> torch.Tensor:
        """``num_samples`` posterior draws ``(num_samples, *event_shape)`` from one batched run."""
        if int(num_samples) < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        problem = self.problem(*args, **kwargs)
        self.check(problem)
        den = problem.denoiser
        start = den.nfe
        out = self.run(problem, int(num_samples), generator)
        self.last_nfe = den.nfe - start
        return out

    def __call__(self, *args, **kwargs):
        """Pyro guide: sample the prior site with as many draws as the enclosing plates ask for."""
        plates = [f for f in get_plates() if f.size is not None]
        n = int(math.prod(f.size for f in plates)) if plates else 1
        problem = self.problem(*args, **kwargs)
        self.check(problem)
        x = self.run(problem, n, None)
        ne = len(problem.event_shape)
        if plates:
            batch = [1] * max(-f.dim for f in plates)
            for f in plates:
                batch[f.dim] = f.size
            x = x.reshape(tuple(batch) + tuple(problem.event_shape))
        else:
            x = x[0]
        return pyro.sample(problem.prior_site, dist.Delta(x, event_dim=ne))
