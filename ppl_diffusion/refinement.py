"""Does the discretisation change the answer? Two sets of draws of one problem, from a coarser and a finer
discretisation of one solver (fewer / more diffusion steps, a coarser / finer PnP-DM grid), compared by
permutation tests.

The asymptotically exact samplers are exact for their *discretised* target: MCGDiff and TDS for the
posterior under the discretised reverse diffusion, PnP-DM for the posterior whose prior step runs on a
finite grid, ParticleGibbs and PMMH for the SMC sampler they wrap. Every diagnostic computed from one run
(R-hat, ESS, swap rates, the evidence, the start check) measures the error against that target and cannot
see the target's own distance from the posterior. Refining the discretisation moves the target towards the
posterior (the usual step-halving check of numerical integration), so draws that change when it is refined
carried a discretisation error of about that size, and draws that do not change leave a residual below the
tests' resolution. :func:`refinement_check` reads four statistics:

* coverage: the share of the fine draws inside the coarse draws' central 90 % intervals, mean over the
  coordinates (at most 32, drawn at random; ``coverage``: the exactness tables' coverage with the fine draws
  in place of the posterior) against the share of the coarse draws inside the fine draws' intervals; a
  discretisation that narrows the draws gives the first below the second;
* sliced W1 between the two sets over 32 random directions (``sw``: location, spread and weights at once);
* mode-like regions: k-means on all draws, the total variation between the two sets' region weights
  (``region_tv``);
* the log-likelihood (when given): the Kolmogorov-Smirnov distance between the two sets' values
  (``loglik_ks``) and the difference of their means.

The units that are permuted are whole chains (``chains=True``: ``(chain, draw, *event)``, e.g. a
:class:`~ppl_diffusion.inference.kernels.base.ChainResult`'s ``samples``) or single draws (``(n, *event)``):
they must be independent of each other and identically distributed within each set (chains of one kernel
run, independent SMC runs), while the draws within a chain may be correlated. Under "no change" the units
of both sets are exchangeable, so each test's false-alarm rate is its level whatever the posterior; the
tests (three without a log-likelihood) are Bonferroni-combined into ``p``.
"""
from __future__ import annotations

import math

import torch

from .diagnostics import kmeans_centres

__all__ = ["refinement_check", "refine", "RefinementWarning", "ALPHA", "PERMUTATIONS", "PROJECTIONS", "FEW_UNITS"]

#: flag when the combined p-value is below this (the check's false-alarm rate)
ALPHA = 0.01
#: reshufflings of the units between the two sets
PERMUTATIONS = 1000
#: thresholds of the log-likelihood's empirical distribution functions (pooled quantiles)
_LL_GRID = 256
#: random directions of the sliced Wasserstein distance
PROJECTIONS = 32
#: fewer units per set than this: :func:`refine` warns that the tests have little power
FEW_UNITS = 30


class RefinementWarning(UserWarning):
    """:func:`refine`: the coarse and the fine setting give different draws, or too few units to tell."""


def _draws_units(draws, name: str):
    """``(samples, chains)`` of a :class:`~ppl_diffusion.inference.solver.Draws` for the check: a kernel's
    chains are the units, every other family's draws are; refused where the draws are not independent."""
    fam = draws.family
    if draws.plate_dims:
        raise ValueError(f"{name}: draws of a plate of measurements ({draws.plate_dims}); compare one measurement "
                         "at a time (draw with its y alone)")
    if fam in ("variational", "optimisation"):
        raise ValueError(f"{name}: {draws.method} is {fam}: its draws share one fit, so they are not independent "
                         "units; compare the fits of several runs instead")
    if fam == "smc" and (not draws.extra.get("independent", True) or draws.extra.get("pooled", False)):
        raise ValueError(f"{name}: {draws.method}'s draws were resampled from "
                         + ("one run" if not draws.extra.get("independent", True) else
                            f"the pool of all runs (pooled={draws.extra.get('pooled')!r})")
                         + ", so they are not independent units; draw with pooled=False (one draw per run)")
    if fam == "kernel":
        return draws.samples, True
    return draws.samples.reshape((-1,) + tuple(draws.samples.shape[2:])), False


def _problem_log_likelihood(problem, x: torch.Tensor):
    """``problem.log_likelihood`` where the likelihood has a closed value at the draws ``x`` (two are
    tried), else ``None``."""
    if problem is None:
        return None
    from .inference.kernels.base import _log_likelihood

    return problem.log_likelihood if _log_likelihood(problem, x[:2]) is not None else None


