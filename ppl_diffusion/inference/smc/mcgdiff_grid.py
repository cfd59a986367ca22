"""MCGDiff's time grid: a :func:`~ppl_diffusion.schedules.time_grid` with the matching times inserted.

MCGDiff (Cardoso, Janati, Le Corff, Moulines, ICLR 2024) filters each observed spectral coordinate
``i`` from the step where the noised prior coordinate is as noisy as its observation: the matching
time ``tau_i`` with ``rho(tau_i) = sigma_y / s_i`` (``rho = sigma / alpha``). Inserting the ``tau_i``
into the grid makes every coordinate become active exactly at a grid point; ``max_match_times``
caps how many are inserted (the sampler snaps the others, see ``ppl_diffusion.inference.smc.mcgdiff``).
"""
from __future__ import annotations

import numbers

import torch

from ...models.operators import nonzero_singular
from ...schedules import Schedule, time_grid
from ..solver import OptionError

__all__ = ["mcgdiff_grid", "check_max_match_times"]


def mcgdiff_grid(
    schedule: Schedule,
    n_steps: int,
    singular_values: torch.Tensor,
    noise_std: float,
    dtype: torch.dtype = torch.float64,
    kind: str = "auto",
    max_match_times: int | None = None,
) -> torch.Tensor:
    """A :func:`time_grid` of ``kind`` (default ``"auto"``: ``"alpha"``, the official code's grid, on VP
    schedules; ``"uniform"`` on schedules whose alpha is constant) with the MCGDiff matching times inserted.

    For every non-zero singular value ``s_i`` (see ``ppl_diffusion.models.operators.nonzero_singular``)
    the matching time ``tau_i`` solves ``rho(tau_i) = sigma_y / s_i``
    (the step where the noised prior coordinate is as noisy as the observation, Cardoso et al. 2024).
    Inserting the ``tau_i`` into the grid makes each observed coordinate become "active" exactly at
    a grid point. Noiseless problems give ``tau_i = 0``.

    ``max_match_times`` (``None``: all) caps how many matching times are inserted, so the grid has at
    most ``n_steps + max_match_times`` steps whatever the number of distinct singular values; the
    sampler then snaps every ``tau_i`` down to the largest grid time ``<= tau_i`` (see
    ``ppl_diffusion.inference.smc.mcgdiff``). The inserted times are chosen greedily among the
    ``tau_i``: each pick is the one that most reduces ``sum_i 1 - rho(tau'_i)^2 / rho_i^2`` (the
    fraction of each coordinate's observation variance ``rho_i^2 = (sigma_y / s_i)^2`` left unmatched
    by its snapped time ``tau'_i``), starting from the base grid.
    """
    max_match_times = check_max_match_times(max_match_times)
    base = time_grid(schedule, n_steps, kind, dtype=torch.float64)
    s = torch.as_tensor(singular_values, dtype=torch.float64).flatten()
    s = s[nonzero_singular(s)]
    if noise_std < 0:
        raise ValueError(f"noise_std must be >= 0, got {noise_std}")
    if noise_std == 0 or s.numel() == 0:
        return base.to(dtype)
    taus = schedule.t_of_rho(noise_std / s).clamp(0.0, 1.0)
    if max_match_times is not None:
        taus = _greedy_match_times(schedule, base, taus, noise_std / s, int(max_match_times))
    grid = torch.unique(torch.cat([base, taus]))
    return torch.flip(grid, [0]).to(dtype)


def check_max_match_times(value, method: str = "mcgdiff_grid"):
    """``None`` or a non-negative integer (any integral type), else an :class:`OptionError` (a ValueError)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise OptionError(f"{method}: max_match_times must be None or an integer >= 0, got {value!r}")
    return int(value)


def _greedy_match_times(schedule: Schedule, base: torch.Tensor, taus: torch.Tensor, rho_obs: torch.Tensor,
                        k: int) -> torch.Tensor:
    """At most ``k`` of the matching times ``taus`` to insert into ``base`` (see :func:`mcgdiff_grid`).

    A candidate ``c`` in the grid interval ``[g_lo, g_hi)`` helps exactly the coordinates with
    ``c <= tau_i < g_hi`` (all snapped to ``g_lo`` now), so its gain is
    ``(rho(c)^2 - rho(g_lo)^2) * sum_{c <= tau_i < g_hi} 1 / rho_i^2``: prefix sums over the sorted
    ``tau_i`` give every gain in O(log n), with no (candidates x coordinates) table."""
    grid = torch.unique(base)  # ascending
    cand = torch.unique(taus)
    cand = cand[~torch.isin(cand, grid)]
    if k >= cand.numel():
        return cand
    order = torch.argsort(taus)
    tau_sorted = taus[order]
    prefix = torch.cat([torch.zeros(1, dtype=torch.float64),
                        torch.cumsum(1.0 / rho_obs.to(torch.float64)[order] ** 2, 0)])
    rho2_c = schedule.rho(cand).to(torch.float64) ** 2
    picked = []
    for _ in range(k):
        lo = torch.searchsorted(grid, cand, right=True) - 1            # g_lo = grid[lo] < c < grid[lo + 1]
        g_hi = torch.cat([grid, grid.new_full((1,), float("inf"))])[lo + 1]
        weight = (prefix[torch.searchsorted(tau_sorted, g_hi)] - prefix[torch.searchsorted(tau_sorted, cand)])
        gain = (rho2_c - schedule.rho(grid[lo]).to(torch.float64) ** 2) * weight
        best = int(torch.argmax(gain))
        picked.append(cand[best])
        grid = torch.sort(torch.cat([grid, cand[best:best + 1]])).values
        keep = torch.arange(cand.numel()) != best
        cand, rho2_c = cand[keep], rho2_c[keep]
    return torch.stack(picked) if picked else cand[:0]
