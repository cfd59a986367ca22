"""Detect the shape-only runs that ``pyro.infer.Predictive`` makes before its real one.

``Predictive`` runs the model (and the guide, when given one) twice before the run whose values it
returns: once in ``_guess_max_plate_nesting`` and once for the shapes of the return sites, both under
``InitMessenger(init_to_sample)`` (Pyro 1.9, ``pyro/infer/predictive.py``). Their values are thrown
away, so a :class:`~ppl_diffusion.models.prior.DiffusionPrior` site need not run a reverse diffusion
there, nor a guide its method: both return a placeholder of the right shape at no network call
(:func:`in_predictive_probe`), so that ``Predictive(model, guide=g, num_samples=n, parallel=True)``
costs what ``g.sample(n)`` costs. The real (vectorised or sequential) run has no ``InitMessenger``
and is left alone.

:func:`called_from_pyro_trace` tells a ``log_prob`` called by Pyro's trace machinery (every ELBO,
HMC / NUTS potentials) from a direct call (see ``DiffusionPrior(trace_log_prob=...)``).
"""
from __future__ import annotations

import os
import sys

__all__ = ["in_predictive_probe", "called_from_pyro_trace"]

_PREDICTIVE_FILE = os.path.join("pyro", "infer", "predictive.py")


def in_predictive_probe(max_depth: int = 100) -> bool:
    """``True`` inside one of ``Predictive``'s shape-only runs (an ``InitMessenger(init_to_sample)``
    on Pyro's handler stack, called from ``pyro/infer/predictive.py``)."""
    from pyro.infer.autoguide.initialization import InitMessenger, init_to_sample
    from pyro.poutine.runtime import _PYRO_STACK

    if not any(isinstance(m, InitMessenger) and m.init_fn is init_to_sample for m in _PYRO_STACK):
        return False
    return _called_from(_PREDICTIVE_FILE, sys._getframe(2), max_depth)


def _called_from(suffix: str, frame, max_depth: int) -> bool:
    """Whether one of ``max_depth`` frames from ``frame`` up runs code of a file ending in ``suffix``."""
    for _ in range(max_depth):
        if frame is None:
            return False
        if frame.f_code.co_filename.endswith(suffix):
            return True
        frame = frame.f_back
    return False


_TRACE_FILE = os.path.join("pyro", "poutine", "trace_struct.py")


def called_from_pyro_trace(max_depth: int = 8) -> bool:
    """``True`` when a ``log_prob`` was called by Pyro's ``Trace.compute_log_prob`` /
    ``log_prob_sum`` (what every ELBO, HMC / NUTS potential and importance sampler uses), possibly
    through a few distribution wrappers (``Independent``, ``MaskedDistribution``)."""
    return _called_from(_TRACE_FILE, sys._getframe(2), max_depth)
