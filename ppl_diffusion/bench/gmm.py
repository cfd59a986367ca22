"""The benchmark harness on problems with an exact posterior: Gaussian-mixture priors with a linear
Gaussian measurement (the benchmark of Cardoso et al. 2024, MCGDiff) and the Gaussian closed-form
check, both scored against exact posterior draws.

Every registered solver (``ppl_diffusion.inference.registry``) enters through its ``draw()``; the
table :data:`BENCH_SOLVERS` holds what the benchmark sets for each one (how ``steps`` and ``eta``
reach it, its benchmark defaults, how its network evaluations are counted), plus the ``prior``
baseline (``DiffusionPrior.sample`` scored against the GMM prior) and ``pmc_red`` (PMC, RED variant).

Every row carries the metric, the noise floor (the same distance between two independent
exact-posterior sample sets of the same sizes), network evaluations (NFE) per sample and wall time
per sample, so that no number is reported without its reference.

    python benchmarks/gmm.py --solver ddrm --setting b          # setting B (d=8, max-sliced W)
    python benchmarks/gmm.py --solver dps --setting grid         # d in {8, 80, 800}, (20, 0.6), (100, 0.85)
    python benchmarks/gmm.py --solver prior --setting b          # DiffusionPrior.sample against the GMM prior
    python benchmarks/gmm.py --solver ddrm --setting gaussian    # Gaussian check: KL / W2
    python benchmarks/gmm.py --solver ddrm dps mcgdiff --setting modes --dys 4   # mass per mixture component
    python benchmarks/gmm.py --setting floor --problems 200      # spread of the setting-B noise floor
"""
from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from ..metrics import empirical_gaussian_fit, gaussian_kl, gaussian_w2, max_sliced_wasserstein, sliced_wasserstein
from ..models.gmm import gaussian_check_problem, gmm_benchmark_problem
from ..schedules import VPSchedule
from .report import RESULTS_DIR, MarkdownTable, add_out_argument, write_result

__all__ = ["BenchSolver", "BENCH_SOLVERS", "SolverOutput", "BenchRow", "available_solvers", "run_solver", "run_gmm",
           "run_setting_b", "run_gaussian_check", "run_mode_weights", "format_table", "gaussian_table",
           "floor_spread", "SETTINGS", "run_benchmark", "main"]


@dataclass
class SolverOutput:
    samples: torch.Tensor          # (n, d)
    nfe_per_sample: float          # network evaluations seen by one output sample
    extra: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------------------
# how the benchmark calls each solver
# ------------------------------------------------------------------------------------------
def _with_eta(eta) -> dict:
    return {} if eta is None else {"eta": eta}


def _guide_call(steps, eta, options):
    """Guides: ``Guide(model, steps=steps, eta=eta, **options)``, one batched reverse diffusion."""
    return {"steps": steps, **_with_eta(eta), **options}, {}, {}


def _smc_call(steps, eta, options):
    """SMC: each sample from its own independent run of ``particles`` particles (``independent``)."""
    independent = options.pop("independent", True)
    return {"steps": steps, **_with_eta(eta), **options}, {"independent": independent}, {}


def _kernel_call(**fixed):
    """Kernels: 100 vectorised chains, ``steps`` burn-in iterations (annealing included; option
    ``warmup=auto`` lets the chains choose it) dropped, then ``ceil(n / chains)`` draws per chain every 5
    iterations; the first ``n`` draws kept. Options ``max_warmup`` and ``warmup_first`` (with
    ``warmup=auto``): the automatic warm-up's cap and first checkpoint, ``AutoWarmup(max_warmup=...,
    first=...)``."""

    def call(steps, eta, options):
        chains, thin = options.pop("chains", 100), options.pop("thin", 5)
        run = {"chains": chains, "thin": thin, "warmup": options.pop("warmup", steps)}
        given = [o for o in ("max_warmup", "warmup_first") if o in options]
        if given:
            if run["warmup"] != "auto":
                raise ValueError(f"{', '.join(given)} set the automatic warm-up: pass warmup=auto, got "
                                 f"warmup={run['warmup']}")
            from ..inference.kernels import AutoWarmup

            names = {"max_warmup": "max_warmup", "warmup_first": "first"}
            run["warmup"] = AutoWarmup(**{names[o]: int(options.pop(o)) for o in given})
        return {**fixed, **options}, run, run

    return call


