"""Replica exchange (parallel tempering) over a ladder of couplings, with the non-reversible
deterministic even-odd (DEO) swap scheme (Syed, Bouchard-Côté, Deligiannidis & Doucet, "Non-reversible
parallel tempering: a scalable highly parallel MCMC scheme", JRSS B 2022).

``K`` chains target ``pi_j(x, z) ∝ p(x) exp(-f(z)) N(z; x, rho_j^2 I)`` on the couplings
``rho_0 < ... < rho_{K-1}`` (the split-Gibbs targets of PnP-DM). Swapping the states of chains ``j``
and ``j + 1`` is accepted with probability ``min(1, r)``, with one of two ratios:

* joint (:func:`swap_log_ratio`, any likelihood): the ratio of the joint targets of ``(x, z)``,

      log r = (Delta_j - Delta_{j+1}) (1/rho_j^2 - 1/rho_{j+1}^2) / 2,   Delta = ||x - z||^2,

  in which the prior and the likelihood cancel (no density of the network is needed);
* marginal (:func:`marginal_swap_log_ratio`): the ratio of the x-marginals
  ``pi_j(x) ∝ p(x) L_j(x)``, ``L_j(x) = ∫ exp(-f(z)) N(z; x, rho_j^2 I) dz``, where the prior cancels,

      log r = log L_j(x_{j+1}) + log L_{j+1}(x_j) - log L_j(x_j) - log L_{j+1}(x_{j+1}),

  valid because the chain's state is x alone (z is redrawn from ``z | x`` by every sweep). It needs
  ``L_j`` in closed form (a linear Gaussian likelihood: ``N(y; A x, sigma^2 I + rho_j^2 A A^T)``) and
  is the Rao-Blackwellised version of the joint ratio: it does not carry the d-dimensional noise of
  ``Delta``, so it accepts more swaps (measured in benchmarks/results/kernels_mode_diagnostics.md).

Even pairs ``(0, 1), (2, 3), ...`` are proposed on even iterations, odd pairs on odd ones.
"""
from __future__ import annotations

import torch

__all__ = ["geometric_ladder", "swap_log_ratio", "marginal_swap_log_ratio", "ReplicaExchange"]


def geometric_ladder(low: float, high: float, n: int) -> list:
    """``n`` couplings from ``low`` to ``high``, geometrically spaced (``[low]`` when ``n = 1``)."""
    return [low * (high / low) ** (j / max(n - 1, 1)) for j in range(n)]


def swap_log_ratio(delta: torch.Tensor, rho: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
    """``log r`` of swapping chains ``j`` and ``j + 1`` (see the module docstring); ``delta``: ``(C, K)``
    squared distances ``||x - z||^2``, ``rho``: ``(K,)`` couplings, ``j``: pair indices. ``(C, len(j))``."""
    return 0.5 * (delta[:, j] - delta[:, j + 1]) * (rho[j] ** -2 - rho[j + 1] ** -2)


def marginal_swap_log_ratio(loglik: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
    """``log r`` of swapping chains ``j`` and ``j + 1`` by their x-marginals (see the module docstring);
    ``loglik``: ``(C, K, K)``, ``loglik[c, i, l] = log L_l(x_{c,i})`` (state ``i`` at coupling ``l``).
    ``(C, len(j))``."""
    return loglik[:, j + 1, j] + loglik[:, j, j + 1] - loglik[:, j, j] - loglik[:, j + 1, j + 1]


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

    def pairs(self, k: int, device=None) -> torch.Tensor:
        """Lower indices ``j`` of the pairs ``(j, j + 1)`` proposed at iteration ``k``: ``k mod 2``,
        ``k mod 2 + 2``, ..."""
        return torch.arange(k % 2, self.replicas - 1, 2, device=device)

    def swap(self, X: torch.Tensor, log_r: torch.Tensor, rho: torch.Tensor, k: int,
             generator: torch.Generator | None = None) -> None:
        """One DEO pass at iteration ``k``, in place on ``X`` (``(C, K, *event)``, coldest first): the
        pairs ``(j, j + 1)``, ``j`` in :meth:`pairs`, swap with probability ``min(1, r)``; ``log_r``
        (``(C, len(pairs))``, NaN for a pair that must not swap) from :func:`swap_log_ratio` or
        :func:`marginal_swap_log_ratio`; ``rho`` (``(K,)``) the current couplings. Pairs at equal
        couplings (during annealing) have ``r = 1``, always swap and are not counted."""
        j = self.pairs(k, X.device)
        if j.numel() == 0:
            return
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
