"""Every solver of the library by name: the registry entry, built with its options, run by ``draw()``.

:func:`run_method` is what the demo, ``ppl-diffusion solve``, the image benchmark and the examples
call. It has no knowledge of families: the options that belong to a run rather than to the solver
(a kernel's ``chains`` / ``warmup`` / ``thin``, SMC's ``independent``) are told apart from the
constructor's by the class's ``draw`` signature, and the result is the solver's own
:class:`~ppl_diffusion.inference.solver.Draws`.
"""
from __future__ import annotations

import inspect

import torch

from .inference.registry import available_solvers, get_solver
from .inference.solver import Draws, OptionError

__all__ = ["METHOD_DEFAULTS", "MethodResult", "method_key", "available_methods", "split_options", "run_method"]

#: options applied unless the caller sets them. RED-Diff learns a diagonal scale, so that its draws
#: come from the fitted Gaussian q (with ``learn_scale=False`` every draw is the point estimate), and
#: weighs its prior as the paper does where the noise level is known (``paper_balance="auto"``).
#: DDRM at 50 steps: its paper's 20 leave the digits' posterior mean blurred (issue 16: 17.4 -> 25 dB).
METHOD_DEFAULTS: dict[str, dict] = {"red_diff": {"learn_scale": True, "paper_balance": "auto"}, "ddrm": {"steps": 50}}

#: the result of :func:`run_method` (kept as a name for callers of the former demo API)
MethodResult = Draws


def method_key(name: str) -> str:
    """The registry name of ``name`` (aliases such as ``"ddnm+"`` accepted); ValueError listing the names."""
    return get_solver(name).name


def available_methods() -> dict:
    """``{name: family}`` of the registered methods whose module imports in this installation."""
    return available_solvers()


def _named_parameters(fn) -> set:
    params = inspect.signature(inspect.unwrap(fn)).parameters
    return {k for k, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)} - {"self"}


def run_options(cls) -> set:
    """Options of ``cls.draw`` that configure a run (every named parameter but the sample count and
    the generator), minus those the constructor also takes."""
    return _named_parameters(cls.draw) - {"num_samples", "generator"} - set(cls.options())


def split_options(cls, options: dict) -> tuple:
    """``(constructor options, draw options)`` of ``options`` for the solver class ``cls``: an option
    named in ``cls.draw`` and not in the constructor goes to ``draw``; every other one goes to the
    constructor, which names an unknown option and lists the valid ones."""
    run = run_options(cls)
    ctor = {k: v for k, v in options.items() if k not in run}
    return ctor, {k: v for k, v in options.items() if k in run}


def run_method(name: str, model, y: torch.Tensor, num_samples: int = 8, generator: torch.Generator | None = None,
               options: dict | None = None, progress: bool = False) -> Draws:
    """Run the registered solver ``name`` on ``model`` conditioned on ``y``; returns its :class:`Draws`
    (samples ``(chain, draw, *event)``, network evaluations per sample, seconds, statistics).

    ``options`` (over :data:`METHOD_DEFAULTS`) go to the solver's constructor, except the options of
    its ``draw`` (see :func:`split_options`): for the MCMC kernels ``chains`` (default
    ``max(1, num_samples // 2)``), ``warmup`` and ``thin``; for SMC ``independent`` (default True: one
    run per draw). ``progress`` goes wherever the solver takes it.
    """
    info = get_solver(name)
    try:
        cls = info.load()
    except (ImportError, AttributeError) as e:
        raise ValueError(f"method {info.name!r} is not available in this installation ({e})") from e
    n = int(num_samples)
    if n < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    opts = {**METHOD_DEFAULTS.get(info.name, {}), **dict(options or {})}
    ctor, run = split_options(cls, opts)
    if "progress" in cls.options():
        ctor.setdefault("progress", progress)
    elif "progress" in run_options(cls):
        run.setdefault("progress", progress)
    try:
        solver = cls(model, **ctor)
    except OptionError:
        raise
    except TypeError as e:
        raise ValueError(f"method {info.name!r}: bad options {sorted(opts)} ({e})") from e
    draws = solver.draw(n, y=y, generator=generator, **run)
    if not torch.isfinite(draws.samples).all():
        bad = int((~torch.isfinite(draws.samples)).flatten(2).any(-1).sum())
        raise FloatingPointError(f"method {info.name!r}: {bad} samples are not finite; try more steps or smaller "
                                 "step sizes")
    return draws