def _units(x, chains: bool, name: str) -> torch.Tensor:
    x = torch.as_tensor(x)
    if not x.is_floating_point():
        raise TypeError(f"{name}: expected floating-point draws, got {x.dtype}")
    need = 3 if chains else 2
    if x.dim() < need:
        layout = "(chain, draw, *event)" if chains else "(n, *event)"
        raise ValueError(f"{name}: expected {layout}, got shape {tuple(x.shape)}")
    x = x.detach().to(device="cpu", dtype=torch.float64)  # the tests are cheap CPU arithmetic on the draws
    return x if chains else x[:, None]


def _interval_content(cum: torch.Tensor, n_in: int, n_out: int, level: float) -> torch.Tensor:
    """Mean over coordinates of the share of the other set's draws inside one set's central ``level``
    intervals. ``cum`` ``(P, N, D)``: per coordinate, how many of the first ``i + 1`` sorted pooled draws belong
    to the set whose intervals are taken (``n_in`` draws); the other set holds ``n_out``. Returns ``(P,)``."""
    lo_k = max(1, math.ceil((1 - level) / 2 * n_in))  # the interval runs from the lo_k-th to the hi_k-th
    hi_k = max(lo_k, math.ceil((1 + level) / 2 * n_in))  # smallest of the set's draws (both included)
    pos_lo = (cum < lo_k).sum(1)  # (P, D): sorted positions of those two draws
    pos_hi = (cum < hi_k).sum(1)
    return ((pos_hi - pos_lo + 1) - (hi_k - lo_k + 1)).to(torch.float64).mean(1) / n_out


def _sliced_w1(mask: torch.Tensor, gaps: torch.Tensor, na: int, nb: int) -> torch.Tensor:
    """Mean over directions of the W1 distance between the two sets' projections: the integral of the
    difference of their empirical CDFs, ``sum_i gap_i |F_a(i) - F_b(i)|`` over the pooled sorted values.
    ``mask`` ``(P, N, L)``: 1 where the sorted pooled projection belongs to the first set; ``gaps``
    ``(N - 1, L)``: the spacings of the sorted values (float32: the sums of counts stay exact). Returns ``(P,)``."""
    cum_a = mask[:, :-1].cumsum(1, dtype=torch.int32).to(torch.float32)
    seen = torch.arange(1, mask.shape[1], dtype=torch.float32)[:, None]
    diff = (cum_a * (1.0 / na + 1.0 / nb) - seen / nb).abs_()  # F_a - F_b with F_b = (seen - cum_a) / nb
    return (diff * gaps).sum(1).mean(1).to(torch.float64)


