"""Replica exchange (parallel tempering) over a ladder of couplings, with the non-reversible
deterministic even-odd (DEO) swap scheme (Syed, Bouchard-Côté, Deligiannidis & Doucet, "Non-reversible
parallel tempering: a scalable highly parallel MCMC scheme", JRSS B 2022).

``K`` chains target ``pi_j(x, z) ∝ p(x) exp(-f(z)) N(z; x, rho_j^2 I)`` on the couplings
``rho_0 < ... < rho_{K-1}`` (the split-Gibbs targets of PnP-DM). Swapping the states of chains ``j``
and ``j + 1`` is accepted with probability ``min(1, r)``,

    log r = (Delta_j - Delta_{j+1}) (1/rho_j^2 - 1/rho_{j+1}^2) / 2,   Delta = ||x - z||^2,

the ratio of the joint targets, in which the prior and the likelihood cancel (no density of the
network is needed). Even pairs ``(0, 1), (2, 3), ...`` are proposed on even iterations, odd pairs
on odd ones.
"""
from __future__ import annotations

import torch

__all__ = ["geometric_ladder", "swap_log_ratio", "ReplicaExchange"]


def geometric_ladder(low: float, high: float, n: int) -> list:
    """``n`` couplings from ``low`` to ``high``, geometrically spaced (``[low]`` when ``n = 1``)."""
    return [low * (high / low) ** (j / max(n - 1, 1)) for j in range(n)]


def swap_log_ratio(delta: torch.Tensor, rho: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
    """``log r`` of swapping chains ``j`` and ``j + 1`` (see the module docstring); ``delta``: ``(C, K)``
    squared distances ``||x - z||^2``, ``rho``: ``(K,)`` couplings, ``j``: pair indices. ``(C, len(j))``."""
    return 0.5 * (delta[:, j] - delta[:, j + 1]) * (rho[j] ** -2 - rho[j + 1] ** -2)


class ReplicaExchange:
    """The DEO swap pass and its acceptance counts for ``replicas`` couplings (``ladder``)."""

    def __init__(self, ladder: list):
        self.ladder = list(ladder)
        self.replicas = len(self.ladder)
        self.reset()

    def reset(self) -> None:
        """Zero the swap counts (tried / accepted per adjacent pair)."""
        pairs = max(self.replicas - 1, 0)
        self.tried = torch.zeros(pairs, dtype=torch.float64)
        self.accepted = torch.zeros(pairs, dtype=torch.float64)

    def swap(self, X: torch.Tensor, delta: torch.Tensor, rho: torch.Tensor, k: int,
             generator: torch.Generator | None = None) -> None:
        """One DEO pass at iteration ``k``, in place on ``X`` (``(C, K, *event)``, coldest first):
        pairs ``(j, j + 1)`` with ``j = k mod 2, k mod 2 + 2, ...`` swap with probability ``min(1, r)``.
        ``delta`` (``(C, K)``, NaN for a replica that must not swap) and ``rho`` (``(K,)``, the current
        couplings) give ``r``. Pairs at equal couplings (during annealing) always swap and are not counted."""
        j = torch.arange(k % 2, self.replicas - 1, 2, device=X.device)
        if j.numel() == 0:
            return
        log_r = swap_log_ratio(delta, rho, j)
        u = torch.rand(log_r.shape, generator=generator, dtype=torch.float64, device=X.device)
        acc = (u.log() < log_r) & torch.isfinite(log_r)              # (C, pairs)
        a = acc.reshape(acc.shape + (1,) * (X.dim() - 2))
        lo, hi = X[:, j], X[:, j + 1]
        X[:, j], X[:, j + 1] = torch.where(a, hi, lo), torch.where(a, lo, hi)
        counted = (rho[j] != rho[j + 1]).cpu()
        jc = j.cpu()[counted]
        self.tried[jc] += acc.shape[0]
        self.accepted[jc] += acc.sum(0).cpu().to(torch.float64)[counted]

    @property
    def acceptance(self) -> torch.Tensor:
        """Swap acceptance rate of each adjacent pair since the last :meth:`reset` (``(replicas - 1,)``)."""
        return self.accepted / self.tried.clamp(min=1)
