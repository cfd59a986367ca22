"""Warm-up that runs until the chains stop drifting (``warmup="auto"`` of :meth:`DiffusionKernel.draw`).

A fixed warm-up is either wasted (a unimodal posterior settles in tens of iterations) or too short
(measured on a d = 800 Gaussian mixture: PnP-DM with 12 replicas still has 3-28 % of its cold chains in
components without posterior mass after 200 iterations and none after 1,000). ``warmup="auto"``
decides from the chains themselves, with a between-window comparison in the spirit of Geweke's
diagnostic (Geweke, "Evaluating the accuracy of sampling-based approaches to the calculation of
posterior moments", Bayesian Statistics 4, 1992), made paired over the chains:

* during warm-up every ``every`` iterations (``first / 16``) each chain's state is recorded as a
  ``q``-dimensional random projection (``q = min(dim, 32)``, fixed directions) and its
  log-likelihood ``log p(y | x)``;
* at the checkpoints ``c_0 = first, c_1 = 2 first, c_2 = 4 first, ...`` the two windows
  ``W_1 = (c_{k-1} / 2, c_{k-1}]`` and ``W_2 = (c_{k-1}, c_k]`` are compared chain by chain: k-means
  regions (``regions`` centres, on the projections of both windows) give each chain its fraction of
  time in each region in either window, and the paired differences ``W_2 - W_1`` (one per chain) of
  each region's fraction and of the mean log-likelihood are t-tested against 0. A chain that is
  stationary has the same law in both windows, so each difference has mean 0 and the chains are
  independent; a chain population still leaving a wrong mode moves every one of them the same way.
  Averaging over a window removes most of the noise of chains that mix quickly between regions
  (replica swaps), which a comparison of two single time points keeps.

Warm-up ends at the first checkpoint ``c_k`` (k >= 1) where no test rejects at level ``alpha`` (each
test at that level, no multiplicity correction: a false alarm costs one more doubling, a miss costs the
draws). A run that reaches ``max_warmup`` without settling warns with the windows, the region and the
options. The warm-up used and every comparison are in the result (``ChainResult.warmup``,
``.warmup_checks``; ``Draws.extra["warmup"]`` / ``["warmup_checks"]``).

What it cannot see: chains that all start in the same wrong mode and never leave it (no drift at
any time); start them dispersed (``init="randn"`` with a large ``init_scale``, or prior draws) and use
replicas on multimodal posteriors. Its power grows with the chains (it needs ``min_chains``); what it
leaves is a drift below what ``chains`` paired differences resolve (a few percent of the mass per
doubling with 100 chains). Measured (benchmarks/results/pnpdm_warmup_trace.md, ``benchmarks/warmup_trace.py``):
on a d = 800 mixture PnP-DM's chains spent 4.5 % and then 2.4 % of their time in components without posterior
mass in the first two windows, the comparison read p = 0.06, and the warm-up stopped at 200 with one chain of
100 still there (none is left after 800); where such a draw matters, fix a longer warm-up or start the comparisons
later (``AutoWarmup(first=200)``: on that problem the same settings then ran to the cap and warned, with no such
draw left; benchmarks/results/exactness_d800_dy8_pnpdm_first200_p16.md).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, replace

import torch

from ..solver import OptionError, check_int

__all__ = ["AutoWarmup", "WarmupWarning", "WindowRecorder", "window_drift", "resolve_warmup"]


class WarmupWarning(UserWarning):
    """The automatic warm-up reached its cap with the chains still drifting."""


@dataclass(frozen=True)
class AutoWarmup:
    """Settings of ``warmup="auto"`` (see the module docstring): the first checkpoint, the cap, the
    level of each test, the k-means regions and the fewest chains (per measurement) it accepts."""

    first: int = 100
    max_warmup: int = 3200
    alpha: float = 0.05
    regions: int = 4
    min_chains: int = 16

    def __post_init__(self):
        check_int("first", self.first, "warmup='auto'")
        check_int("max_warmup", self.max_warmup, "warmup='auto'")
        if self.max_warmup < 2 * self.first:
            raise OptionError(f"warmup='auto': max_warmup ({self.max_warmup}) must be at least twice first "
                              f"({self.first}): the first comparison is at 2 x first")
        if not 0.0 < float(self.alpha) < 1.0:
            raise OptionError(f"warmup='auto': alpha must lie in (0, 1), got {self.alpha}")
        check_int("regions", self.regions, "warmup='auto'", minimum=2)
        check_int("min_chains", self.min_chains, "warmup='auto'", minimum=2)

    def checkpoints(self) -> list:
        """``first, 2 first, 4 first, ...`` up to ``max_warmup`` (which is always the last)."""
        out, t = [], self.first
        while t < self.max_warmup:
            out.append(t)
            t *= 2
        return out + [self.max_warmup]


def resolve_warmup(warmup, name: str, minimum: int = 0, chains: int | None = None, auto: AutoWarmup | None = None):
    """``warmup`` as an ``int`` or an :class:`AutoWarmup` (``"auto"``: ``auto``, by default the defaults, with
    ``first`` at least ``minimum``, e.g. PnP-DM's annealing). ``chains``: refuse ``auto`` with fewer than its
    ``min_chains``."""
    if isinstance(warmup, str):
        if warmup != "auto":
            raise OptionError(f"{name}: warmup must be an int >= 0 or 'auto', got {warmup!r}")
        warmup = AutoWarmup() if auto is None else auto
    if isinstance(warmup, AutoWarmup):
        if warmup.first < minimum:
            warmup = replace(warmup, first=int(minimum), max_warmup=max(warmup.max_warmup, 2 * int(minimum)))
        if chains is not None and chains < warmup.min_chains:
            raise OptionError(f"{name}: warmup='auto' compares the chains' ensemble between checkpoints and needs "
                              f">= {warmup.min_chains} chains per measurement, got {chains}; pass chains="
                              f"{warmup.min_chains} or more, or a fixed warmup")
        return warmup
    return check_int("warmup", warmup, name, minimum=0)


def _t_test_p(d: torch.Tensor) -> float:
    """Two-sided p-value of a zero mean of the paired differences ``d`` (the t statistic against a
    normal; the chains are >= ``min_chains``)."""
    d = d[torch.isfinite(d)].to(torch.float64)
    n = d.numel()
    if n < 2:
        return 1.0
    sd = float(d.std())
    if sd == 0.0:
        return 1.0 if float(d.mean()) == 0.0 else 0.0
    z = abs(float(d.mean())) / (sd / math.sqrt(n))
    return math.erfc(z / math.sqrt(2.0))


class WindowRecorder:
    """The warm-up's record: every ``every`` iterations a ``(C * B, q)`` random projection of the
    chains' states and their ``(C * B,)`` log-likelihoods (or ``None``), pruned to the two windows a
    checkpoint compares."""

    def __init__(self, settings: AutoWarmup, dim: int, device=None):
        self.settings = settings
        self.every = max(1, settings.first // 16)
        q = min(int(dim), 32)
        g = torch.Generator().manual_seed(20_240)
        self.proj = (torch.randn(int(dim), q, generator=g, dtype=torch.float64) / math.sqrt(q)).to(device)
        self.times, self.feats, self.lls = [], [], []
        self.checkpoints = settings.checkpoints()
        self.previous = None  # the last checkpoint passed

    def wants(self, t: int) -> bool:
        """Whether to record after ``t`` iterations (from half the first checkpoint on)."""
        return t >= self.settings.first // 2 and t % self.every == 0

    def add(self, t: int, x: torch.Tensor, ll: torch.Tensor | None) -> None:
        self.times.append(t)
        self.feats.append((x.reshape(x.shape[0], -1).to(self.proj.dtype) @ self.proj).cpu())
        self.lls.append(None if ll is None else ll.detach().to(torch.float64).reshape(-1).cpu())

    def check(self, t: int, groups: int) -> dict | None:
        """At a checkpoint ``t``: the comparison of the windows before it (``None`` at the first)."""
        prev, self.previous = self.previous, t
        if prev is None:
            return None
        w1 = [i for i, s in enumerate(self.times) if prev / 2 < s <= prev]
        w2 = [i for i, s in enumerate(self.times) if prev < s <= t]
        ll1 = None if any(self.lls[i] is None for i in w1 + w2) else torch.stack([self.lls[i] for i in w1])
        ll2 = None if ll1 is None else torch.stack([self.lls[i] for i in w2])
        out = window_drift(torch.stack([self.feats[i] for i in w1]), torch.stack([self.feats[i] for i in w2]),
                           groups, ll1, ll2, self.settings.regions, torch.Generator().manual_seed(t))
        keep = [i for i, s in enumerate(self.times) if s > t / 2]  # the next checkpoint's first window
        self.times = [self.times[i] for i in keep]
        self.feats = [self.feats[i] for i in keep]
        self.lls = [self.lls[i] for i in keep]
        out.update({"from": prev, "to": t})
        return out


def window_drift(f1: torch.Tensor, f2: torch.Tensor, groups: int = 1, ll1: torch.Tensor | None = None,
                 ll2: torch.Tensor | None = None, regions: int = 4,
                 generator: torch.Generator | None = None) -> dict:
    """Compare two windows of the chains' records (see the module docstring): ``f1`` ``(T1, C * groups,
    q)`` and ``f2`` ``(T2, C * groups, q)`` projections, ``ll1`` / ``ll2`` ``(T, C * groups)``
    log-likelihoods or ``None``; chain ``i`` of measurement ``b`` at ``i * groups + b``.

    Returns ``p_region`` (the smallest t-test p-value over regions and measurements), ``shift`` (that
    region's mean change of the chains' time fraction, ``W_2 - W_1``), ``region_weight`` (its share in
    ``W_2``), ``p_loglik`` (the smallest over measurements of the mean log-likelihood's test; 1.0
    without log-likelihoods), ``loglik_shift`` (its mean change) and ``p`` (the smaller p-value)."""
    from .mode_check import region_labels

    B = int(groups)
    T1, n, q = f1.shape
    T2 = f2.shape[0]
    C = n // B
    a = f1.to(torch.float64).reshape(T1, C, B, q)
    b_ = f2.to(torch.float64).reshape(T2, C, B, q)
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    best = {"p_region": 1.0, "shift": 0.0, "region_weight": float("nan"), "p_loglik": 1.0, "loglik_shift": 0.0}
    for m in range(B):
        lab = region_labels(torch.cat([a[:, :, m].reshape(-1, q), b_[:, :, m].reshape(-1, q)]), regions, generator=g)
        lab1, lab2 = lab[:T1 * C].reshape(T1, C), lab[T1 * C:].reshape(T2, C)
        for j in range(int(lab.max()) + 1):
            occ1, occ2 = (lab1 == j).double().mean(0), (lab2 == j).double().mean(0)  # (C,) time fractions
            p = _t_test_p(occ2 - occ1)
            if p < best["p_region"]:
                best.update(p_region=p, shift=float((occ2 - occ1).mean()), region_weight=float(occ2.mean()))
        if ll1 is not None and ll2 is not None:
            d = ll2.reshape(T2, C, B)[:, :, m].mean(0) - ll1.reshape(T1, C, B)[:, :, m].mean(0)
            p = _t_test_p(d)
            if p < best["p_loglik"]:
                best.update(p_loglik=p, loglik_shift=float(d[torch.isfinite(d)].mean()))
    best["p"] = min(best["p_region"], best["p_loglik"])
    return best


def _caller_level() -> int:
    """The ``stacklevel`` of the first frame outside this package (the user's call), for a warning
    raised from :func:`warn_unsettled` (the kernels' call depth differs)."""
    import os
    import sys

    pkg = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    frame, level = sys._getframe(2), 2  # level 1 is warn_unsettled itself
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(pkg + os.sep):
        frame, level = frame.f_back, level + 1
    return level


def warn_unsettled(name: str, cap: int, check: dict) -> None:
    """The :class:`WarmupWarning` of a run whose warm-up reached ``cap`` while still drifting (reported
    at the user's call)."""
    warnings.warn(
        f"{name}: warmup='auto' reached max_warmup={cap} with the chains still drifting between iterations "
        f"{check['from'] // 2}-{check['from']} and {check['from']}-{check['to']}: the time they spend in a region "
        f"holding {check['region_weight']:.2f} of them changed by {check['shift']:+.3f} (p = {check['p_region']:.3g}), "
        f"their mean log-likelihood by {check['loglik_shift']:+.3g} (p = {check['p_loglik']:.3g}). The draws may "
        "still misplace mode weight: raise max_warmup (warmup=AutoWarmup(max_warmup=...)), add replicas, or "
        "start the chains dispersed.",
        WarmupWarning, stacklevel=_caller_level())
