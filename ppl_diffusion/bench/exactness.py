"""A stricter yardstick for the asymptotically exact samplers: every number beside the spread an
exact sampler shows on the same problem.

Problem families beyond the published GMM benchmark (Cardoso et al. 2024), all with a closed-form
posterior (:meth:`~ppl_diffusion.models.gmm.GaussianMixture.posterior`):

* ``fullcov``: 6 components with full random covariances (random rotation, eigenvalues log-uniform
  in [0.05, 2]), Dirichlet(1) weights, ``A`` with N(0, 1/d) entries;
* ``uneven``: 8 isotropic components (variances log-uniform in [0.2, 2]) with very uneven weights
  (``softmax(2 z)``), ``A`` with N(0, 1/d) entries;
* ``spectrum``: 6 full-covariance components, ``A = U diag(s) V^T`` with singular values
  log-uniform in [0.02, 3] (two decades).

Means are N(0, 2.5^2 I), ``x* ~ prior``, ``sigma_y = max(s) 10^u`` with
``u ~ U(-1.5, -0.3)``, ``y = A x* + sigma_y n``. Seeded per (family, d, d_y, seed).

For each problem and sample size ``n`` :func:`exact_spread` scores ``sets`` (>= 20) independent sets
of ``n`` exact posterior draws with the three statistics used for the samplers (:func:`score`):

* ``sw``: sliced Wasserstein-1 to 10,000 exact draws (fixed 200 directions per problem);
* ``tv``: total variation between the exact posterior component weights and the sample's, each draw
  counted by its posterior responsibilities (soft assignment: the expectation of a draw's
  responsibilities under the posterior is exactly the component weight, so exact draws score only
  Monte Carlo noise);
* ``cov``: 90 % coverage: the fraction of the 10,000 reference draws (coordinates pooled) inside the
  sample's equal-tailed marginal 90 % intervals (intervals too narrow read below the exact sets).

A sampler is *inside the exact spread* on a statistic when ``sw <= q95(exact sw)``,
``tv <= q95(exact tv)`` and ``q2.5 <= cov <= q97.5`` of the exact sets' values respectively. An exact
sampler is itself outside on some problems; the method ``exact`` (``--methods exact``) is that control,
a further set of ``n`` exact draws scored like any sampler, so each table can say how many problems an
exact sampler would have inside.

    OMP_NUM_THREADS=1 python benchmarks/exactness.py --d 8 --dys 1,2,4 --problems 20 --samples 500
"""
from __future__ import annotations

import argparse
import math
import os
import re
import shlex
import signal
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field

import torch

from ..inference.kernels.particle_gibbs import MAX_START_LEFT
from ..metrics import quantile
from ..models.gmm import GaussianMixture, GMMProblem
from ..schedules import VPSchedule
from .report import RESULTS_DIR, MarkdownTable, add_out_argument, write_result

__all__ = ["FAMILIES", "exactness_problem", "component_weights", "score", "exact_spread", "Spread", "verdict",
           "run_exactness", "mode_bias", "exact_prior_step", "kernel_diagnostics", "main"]

FAMILIES = ("fullcov", "uneven", "spectrum")
_FAMILY_ID = {f: i for i, f in enumerate(FAMILIES)}


def _rotation(d, g, dtype):
    q, r = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=dtype))
    return q * torch.sign(torch.diagonal(r))


def _log_uniform(n, lo, hi, g, dtype):
    return torch.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * torch.rand(n, generator=g, dtype=dtype))


def exactness_problem(family: str, d: int = 8, d_y: int = 2, seed: int = 0, dtype=torch.float64,
                      mean_scale: float = 2.5) -> GMMProblem:
    """One seeded problem of ``family`` (see the module docstring) with its exact posterior; means
    N(0, mean_scale^2 I)."""
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    if not 1 <= d_y <= d:
        raise ValueError(f"need 1 <= d_y <= d, got d_y={d_y}, d={d}")
    g = torch.Generator().manual_seed(1_000_003 * _FAMILY_ID[family] + 10_007 * d + 101 * d_y + seed)
    K = 8 if family == "uneven" else 6
    means = mean_scale * torch.randn(K, d, generator=g, dtype=dtype)
    if family == "uneven":
        w = torch.softmax(2.0 * torch.randn(K, generator=g, dtype=dtype), 0)
        covs = _log_uniform(K, 0.2, 2.0, g, dtype)
    else:
        w = -torch.log(torch.rand(K, generator=g, dtype=dtype))  # Dirichlet(1)
        covs = torch.stack([(q * _log_uniform(d, 0.05, 2.0, g, dtype)) @ q.T
                            for q in (_rotation(d, g, dtype) for _ in range(K))])
    prior = GaussianMixture(w / w.sum(), means, covs)
    if family == "spectrum":
        s = torch.sort(_log_uniform(d_y, 0.02, 3.0, g, dtype), descending=True).values
        A = _rotation(d_y, g, dtype) @ torch.diag(s) @ _rotation(d, g, dtype)[:d_y]
    else:
        A = torch.randn(d_y, d, generator=g, dtype=dtype) / math.sqrt(d)
        s = torch.linalg.svdvals(A)
    x_true = prior.sample(1, generator=g)[0]
    noise_std = float(s.max() * 10 ** (-1.5 + 1.2 * torch.rand((), generator=g, dtype=dtype)))
    y = A @ x_true + noise_std * torch.randn(d_y, generator=g, dtype=dtype)
    return GMMProblem(prior, A, y, noise_std, x_true, prior.posterior(A, y, noise_std), seed)


def component_weights(x: torch.Tensor, mixture: GaussianMixture) -> torch.Tensor:
    """Mean posterior responsibilities ``(K,)`` of the draws ``x`` (n, d) under ``mixture``."""
    return mixture.responsibilities(x).mean(0)


@dataclass
class Reference:
    """What a problem's samples are scored against: 10,000 exact draws, fixed directions and their
    sorted projections, the exact component weights."""

    problem: GMMProblem
    ref: torch.Tensor
    theta: torch.Tensor
    ref_proj_sorted: torch.Tensor

    @classmethod
    def build(cls, pb: GMMProblem, n_ref: int = 10000, n_projections: int = 200, seed: int = 0) -> Reference:
        g = torch.Generator().manual_seed(70_000 + seed)
        ref = pb.posterior.sample(n_ref, generator=g)
        z = torch.randn(pb.d, n_projections, generator=g, dtype=torch.float64)
        theta = z / z.norm(dim=0, keepdim=True)
        return cls(pb, ref, theta, torch.sort(ref @ theta, 0).values)


def score(x: torch.Tensor, ref: Reference) -> dict:
    """``{"sw", "tv", "cov"}`` of the draws ``x`` (n, d) (see the module docstring)."""
    from ..metrics import _wasserstein_1d_pp

    x = x.reshape(x.shape[0], -1).to(torch.float64)
    sw = float(_wasserstein_1d_pp(x @ ref.theta, ref.ref_proj_sorted, 1, y_sorted=True).mean())
    w_hat = component_weights(x, ref.problem.posterior)
    tv = 0.5 * float((w_hat - ref.problem.posterior.weights).abs().sum())
    lo, hi = quantile(x, [0.05, 0.95], dim=0)
    cov = float(((ref.ref >= lo) & (ref.ref <= hi)).double().mean())
    minor = int(torch.argsort(ref.problem.posterior.weights, descending=True)[1]) if w_hat.numel() > 1 else 0
    return {"sw": sw, "tv": tv, "cov": cov, "w_hat": w_hat, "w_minor": float(w_hat[minor])}