def refinement_check(coarse, fine, log_likelihood=None, *, chains: bool = False, regions: int = 4,
                     level: float = 0.9, projections: int = PROJECTIONS, alpha: float = ALPHA,
                     permutations: int = PERMUTATIONS, generator: torch.Generator | None = None) -> dict:
    """Compare draws of one problem from a coarse and a fine discretisation (see the module docstring).

    ``coarse``, ``fine``: ``(n, *event)`` independent draws, or with ``chains=True`` ``(chain, draw,
    *event)`` with the same number of draws per chain in both (chains are the permuted units).
    ``log_likelihood``: a function of a batch ``(n, *event) -> (n,)`` (e.g. ``Problem.log_likelihood``) or
    ``None``.

    Returns a dict: ``units`` (per set: chains, or draws), ``coverage`` (the share of the fine draws inside the
    coarse draws' central ``level`` intervals, mean over the coordinates, or over ``projections`` of them drawn at
    random where there are more), ``coverage_of_coarse`` (the reverse), ``p_coverage``; ``sw`` (sliced
    W1 over ``projections`` random directions), ``p_sw``; ``region_weights`` (coarse, fine),
    ``region_tv``, ``p_regions``; ``loglik_ks``, ``loglik_mean_diff`` (coarse minus fine), ``p_loglik``
    (``None`` without a log-likelihood); ``p`` (the smallest p-value times the number of tests, at most 1),
    ``flags`` (one string per test below ``alpha`` after that correction), ``failed`` (those tests' names:
    ``"coverage"``, ``"SW"``, ``"regions"``, ``"log-likelihood"``) and ``ok``. Few units (under
    about 30 per set) give the tests little power: ``ok`` then says little.

    ``coarse`` and ``fine`` may also be two :class:`~ppl_diffusion.inference.solver.Draws` (what
    ``solver.draw`` returns): a kernel's chains are then the units, any other family's draws are, and the
    log-likelihood is the problem's where it has a closed value (``log_likelihood`` and ``chains`` are then
    not given). SMC draws must be one per run (``pooled=False``: pooled draws are resampled from the same
    runs and are not independent); variational and optimisation draws share one fit and are refused."""
    from .inference.solver import Draws

    if isinstance(coarse, Draws) or isinstance(fine, Draws):
        if not (isinstance(coarse, Draws) and isinstance(fine, Draws)):
            raise TypeError("refinement_check: pass two Draws or two tensors, not one of each")
        if chains or log_likelihood is not None:
            raise ValueError("refinement_check: with Draws the units and the log-likelihood come from the draws; "
                             "do not pass chains or log_likelihood (pass the samples as tensors to choose them)")
        problem = fine.problem
        (coarse, chains), (fine, chains_f) = _draws_units(coarse, "coarse"), _draws_units(fine, "fine")
        if chains != chains_f:
            raise ValueError("refinement_check: one set of Draws comes from a kernel (chains as units), the other "
                             "does not")
        log_likelihood = _problem_log_likelihood(problem, fine.flatten(0, 1) if chains else fine)
    a, b = _units(coarse, chains, "coarse"), _units(fine, chains, "fine")
    if a.shape[1:] != b.shape[1:]:
        what = "draws per chain and event shape" if chains else "event shape"
        raise ValueError(f"coarse and fine must have the same {what}: got {tuple(a.shape[1:])} and "
                         f"{tuple(b.shape[1:])} after the unit dimension (thin or cut the longer chains)")
    ua, ub = a.shape[0], b.shape[0]
    if ua < 2 or ub < 2:
        raise ValueError(f"refinement_check needs at least 2 units per set, got {ua} and {ub}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    S, event = a.shape[1], tuple(a.shape[2:])
    U = ua + ub
    flat = torch.cat([a, b]).reshape(U * S, -1)  # unit u holds rows u*S ... u*S + S - 1
    N, D = flat.shape
    na, nb = ua * S, ub * S
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    coords = torch.randperm(D, generator=g)[:projections].sort().values if D > projections else torch.arange(D)
    unit_of = flat[:, coords].argsort(0) // S  # per coordinate, the unit of each pooled draw in increasing order
    seen = torch.arange(1, N + 1, dtype=torch.int32)[:, None]  # pooled draws up to each sorted position
    theta = torch.randn(D, projections, generator=g, dtype=torch.float64)
    proj = flat @ (theta / theta.norm(dim=0, keepdim=True))
    order = proj.argsort(0)
    unit_of_proj = order // S
    gaps = proj.gather(0, order).diff(dim=0).to(torch.float32)  # (N - 1, L)
    lab = torch.cdist(flat, kmeans_centres(flat, regions, generator=g)).argmin(1).reshape(U, S)
    k = int(lab.max()) + 1
    counts = torch.nn.functional.one_hot(lab, k).to(torch.float64).sum(1)  # (U, k)
    le = None
    if log_likelihood is not None:
        with torch.no_grad():
            like = torch.as_tensor(coarse)  # the likelihood sees the draws on their own device and dtype
            ll = log_likelihood(flat.reshape((N,) + event).to(device=like.device, dtype=like.dtype))
        ll = torch.as_tensor(ll).detach().to(device="cpu", dtype=torch.float64).reshape(U, S)
        if not torch.isfinite(ll).all():
            raise ValueError("log_likelihood returned non-finite values for some draws")
        grid = torch.quantile(ll.reshape(-1), torch.linspace(0, 1, min(_LL_GRID, N), dtype=torch.float64))
        le = (ll[..., None] <= grid).to(torch.float64).sum(1)  # (U, T): per unit, draws at or below each point

    def stats(M: torch.Tensor):
        """(P, 4) statistics with the units marked 1 in the rows of ``M`` (P, U) as the coarse set, and the
        two interval contents."""
        cum = M[:, unit_of].cumsum(1, dtype=torch.int32)  # (P, N, D)
        c_ab = _interval_content(cum, na, nb, level)  # fine draws inside the coarse intervals
        c_ba = _interval_content(seen - cum, nb, na, level)
        sw = _sliced_w1(M[:, unit_of_proj], gaps, na, nb)
        Mf = M.to(torch.float64)
        ca = Mf @ counts
        tv = 0.5 * (ca / na - (counts.sum(0) - ca) / nb).abs().sum(1)
        if le is None:
            ks = torch.zeros_like(tv)
        else:
            la = Mf @ le
            ks = (la / na - (le.sum(0) - la) / nb).abs().amax(1)
        return torch.stack([c_ba - c_ab, sw, tv, ks], 1), c_ab, c_ba

    M0 = torch.zeros(1, U, dtype=torch.int32)
    M0[0, :ua] = 1
    obs, c_ab, c_ba = stats(M0)
    obs = obs[0]
    target = obs.abs()
    above = torch.zeros(4, dtype=torch.float64)
    chunk = max(1, 2_000_000 // max(N * (len(coords) + projections), 1))
    done = 0
    while done < permutations:
        P = min(chunk, permutations - done)
        idx = torch.stack([torch.randperm(U, generator=g)[:ua] for _ in range(P)])
        M = torch.zeros(P, U, dtype=torch.int32).scatter_(1, idx, 1)
        above += (stats(M)[0].abs() >= target - 1e-12).sum(0).to(torch.float64)
        done += P
    pv = ((above + 1) / (permutations + 1)).tolist()
    wa, wb = counts[:ua].sum(0) / na, counts[ua:].sum(0) / nb
    out = {"units": (ua, ub), "coverage": float(c_ab[0]), "coverage_of_coarse": float(c_ba[0]), "p_coverage": pv[0],
           "sw": float(obs[1]), "p_sw": pv[1], "region_weights": (wa, wb), "region_tv": float(obs[2]),
           "p_regions": pv[2], "loglik_ks": None, "loglik_mean_diff": None, "p_loglik": None}
    tests = 3
    if le is not None:
        tests = 4
        out.update(loglik_ks=float(obs[3]), loglik_mean_diff=float(ll[:ua].mean() - ll[ua:].mean()), p_loglik=pv[3])
    out["p"] = min(1.0, tests * min(pv[:tests]))
    flags, failed = [], []
    if tests * pv[0] < alpha:
        failed.append("coverage")
        flags.append(f"the coarse draws' central {level:.0%} intervals hold {out['coverage']:.3f} of the fine draws "
                     f"and the fine draws' intervals {out['coverage_of_coarse']:.3f} of the coarse ones (mean over "
                     f"coordinates; p = {pv[0]:.3g})")
    if tests * pv[1] < alpha:
        failed.append("SW")
        flags.append(f"sliced W1 between the two sets {out['sw']:.3g} (p = {pv[1]:.3g})")
    if tests * pv[2] < alpha:
        failed.append("regions")
        j = int((wa - wb).abs().argmax())
        flags.append(f"mode-like region weights differ by TV {out['region_tv']:.3f} (region {j}: coarse "
                     f"{float(wa[j]):.3f}, fine {float(wb[j]):.3f}; p = {pv[2]:.3g})")
    if le is not None and tests * pv[3] < alpha:
        failed.append("log-likelihood")
        flags.append(f"the log-likelihood's distributions differ: KS {out['loglik_ks']:.3f}, mean coarse - fine "
                     f"{out['loglik_mean_diff']:+.3f} (p = {pv[3]:.3g})")
    out["failed"] = failed
    out["flags"], out["ok"] = flags, not flags
    return out


def refine(method: str, model, option: str, values=None, *, num_samples: int = 1000,
           solver_options: dict | None = None, draw_options: dict | None = None,
           generator: torch.Generator | None = None, check_options: dict | None = None, **model_kwargs) -> dict:
    """Run the registered solver ``method`` twice on one measurement, with ``option`` at a coarse and at a
    fine value, and compare the two sets of draws with :func:`refinement_check`: does refining the
    discretisation change the answer?

    ``values``: ``(coarse, fine)``; default: the option's value (``solver_options[option]`` or the solver's
    default) against twice it, the step-halving check of numerical integration ("would doubling ``steps`` change my
    draws?"). ``option`` is any constructor option of the solver (``steps``; ``num_grid``, PnP-DM's prior
    grid); ``solver_options`` are the others. ``num_samples`` draws per set; ``draw_options`` go to
    ``draw`` (a kernel's ``chains``, ``warmup``); SMC samplers draw one sample per run (``pooled=False``),
    kernels' chains are the units (``draw``'s default ``num_samples // 2`` chains). ``model_kwargs``: the
    measurement (``y=y``). ``check_options`` go to :func:`refinement_check`.

    Returns the check's dict (``units`` among its keys) with ``option``, ``values``, ``coarse_draws`` and
    ``fine_draws`` (the two :class:`~ppl_diffusion.inference.solver.Draws`). Warns
    (:class:`RefinementWarning`) when the draws differ, naming the tests, and when either set has fewer than
    :data:`FEW_UNITS` units (the check then has little power). Ctrl-C in the fine run raises
    :class:`~ppl_diffusion.inference.health.RunInterrupted` with the coarse draws as ``.partial``.

    What it measures: a flag means the coarse setting's discretisation error is at least what the tests
    resolve at that many units; no flag bounds it only by that resolution (on d = 8 mixtures with 1,000
    draws per set the check flagged the MCGDiff step counts whose sliced W1 was at least twice an exact
    sampler's 95 % point, and missed smaller excesses: benchmarks/results/refinement_check_solvers.md)."""
    import warnings

    from .inference.health import RunInterrupted
    from .inference.registry import build_solver, get_solver
    from .inference.solver import OptionError, check_int

    info = get_solver(method)
    if info.family in ("variational", "optimisation"):
        raise ValueError(f"refine: {info.name} is {info.family}: its draws share one fit and are not independent "
                         "units; fit it several times at each setting and compare the fits")
    cls = info.load()
    known = cls.options()
    if option not in known:
        raise OptionError(f"refine: {info.name} has no option {option!r}; its options: {', '.join(known)}")
    solver_options = dict(solver_options or {})
    if option in solver_options and values is not None:
        raise OptionError(f"refine: {option!r} is given both in values and in solver_options; give values=(coarse, "
                          f"fine), or solver_options[{option!r}] alone to check it against twice it")
    n = check_int("num_samples", num_samples, "refine")
    if values is None:
        base = solver_options.pop(option, known[option])
        if isinstance(base, bool) or not isinstance(base, int):
            raise OptionError(f"refine: {info.name}'s {option} defaults to {base!r}, not an integer to double; "
                              "give values=(coarse, fine)")
        values = (base, 2 * base)
    values = tuple(values)
    if len(values) != 2:
        raise ValueError(f"refine: values must be (coarse, fine), got {values!r}")
    draw_options = dict(draw_options or {})
    if info.family == "smc":
        if draw_options.get("pooled") or not draw_options.get("independent", True):
            raise OptionError("refine: SMC draws are compared one per run (independent runs are the units); "
                              "drop pooled / independent from draw_options")
        draw_options["pooled"] = False
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    seeds = torch.randint(0, 2**62, (3,), generator=g).tolist()  # the two runs and the check, apart

    # both solvers first: a value the solver refuses stops refine before any run
    solvers = [build_solver(info.name, model, **{**solver_options, option: v}) for v in values]

    def run(i):
        return solvers[i].draw(n, generator=torch.Generator().manual_seed(seeds[i]), **draw_options, **model_kwargs)

    coarse = run(0)
    try:
        fine = run(1)
    except KeyboardInterrupt as exc:
        raise RunInterrupted(f"refine({info.name}): interrupted in the fine run ({option}={values[1]}); .partial "
                             f"holds the coarse draws ({option}={values[0]})", partial=coarse) from exc
    out = refinement_check(coarse, fine, generator=torch.Generator().manual_seed(seeds[2]), **(check_options or {}))
    units = out["units"]
    out.update(option=option, values=values, coarse_draws=coarse, fine_draws=fine)
    what = "chains" if coarse.family == "kernel" else "draws"
    if not out["ok"]:
        warnings.warn(f"refine({info.name}): {option}={values[0]} and {option}={values[1]} give different draws: "
                      + "; ".join(out["flags"]) + f". The discretisation error at {option}={values[0]} is at least "
                      f"what these tests resolve with {min(units)} {what} per set: use {option}={values[1]} or "
                      "finer, and check that against a finer setting in turn", RefinementWarning, stacklevel=2)
    if min(units) < FEW_UNITS:
        warnings.warn(f"refine({info.name}): {min(units)} {what} per set (under {FEW_UNITS}): the check has little "
                      "power" + (", raise chains in draw_options" if what == "chains" else ", raise num_samples"),
                      RefinementWarning, stacklevel=2)
    return out