def _red_diff_call(steps, eta, options):
    """RED-Diff: ``10 x steps`` optimisation steps at lr 0.5; its point estimate repeated n times."""
    return {"steps": max(int(steps), 1) * 10, "lr": 0.5, "progress": False, **options}, {}, {}


def _optimise_call(steps, eta, options):
    """Optimise-the-input solvers: ``10 x steps`` iterations, no clipping (GMM data is not in [-1, 1])."""
    return {"iterations": max(int(steps), 1) * 10, "clip": False, **options}, {}, {}


def _flow_call(**defaults):
    """Score prior / efficient score prior: ``train_steps`` (300) of flow training; ``is_samples``
    (500) importance-sampling draws with the exact PF-ODE prior for the ESS (``is_ode_steps``)."""

    def call(steps, eta, options):
        opts = {**defaults, **options}
        local = {"train_steps": int(opts.pop("train_steps", 300)), "is_samples": int(opts.pop("is_samples", 500)),
                 "is_ode_steps": opts.pop("is_ode_steps", None)}
        return {**opts, "steps": local["train_steps"], "progress": False}, {}, local

    return call


def _kernel_nfe(d, n, local):
    """Network calls of all chains (burn-in and thinning included) / the ``n`` samples kept."""
    iters = d.extra["warmup"] + d.num_draws * local["thin"]
    return d.extra["result"].nfe_per_iteration * iters * local["chains"] / n


def _kernel_extra(d, solver, y, local):
    iterations = d.extra["warmup"] + d.num_draws * local["thin"]
    return {"chains": local["chains"], "thin": local["thin"], "iterations": iterations, "warmup": d.extra["warmup"],
            "convergence": d.extra.get("convergence")}


def _smc_extra(d, solver, y, local):
    return {"log_evidence": float(d.extra["log_evidence"].mean()), "ess": float(d.extra["ess"].mean())}


def _red_diff_extra(d, solver, y, local):
    trace = d.extra["loss_trace"]
    return {"loss": float(trace[-1]) if len(trace) else float("nan")}


def _flow_extra(d, solver, y, local):
    """Training cost, and the ESS of ``is_samples`` importance-sampling draws (exact PF-ODE prior)."""
    extra = {"train_nfe": d.extra["train_nfe"], "train_s": d.extra["train_s"], "train_steps": local["train_steps"]}
    if local["is_samples"]:
        xi, lw = solver.importance_sample(local["is_samples"], y=y, ode_steps=local["is_ode_steps"])
        extra.update(ess=solver.ess(lw), is_n=local["is_samples"], x_is=xi, logw=lw)
    return extra


@dataclass(frozen=True)
class BenchSolver:
    """One solver as the harness runs it.

    ``solver``: the registry name (``None``: the prior baseline); ``call(steps, eta, options) ->
    (constructor options, draw options, harness options)``; ``target``: ``"posterior"`` or ``"prior"``
    (what the samples are scored against); ``nfe(draws, n, harness options)``: NFE per kept sample
    (default: the draws' own); ``extra(draws, solver, y, harness options)``: numbers reported beside
    the samples; ``fresh_params``: clear Pyro's param store first; ``seed_first``: seed torch's
    global RNG from the generator before building the solver (solvers that sample with it)."""

    name: str
    family: str
    solver: str | None = None
    call: Callable = _guide_call
    target: str = "posterior"
    nfe: Callable | None = None
    extra: Callable | None = None
    fresh_params: bool = False
    seed_first: bool = False

    def run(self, problem, model, n_samples: int, steps: int, eta, generator, **options) -> SolverOutput:
        """``n_samples`` draws for ``problem.y`` under ``model`` (the old ``run(problem, model, n, steps,
        eta, generator, **options)`` protocol of the harness)."""
        return run_solver(self.name, problem, model, n_samples, steps, eta, generator, **options)


_FLOW = dict(n_layers=4, hidden=(64, 64), lr=1e-2, init="prior", init_scale=1.0)