@dataclass
class Spread:
    """The exact sampler's spread on one problem at one sample size: per-set values and the bounds."""

    n: int
    sw: torch.Tensor
    tv: torch.Tensor
    cov: torch.Tensor
    bounds: dict = field(default_factory=dict)

    def __post_init__(self):
        self.bounds = {"sw": float(quantile(self.sw, 0.95)), "tv": float(quantile(self.tv, 0.95)),
                       "cov": (float(quantile(self.cov, 0.025)), float(quantile(self.cov, 0.975)))}


def exact_spread(ref: Reference, n: int, sets: int = 20, seed: int = 0) -> Spread:
    """Scores of ``sets`` independent sets of ``n`` exact posterior draws (drawn apart from the reference)."""
    if sets < 2:
        raise ValueError(f"sets must be >= 2, got {sets}")
    g = torch.Generator().manual_seed(80_000 + seed)
    vals = [score(ref.problem.posterior.sample(n, generator=g), ref) for _ in range(sets)]
    return Spread(n, *(torch.tensor([v[k] for v in vals], dtype=torch.float64) for k in ("sw", "tv", "cov")))


def verdict(s: dict, spread: Spread) -> dict:
    """``{"sw", "tv", "cov", "all"}``: whether each statistic is inside the exact spread."""
    lo, hi = spread.bounds["cov"]
    out = {"sw": s["sw"] <= spread.bounds["sw"], "tv": s["tv"] <= spread.bounds["tv"],
           "cov": lo <= s["cov"] <= hi}
    out["all"] = out["sw"] and out["tv"] and out["cov"]
    return out


# --------------------------------------------------------------------------------------------
def _parse_method(spec: str):
    """``"mcgdiff"``, ``"mcgdiff:particles=256,resampling=multinomial"`` -> (label, solver, options)."""
    name, _, rest = spec.partition(":")
    opts = {}
    for kv in filter(None, rest.split(",")):
        k, v = kv.split("=")
        for cast in (int, float):
            try:
                v = cast(v)
                break
            except ValueError:
                continue
        if v in ("True", "False", "None"):
            v = {"True": True, "False": False, "None": None}[v]
        opts[k] = v
    return spec, name, opts


def _psis_k_pools(res) -> bool:
    """The "psis-k" rule measured against one draw per run and the pools (not offered by ``draw``: it did
    not beat one draw per run): the Pareto-smoothed pool when the run weights' Pareto k-hat is at most
    ``min(1 - 1/log10 R, 0.7)`` (Vehtari et al., JMLR 2024), else one draw per run."""
    from ..inference.smc.evidence import good_pareto_k, pareto_k

    return bool(pareto_k(res)[0] <= good_pareto_k(res.log_weights.shape[0]))


def _ess_half_pools(res) -> bool:
    """The "ess-half" rule (not offered by ``draw``: on 20 fresh uneven problems it tied one draw per run,
    benchmarks/results/exactness_d80_dy2_uneven_N256_fresh.md and ..._N1024_fresh.md): the truncated pool
    when the runs' evidence ESS is at least half the runs (``cv^2 <= 1`` of ``Z_hat``), else one draw per
    run. Fitted offline on the earlier tables, where the pools lost where the runs ESS was 2-54 of 100."""
    from ..inference.smc.evidence import runs_ess

    R = res.log_weights.shape[0]
    return R > 1 and bool(runs_ess(res)[0] >= 0.5 * R)


def _draws(solver, opts, pb, sched, n, steps, g):
    """``[(suffix, (n, d) draws, reliability or None)]``: an SMC sampler runs ``n`` independent runs once
    and gives both the one-draw-per-run samples (suffix ``""``, with the runs'
    :func:`~ppl_diffusion.inference.smc.evidence.reliability`) and the evidence-weighted pool
    (``" pooled"``, :func:`~ppl_diffusion.inference.smc.evidence.pooled_resample`; ``" truncated"``: its run
    weights capped at ``1 / sqrt(runs)``); option ``draws``: ``both`` (those three, the default),
    ``independent``, ``pooled``, ``truncated``, ``psis`` (the Pareto-smoothed pool) or ``all`` (the four,
    ``" psis-k"``, :func:`_psis_k_pools`, and ``" ess-half"``, :func:`_ess_half_pools`, both choosing
    from the same draws); ``particle_gibbs``
    (options ``base``, ``chains``, ``warmup``, ``thin``, ``start``, ``pimh`` (``0`` turns the independent
    moves off) and the base sampler's) runs conditional-SMC
    chains;
    ``exact`` is the control: ``n`` further exact posterior draws (seeded apart from the reference and the
    spread's sets), the row an exact sampler would score; ``pnpdm`` with ``num_grid=exact`` takes its prior
    step as an exact draw from the mixture's ``p(x | z)`` (:func:`exact_prior_step`; bench only, to separate
    the reverse SDE's discretisation from the chains' mixing); other solvers run as
    :func:`~ppl_diffusion.bench.gmm.run_solver` runs them."""
    from ..inference.registry import SOLVERS, build_solver
    from .gmm import run_solver

    if solver == "exact":
        if opts:
            raise ValueError(f"exact: the control takes no options, got {sorted(opts)}")
        return [("", pb.posterior.sample(n, generator=g), None)]
    model = pb.model(sched)
    if solver == "pnpdm" and opts.get("num_grid") == "exact":  # bench only: the mixture's exact p(x | z)
        from ..inference.kernels import PnPDM

        from .gmm import _kernel_call

        ctor, run, _ = _kernel_call()(steps, None, {k: v for k, v in opts.items() if k != "num_grid"})
        kern = exact_prior_step(PnPDM(model, **ctor), pb.prior)
        d = kern.draw(n, y=pb.y, generator=g, **run)
        return [("", d.flat()[:n].reshape(n, -1), {"warmup": d.extra["warmup"]})]
    if solver == "particle_gibbs":  # ParticleGibbs(base): vectorised chains, ceil(n / chains) draws each
        from ..inference.kernels import ParticleGibbs
        from ..inference.kernels.mode_check import StartDependenceWarning

        opts = dict(opts)
        base, chains = opts.pop("base", "mcgdiff"), int(opts.pop("chains", 20))
        warmup, thin = opts.pop("warmup", 20), int(opts.pop("thin", 1))
        warmup = warmup if warmup == "auto" else int(warmup)
        start = opts.pop("start", "runs")
        pimh = str(opts.pop("pimh", "1")).lower() not in ("0", "false", "no", "off")
        if base == "mcgdiff":  # ancestor sampling (PGAS) needs the plain final step
            opts.setdefault("final_correction", False)
        kern = ParticleGibbs(build_solver(base, model, **{"steps": steps, **opts}), chains=chains, generator=g,
                             start=start, pimh=pimh)
        with warnings.catch_warnings():  # the table reports the start check in its own column
            warnings.simplefilter("ignore", StartDependenceWarning)
            d = kern.draw(n, y=pb.y, warmup=warmup, thin=thin)
        return [("", d.flat()[:n].reshape(n, -1), {"start_check": d.extra["start_check"],
                                                     "region_changes": d.extra["region_changes"],
                                                     "pimh": d.extra["pimh"],
                                                     "warmup": d.extra["warmup"] if warmup == "auto" else None})]
    info = SOLVERS.get(solver)
    if info is not None and info.family == "smc":
        from ..inference.smc.evidence import pooled_resample, reliability

        opts = dict(opts)
        which = opts.pop("draws", "both")
        sv = build_solver(solver, model, **{"steps": steps, **opts})
        res = sv.run(y=pb.y, runs=n, generator=g)
        out = []
        if which in ("both", "independent", "all"):
            out.append(("", res.resample(n, g), reliability(res)))
        if which in ("both", "pooled", "all"):
            out.append((" pooled", pooled_resample(res, n, g), None))
        if which in ("both", "truncated", "all"):
            out.append((" truncated", pooled_resample(res, n, g, smoothing="truncated"), None))
        if which in ("psis", "all"):  # the Pareto-smoothed pool, and the rules' choices from the same draws
            x_psis = pooled_resample(res, n, g, smoothing="psis")
            out.append((" psis", x_psis, None))
            if which == "all":
                out.append((" psis-k", x_psis if _psis_k_pools(res) else out[0][1], None))
                out.append((" ess-half", out[2][1] if _ess_half_pools(res) else out[0][1], None))
        return out
    from ..inference.kernels.mode_check import MixingWarning

    with warnings.catch_warnings():  # a kernel's mixing check: the table reports it in its own column
        warnings.simplefilter("ignore", MixingWarning)
        out = run_solver(solver, pb, model, n, steps, None, g, **opts)
    if "warmup" not in out.extra:
        return [("", out.samples, None)]
    return [("", out.samples, {"warmup": out.extra["warmup"], "convergence": out.extra.get("convergence")})]


