"""Convergence diagnostics that see a misplaced mode weight: split R-hat of the log-likelihood, the
time each chain spends in each mode-like region, and the replica swap rates.

Coordinate-wise R-hat of ``x`` can read ~1 while chains sit in the wrong proportions of two modes
(each mode's coordinates overlap the other's marginally, and a chain stuck in the minor mode moves
the pooled quantiles little). Two statistics that differ between modes do not hide it:

* the log-likelihood ``log p(y | x)`` of each draw (a mode-sensitive scalar): rank-normalised split
  R-hat over the chains (Vehtari, Gelman, Simpson, Carpenter & Bürkner, "Rank-normalization,
  folding, and localization: an improved R-hat", Bayesian Analysis 2021; :func:`~ppl_diffusion.diagnostics.rhat`);
* mode-like regions: k-means (``regions`` centres, k-means++ start) on the pooled draws, then per
  chain the fraction of draws in each region and the split R-hat of each region's indicator; a chain
  that never visits a region the others visit shows as a large R-hat and a spread of occupancies.

A kernel with replicas (PnP-DM ``replicas > 1``) adds its swap acceptance per adjacent pair: a pair
that never swaps (< ``min_swap``) cuts the ladder, so the cold chain only sees the modes it started in.

An R-hat above 1.05 flags only when a permutation test agrees: the run's draws reshuffled among all
chains and draws are the same values under perfect mixing, so the fraction of reshufflings whose R-hat
reaches the run's is a p-value with the stated level whatever the chain layout (split R-hat alone is
not calibrated on short chains or small regions). Every ``run_chains`` / ``draw`` of the kernels runs
:func:`mixing_check` on its kept draws and warns with :class:`MixingWarning` from 20 draws per chain.

All chains starting in the same mode and staying there is invisible to every between-chain statistic:
start chains dispersed (``init="randn"`` with a large ``init_scale``, or the prior's draws).

Chains that start from independent draws of an approximate sampler (ParticleGibbs: one unconditional
SMC run per chain) and keep one draw each have no between-chain statistic at all; what can be tested
is whether the draws still depend on the start (:func:`start_dependence`). The chains are independent
and identically distributed, so where a chain has forgotten its start, start and draw are independent
across chains, and a permutation of the draws among the chains leaves the joint law unchanged: the
test's false-alarm rate is its level whatever the posterior. Draws that still depend on their start
carry the start's law, e.g. the mode weights of independent SMC runs.
"""
from __future__ import annotations

import math
import warnings

import torch

from ...diagnostics import kmeans_centres, rhat

__all__ = ["StartDependenceWarning", "chain_convergence", "start_dependence", "region_labels", "split_rhat_basic",
           "RHAT_THRESHOLD", "MIN_SWAP", "ALPHA", "PERMUTATIONS", "WARN_MIN_DRAWS",
           "MixingWarning", "mixing_check"]


class StartDependenceWarning(UserWarning):
    """A chain run's kept draws still depend on where its chains started (:func:`start_dependence`)."""


class MixingWarning(UserWarning):
    """A chain run's chains disagree on mode-like regions or on the log-likelihood, or its replica ladder
    is cut (:func:`chain_convergence`): the pooled draws may misplace mass between modes."""


#: flag a chain run whose mode-sensitive split R-hat exceeds this
RHAT_THRESHOLD = 1.05
#: flag a replica ladder whose adjacent-pair swap rate falls below this
MIN_SWAP = 0.05
#: ... and only when the R-hat's permutation p-value is below this (its false-alarm rate on exact draws)
ALPHA = 0.01
#: permutations of the draws among the chains for that p-value
PERMUTATIONS = 500
#: runs with fewer draws per chain are reported but not warned about (see :func:`mixing_check`)
WARN_MIN_DRAWS = 20


def split_rhat_basic(v: torch.Tensor) -> torch.Tensor:
    """Classic split R-hat (Gelman et al., BDA3 Sec. 11.4) of ``(chain, draw, *rest)`` values, shape
    ``rest``; suited to indicators (no ranks, ties everywhere). 1.0 where every chain is constant and
    equal, inf where chains are constant but different."""
    v = v.to(torch.float64)
    S = v.shape[1] // 2
    if S < 2:
        raise ValueError(f"split R-hat needs at least 4 draws per chain, got {v.shape[1]}")
    halves = torch.cat([v[:, :S], v[:, -S:]], 0)  # (2C, S, ...)
    mean, var = halves.mean(1), halves.var(1)
    W, B = var.mean(0), S * mean.var(0)
    r = torch.sqrt(((S - 1) / S * W + B / S) / W)
    same = B <= 1e-300
    return torch.where(W > 0, r, torch.where(same, torch.ones_like(r), torch.full_like(r, math.inf)))


