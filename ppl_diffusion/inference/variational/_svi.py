"""The SVI loop shared by the variational solvers: progress bar, loss trace, non-finite stop, the
divergence guard's error and Ctrl-C (both keep the loss trace in ``.partial``)."""
from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from tqdm.auto import tqdm

from ..health import DivergenceError, RunInterrupted


class NonFiniteLossError(FloatingPointError):
    """Raised by a variational loss before its backward pass when the loss is NaN/Inf, so that the
    optimiser never applies a non-finite gradient (the parameters stay at their last good values)."""


def svi_steps(svi, steps: int, args, kwargs, desc: str, progress: bool,
              before: Callable[[], None] | None = None,
              check: Callable[[float], str | None] | None = None,
              postfix: Callable[[float], dict] | None = None, every: int = 20):
    """Run ``svi.step(*args, **kwargs)`` ``steps`` times.

    ``before()`` runs before each step (e.g. a snapshot of the parameters); ``check(loss)`` after
    it returns a stop reason (the step is then not recorded) or None. A :class:`NonFiniteLossError`
    raised by the loss also stops the loop. Each stop warns (RuntimeWarning). Returns
    ``(trace, stopped_reason)``: the float64 losses of the completed steps and the reason or None.
    """
    trace, reason = [], None
    bar = tqdm(range(int(steps)), desc=desc, disable=not progress, leave=False)
    try:
        for _ in bar:
            if before is not None:
                before()
            try:
                val = svi.step(*args, **kwargs)
            except NonFiniteLossError as exc:
                reason = str(exc)
            else:
                reason = check(val) if check is not None else None
            if reason is not None:
                warnings.warn(reason, RuntimeWarning, stacklevel=3)
                break
            trace.append(val)
            if len(trace) % every == 0:
                bar.set_postfix(**(postfix(val) if postfix is not None else {"loss": f"{val:.4g}"}))
    except DivergenceError as exc:  # the divergence guard (raised by check): keep the loss trace
        bar.close()
        exc.partial = dict(exc.partial or {}, loss_trace=torch.tensor(trace, dtype=torch.float64))
        raise
    except KeyboardInterrupt as exc:  # Ctrl-C: the loss trace so far (the caller adds its parameters)
        bar.close()
        if isinstance(exc, RunInterrupted):
            raise
        raise RunInterrupted(f"{desc}: interrupted after {len(trace)}/{int(steps)} steps; .partial holds the "
                             "loss trace and the parameters reached", step=len(trace),
                             partial={"loss_trace": torch.tensor(trace, dtype=torch.float64),
                                      "interrupted": True}) from None
    return torch.tensor(trace, dtype=torch.float64), reason