SUMMARY_COLUMNS = ("method", "d_y", "problems", "inside SW", "inside TV", "inside coverage", "inside all three",
                   "mean 90 % coverage (exact sets' mean)", "flagged: outside TV / inside TV")


def _flag_cell(vs) -> str:
    """``"a/b / c/d"``: problems flagged ``unreliable_independent`` among those outside / inside the exact
    spread on TV (``-`` when the method has no flag)."""
    if not vs or vs[0].get("flag") is None:
        return "-"
    out = [v for v in vs if not v["tv"]]
    ins = [v for v in vs if v["tv"]]
    return f"{sum(v['flag'] for v in out)}/{len(out)} / {sum(v['flag'] for v in ins)}/{len(ins)}"


def run_exactness(d: int, dys, n_problems: int, methods, n_samples: int = 500, steps: int = 100, sets: int = 20,
                  families=FAMILIES, out=RESULTS_DIR, name: str | None = None, cmd: str = "", first_problem: int = 0):
    """The table of :mod:`ppl_diffusion.bench.exactness` (see its docstring); problems ``first_problem`` to
    ``first_problem + n_problems - 1`` (seeds; families cycled by seed), so one table can be run in parts and
    joined with :func:`merge_tables`. An interrupt (Ctrl-C; ``main`` turns SIGTERM into one) writes the table of
    the problems finished so far, marked partial in its notes, before it propagates."""
    sched = VPSchedule.gmm_benchmark()
    table = MarkdownTable("problem (family, d, d_y, seed)", "w_minor exact", "method", "SW / exact q95",
                          "TV / exact q95", "90 % cov [exact 2.5-97.5 %]", "w_minor", "inside SW/TV/cov",
                          "region bias est. (se), runs ESS, Pareto k, flag", "s")
    tally, done, interrupted = {}, 0, None
    try:
        for d_y in dys:
            for i in range(first_problem, first_problem + n_problems):
                fam = families[i % len(families)]
                pb = exactness_problem(fam, d, d_y, seed=i)
                if d > 8:
                    pb_solver = pb.to(torch.float32)
                else:
                    pb_solver = pb
                ref = Reference.build(pb, seed=i)
                spread = exact_spread(ref, n_samples, sets, seed=i)
                w_sorted = torch.sort(pb.posterior.weights, descending=True).values
                label = f"({fam}, {d}, {d_y}, {i})"
                for spec in methods:
                    key, solver, opts = _parse_method(spec)
                    g = torch.Generator().manual_seed(90_000 + i)
                    t0 = time.perf_counter()
                    pb_m = pb if solver == "exact" else pb_solver  # the control draws in float64
                    for label_m, x, rel in _draws(solver, opts, pb_m, sched, n_samples, steps, g):
                        sec = time.perf_counter() - t0
                        s = score(x, ref)
                        v = verdict(s, spread)
                        warm = None if rel is None else rel.get("warmup")  # a kernel's (chosen with warmup=auto)
                        sc = None if rel is None else rel.get("start_check")  # ParticleGibbs: draws vs start
                        rc = None if rel is None else rel.get("region_changes")  # ParticleGibbs: in the warm-up
                        pm = None if rel is None else rel.get("pimh")  # ParticleGibbs: its independent moves
                        cv = None if rel is None else rel.get("convergence")  # a kernel's mixing check
                        rel = None if warm is not None or sc is not None else rel
                        slow = rc is not None and rc["start_left"] > MAX_START_LEFT  # too few region changes
                        flag = (not sc["ok"] or slow) if sc is not None else not cv["ok"] if cv is not None else (
                            None if rel is None else bool(rel["unreliable_independent"][0]))
                        tally.setdefault((key + label_m, d_y), []).append({**v, "c": s["cov"], "flag": flag,
                                                                           "c_exact": float(spread.cov.mean())})
                        rb = "-" if rel is None else (f"{float(rel['bias_estimate'][0]):.3f} "
                                                      f"({float(rel['bias_se'][0]):.3f}), runs ESS "
                                                      f"{float(rel['runs_ess'][0]):.0f}, "
                                                      f"k {float(rel['pareto_k'][0]):.2f}{', FLAG' if flag else ''}")
                        rb = f"warm-up {warm}" if warm is not None else rb
                        if cv is not None:
                            rb += f", max R-hat {cv['max_rhat']:.3f}{', MIXING FLAG' if flag else ''}"
                        if sc is not None:
                            rb = (f"start: same region {sc['same_region']:.2f} (indep. {sc['same_expected']:.2f}), "
                                  f"p {sc['p']:.3g}{', FLAG' if flag else ''}")
                            if warm is not None:  # ParticleGibbs with warmup=auto: the sweeps it chose
                                rb += f", warm-up {warm}"
                            if rc is not None:
                                rb += f", {rc['warmup_per_chain']:.2f} region changes/chain"
                                sl = rc.get("slowest") or {}
                                if sl.get("split") is not None:  # the slowest two-group split of the regions
                                    rb += (f", slowest split {sl['time_in_split']:.0%} of the time, relaxation "
                                           f"{sl['relaxation']:.0f} sweeps")
                            if pm is not None:
                                rb += f", PIMH acceptance {pm['acceptance']:.2f}"
                        b = spread.bounds
                        inside = "/".join("in" if v[k] else "OUT" for k in ("sw", "tv", "cov"))
                        table.add(label, f"{float(w_sorted[1]):.3f}" if len(w_sorted) > 1 else "-", key + label_m,
                                  f"{s['sw']:.3g} / {b['sw']:.3g}", f"{s['tv']:.3f} / {b['tv']:.3f}",
                                  f"{s['cov']:.3f} [{b['cov'][0]:.3f}, {b['cov'][1]:.3f}]", f"{s['w_minor']:.3f}",
                                  inside, rb, f"{sec:.1f}")
                        print(f"exactness: {label} {key + label_m}: SW/TV/cov {inside}, {sec:.0f} s",  # progress
                              file=sys.stderr, flush=True)
                done += 1
    except KeyboardInterrupt as exc:  # keep what was computed
        if not tally:
            raise
        interrupted = exc
    summary = MarkdownTable(*SUMMARY_COLUMNS)
    for (key, d_y), vs in tally.items():
        n = len(vs)
        summary.add(key, d_y, n, *(f"{sum(v[k] for v in vs)}/{n}" for k in ("sw", "tv", "cov", "all")),
                    f"{sum(v['c'] for v in vs) / n:.3f} ({sum(v['c_exact'] for v in vs) / n:.3f})", _flag_cell(vs))
    total = len(dys) * n_problems
    partial = (f"PARTIAL: interrupted after {done} of {total} problems (rows of an unfinished problem included). "
               if interrupted is not None else "")
    notes = (f"d = {d}, {steps} steps, {n_samples} samples per problem (each SMC sample from its own independent run), "
             f"families cycled over seeds ({', '.join(families)}; ppl_diffusion/bench/exactness.py). Exact spread: "
             f"{sets} independent sets of {n_samples} exact posterior draws scored like the samplers; SW = sliced W-1 "
             "(200 fixed directions) to 10,000 exact draws, TV = component-weight total variation (posterior "
             "responsibilities), cov = fraction of the 10,000 reference draws inside the sample's marginal 90 % "
             "intervals. Inside: SW and TV <= the exact sets' 95 % point, coverage within their 2.5-97.5 % range; "
             "a further set of exact draws (method 'exact', the control) is inside all three on 75-87 % of problems "
             "(benchmarks/results/exactness_*_exact_control.md). Region bias: "
             "the SMC runs' reliability (ppl_diffusion/inference/smc/evidence.py: region_bias), the total "
             "variation between the weights that one draw per run and the evidence-weighted pool put on 4 k-means "
             "regions of the draws, with its jackknife standard error; FLAG = unreliable_independent (> 0.03 and "
             "> 2.5 se); for the kernels that column gives the warm-up iterations they ran (chosen by the chains "
             "with warmup=auto, ppl_diffusion/inference/kernels/auto_warmup.py) and, with 4 or more draws per "
             "chain, the largest mode-sensitive R-hat of the run's own mixing check (MIXING FLAG: it flagged, "
             "ppl_diffusion/inference/kernels/mode_check.py: chain_convergence); for ParticleGibbs, whether its "
             "first draws still depend on the chains' start (ppl_diffusion/inference/kernels/mode_check.py: "
             "start_dependence; the fraction of chains in the k-means region they started in against its value "
             "under independence, permutation p-value; FLAG = p < 0.01, or the chains' region changes in the "
             "warm-up leave more than 5 % of the start: ppl_diffusion/inference/kernels/particle_gibbs.py, the "
             "slowest two-group split of the 4 k-means regions and its relaxation time)."
             + (" Solvers in float32 (problems and scores in float64)." if d > 8 else ""))
    notes = partial + notes
    body = str(summary) + "\n\n" + str(table)
    name = name or f"exactness_d{d}"
    write_result(out, name, f"Exactness: samplers against the exact sampler's spread (GMM families, d = {d})",
                 cmd, body, notes)
    if interrupted is not None:
        raise interrupted
    return tally