def region_labels(x: torch.Tensor, regions: int = 4, iters: int = 25,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """k-means labels ``(n,)`` of the rows of ``x`` (n, D) with ``regions`` centres (k-means++ start)."""
    x = x.reshape(x.shape[0], -1).to(torch.float64)
    return torch.cdist(x, kmeans_centres(x, regions, iters, generator)).argmin(1)


def _permutation_p(v: torch.Tensor, statistic, observed: float, permutations: int,
                   generator: torch.Generator, budget: int = 4_000_000) -> float:
    """One-sided permutation p-value ``(#{null >= observed} + 1) / (P + 1)`` of ``statistic`` (a map of
    ``(C, S, *rest, P)`` values to ``(P,)``) with the ``C * S`` draws of ``v`` ``(C, S, *rest)`` reshuffled
    among all chains and draws, in chunks of at most ``budget`` values (inf >= inf counts)."""
    C, S = v.shape[:2]
    rest = tuple(v.shape[2:])
    flat = v.reshape((C * S,) + rest)
    chunk = max(1, budget // max(flat.numel(), 1))
    above, done = 0, 0
    while done < permutations:
        P = min(chunk, permutations - done)
        perm = torch.stack([torch.randperm(C * S, generator=generator) for _ in range(P)])
        copies = flat[perm].movedim(0, -1).reshape((C, S) + rest + (P,))
        above += int((statistic(copies) >= observed - 1e-12).sum())
        done += P
    return (above + 1) / (permutations + 1)


def chain_convergence(samples: torch.Tensor, log_likelihood=None, *, kernel=None, regions: int = 4,
                      rhat_threshold: float = RHAT_THRESHOLD, min_swap: float = MIN_SWAP, alpha: float = ALPHA,
                      permutations: int = PERMUTATIONS, generator: torch.Generator | None = None) -> dict:
    """Mode-sensitive diagnostics of ``samples`` ``(chain, draw, *event)`` (a
    :class:`~ppl_diffusion.inference.kernels.base.ChainResult`'s ``samples``).

    ``log_likelihood``: ``(chain, draw)`` values of ``log p(y | x)``, or a function of a batch of
    draws ``(n, *event) -> (n,)`` (e.g. ``Problem.log_likelihood``), or ``None`` (skipped).
    ``kernel``: the kernel that produced them (its ``swap_acceptance`` is read when present).

    An R-hat flags when it exceeds ``rhat_threshold`` AND its permutation p-value is below ``alpha``:
    the same R-hat of the ``chain x draw`` values reshuffled among all chains and draws
    (``permutations`` times) is its law under perfect mixing. Split R-hat of a rare region's indicator
    on short chains exceeds 1.05 by chance alone (measured on exact draws laid out as chains, 40 runs
    per problem: 57-80 % of the runs at 4 chains x 10 draws, 35-53 % at 100 x 4, 7-28 % at 8 x 20;
    benchmarks/results/mixing_check.md); the permutation tests keep such runs quiet (each has level
    ``alpha``; measured 0-5 % per layout, 1.5 % over all), while chains that hold different modes give
    p-values near ``1 / (permutations + 1)``.

    Returns a dict: ``rhat_loglik`` (rank-normalised split R-hat of the log-likelihood) and
    ``p_loglik`` (computed only where that R-hat exceeds the threshold, ``None`` otherwise),
    ``occupancy`` ``(chain, regions)`` (fraction of each chain's draws per k-means region),
    ``region_weights`` (pooled), ``rhat_regions`` (split R-hat of each region's indicator) and
    ``p_regions`` (of their maximum, likewise), ``max_rhat`` (the largest R-hat), ``swap_acceptance``
    (per adjacent pair, or ``None``), ``flags`` (list of strings naming each failed check) and ``ok``
    (no flag). Fewer than 2 chains or 4 draws per chain: the R-hats are NaN and never flag.
    """
    x = torch.as_tensor(samples)
    if x.dim() < 3:
        raise ValueError(f"samples must have shape (chain, draw, *event), got {tuple(x.shape)}")
    C, S = x.shape[:2]
    between = C > 1 and S >= 4
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    out, flags = {}, []
    ll = log_likelihood
    if callable(ll):
        with torch.no_grad():
            ll = ll(x.reshape((C * S,) + tuple(x.shape[2:]))).reshape(C, S)
    out["rhat_loglik"], out["p_loglik"] = None, None
    if ll is not None:
        ll = torch.as_tensor(ll, dtype=torch.float64).reshape(C, S)
        r = float(rhat(ll[..., None])[0]) if between else float("nan")
        out["rhat_loglik"] = r
        if r > rhat_threshold:
            out["p_loglik"] = p = _permutation_p(ll, rhat, r, permutations, g)
            if p < alpha:
                flags.append(f"split R-hat of the log-likelihood {r:.3f} > {rhat_threshold} (permutation p = {p:.3g})")
    lab = region_labels(x.reshape(C * S, -1), regions, generator=g).reshape(C, S)
    k = int(lab.max()) + 1
    ind = torch.nn.functional.one_hot(lab, k).to(torch.float64)  # (C, S, k)
    out["occupancy"] = ind.mean(1)
    out["region_weights"] = ind.mean((0, 1))
    rr = split_rhat_basic(ind) if between else torch.full((k,), float("nan"), dtype=torch.float64)
    out["rhat_regions"] = rr
    worst = float(rr.max()) if between else float("nan")
    out["p_regions"] = None
    if worst > rhat_threshold:
        out["p_regions"] = p = _permutation_p(ind, lambda v: split_rhat_basic(v).amax(0), worst, permutations, g)
        if p < alpha:
            j = int(rr.argmax())
            half = S // 2  # split R-hat compares the chains' halves: a chain that drifts differs from itself
            occ = ind[:, :2 * half, j].reshape(C * 2, half).mean(1)
            flags.append(f"region {j} (pooled weight {float(out['region_weights'][j]):.3f}): split R-hat of its "
                         f"indicator {worst:.3f} > {rhat_threshold} (permutation p = {p:.3g}); the chains' first "
                         f"and second halves spend {float(occ.min()):.2f}-{float(occ.max()):.2f} of their draws "
                         "there")
    vals = [v for v in (out["rhat_loglik"], worst) if v is not None and not math.isnan(v)]
    out["max_rhat"] = max(vals) if vals else float("nan")
    swap = getattr(kernel, "swap_acceptance", None) if kernel is not None else None
    if swap is not None and getattr(kernel, "replicas", 1) > 1:
        swap = torch.as_tensor(swap, dtype=torch.float64)
        out["swap_acceptance"] = swap
        if swap.numel() and float(swap.min()) < min_swap:
            j = int(swap.argmin())
            flags.append(f"replica pair ({j}, {j + 1}) swaps at {float(swap[j]):.3f} < {min_swap}: the ladder "
                         "is cut, the cold chain sees only the modes it reaches itself")
    else:
        out["swap_acceptance"] = None
    out["flags"] = flags
    out["ok"] = not flags
    return out


def mixing_check(name: str, samples: torch.Tensor, log_likelihood=None, *, kernel=None, plate_shape=(),
                 advice: str = "", warn_min_draws: int = WARN_MIN_DRAWS, generator: torch.Generator | None = None):
    """:func:`chain_convergence` of one chain run, per measurement of a plate, with a
    :class:`MixingWarning` (at the user's call) naming each flag, the measurement and ``advice``, when
    the chains hold ``warn_min_draws`` draws or more each. With fewer, a chain cannot be expected to
    visit every mode within the run, so the between-chain statistics measure its autocorrelation rather
    than its convergence (many short chains from a settled warm-up are a sound design: ``draw``'s
    default, whose ``warmup="auto"`` tests the chains instead); the statistics are still returned.

    ``samples``: ``(chain, draw, *plate_shape, *event)``; ``log_likelihood``: ``(chain, draw,
    *plate_shape)`` values or ``None``. Returns the dict, or a list of dicts (one per measurement, the
    plate flattened in order) with a plate; ``None`` with fewer than 2 chains or 4 draws per chain."""
    from .auto_warmup import _caller_level

    x = torch.as_tensor(samples)
    C, S = x.shape[:2]
    if C < 2 or S < 4:
        return None
    plate = tuple(plate_shape)
    B = math.prod(plate)
    xs = x.reshape((C, S, B) + tuple(x.shape[2 + len(plate):]))
    ll = None if log_likelihood is None else torch.as_tensor(log_likelihood).reshape(C, S, B)
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    reports = [chain_convergence(xs[:, :, b], None if ll is None else ll[:, :, b], kernel=kernel, generator=g)
               for b in range(B)]
    bad = [(b, r) for b, r in enumerate(reports) if not r["ok"]]
    if bad and S >= warn_min_draws:
        listed = ", ".join(str(b) for b, _ in bad[:5]) + (", ..." if len(bad) > 5 else "")
        where = f" (measurement{'s' if len(bad) > 1 else ''} {listed} of {B})" if plate else ""
        warnings.warn(
            f"{name}: {C} chains x {S} draws{where}: {'; '.join(bad[0][1]['flags'])}. The chains disagree: they "
            "have not mixed over their length, so the pooled draws may hold the posterior's regions (its modes, "
            f"where it has several) in the wrong proportions. {advice} The statistics are in the result's "
            ".convergence.", MixingWarning, stacklevel=_caller_level())
    return reports if plate else reports[0]


def start_dependence(start: torch.Tensor, draws: torch.Tensor, log_likelihood=None, *, regions: int = 4,
                     alpha: float = 0.01, permutations: int = 2000,
                     generator: torch.Generator | None = None) -> dict:
    """Do the chains' draws still depend on where the chains started? ``start`` and ``draws``: ``(C,
    *event)``, chain ``i``'s start and one of its later draws. Two one-sided permutation tests (the
    draws permuted among the chains, ``permutations`` times; see the module docstring):

    * regions: k-means (``regions`` centres) on the starts and draws together; the statistic is the
      fraction of chains whose draw lies in the region of their start (``same_region``; under
      independence about ``same_expected = sum_j p_start(j) p_draw(j)``);
    * ``log_likelihood`` (a function of a batch ``(n, *event) -> (n,)`` or ``None``): the rank
      correlation of the start's and the draw's log-likelihood over the chains (``rank_corr``).

    Returns ``same_region``, ``same_expected``, ``p_region``, ``rank_corr`` (``None`` without a
    log-likelihood), ``p_loglik``, ``p`` (the smaller, Bonferroni-doubled), ``flags`` and ``ok``
    (``p >= alpha``). ``ok`` with few chains (under about 30) says little: the tests have little power."""
    s = torch.as_tensor(start).to(torch.float64)
    x = torch.as_tensor(draws).to(torch.float64)
    if s.shape != x.shape or s.dim() < 2:
        raise ValueError(f"start and draws must both have shape (chain, *event), got {tuple(s.shape)} and "
                         f"{tuple(x.shape)}")
    C = s.shape[0]
    if C < 2:
        raise ValueError("start_dependence needs at least 2 chains")
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    lab = region_labels(torch.cat([s.reshape(C, -1), x.reshape(C, -1)]), regions, generator=g)
    a, b = lab[:C], lab[C:]
    perm = torch.stack([torch.randperm(C, generator=g) for _ in range(int(permutations))])  # (P, C)
    same = float((a == b).double().mean())
    null = (a[None, :] == b[perm]).double().mean(1)
    k = int(lab.max()) + 1
    pa = torch.bincount(a, minlength=k).double() / C
    pb = torch.bincount(b, minlength=k).double() / C
    out = {"same_region": same, "same_expected": float((pa * pb).sum()),
           "p_region": float(((null >= same - 1e-12).sum() + 1) / (len(null) + 1)),
           "rank_corr": None, "p_loglik": 1.0}
    if log_likelihood is not None:
        with torch.no_grad():
            ll = log_likelihood(torch.cat([torch.as_tensor(start), torch.as_tensor(draws)]))
        ll = torch.as_tensor(ll, dtype=torch.float64).reshape(-1)
        if ll.numel() == 2 * C and torch.isfinite(ll).all():
            ra, rb = (v.argsort().argsort().to(torch.float64) for v in (ll[:C], ll[C:]))  # ranks
            ra, rb = ra - ra.mean(), rb - rb.mean()
            den = float(ra.norm() * rb.norm())
            if den > 0:
                r = float((ra * rb).sum()) / den
                null_r = (ra[None, :] * rb[perm]).sum(1) / den
                out.update(rank_corr=r, p_loglik=float(((null_r >= r - 1e-12).sum() + 1) / (len(null_r) + 1)))
    out["p"] = min(1.0, 2.0 * min(out["p_region"], out["p_loglik"]))
    flags = []
    if out["p"] < alpha:
        flags.append(f"the draws still depend on the chains' start: {same:.2f} of the chains are in the region "
                     f"they started in (independence: {out['same_expected']:.2f}, p = {out['p_region']:.3g})"
                     + ("" if out["rank_corr"] is None else
                        f", log-likelihood rank correlation with the start {out['rank_corr']:+.2f} "
                        f"(p = {out['p_loglik']:.3g})"))
    out["flags"], out["ok"] = flags, not flags
    return out