def _build_table() -> dict:
    from ..inference.registry import SOLVERS

    table = {}
    for name, info in SOLVERS.items():
        if info.family == "guide":
            table[name] = BenchSolver(name, "guide", name, _guide_call)
        elif info.family == "smc":
            table[name] = BenchSolver(name, "smc", name, _smc_call, extra=_smc_extra)
        elif info.family == "optimisation":  # point estimates: one draw per random restart
            table[name] = BenchSolver(name, "optimisation", name, _optimise_call)
    table.update(
        prior=BenchSolver("prior", "baseline", None, target="prior"),
        red_diff=BenchSolver("red_diff", "variational", "red_diff", _red_diff_call, extra=_red_diff_extra,
                             fresh_params=True),
        score_prior=BenchSolver("score_prior", "variational", "score_prior",
                                _flow_call(**_FLOW, num_particles=16, ode_steps=4), extra=_flow_extra,
                                fresh_params=True, seed_first=True),
        efficient_score_prior=BenchSolver("efficient_score_prior", "variational", "efficient_score_prior",
                                          _flow_call(**_FLOW, num_particles=32, elbo_samples=4),
                                          extra=_flow_extra, fresh_params=True, seed_first=True),
        pnpdm=BenchSolver("pnpdm", "kernel", "pnpdm", _kernel_call(), nfe=_kernel_nfe, extra=_kernel_extra),
        pmc=BenchSolver("pmc", "kernel", "pmc", _kernel_call(variant="pnp"), nfe=_kernel_nfe, extra=_kernel_extra),
        pmc_red=BenchSolver("pmc_red", "kernel", "pmc", _kernel_call(variant="red"), nfe=_kernel_nfe,
                            extra=_kernel_extra),
        # blind solvers need an operator parameter (their exact check: bench/blind_e1.py); on this
        # harness's known-operator problems they refuse with a message naming the missing site
        blind_red_diff=BenchSolver("blind_red_diff", "variational", "blind_red_diff",
                                   lambda steps, eta, options: ({"steps": steps, **options}, {}, {})),
    )
    return table


#: name -> how the harness runs it (filled on first use from the registry)
BENCH_SOLVERS: dict[str, BenchSolver] = {}


def available_solvers() -> dict:
    """``{name: BenchSolver}`` of the solvers the harness can run in this installation."""
    if not BENCH_SOLVERS:
        BENCH_SOLVERS.update(_build_table())
    from ..inference.registry import available_solvers as registered

    ok = registered()
    return {k: v for k, v in BENCH_SOLVERS.items() if v.solver is None or v.solver in ok}


def _spec(solver: str) -> BenchSolver:
    solvers = available_solvers()
    key = str(solver).lower()
    if key not in solvers:
        raise ValueError(f"unknown solver {solver!r}; available: {sorted(solvers)}")
    return solvers[key]


def _run_prior(problem, model, n_samples, steps, eta, generator) -> SolverOutput:
    """Baseline: ``DiffusionPrior.sample`` (scored against the GMM prior itself)."""
    from ..inference.problem import Problem

    prior = Problem.from_model(model, y=problem.y).prior.with_options(steps=steps, eta=1.0 if eta is None else eta)
    prior.denoiser.reset_nfe()
    x = prior.sample((n_samples,), generator=generator)
    return SolverOutput(x, float(prior.denoiser.nfe))


def run_solver(solver: str, problem, model, n_samples: int, steps: int, eta, generator, **options) -> SolverOutput:
    """``n_samples`` draws ``(n, d)`` of ``solver`` for ``problem.y`` under ``model``, run as the
    benchmark runs it (:data:`BENCH_SOLVERS`), with the NFE per sample and the numbers it reports."""
    spec = _spec(solver)
    if spec.solver is None:
        return _run_prior(problem, model, n_samples, steps, eta, generator)
    import pyro

    from ..inference.registry import build_solver

    ctor, run, local = spec.call(steps, eta, dict(options))
    if spec.fresh_params:
        pyro.clear_param_store()
    if spec.seed_first:
        pyro.set_rng_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
    sv = build_solver(spec.solver, model, **ctor)
    d = sv.draw(n_samples, y=problem.y, generator=None if spec.seed_first else generator, **run)
    x = d.flat()[:n_samples].reshape(n_samples, -1)
    nfe = spec.nfe(d, n_samples, local) if spec.nfe else d.nfe_per_sample
    return SolverOutput(x, float(nfe), spec.extra(d, sv, problem.y, local) if spec.extra else {})