def _without_draws(label: str) -> str:
    """A summary row's method label without its ``draws=`` option, which picks the rows computed from the
    same runs, not the sampler: ``"mcgdiff:particles=1024,draws=independent pooled"`` ->
    ``"mcgdiff:particles=1024 pooled"``."""
    label = re.sub(r",draws=\w+|draws=\w+,?", "", label)
    return label.replace(": ", " ").rstrip(":") if ":" in label else label


def merge_tables(paths, out=RESULTS_DIR, name: str = "exactness_merged", cmd: str = ""):
    """Join exactness tables run in parts (``--first-problem``): the problem rows in order, and the summary
    recomputed from the parts' summaries (counts added, mean coverages weighted by their problem counts;
    parts run with different ``draws=`` options add up under the sampler's label)."""
    rows, counts, header_notes = [], {}, None
    for path in paths:
        text = open(path).read()
        blocks = [b for b in text.split("\n\n") if b.startswith("| ")]
        summary, problems = blocks[0].splitlines()[2:], blocks[1].splitlines()
        rows.extend(problems[2:])
        header = problems[:2]
        for line in summary:
            c = [v.strip() for v in line.strip("|").split("|")]
            key, n = (_without_draws(c[0]), c[1]), int(c[2])
            cov, cov_exact = (float(v) for v in re.findall(r"[0-9.]+", c[7]))
            acc = counts.setdefault(key, {"n": 0, "sw": 0, "tv": 0, "cov": 0, "all": 0, "c": 0.0, "ce": 0.0,
                                          "flag": None})
            if len(c) > 8 and c[8] != "-":  # "a/b / c/d": flagged among outside / inside TV
                f = [int(v) for v in re.findall(r"[0-9]+", c[8])]
                acc["flag"] = [a + b for a, b in zip(acc["flag"] or [0, 0, 0, 0], f)]
            acc["n"] += n
            for k, v in zip(("sw", "tv", "cov", "all"), c[3:7]):
                acc[k] += int(v.split("/")[0])
            acc["c"] += cov * n
            acc["ce"] += cov_exact * n
        # the generated notes of the part (not a reading added by hand); its PARTIAL sentence is about that part
        notes_block = [b for b in text.rstrip().split("\n\n") if not b.startswith(("| ", "Reading"))][-1]
        header_notes = re.sub(r"^PARTIAL: [^.]*\)\. ", "", notes_block)
    summary = MarkdownTable(*SUMMARY_COLUMNS)
    for (key, d_y), a in counts.items():
        n, f = a["n"], a["flag"]
        summary.add(key, d_y, n, *(f"{a[k]}/{n}" for k in ("sw", "tv", "cov", "all")),
                    f"{a['c'] / n:.3f} ({a['ce'] / n:.3f})", "-" if f is None else f"{f[0]}/{f[1]} / {f[2]}/{f[3]}")
    body = str(summary) + "\n\n" + "\n".join(header + rows)
    notes = "Joined from " + ", ".join(os.path.basename(p) for p in paths) + ". " + header_notes
    write_result(out, name, "Exactness: samplers against the exact sampler's spread (joined parts)", cmd, body,
                 notes)
    return counts


