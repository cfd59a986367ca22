"""Extra steps near ``t = 0`` for the SMC samplers' time grids.

The last move of a DDPM / DDIM chain (Ho, Jain & Abbeel 2020, Eq. 11; Song, Meng & Ermon 2021,
Eq. 12) from the last positive grid time ``t_1`` to ``0`` has no noise: it returns the denoiser's
mean ``E[x_0 | x_{t_1}]``, which drops the conditional variance ``Var(x_0 | x_{t_1})`` from every
draw. On the GMM benchmark schedule the default ``"alpha"`` grid (uniform in ``alpha(t)``) has
``sigma(t_1) = 0.14`` at 100 steps, so a prior component of variance 0.05 loses ~30 % of its
variance in that one step and the draws' marginal intervals come out narrow
(benchmarks/results/smc_tail.md). :func:`refine_tail` inserts ``k`` times between ``t_1`` and 0,
geometric in ``sigma`` from ``sigma(t_1)`` to ``sigma_min``, so the deterministic last step starts at
``sigma_min`` and drops only ``~sigma_min^2``.
"""
from __future__ import annotations

import math

import torch

from ...schedules import resolve_grid

__all__ = ["refine_tail", "smc_grid"]


def smc_grid(schedule, grid: str, steps: int = 200) -> str:
    """The grid kind MCGDiff and TDS use for ``grid``: their ``"auto"`` is ``"alpha_log"`` on VP
    schedules (the official MCGDiff grid uniform in ``alpha(t)`` above ``sigma = 0.3``, a quarter of the
    steps log-uniform in ``sigma`` below, to ``1e-3``: :func:`~ppl_diffusion.schedules.time_grid`), else
    :func:`~ppl_diffusion.schedules.time_grid`'s ``"auto"``. At 200 steps it keeps 89-97 % of the prior
    variance of every coordinate, where ``"alpha"`` with 10 tail steps keeps 69 % of a small one
    (benchmarks/results/smc_variance_loss.md), and brings the samplers' 90 % coverage on the exactness
    families within one point of exact sample sets' (benchmarks/results/exactness_d8_dy*_alpha_log.md).
    Below 20 ``steps``: ``"alpha"``."""
    if grid != "auto":
        return grid
    if resolve_grid(schedule, "auto") != "alpha":
        return "auto"
    # below 20 steps the log part is too coarse (measured on digits SR x2, 3 steps: 15 dB per draw against
    # 28.5 on 'alpha'); 20 steps: 27-28 dB on either
    return "alpha_log" if steps >= 20 else "alpha"


def refine_tail(schedule, times: torch.Tensor, steps: int, sigma_min: float = 1e-3) -> torch.Tensor:
    """``times`` (decreasing, ending at 0) with ``steps`` times inserted before the final 0, at noise
    levels ``sigma`` geometric from ``sigma(times[-2])`` (excluded) to ``sigma_min`` (included),
    found by bisection of ``schedule.sigma`` on ``(0, times[-2])``. ``steps = 0`` or a grid whose
    last positive time already has ``sigma <= sigma_min`` returns ``times`` unchanged."""
    steps = int(steps)
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if steps == 0 or times.numel() < 2 or float(times[-1]) != 0.0:
        return times
    t1 = times[-2].to(torch.float64)
    s1 = float(schedule.sigma(t1))
    if not s1 > sigma_min > 0:
        return times
    sig = torch.logspace(math.log10(s1), math.log10(sigma_min), steps + 1, dtype=torch.float64)[1:]
    lo, hi = torch.zeros_like(sig), torch.full_like(sig, float(t1))
    for _ in range(60):  # sigma(t) increases with t on the VP schedules
        mid = 0.5 * (lo + hi)
        below = schedule.sigma(mid).to(torch.float64) < sig
        lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
    extra = torch.unique(0.5 * (lo + hi))
    extra = extra[(extra > 0) & (extra < t1)].flip(0)
    return torch.cat([times[:-1], extra.to(times.dtype), times[-1:]])