# ------------------------------------------------------------------------------------------
@dataclass
class BenchRow:
    solver: str
    d: int
    d_y: int
    steps: int
    eta: float | None
    metric: str
    values: list
    floors: list
    nfe: float
    sec_per_sample: float
    n_samples: int
    n_ref: int
    options: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    @staticmethod
    def _ci(v):
        t = torch.tensor(v, dtype=torch.float64)
        m = float(t.mean())
        half = 1.96 * float(t.std()) / math.sqrt(len(v)) if len(v) > 1 else float("nan")
        return m, half

    @property
    def mean(self):
        return self._ci(self.values)

    @property
    def floor(self):
        return self._ci(self.floors)


def _schedule(name: str):
    if name == "linear":
        return VPSchedule.linear()
    return VPSchedule.gmm_benchmark(name)


def _score(metric: str, x, ref, generator):
    if metric == "max_sw":
        return float(max_sliced_wasserstein(x, ref, n_projections=100, generator=generator))
    if metric == "sw":
        return float(sliced_wasserstein(x, ref, n_projections=500, generator=generator))
    raise ValueError(f"unknown metric {metric!r}; use 'sw' or 'max_sw'")


def run_gmm(solver: str, d: int = 8, d_y: int = 2, steps: int = 100, eta: float | None = None,
            n_problems: int = 5, n_samples: int = 1000, n_ref: int = 10000, metric: str = "max_sw",
            schedule: str = "mcgdiff", seed: int = 0, options: dict | None = None,
            dtype=torch.float64, solver_dtype=None) -> BenchRow:
    """Run ``solver`` on ``n_problems`` seeded GMM problems (the MCGDiff paper's GMM benchmark).

    Problems are drawn in ``dtype`` (float64: the same problems whatever the solver precision); the
    solver runs in ``solver_dtype`` (default: ``dtype``); scores are computed in float64."""
    spec = _spec(solver)
    options = dict(options or {})
    sched = _schedule(schedule)
    values, floors, nfes, secs, extras = [], [], [], [], []
    for k in range(n_problems):
        pb = gmm_benchmark_problem(d, d_y, seed=seed + k, dtype=dtype)
        if solver_dtype is not None and solver_dtype != dtype:
            pb = pb.to(solver_dtype)
        model = pb.model(sched)
        g = torch.Generator().manual_seed(10_000 + seed + k)
        t0 = time.perf_counter()
        out = run_solver(spec.name, pb, model, n_samples, steps, eta, g, **options)
        secs.append((time.perf_counter() - t0) / n_samples)
        target = pb.posterior if spec.target == "posterior" else pb.prior
        ref = target.sample(n_ref, generator=g)
        ref2 = target.sample(n_samples, generator=g)
        x = out.samples.to(torch.float64).reshape(n_samples, d)
        ref, ref2 = ref.to(torch.float64), ref2.to(torch.float64)
        if not torch.isfinite(x).all():
            raise RuntimeError(f"{solver} produced non-finite samples on problem seed {seed + k}")
        values.append(_score(metric, x, ref, g))
        floors.append(_score(metric, ref2, ref, g))
        nfes.append(out.nfe_per_sample)
        extras.append(out.extra)
    return BenchRow(spec.name, d, d_y, steps, eta, metric, values, floors, sum(nfes) / len(nfes),
                    sum(secs) / len(secs), n_samples, n_ref, options,
                    {"schedule": schedule, "seed": seed, "family": spec.family})


def run_setting_b(solver: str, d_ys: Sequence[int] = (1, 2, 4), n_problems: int = 20, steps: int = 100,
                  eta: float | None = None, options: dict | None = None, schedule: str = "mcgdiff",
                  n_samples: int = 1000, n_ref: int = 10000, solver_dtype=None) -> list:
    """Setting B: d = 8, 100 steps, 1,000 samples, 10,000 reference samples, POT max-sliced W (100 projections)."""
    return [run_gmm(solver, 8, dy, steps, eta, n_problems, n_samples, n_ref, "max_sw", schedule, 0, options,
                    solver_dtype=solver_dtype) for dy in d_ys]