def per_run_component_weights(res, post: GaussianMixture) -> torch.Tensor:
    """``(runs, K)``: each SMC run's weighted particle estimate ``sum_i W_i r(x_i)`` of the posterior
    component weights (``r``: posterior responsibilities)."""
    R, N = res.log_weights.shape
    r = post.responsibilities(res.particles.reshape(R * N, -1)).reshape(R, N, post.K)
    return (res.weights[..., None].to(r.dtype) * r).sum(1)


MODE_BIAS_CONFIGS = (("mcgdiff", {"particles": 64}),
                     ("mcgdiff", {"particles": 64, "resampling": "multinomial", "ess_threshold": 1.0}),
                     ("mcgdiff", {"particles": 256}), ("mcgdiff", {"particles": 64, "steps": 400}),
                     ("tds", {"particles": 64}))


def mode_bias(family: str = "uneven", d_y: int = 2, seed: int = 1, mean_scale: float = 4.0, runs: int = 2000,
              configs=MODE_BIAS_CONFIGS, out=RESULTS_DIR, cmd: str = ""):
    """The minor-mode weight of ``runs`` independent SMC runs three ways: one draw per run, the mean of
    the runs' weighted particle estimates (what one draw per run estimates, with less noise), and the
    evidence-weighted pool (:mod:`ppl_diffusion.inference.smc.evidence`), against the exact weight."""
    from ..inference.registry import build_solver
    from ..inference.smc.evidence import run_log_weights

    pb = exactness_problem(family, 8, d_y, seed, mean_scale=mean_scale)
    post = pb.posterior
    order = torch.argsort(post.weights, descending=True)
    model = pb.model(VPSchedule.gmm_benchmark())
    table = MarkdownTable("sampler", "options", "one draw per run", "mean of per-run estimates",
                          "evidence-weighted pool", "exact", "final ESS", "sd(log Z)", "s")
    for name, opts in configs:
        sv = build_solver(name, model, **opts)
        t0 = time.perf_counter()
        res = sv.run(y=pb.y, runs=runs, generator=torch.Generator().manual_seed(1))
        x = res.resample(runs, torch.Generator().manual_seed(2)).double()
        w_draw = component_weights(x, post)[order][1]
        per_run = per_run_component_weights(res, post)
        w_runs = per_run.mean(0)[order][1]
        w_pool = (torch.exp(run_log_weights(res))[:, None] * per_run).sum(0)[order][1]
        table.add(name, ", ".join(f"{k}={v}" for k, v in opts.items()), f"{float(w_draw):.4f}",
                  f"{float(w_runs):.4f}", f"{float(w_pool):.4f}", f"{float(post.weights[order][1]):.4f}",
                  f"{float(res.ess.mean()):.1f}", f"{float(res.log_evidence.std()):.2f}",
                  f"{time.perf_counter() - t0:.0f}")
    notes = (f"Problem exactness_problem({family!r}, d = 8, d_y = {d_y}, seed = {seed}, mean_scale = {mean_scale}); "
             f"{runs} independent runs per row (100 steps unless stated), minor mode = the second-heaviest exact "
             "posterior component; a draw counts by its posterior responsibilities. 'mean of per-run estimates' = "
             "mean over runs of sum_i W_i r(x_i) (the law of one draw per run); 'evidence-weighted pool' = the same "
             "weighted by each run's Z_hat (smc/evidence.py).")
    write_result(out, "smc_mode_bias", "SMC: independent-run minor-mode weight against the exact posterior",
                 cmd, str(table), notes)


POOLING_PROBLEMS = "8,1,4;8,1,10;8,1,12;8,2,7;8,2,14;8,4,5;80,2,1;80,2,16;80,2,19"


#: the ways of drawing from independent runs that the pooling check compares
POOL_RULES = ("one draw per run", "pool", "truncated pool", "psis pool", "psis-k", "ess-half")


def _rule_weights(res, P, post):
    """TV to the exact component weights of each of :data:`POOL_RULES` on the runs of ``res`` (``P``: their
    ``(R, K)`` per-run component weights), and whether ``"ess-half"`` pooled."""
    from ..inference.smc.evidence import run_log_weights

    def tv(w):
        return float(0.5 * (w - post.weights).abs().sum())

    pooled = {s: (torch.exp(run_log_weights(res, smoothing=s))[:, None] * P).sum(0)
              for s in (None, "truncated", "psis")}
    use = _ess_half_pools(res)
    laws = [P.mean(0), pooled[None], pooled["truncated"], pooled["psis"],
            pooled["psis"] if _psis_k_pools(res) else P.mean(0), pooled["truncated"] if use else P.mean(0)]
    return [tv(w) for w in laws], use


def _spec_problems(problems: str):
    """``"d,d_y,seed;..."`` -> ``(family, d, d_y, seed, problem, problem for the solver)`` per entry
    (families cycled by seed as in the table; the solver's copy in float32 from d = 80)."""
    for spec in problems.split(";"):
        d, d_y, seed = (int(v) for v in spec.split(","))
        fam = FAMILIES[seed % len(FAMILIES)]
        pb = exactness_problem(fam, d, d_y, seed=seed)
        yield fam, d, d_y, seed, pb, (pb.to(torch.float32) if d > 8 else pb)


def _pooling_repeat(sv, pbs, post, runs, rep, block):
    """One repeat of :func:`pooling_check`: ``runs`` runs of ``sv`` (seed ``rep``), the TV of each of
    :data:`POOL_RULES`, the extra cells and the seconds."""
    from ..inference.smc.evidence import reliability, runs_ess

    t0 = time.perf_counter()
    res = sv.run(y=pbs.y, runs=runs, generator=torch.Generator().manual_seed(rep))
    P = per_run_component_weights(res, post)
    if block:
        parts = [torch.arange(i, i + block) for i in range(0, runs - block + 1, block)]
        subsets = [res.select_runs(idx) for idx in parts]
        got = [_rule_weights(sub, P[idx], post) for sub, idx in zip(subsets, parts)]
        tv = [sum(g[0][j] for g in got) / len(got) for j in range(len(POOL_RULES))]
        ess = sorted(float(runs_ess(sub)[0]) for sub in subsets)
        extra = (f"{sum(g[1] for g in got)}/{len(got)}", f"{ess[len(ess) // 2]:.0f} (median)")
    else:
        tv, _ = _rule_weights(res, P, post)
        rel = reliability(res)
        flag = ", FLAG" if bool(rel["unreliable_independent"][0]) else ""
        extra = (f"{float(rel['bias_estimate'][0]):.3f} ({float(rel['bias_se'][0]):.3f}){flag}",
                 f"{float(rel['runs_ess'][0]):.0f}")
    return tv, extra, time.perf_counter() - t0


