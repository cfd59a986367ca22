"""Base class of the explicit-approximation solvers: a Pyro guide that runs one batched reverse
diffusion with a method-specific :class:`~ppl_diffusion.inference.sampler.Hook`.

Use it three ways::

    guide = DPS(model, steps=100)                    # requirements checked here
    x = guide.sample(16, y=y)                        # (16, *event_shape), one batched run
    Predictive(model, guide=guide, num_samples=16, parallel=True)(y=y)   # same, through Pyro

Under ``Predictive(..., parallel=True)`` the guide finds Pyro's ``_num_predictive_samples`` plate and
produces that many samples from ONE batched run; it enables autograd itself where the method needs
it (Predictive runs guides under ``torch.no_grad``).

Joint mode (guides with ``infers_latents = True``, e.g. DPS): when the model has free latent sites
``theta`` besides the prior (an unknown noise level, an operator parameter), each of the ``n``
samples carries its own theta (started from prior draws) and every diffusion step moves it on
``log p(y | x0_hat, theta) + log p(theta)`` (:class:`~ppl_diffusion.inference.theta.JointTheta`)
before the method's x update, which uses the sample's current theta. :meth:`DiffusionGuide.draw`
returns the theta draws in ``Draws.extra["theta"]`` (``name -> (chain, draw, *shape)``) and the
batch mean of theta after every step in ``extra["theta_trace"]``; the Pyro guide samples the theta
sites too, so that ``Predictive(model, guide=guide)`` returns theta draws paired with x.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro.poutine.runtime import get_plates

from ...schedules import GRID_KINDS, time_grid
from ...models.probe import in_predictive_probe
from ..problem import Problem
from ..sampler import Hook, reverse_diffusion, terminal_noise
from ..solver import Draws, Solver, check_choice, check_int, check_number, measure
from ..theta import THETA_UPDATES, JointTheta, theta_transforms
from ...memory import check_fits  # noqa: I001 - (kept apart from the imports above)
from ..health import running

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



def sample_prior_site(problem: Problem, x: torch.Tensor, frames) -> torch.Tensor:
    """Emit a guide's draws ``x`` ``(n, *event)`` at the prior site as a ``Delta``, laid out over the
    enclosing plate ``frames`` (``x[0]`` when there are none)."""
    if frames:
        batch = [1] * max(-f.dim for f in frames)
        for f in frames:
            batch[f.dim] = f.size
        x = x.reshape(tuple(batch) + tuple(problem.event_shape))
    else:
        x = x[0]
    return pyro.sample(problem.prior_site, dist.Delta(x, event_dim=len(problem.event_shape)))

class DiffusionGuide(Solver):
    """Base class. Subclasses declare their options as explicit keyword arguments of ``__init__``
    (with the shared ``steps``, ``eta``, ``grid``, ``prior_site``, ``progress`` and their own
    defaults), store them, call ``super().__init__`` and implement :meth:`make_hook` (or
    :meth:`run`)."""

    name = "guide"
    family = "guide"
    supports_plates = True
    requires: Sequence[str] = ("likelihood",)

    def __init__(self, model, *, steps: int = 100, eta: float = 1.0, grid: str = "uniform",
                 prior_site: str | None = None, progress: bool = False):
        self.steps = check_int("steps", steps, self.name)
        self.eta = check_number("eta", eta, self.name, 0.0, 1.0)
        self.grid = check_choice("grid", grid, GRID_KINDS, self.name)
        structure = self.setup_solver(model, prior_site, progress)
        if self.infers_latents:
            theta_transforms(structure, method=self.name)  # continuous theta only
        self.last_nfe = 0
        #: the theta state of the last run in joint mode (a JointTheta), else None
        self.joint: JointTheta | None = None

    def set_theta_options(self, update: str, lr: float, steps: int, precondition: bool, final_steps: int) -> None:
        """Check and keep the joint-mode options (guides with ``infers_latents``; call before
        ``super().__init__``)."""
        self.theta_update = check_choice("theta_update", update, THETA_UPDATES, self.name)
        self.theta_lr = check_number("theta_lr", lr, self.name, low=0.0, low_open=True)
        self.theta_steps = check_int("theta_steps", steps, self.name)
        self.theta_precondition = bool(precondition)
        self.theta_final_steps = check_int("theta_final_steps", final_steps, self.name, minimum=0)

    def joint_theta(self, problem: Problem, n: int, generator) -> JointTheta | None:
        """The theta state of a run of ``n`` elements (``None`` without free latent sites): one theta
        per sample (per ``B`` elements on an expanded plate of ``B`` measurements)."""
        if not (self.infers_latents and problem.free_latents):
            return None
        exp = getattr(problem, "_expanded", None)
        return JointTheta(problem, n // exp[1] if exp is not None else n, update=self.theta_update,
                          lr=self.theta_lr, steps=self.theta_steps, precondition=self.theta_precondition,
                          final_steps=self.theta_final_steps, generator=generator)

    # -- subclass API --------------------------------------------------------------------
    def make_hook(self, problem: Problem, n: int) -> Hook:  # pragma: no cover - abstract
        raise NotImplementedError

    def times(self, problem: Problem) -> torch.Tensor:
        return time_grid(problem.prior.schedule, self.steps, self.grid)

    def initial_state(self, problem: Problem, n: int, generator) -> torch.Tensor:
        shape = (n,) + tuple(problem.event_shape)
        return terminal_noise(problem.prior, shape, generator, problem.dtype, problem.device)

    def run(self, problem: Problem, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Default: the shared reverse-diffusion loop with this method's hook (in joint mode the hook
        reads ``self.joint``, built here)."""
        self.joint = self.joint_theta(problem, n, generator)
        hook = self.make_hook(problem, n)
        x = self.initial_state(problem, n, generator)
        return reverse_diffusion(problem.denoiser, x, self.times(problem), eta=self.eta, hook=hook,
                                 generator=generator, progress=self.progress, desc=self.name)

    # -- user API ------------------------------------------------------------------------
    def sample(self, num_samples: int, *args, generator: torch.Generator | None = None, **kwargs) -> torch.Tensor:
        """``num_samples`` posterior draws ``(num_samples, *event_shape)`` from one batched run."""
        return self.draw(num_samples, *args, generator=generator, **kwargs).samples[0]

    def draw(self, num_samples: int, *args, generator: torch.Generator | None = None, **kwargs) -> Draws:
        """``num_samples`` draws from ONE batched reverse diffusion, as :class:`Draws` (one chain);
        ``nfe_per_sample`` is the number of network evaluations each draw saw."""
        n = check_int("num_samples", num_samples, self.name)
        problem = self.problem(*args, **kwargs)
        den = problem.denoiser
        start = den.nfe
        with measure(den) as meter:
            out, theta = self._run_batched(problem, n, generator)
        self.last_nfe = den.nfe - start
        extra = {}
        if theta is not None:
            extra = {"theta": {k: v[None] for k, v in theta.items()}, "theta_trace": self.joint.trace()}
        return self._draws(out[None], meter, problem, n * problem.num_measurements, extra=extra,
                           nfe_per_sample=meter.evals / (n * problem.num_measurements))

    def _run_batched(self, problem: Problem, n: int, generator):
        """``n`` draws per measurement: ``(x, theta)`` with ``x`` of shape ``(n, *event)``, or
        ``(n, *plate_shape, *event)`` for a plate of measurements (ONE batched run of ``n * B``
        elements, each conditioned on its own ``y``), and ``theta`` (``name -> (n, *site_shape)``)
        in joint mode, else ``None``."""
        self.joint = None
        B = problem.num_measurements
        check_fits(self.name, n * B, problem.event_shape, problem.dtype, problem.device, den=problem.denoiser)
        with running(self):  # the divergence guard names this solver's options
            out = self.run(problem.expand_measurements(n) if problem.plates else problem, n * B, generator)
        if self.joint is not None:  # theta paired with the returned x
            self.joint.finish(out, generator)
        if problem.plates:
            out = out.reshape((n,) + problem.plate_shape + tuple(problem.event_shape))
        theta = None if self.joint is None else {k: v.detach() for k, v in self.joint.values().items()}
        return out, theta

    def _placeholder(self, problem: Problem, n: int):
        """Zeros (and the traced theta values) shaped like :meth:`_run_batched`'s output, for the
        shape-only runs of ``Predictive`` whose values Pyro discards."""
        shape = (n,) + problem.plate_shape + tuple(problem.event_shape)
        x = torch.zeros(shape, dtype=problem.dtype, device=problem.device)
        theta = None
        if self.infers_latents and problem.free_latents:
            theta = {k: torch.as_tensor(problem.latent[k]["value"]).detach().expand(
                (n,) + tuple(torch.as_tensor(problem.latent[k]["value"]).shape)) for k in problem.free_latents}
        return x, theta

    def __call__(self, *args, **kwargs):
        """Pyro guide: sample the prior site (and, in joint mode, the theta sites, paired with x) with
        as many draws as the enclosing plates ask for."""
        plates = [f for f in get_plates() if f.size is not None]
        n = int(math.prod(f.size for f in plates)) if plates else 1
        problem = self.problem(*args, **kwargs)
        if in_predictive_probe():  # Predictive's shape-only runs (models/probe.py): no network call
            x, theta = self._placeholder(problem, n)
        else:
            x, theta = self._run_batched(problem, n, None)
        for name, v in (theta or {}).items():
            site = problem.latent[name]
            own = tuple(torch.as_tensor(site["value"]).shape)
            bs = tuple(site["fn"].batch_shape)
            if plates:
                shape = [1] * max(max(-f.dim for f in plates), len(bs))
                for f in plates:
                    shape[f.dim] = f.size
                if bs:
                    shape[len(shape) - len(bs):] = bs
                v = v.reshape(tuple(shape) + own[len(bs):])
            else:
                v = v[0]
            pyro.sample(name, dist.Delta(v, event_dim=len(own) - len(bs)))
        return sample_prior_site(problem, x, plates + list(problem.plates))