def run_gaussian_check(solver: str, steps: int = 300, eta: float | None = None, n_samples: int = 2000,
                       options: dict | None = None, seed: int = 0) -> dict:
    """KL(fit || exact) and W2(fit, exact) of a Gaussian fit of the samples on a Gaussian prior with a
    closed-form posterior, with the same numbers for exact posterior samples of the same size beside
    them (the noise floor)."""
    spec = _spec(solver)
    pb = gaussian_check_problem(seed=seed)
    model = pb.model(VPSchedule.linear())
    g = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    out = run_solver(spec.name, pb, model, n_samples, steps, eta, g, **dict(options or {}))
    sec = (time.perf_counter() - t0) / n_samples
    post = pb.posterior
    m_p, C_p = post.means[0], post.full_covs()[0]
    m_q, C_q = empirical_gaussian_fit(out.samples.reshape(n_samples, -1).to(torch.float64))
    m_r, C_r = empirical_gaussian_fit(post.sample(n_samples, generator=g))
    return {"solver": spec.name, "kl": float(gaussian_kl(m_q, C_q, m_p, C_p)),
            "w2": float(gaussian_w2(m_q, C_q, m_p, C_p)), "kl_floor": float(gaussian_kl(m_r, C_r, m_p, C_p)),
            "w2_floor": float(gaussian_w2(m_r, C_r, m_p, C_p)), "nfe": out.nfe_per_sample, "sec_per_sample": sec,
            "steps": steps, "n_samples": n_samples}


def run_mode_weights(solver: str, d: int = 8, d_y: int = 4, seeds: Sequence[int] = range(10), steps: int = 100,
                     n_samples: int = 2000, schedule: str = "mcgdiff", options: dict | None = None) -> list:
    """Where a solver puts its mass among the mixture components, against the exact posterior weights.

    Each sample is assigned to the nearest posterior component mean; returns one dict per problem with
    the exact weight of the heaviest posterior component (``w_top``), the solver's fraction of samples
    in it (``frac_top``), the total variation between exact and solver component weights (``tv``),
    and the max-sliced W of the samples to the exact posterior (``max_sw``, 10,000 reference draws)."""
    spec = _spec(solver)
    sched = _schedule(schedule)
    out = []
    for seed in seeds:
        pb = gmm_benchmark_problem(d, d_y, seed=seed)
        g = torch.Generator().manual_seed(20_000 + seed)
        x = run_solver(spec.name, pb, pb.model(sched), n_samples, steps, None, g, **dict(options or {})).samples
        x = x.to(torch.float64).reshape(n_samples, d)
        means = pb.posterior.means
        lab = torch.cdist(x, means).argmin(1)
        frac = torch.bincount(lab, minlength=means.shape[0]).double() / n_samples
        w = pb.posterior.weights
        top = int(w.argmax())
        ref = pb.posterior.sample(10000, generator=g)
        out.append({"seed": seed, "w_top": float(w[top]), "frac_top": float(frac[top]),
                    "tv": 0.5 * float((frac - w).abs().sum()),
                    "max_sw": float(max_sliced_wasserstein(x, ref, n_projections=100, generator=g))})
    return out