def pooling_check(problems: str = POOLING_PROBLEMS, runs: int = 1000, reps: int = 2, steps: int = 200,
                  solver: str = "mcgdiff", out=RESULTS_DIR, cmd: str = "", name: str = "smc_pooling_check",
                  block: int = 0, configs=("",)):
    """The component weights that one draw per run and the evidence pools (plain, truncated,
    Pareto-smoothed, and the choices of :func:`_psis_k_pools` and :func:`_ess_half_pools`) put on an exactness
    problem, read with little Monte Carlo noise: ``runs`` independent runs (the sampler's defaults,
    N = 256 from d = 80), each run's weighted estimate of the posterior component weights averaged
    (one draw per run) or weighted by ``Z_hat``, TV to the exact weights; beside it the runs'
    ``reliability`` estimate and flag.
    ``block > 0``: the runs are cut into blocks of ``block`` runs (what one ``draw(block)`` combines) and
    each column is the mean TV over the blocks, the error a user meets at that number of runs (bias and
    the pool's between-run variance together). ``problems``: ``"d,d_y,seed;..."`` (families cycled by
    seed as in the table). ``configs``: option strings of the sampler (``"particles=1024"``,
    ``"ess_threshold=0.2"``; ``""``: its defaults), each run on every problem with the same seeds."""
    from ..inference.registry import build_solver

    sched = VPSchedule.gmm_benchmark()
    extra_cols = (f"ess-half pooled (blocks of {block})",) if block else ("region bias est. (se), flag",)
    table = MarkdownTable("problem (family, d, d_y, seed)", "options", "repeat", *POOL_RULES, *extra_cols, "runs ESS",
                          "s")
    totals = {c: [0.0] * len(POOL_RULES) for c in configs}
    rows = dict.fromkeys(configs, 0)
    for fam, d, d_y, seed, pb, pbs in _spec_problems(problems):
        post = pb.posterior
        model = pbs.model(sched)
        for config in configs:
            opts = {"steps": steps, **({"particles": 256} if d > 8 else {}), **_parse_method("x:" + config)[2]}
            sv = build_solver(solver, model, **opts)
            for rep in range(reps):
                tv, extra, sec = _pooling_repeat(sv, pbs, post, runs, rep, block)
                totals[config] = [a + b for a, b in zip(totals[config], tv)]
                rows[config] += 1
                table.add(f"({fam}, {d}, {d_y}, {seed})", config or "defaults", rep, *(f"{v:.3f}" for v in tv), *extra,
                          f"{sec:.0f}")
    for c in configs:  # the mean over problems and repeats, per configuration
        table.add("mean", c or "defaults", "", *(f"{v / max(rows[c], 1):.3f}" for v in totals[c]), "", "", "")
    per = (f"cut into blocks of {block} runs; each column is the mean over the blocks of the TV of that block's "
           "law, " if block else "")
    notes = (f"{solver} at its defaults ({steps} steps; N = 256 particles from d = 80) unless the options column says "
             f"otherwise, {runs} independent runs per "
             f"repeat (seeds 0, 1, ...), {per}TV between the exact posterior component weights and what each way of "
             "drawing puts on the components in expectation, read from each run's weighted particle estimate "
             "sum_i W_i r(x_i) (r: posterior responsibilities): their mean over runs (the law of one draw per run), "
             "their Z_hat-weighted mean (the pool), the same with Z_hat capped at sqrt(runs) x its mean "
             "(truncated importance sampling, Ionides 2008) or Pareto-smoothed (PSIS, Vehtari et al. 2024), and "
             "psis-k = the PSIS pool when the run weights' Pareto k-hat <= min(1 - 1/log10 runs, 0.7), else one draw "
             "per run; ess-half = the truncated pool when the runs' evidence ESS >= runs / 2, else "
             "one draw per run. No sampling of draws, so the only noise is that of the runs. Region "
             "bias / flag / runs ESS: SMCResult.reliability() of the same runs.")
    write_result(out, name, "SMC: the independent-run bias and evidence pooling, read with many runs",
                 cmd, str(table), notes)


EVIDENCE_PROBLEMS = "80,2,1;80,2,16;80,2,19;80,2,4;80,2,7"


def evidence_steps(problems: str = EVIDENCE_PROBLEMS, runs: int = 300, particles: int = 256, steps: int = 200,
                   out=RESULTS_DIR, cmd: str = "", name: str = "smc_evidence_steps"):
    """Where MCGDiff's run-to-run evidence variance, and the independent-run bias with it, comes from.
    Per problem: the posterior's second component (the minor mode), its prior weight and the likelihood's
    lift (posterior / prior weight); ``runs`` runs at ``particles`` particles; the mean of the runs'
    weighted minor-mode estimates (the law of one draw per run) against the exact weight; sd(log Z) and its
    correlation with a run's minor weight; then the same for the increments of each run's running
    log-evidence (``extra["log_evidence_history"]``) summed over three windows of the filtering steps in
    ``rho = sigma / alpha`` relative to the last matching time's ``rho*``: ``rho > 8 rho*``,
    ``8 rho* >= rho > 2 rho*`` and ``2 rho* >= rho`` (to the last matching time); and the top run's log Z
    above the mean with its minor weight. ``problems``: ``"d,d_y,seed;..."`` (families cycled by seed)."""
    from ..inference.registry import build_solver

    sched = VPSchedule.gmm_benchmark()
    table = MarkdownTable("problem (family, d, d_y, seed)", "minor: exact weight (prior weight, lift)",
                          "one draw per run", "sd log Z", "corr(log Z, minor)", "rho*",
                          "rho > 8 rho*: sd, corr", "8-2 rho*: sd, corr", "2-1 rho*: sd, corr",
                          "top run: log Z - mean, minor", "s")

    def corr(a, b):
        return float(torch.corrcoef(torch.stack([a.double(), b.double()]))[0, 1])

    for fam, d, d_y, seed, pb, pbs in _spec_problems(problems):
        post = pb.posterior
        sv = build_solver("mcgdiff", pbs.model(sched), particles=particles, steps=steps)
        t0 = time.perf_counter()
        res = sv.run(y=pbs.y, runs=runs, generator=torch.Generator().manual_seed(0))
        sec = time.perf_counter() - t0
        fk = sv.last_fk
        minor = int(torch.argsort(post.weights, descending=True)[1])
        w_prior, w_post = float(pb.prior.weights[minor]), float(post.weights[minor])
        wm = per_run_component_weights(res, post)[:, minor]
        hist = res.extra["log_evidence_history"].to(torch.float64)  # (R, K): running log Z after each step
        inc = torch.diff(torch.cat([torch.zeros(runs, 1, dtype=hist.dtype), hist], 1), dim=1)
        rho = sched.rho(fk.times[1:].cpu()).to(torch.float64)  # rho after each step
        rho_star = float(rho[fk.J - 1])
        cells = []
        for lo, hi in ((8 * rho_star, math.inf), (2 * rho_star, 8 * rho_star), (0.999 * rho_star, 2 * rho_star)):
            sel = (rho > lo) & (rho <= hi)
            sel[fk.J:] = False
            part = inc[:, sel].sum(1)
            cells.append(f"{float(part.std()):.2f}, {corr(part, wm):+.2f} ({int(sel.sum())} steps)")
        logz = res.log_evidence.to(torch.float64)
        top = int(torch.argmax(logz))
        table.add(f"({fam}, {d}, {d_y}, {seed})", f"{w_post:.3f} ({w_prior:.4f}, {w_post / w_prior:.1f}x)",
                  f"{float(wm.mean()):.3f}", f"{float(logz.std()):.2f}", f"{corr(logz, wm):+.2f}", f"{rho_star:.3f}",
                  *cells, f"{float(logz[top] - logz.mean()):.2f}, {float(wm[top]):.3f}", f"{sec:.0f}")
    notes = (f"MCGDiff at its defaults ({steps} steps) with N = {particles} particles, {runs} independent runs per "
             "problem (seed 0). Minor = the posterior's second-heaviest component; lift = its posterior over its prior "
             "weight. 'one draw per run' = the mean over runs of each run's weighted estimate sum_i W_i r(x_i) of "
             "the minor weight (r: posterior responsibilities). The windows cut the filtering steps (to the last "
             "matching time, rho* = sigma_y / s_max there) by rho = sigma / alpha after the step; each cell is the "
             "sd over runs of the summed log-evidence increments in the window and their correlation with the run's "
             "minor weight.")
    write_result(out, name, "MCGDiff: where the runs' evidence variance and the independent-run bias come from",
                 cmd, str(table), notes)


