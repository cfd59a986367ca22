"""The one solver contract shared by every family (guides, variational, kernels, SMC).

Every solver class

* is built as ``Solver(model, *, option=default, ...)`` with **explicit keyword options**: ``help()``
  and ``inspect.signature`` show each option with its default; an unknown option raises
  :class:`OptionError` (a ``ValueError``) naming it and listing the valid ones;
* reads the problem from the Pyro ``model`` and checks its requirements once, at construction
  (:meth:`Solver.setup_solver`): a ``ValueError`` names the missing piece before any work;
* implements :meth:`Solver.draw`, which returns posterior draws and what they cost as a
  :class:`Draws`: samples with ``(chain, draw, *event)`` dims, network evaluations per sample and
  per-family statistics. The CLI, the demo, the benchmarks and the examples go through it.

The families keep their native Pyro entry points beside ``draw`` (a guide is a Pyro guide, RED-Diff
runs through ``pyro.infer.SVI``, a kernel through ``pyro.infer.MCMC``).
"""
from __future__ import annotations

import functools
import inspect
import math
import time
from dataclasses import dataclass, field

import torch

from .problem import Problem

__all__ = ["Solver", "Draws", "ChainDraws", "OptionError", "check_int", "check_number", "check_choice", "measure"]


class OptionError(ValueError, TypeError):
    """An unknown or invalid solver option (a ``ValueError``; also a ``TypeError``, as Python raises
    for an unexpected keyword argument)."""


def check_int(name: str, value, method: str, minimum: int = 1) -> int:
    """``int(value)`` or an :class:`OptionError` naming the option."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or \
            int(value) != value or value < minimum:
        what = {1: "a positive integer", 0: "a non-negative integer"}.get(minimum, f"an integer >= {minimum}")
        raise OptionError(f"{method}: {name} must be {what}, got {value!r}")
    return int(value)


def check_number(name: str, value, method: str, low: float | None = None, high: float | None = None,
                 low_open: bool = False) -> float:
    """``float(value)``, finite and inside ``[low, high]`` (``(low, high]`` with ``low_open``)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise OptionError(f"{method}: {name} must be a number, got {value!r}") from None
    bad = not math.isfinite(v) or (low is not None and (v < low or (low_open and v == low))) or \
        (high is not None and v > high)
    if bad:
        if high is None and low is not None:  # one-sided: "must be a finite number > 0"
            raise OptionError(f"{method}: {name} must be a finite number {'>' if low_open else '>='} {low:g}, "
                              f"got {value!r}")
        lo = "-inf" if low is None else f"{low:g}"
        hi = "inf" if high is None else f"{high:g}"
        raise OptionError(f"{method}: {name} must lie in {'(' if low_open else '['}{lo}, {hi}], got {value!r}")
    return v


def check_choice(name: str, value, choices, method: str):
    """``value`` if it is one of ``choices``, else an :class:`OptionError` listing them."""
    if value not in choices:
        raise OptionError(f"{method}: {name} must be one of {sorted(choices, key=repr)}, got {value!r}")
    return value


class ChainDraws:
    """Accessors shared by results whose ``samples`` are ``(chain, draw, ...)``."""

    samples: torch.Tensor

    @property
    def num_chains(self) -> int:
        return self.samples.shape[0]

    @property
    def num_draws(self) -> int:
        return self.samples.shape[1]

    def flat(self) -> torch.Tensor:
        """All draws pooled: ``(chain * draw, *event)``."""
        return self.samples.reshape((-1,) + tuple(self.samples.shape[2:]))


@dataclass
class Draws(ChainDraws):
    """Posterior draws of one :meth:`Solver.draw` call and what they cost.

    * ``samples``: ``(chain, draw, *event)``; guides, SMC and variational solvers return one chain,
      kernels one row per chain;
    * ``nfe_per_sample``: network evaluations per returned sample (evaluations of single samples
      summed over every network call, divided by the number of draws); for variational solvers the
      network evaluations of the whole fit (draws from the fitted ``q`` are free);
    * ``stats``: per-draw statistics ``name -> (chain, draw)`` tensors (``diverging``, ``rho``, ...);
    * ``extra``: family-specific results (``log_evidence``, ``ess``, ``loss_trace``, the raw
      ``SMCResult`` / ``ChainResult``, ...).
    """

    samples: torch.Tensor
    nfe_per_sample: float
    seconds: float
    method: str
    family: str
    stats: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    site: str = "x"
    observation: torch.Tensor | None = None
    #: dim names of a plate of measurements between ``draw`` and the event (``("measurement",)``)
    plate_dims: tuple = ()
    #: the :class:`Problem` the draws solve (model + measurement: the predictive groups need it)
    problem: Problem | None = field(default=None, repr=False, compare=False)

    def to_inference_data(self, predictive: bool = True, **kwargs):
        """ArviZ ``InferenceData``: ``posterior[site]`` ``(chain, draw, [measurement,] channel, row,
        col)``, jointly inferred latent sites, the per-draw stats, ``observed_data`` and, with the
        problem known (``predictive=True``), the POINTWISE ``log_likelihood`` and a
        ``posterior_predictive`` draw per sample (``ppl_diffusion.idata``)."""
        from ..idata import draws_inference_data

        return draws_inference_data(self, predictive=predictive, **kwargs)

    def __repr__(self) -> str:
        return (f"Draws(method={self.method!r}, family={self.family!r}, samples={tuple(self.samples.shape)}, "
                f"nfe_per_sample={self.nfe_per_sample:.4g}, seconds={self.seconds:.3g}, "
                f"stats={sorted(self.stats)}, extra={sorted(self.extra)})")