# ------------------------------------------------------------------------------------------
# tables
# ------------------------------------------------------------------------------------------
def format_table(rows: Sequence[BenchRow]) -> str:
    head = ("| solver | d | d_y | steps | eta | metric | value (mean ± 95% CI) | noise floor | ratio | "
            "NFE/sample | ms/sample | problems | options |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        m, h = r.mean
        f, fh = r.floor
        eta = "-" if r.eta is None else f"{r.eta:g}"
        opts = ", ".join(f"{k}={v}" for k, v in r.options.items()) or "-"
        lines.append(f"| {r.solver} | {r.d} | {r.d_y} | {r.steps} | {eta} | {r.metric} | {m:.3g} ± {h:.2g} | "
                     f"{f:.3g} ± {fh:.2g} | {m / f:.2f} | {r.nfe:.0f} | {1e3 * r.sec_per_sample:.3g} | "
                     f"{len(r.values)} | {opts} |")
    return "\n".join(lines)


def gaussian_table(r: dict) -> str:
    """The row of :func:`run_gaussian_check` as a markdown table."""
    return ("| solver | KL(fit ‖ exact) | KL floor | W2 | W2 floor | NFE/sample | ms/sample |\n"
            "|---|---|---|---|---|---|---|\n"
            f"| {r['solver']} | {r['kl']:.4g} | {r['kl_floor']:.4g} | {r['w2']:.4g} | {r['w2_floor']:.4g} | "
            f"{r['nfe']:.0f} | {1e3 * r['sec_per_sample']:.3g} |")


def _q(v: torch.Tensor, a: float) -> str:
    return f"{float(v.quantile(a)):.3f}"


def floor_spread(dys, n_problems: int, command: str, out: str | None = RESULTS_DIR) -> str:
    """The setting-B noise floor (max-sliced W between 1,000 and 10,000 exact posterior draws) on
    ``n_problems`` problems per d_y, and the spread of its mean over random sets of 20 problems
    (the size of a published table): what a perfect sampler scores. Written to ``out``
    (``gmm_b_floor.md``)."""
    table = MarkdownTable("d_y", "problems", "floor mean", "median", "5 % / 95 % quantiles over problems",
                          "mean of 20 problems: 2.5 % / 97.5 %", "first 20 seeds", "published MCGDiff N = 128",
                          "P(perfect sampler's 20-problem mean <= published)")
    published = {1: 5.23, 2: 4.28, 4: 0.179}
    for dy in dys:
        vals = []
        for seed in range(n_problems):
            pb = gmm_benchmark_problem(8, dy, seed=seed)
            g = torch.Generator().manual_seed(10_000 + seed)
            ref = pb.posterior.sample(10000, generator=g)
            vals.append(float(max_sliced_wasserstein(pb.posterior.sample(1000, generator=g), ref, generator=g)))
        f = torch.tensor(vals, dtype=torch.float64)
        idx = torch.randint(0, n_problems, (20000, 20), generator=torch.Generator().manual_seed(0))
        means = f[idx].mean(1)
        pub = published.get(dy, float("nan"))
        table.add(dy, n_problems, f"{f.mean():.3f}", f"{f.median():.3f}", f"{_q(f, 0.05)} / {_q(f, 0.95)}",
                  f"{_q(means, 0.025)} / {_q(means, 0.975)}", f"{f[:20].mean():.3f}", pub,
                  f"{float((means <= pub).double().mean()):.3f}")
    notes = ("Setting B problems (d = 8, seeds 0..), max-sliced W (POT definition, 100 projections) between 1,000 and "
             "10,000 independent exact posterior draws. The 20-problem spread is a bootstrap over the problems "
             "(20,000 resamples). At d_y = 4 the floor is heavy-tailed (a few problems with wide posteriors dominate "
             "the mean), so a 20-problem mean ranges over a factor of four for a perfect sampler: tables computed on "
             "different random problems can be compared only through their ratio to the floor.")
    return write_result(out, "gmm_b_floor", "GMM setting B: spread of the noise floor", command, str(table), notes)


#: settings of :func:`run_benchmark`
SETTINGS = {
    "quick": "d = 8, 3 problems per d_y, 500 draws, 5,000 reference draws (minutes)",
    "b": "setting B of the MCGDiff paper: d = 8, 20 problems per d_y, 1,000 draws, 10,000 reference draws",
    "grid": "d in --dims (8, 80, 800) x (20 steps, eta 0.6), (100, 0.85): sliced W, 20 problems, 2,000 draws",
    "gaussian": "the Gaussian closed-form check: KL / W2 of a Gaussian fit",
    "modes": "mass per mixture component against the exact posterior weights",
    "floor": "spread of the setting-B noise floor (no solver)",
}


def run_benchmark(setting: str, solvers: Sequence[str] = (), *, problems: int | None = None,
                  samples: int | None = None, dims: Sequence[int] = (8, 80, 800), dys: Sequence[int] = (1, 2, 4),
                  schedule: str = "mcgdiff", options: dict | None = None, out: str | None = RESULTS_DIR,
                  command: str = "") -> str:
    """Run one of :data:`SETTINGS` for each solver, print and write its table(s) under ``out`` (a
    folder receiving ``gmm_<setting>_<solver>.md``, a ``.md`` file, or ``-``: print only); returns
    the text. The one implementation behind ``benchmarks/gmm.py`` and ``ppl-diffusion benchmark gmm``."""
    if setting not in SETTINGS:
        raise ValueError(f"unknown setting {setting!r}; choose one of {', '.join(SETTINGS)}")
    opts = dict(options or {})
    if setting == "floor":
        text = floor_spread(dys, problems or 200, command, out)
        print(text)
        return text
    if not solvers:
        raise ValueError(f"a solver is required for the {setting!r} setting; available: "
                         + ", ".join(sorted(available_solvers())))
    for s in solvers:
        _spec(s)  # unknown names fail before any work
    if setting == "modes":
        lines = ["| solver | d_y | seed | exact weight of the top component | solver's fraction in it | "
                 "TV(component weights) | max-SW |", "|---|---|---|---|---|---|---|"]
        for solver in solvers:
            for dy in dys:
                for r in run_mode_weights(solver, 8, dy, range(problems or 10), options=opts, schedule=schedule,
                                          n_samples=samples or 2000):
                    lines.append(f"| {solver} | {dy} | {r['seed']} | {r['w_top']:.3f} | {r['frac_top']:.3f} | "
                                 f"{r['tv']:.3f} | {r['max_sw']:.2f} |")
                    print(lines[-1], flush=True)
        notes = ("GMM setting B problems (d = 8, 100 steps, default options). Each sample is assigned to the nearest "
                 "exact posterior component mean; TV = total variation between the exact posterior component "
                 "weights and the solver's fractions. A max-SW far above the noise floor with TV near 0 is a shape "
                 "error; with a large TV it is a mode-weight error.")
        text = write_result(out, "gmm_modes", "GMM: mass per mixture component", command, "\n".join(lines), notes)
        print(text)
        return text
    texts = []
    for solver in solvers:
        if setting == "gaussian":
            body = gaussian_table(run_gaussian_check(solver, options=opts))
        elif setting == "b":
            body = format_table(run_setting_b(solver, dys, problems or 20, options=opts, schedule=schedule,
                                              n_samples=samples or 1000))
        elif setting == "quick":
            body = format_table([run_gmm(solver, 8, dy, 100, None, problems or 3, samples or 500, 5000, "max_sw",
                                         schedule, 0, opts) for dy in dys])
        else:  # grid
            rows = []
            for d in dims:
                for steps, eta in [(20, 0.6), (100, 0.85)]:
                    for dy in dys:
                        rows.append(run_gmm(solver, d, dy, steps, eta, problems or 20, samples or 2000,
                                            samples or 2000, "sw", schedule, 0, opts))
            body = format_table(rows)
        title = (f"Gaussian check — {solver}" if setting == "gaussian" else
                 f"GMM benchmark ({setting}) — {solver}")
        texts.append(write_result(out, f"gmm_{setting}_{solver}", title, command, body))
        print(texts[-1])
    return "\n".join(texts)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python benchmarks/gmm.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--solver", nargs="+", default=[])
    p.add_argument("--setting", choices=list(SETTINGS), default="b")
    p.add_argument("--problems", type=int, default=None)
    p.add_argument("--dims", type=int, nargs="+", default=[8, 80, 800])
    p.add_argument("--dys", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--samples", type=int, default=None)
    p.add_argument("--schedule", default="mcgdiff", choices=["mcgdiff", "increasing", "linear"])
    p.add_argument("--options", default="{}", help="JSON dict of solver options")
    add_out_argument(p, "gmm_<setting>_<solver>")
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.setting != "floor" and not a.solver:
        p.error("--solver is required for this setting")
    command = "python benchmarks/gmm.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    return run_benchmark(a.setting, a.solver, problems=a.problems, samples=a.samples, dims=a.dims, dys=a.dys,
                         schedule=a.schedule, options=json.loads(a.options), out=a.out, command=command)


if __name__ == "__main__":  # pragma: no cover
    main()