#: PnP-DM's replica setting in these benches: 12 replicas on a geometric ladder rho 0.1-20, annealed from 20
PNPDM_REPLICAS = dict(rho0=20.0, rho_min=0.1, replicas=12, rho_max=20.0)


def exact_prior_step(kernel, mixture: GaussianMixture):
    """``kernel`` (a PnP-DM) with its prior step replaced by an exact draw from the mixture's conditional
    ``p(x | z)``, ``z = x + rho eps`` (per sample: a component by its responsibility, then its Gaussian
    conditional), to separate the reverse SDE's discretisation error from the chains' mixing."""

    def prior(z, rho, level, generator):
        sig = rho[level].to(z.dtype)[:, None]
        logn, mean0 = mixture._component_terms(z, 1.0, sig)
        k = torch.multinomial(torch.softmax(logn + mixture.weights.log(), -1), 1, generator=generator).flatten()
        eps = torch.randn(z.shape, generator=generator, dtype=z.dtype, device=z.device)
        m = mean0[torch.arange(z.shape[0], device=z.device), k]
        if mixture.isotropic:
            v = mixture.variances[k][:, None]
            return m + (v * sig**2 / (v + sig**2)).sqrt() * eps
        lam = mixture.evals[k]
        return m + torch.einsum("bij,bj->bi", mixture.evecs[k], (lam * sig**2 / (lam + sig**2)).sqrt() * eps)

    kernel._prior = prior
    return kernel