class measure:
    """Context manager timing a run and counting the denoiser's evaluations of single samples."""

    def __init__(self, denoiser):
        self.denoiser = denoiser

    def __enter__(self):
        self.evals0 = self.denoiser.sample_evals
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0
        self.evals = self.denoiser.sample_evals - self.evals0
        return False


def _valid_options(init) -> list:
    params = inspect.signature(init).parameters
    return [n for n, p in params.items()
            if n not in ("self", "model") and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]


class Solver:
    """Base of every solver (see the module docstring).

    Subclasses set ``name`` (shown in messages), ``family`` and ``requires`` (the pieces of the
    problem they need, see :meth:`Problem.require`), declare their options as explicit keyword
    arguments of ``__init__``, call :meth:`setup_solver` there, and implement :meth:`draw`.
    """

    name: str = "solver"
    family: str = "solver"
    requires: tuple = ("likelihood",)
    #: whether the solver infers latent sites other than the prior's (else it refuses free ones)
    infers_latents: bool = False
    #: whether the solver batches a plate of measurements (else it refuses plated models)
    supports_plates: bool = False
    #: whether the solver works on a LatentDiffusionPrior (latent solvers) instead of a pixel DiffusionPrior
    latent_prior: bool = False

    def __init_subclass__(cls, **kwargs):
        """Wrap a subclass's ``__init__`` so that an unknown keyword option raises one
        :class:`OptionError` naming it and the valid options (``help`` still shows the signature)."""
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is None or getattr(init, "_checks_options", False):
            return
        params = inspect.signature(init).parameters.values()
        if any(p.kind is p.VAR_KEYWORD for p in params):
            return  # forwards **options to a checked __init__
        valid = _valid_options(init)

        @functools.wraps(init)
        def checked(self, *args, **kwargs):
            unknown = sorted(set(kwargs) - set(valid) - {"model"})
            if unknown:
                raise OptionError(f"{type(self).name}: unknown options {unknown}; valid options: {', '.join(valid)}")
            return init(self, *args, **kwargs)

        checked._checks_options = True
        cls.__init__ = checked

    @classmethod
    def options(cls) -> dict:
        """``{option: default}`` of this solver's constructor."""
        init = inspect.unwrap(cls.__init__)
        return {n: p.default for n, p in inspect.signature(init).parameters.items()
                if n in _valid_options(init)}

    # -- shared set-up --------------------------------------------------------------------
    def setup_solver(self, model, prior_site: str | None = None, progress: bool = False) -> Problem:
        """Keep the model, read its structure (no measurement needed) and check the requirements."""
        if not callable(model):
            raise ValueError(f"{self.name}: model must be a callable Pyro model")
        self.model, self.prior_site, self.progress = model, prior_site, progress
        structure = Problem.from_model(model, prior_site=prior_site, allow_unobserved=True)
        structure.check_model(self.name, latents=self.infers_latents, plates=self.supports_plates)
        structure.check_prior(self.name, latent=self.latent_prior)
        self.check(structure)
        return structure

    def check(self, problem: Problem) -> None:
        """Raise a ValueError naming the missing piece if the problem lacks a requirement."""
        problem.require(self.requires, self.name)

    def problem(self, *args, **kwargs) -> Problem:
        """The problem of ``model(*args, **kwargs)`` (e.g. ``y=y``), checked."""
        problem = Problem.from_model(self.model, *args, prior_site=self.prior_site, **kwargs)
        problem.check_model(self.name, latents=self.infers_latents, plates=self.supports_plates)
        problem.check_prior(self.name, latent=self.latent_prior)
        self.check(problem)
        return problem

    # -- the one method every family implements -------------------------------------------
    def draw(self, num_samples: int, *args, generator: torch.Generator | None = None, **kwargs) -> Draws:
        """``num_samples`` posterior draws for the measurement passed as model arguments
        (``draw(16, y=y)``), with their cost and statistics (a :class:`Draws`)."""
        raise NotImplementedError

    def _draws(self, samples, meter: measure, problem: Problem, n: int, stats=None, extra=None,
               nfe_per_sample: float | None = None) -> Draws:
        nfe = meter.evals / max(n, 1) if nfe_per_sample is None else float(nfe_per_sample)
        plates = tuple(f.name for f in problem.plates)
        plate_dims = ("measurement",) if len(plates) == 1 else plates
        return Draws(samples.detach(), float(nfe), meter.seconds, self.name, self.family, dict(stats or {}),
                     dict(extra or {}), problem.prior_site, problem.observation, plate_dims, problem)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={getattr(self, k, v)!r}' for k, v in self.options().items())})"


def options_help(cls) -> str:
    """One line per option (name = default) for listings."""
    return ", ".join(f"{k}={v!r}" for k, v in cls.options().items())