def kernel_diagnostics(problems=(("uneven", 1, 1), ("spectrum", 1, 2), ("fullcov", 1, 0)), chains: int = 16,
                       draws: int = 20, thin: int = 5, burnins=(200, 1000), configs=(("joint", 50), ("marginal", 100)),
                       out=RESULTS_DIR, cmd: str = ""):
    """PnP-DM with 12 replicas (the kernels_replicas setting) on multimodal problems of the families:
    the component-weight TV of its draws against the exact sampler's spread, beside what a user sees
    without the truth (:func:`~ppl_diffusion.inference.kernels.mode_check.chain_convergence`: split
    R-hat of the log-likelihood, region R-hat, swap rates, flags; the run's own ``convergence``); one row
    per problem, ``configs``
    entry ``(swap ratio, num_grid)`` and burn-in."""
    from ..inference.kernels import PnPDM
    import warnings

    from ..inference.kernels.mode_check import MIN_SWAP, RHAT_THRESHOLD, MixingWarning

    sched = VPSchedule.gmm_benchmark()
    opts = PNPDM_REPLICAS
    table = MarkdownTable("problem (family, d, d_y, seed)", "swap", "num_grid", "burn-in", "TV / exact q95",
                          "90 % cov [exact range]", "inside TV", "R-hat log-lik", "max region R-hat", "swap min-max",
                          "flagged (R-hat > 1.05)", "flagged (and p < 0.01)", "s")
    for fam, d_y, seed in problems:
        pb = exactness_problem(fam, 8, d_y, seed)
        ref = Reference.build(pb, seed=seed)
        n = chains * draws
        spread = exact_spread(ref, n, 20, seed=seed)
        for swap, grid in configs:
            for burn in burnins:
                if grid == "exact":
                    kern = exact_prior_step(PnPDM(pb.model(sched), swap=swap, **opts), pb.prior)
                else:
                    kern = PnPDM(pb.model(sched), swap=swap, num_grid=int(grid), **opts)
                t0 = time.perf_counter()
                with warnings.catch_warnings():  # the run's MixingWarning: its flags are the table's column
                    warnings.simplefilter("ignore", MixingWarning)
                    r = kern.run_chains(y=pb.y, num_chains=chains, num_samples=draws, warmup_steps=burn, thin=thin,
                                        generator=torch.Generator().manual_seed(40_000 + seed))
                sec = time.perf_counter() - t0
                sc = score(r.flat().reshape(n, -1), ref)
                v = verdict(sc, spread)
                diag = r.convergence  # what run_chains reports (chain_convergence, 4 regions)
                sw = diag["swap_acceptance"]
                by_rhat = diag["max_rhat"] > RHAT_THRESHOLD or (sw is not None and float(sw.min()) < MIN_SWAP)
                b = spread.bounds
                table.add(f"({fam}, 8, {d_y}, {seed})", swap, grid, burn, f"{sc['tv']:.3f} / {b['tv']:.3f}",
                          f"{sc['cov']:.3f} [{b['cov'][0]:.3f}, {b['cov'][1]:.3f}]", "in" if v["tv"] else "OUT",
                          f"{diag['rhat_loglik']:.3f}", f"{float(diag['rhat_regions'].max()):.3f}",
                          "-" if sw is None else f"{float(sw.min()):.2f}-{float(sw.max()):.2f}",
                          "yes" if by_rhat else "no", "yes" if not diag["ok"] else "no", f"{sec:.0f}")
    notes = ("PnP-DM, 12 replicas on a geometric ladder rho 0.1-20 (rho annealed from 20 by 0.9 per iteration); "
             "swap: the replicas' swap ratio (joint: the (x, z) targets, the only one before 2026-12-01; marginal: "
             "the x-marginals' closed-form relaxed likelihoods, now the default with the SVD likelihood step); "
             "num_grid: points of the EDM grid of the prior step (the reverse SDE from rho; 100 is the library "
             "default; 'exact': an exact draw from the mixture's conditional p(x | z), bench only, to separate the "
             f"SDE's discretisation error from mixing). {chains} chains from N(0, I), `burn-in` iterations "
             f"dropped, then {draws} draws every {thin} iterations. TV / coverage as in the exactness table "
             f"(exact spread: 20 sets of {chains * draws} exact draws). Diagnostics (kernels/mode_check.py, "
             "computed without the truth): rank-normalised split R-hat of log p(y | x), split R-hat of the "
             "indicator of each of 4 k-means regions of the pooled draws, swap acceptance per adjacent replica "
             "pair; flagged (R-hat > 1.05) = any R-hat > 1.05 or a pair below 0.05 (the rule before 2026-12-03); "
             "flagged (and p < 0.01) = the rule of run_chains since then: an R-hat counts only when its permutation "
             "p-value (the draws reshuffled among the chains, 500 times) is also below 0.01.")
    write_result(out, "kernels_mode_diagnostics", "PnP-DM: mode-weight error against what its diagnostics say",
                 cmd, str(table), notes)


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv=None):
    p = argparse.ArgumentParser(prog="python benchmarks/exactness.py", description=__doc__.split("\n")[0])
    p.add_argument("what", nargs="?", default="spread", choices=["spread", "mode_bias", "kernels", "merge", "pooling",
                                                                 "evidence_steps", "control", "summary",
                                                                 "pg_target"])
    p.add_argument("parts", nargs="*", help="merge: the result files to join (written to --name)")
    p.add_argument("--d", type=int, default=8)
    p.add_argument("--dys", default="1,2,4")
    p.add_argument("--problems", type=int, default=20, help="problems per d_y (families cycled)")
    p.add_argument("--samples", type=int, default=500)
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default: 100, pooling: 200)")
    p.add_argument("--sets", type=int, default=20, help="exact sample sets per problem (>= 20)")
    p.add_argument("--methods", default="mcgdiff;tds:particles=64",
                   help="';'-separated solver[:opt=value,...] (e.g. mcgdiff:particles=256)")
    p.add_argument("--first-problem", type=int, default=0,
                   help="seed of the first problem (to run one table in parts; join them with `merge`)")
    p.add_argument("--families", default=",".join(FAMILIES))
    p.add_argument("--kernel-configs", default="joint:50,marginal:100",
                   help="kernels: ','-separated swap:num_grid of PnP-DM (swap joint or marginal; num_grid 'exact': "
                        "the Gaussian mixture's exact conditional as prior step)")
    p.add_argument("--burnins", default="200,1000", help="kernels: ','-separated burn-in lengths")
    p.add_argument("--pooling-problems", default=POOLING_PROBLEMS, help="pooling: 'd,d_y,seed;...'")
    p.add_argument("--pooling-runs", type=int, default=1000, help="pooling: independent runs per repeat")
    p.add_argument("--pooling-reps", type=int, default=2, help="pooling: repeats per problem")
    p.add_argument("--pooling-solver", default="mcgdiff", help="pooling: the SMC sampler (at its defaults)")
    p.add_argument("--pooling-configs", default="",
                   help="pooling: ';'-separated sampler options, each a configuration run on every problem "
                        "(e.g. 'ess_threshold=0.5;ess_threshold=0.2'; empty: the defaults)")
    p.add_argument("--pooling-block", type=int, default=0,
                   help="pooling: score blocks of this many runs (the runs of one draw) and average")
    p.add_argument("--evidence-problems", default=EVIDENCE_PROBLEMS, help="evidence_steps: 'd,d_y,seed;...'")
    p.add_argument("--evidence-runs", type=int, default=300, help="evidence_steps: independent runs per problem")
    p.add_argument("--evidence-particles", type=int, default=256, help="evidence_steps: MCGDiff's particles")
    p.add_argument("--pg-problems", default="8,2,114;8,2,101",
                   help="pg_target: 'd,d_y,seed;...' (bench/pg_target.py PG_TARGET_PROBLEMS)")
    p.add_argument("--pg-chains", type=int, default=400, help="pg_target: ParticleGibbs chains")
    p.add_argument("--pg-sweeps", type=int, default=400, help="pg_target: conditional sweeps (50 discarded)")
    p.add_argument("--pg-no-pimh", action="store_true", help="pg_target: conditional sweeps alone (pimh=False)")
    p.add_argument("--pg-pool-runs", type=int, default=400, help="pg_target: independent runs of the target's pool")
    p.add_argument("--pg-pool-particles", type=int, default=2048, help="pg_target: particles per pool run")
    p.add_argument("--control-reps", type=int, default=200,
                   help="control: further exact sets per problem (ppl_diffusion/bench/exact_control.py)")
    p.add_argument("--against", default="", help="control: ','-separated exactness tables to read against it")
    p.add_argument("--name", default=None, help="result file name (default exactness_d<d>)")
    add_out_argument(p, "exactness_d<d>")
    argv = sys.argv[1:] if argv is None else list(argv)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    cmd = "OMP_NUM_THREADS=1 python benchmarks/exactness.py " + shlex.join(argv)
    if threading.current_thread() is not threading.main_thread():
        return _run(a, cmd)
    previous = signal.signal(signal.SIGTERM, _interrupt)  # `kill`: the table keeps its finished problems
    try:
        return _run(a, cmd)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run(a, cmd):
    """``main``'s dispatch on ``a.what``."""
    if a.what == "mode_bias":
        return mode_bias(out=a.out, cmd=cmd)
    if a.what == "pooling":
        return pooling_check(a.pooling_problems, a.pooling_runs, a.pooling_reps,
                             a.steps or 200, solver=a.pooling_solver, out=a.out, cmd=cmd,
                             name=a.name or "smc_pooling_check", block=a.pooling_block,
                             configs=tuple(a.pooling_configs.split(";")))
    if a.what == "evidence_steps":
        return evidence_steps(a.evidence_problems, a.evidence_runs, a.evidence_particles, a.steps or 200, out=a.out,
                              cmd=cmd, name=a.name or "smc_evidence_steps")
    if a.what == "pg_target":
        from .pg_target import pg_target

        return pg_target(a.pg_problems, a.steps or 40, chains=a.pg_chains, sweeps=a.pg_sweeps, out=a.out,
                         name=a.name or "particle_gibbs_target", cmd=cmd, pimh=not a.pg_no_pimh,
                         pool_runs=a.pg_pool_runs, pool_particles=a.pg_pool_particles)
    if a.what == "kernels":
        configs = [tuple(c.split(":")) for c in a.kernel_configs.split(",")]
        return kernel_diagnostics(configs=configs, burnins=[int(b) for b in a.burnins.split(",")], out=a.out, cmd=cmd)
    if a.what == "control":
        from .exact_control import run_control

        return run_control(a.d, [int(v) for v in a.dys.split(",")], a.problems, a.samples, a.control_reps, a.sets,
                           tuple(a.families.split(",")), a.first_problem, tuple(filter(None, a.against.split(","))),
                           a.out, a.name, cmd)
    if a.what == "summary":
        from .exactness_summary import run_summary

        return run_summary(out=a.out, name=a.name or "exactness_summary", cmd=cmd)
    if a.what == "merge":
        return merge_tables(a.parts, a.out, a.name or "exactness_merged", cmd)
    return run_exactness(a.d, [int(v) for v in a.dys.split(",")], a.problems, a.methods.split(";"), a.samples,
                         a.steps or 100, a.sets, tuple(a.families.split(",")), a.out, a.name, cmd, a.first_problem)


if __name__ == "__main__":  # pragma: no cover
    main()
