"""Benchmark harness on problems with an exact posterior (BENCHMARKS.md §1 and §2).

A solver enters the harness through :func:`register_solver`: a function
``run(problem, model, n_samples, steps, eta, generator, **options) -> SolverOutput`` that returns
``n_samples`` posterior draws for a :class:`~ppl_diffusion.models.gmm.GMMProblem` whose Pyro
``model`` uses the exact Gaussian-mixture denoiser. :func:`register_guide` does this for any guide
class with the standard ``Guide(model, steps=, eta=, **options).sample(n, y=, generator=)`` API.

Every row the harness prints carries the metric, the noise floor (the same distance between two
independent exact-posterior sample sets of the same sizes), network evaluations (NFE) per sample
and wall time per sample, so that no number is reported without its reference.
"""
from __future__ import annotations

import datetime
import importlib
import math
import os
import platform
import time
from dataclasses import dataclass, field
from collections.abc import Callable, Sequence

import torch

from .metrics import empirical_gaussian_fit, gaussian_kl, gaussian_w2, max_sliced_wasserstein, sliced_wasserstein
from .models.gmm import GMMProblem, gaussian_check_problem, gmm_benchmark_problem
from .schedules import VPSchedule

__all__ = ["MarkdownTable", "SolverOutput", "register_solver", "register_guide", "available_solvers", "run_gmm",
           "run_setting_b", "run_gaussian_check", "run_mode_weights", "format_table", "write_table", "BenchRow"]


@dataclass
class SolverOutput:
    samples: torch.Tensor          # (n, d)
    nfe_per_sample: float          # network evaluations seen by one output sample
    extra: dict = field(default_factory=dict)


@dataclass
class _Solver:
    name: str
    run: Callable
    family: str
    target: str = "posterior"      # "posterior" or "prior" (baseline)


_SOLVERS: dict[str, _Solver] = {}
_SOLVER_MODULES = ("ppl_diffusion.inference.guides", "ppl_diffusion.inference.variational",
                   "ppl_diffusion.inference.smc", "ppl_diffusion.inference.kernels")


def register_solver(name: str, family: str, target: str = "posterior"):
    """Decorator registering ``run(problem, model, n_samples, steps, eta, generator, **options)``."""

    def deco(fn):
        _SOLVERS[name.lower()] = _Solver(name.lower(), fn, family, target)
        return fn

    return deco


def register_guide(name: str, cls, family: str = "guide", **fixed_options):
    """Register a guide class with the standard constructor / ``.sample`` API."""

    def run(problem: GMMProblem, model, n_samples, steps, eta, generator, **options):
        opts = dict(fixed_options)
        opts.update(options)
        kwargs = {"steps": steps}
        if eta is not None:
            kwargs["eta"] = eta
        kwargs.update(opts)
        guide = cls(model, **kwargs)
        den = _model_denoiser(model)
        den.reset_nfe()
        x = guide.sample(n_samples, y=problem.y, generator=generator)
        return SolverOutput(x.reshape(n_samples, -1), float(den.nfe))

    register_solver(name, family)(run)
    return cls


def _model_denoiser(model):
    from .inference.problem import Problem

    return Problem.from_model(model, allow_unobserved=True).denoiser


def available_solvers() -> dict:
    for mod in _SOLVER_MODULES:
        try:
            importlib.import_module(mod)
        except ImportError as exc:  # a family not written yet
            if mod not in str(exc) and mod.rsplit(".", 1)[-1] not in str(exc):
                raise
    return dict(_SOLVERS)


@register_solver("prior", family="baseline", target="prior")
def _run_prior(problem: GMMProblem, model, n_samples, steps, eta, generator, **options):
    """Baseline: ``DiffusionPrior.sample`` scored against the GMM prior itself."""
    from .inference.problem import Problem

    prior = Problem.from_model(model, y=problem.y).prior.with_options(steps=steps, eta=1.0 if eta is None else eta)
    prior.denoiser.reset_nfe()
    x = prior.sample((n_samples,), generator=generator)
    return SolverOutput(x, float(prior.denoiser.nfe))


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
    """Run ``solver`` on ``n_problems`` seeded GMM problems (BENCHMARKS.md §1).

    Problems are drawn in ``dtype`` (float64: the same problems whatever the solver precision); the
    solver runs in ``solver_dtype`` (default: ``dtype``); scores are computed in float64."""
    solvers = available_solvers()
    if solver.lower() not in solvers:
        raise ValueError(f"unknown solver {solver!r}; available: {sorted(solvers)}")
    spec = solvers[solver.lower()]
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
        out = spec.run(pb, model, n_samples, steps, eta, g, **options)
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
    """BENCHMARKS.md §2: KL(fit || exact) and W2(fit, exact) of a Gaussian fit of the samples, with
    the same numbers for exact posterior samples of the same size beside them (the noise floor)."""
    solvers = available_solvers()
    spec = solvers[solver.lower()]
    pb = gaussian_check_problem(seed=seed)
    model = pb.model(VPSchedule.linear())
    g = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    out = spec.run(pb, model, n_samples, steps, eta, g, **dict(options or {}))
    sec = (time.perf_counter() - t0) / n_samples
    post = pb.posterior
    m_p, C_p = post.means[0], post.full_covs()[0]
    m_q, C_q = empirical_gaussian_fit(out.samples.reshape(n_samples, -1).to(torch.float64))
    m_r, C_r = empirical_gaussian_fit(post.sample(n_samples, generator=g))
    return {"solver": spec.name, "kl": float(gaussian_kl(m_q, C_q, m_p, C_p)), "w2": float(gaussian_w2(m_q, C_q, m_p, C_p)),
            "kl_floor": float(gaussian_kl(m_r, C_r, m_p, C_p)), "w2_floor": float(gaussian_w2(m_r, C_r, m_p, C_p)),
            "nfe": out.nfe_per_sample, "sec_per_sample": sec, "steps": steps, "n_samples": n_samples}


def run_mode_weights(solver: str, d: int = 8, d_y: int = 4, seeds: Sequence[int] = range(10), steps: int = 100,
                     n_samples: int = 2000, schedule: str = "mcgdiff", options: dict | None = None) -> list:
    """Where a solver puts its mass among the mixture components, against the exact posterior weights.

    Each sample is assigned to the nearest posterior component mean; returns one dict per problem with
    the exact weight of the heaviest posterior component (``w_top``), the solver's fraction of samples
    in it (``frac_top``), the total variation between exact and solver component weights (``tv``),
    and the max-sliced W of the samples to the exact posterior (``max_sw``, 10,000 reference draws)."""
    spec = available_solvers()[solver.lower()]
    sched = _schedule(schedule)
    out = []
    for seed in seeds:
        pb = gmm_benchmark_problem(d, d_y, seed=seed)
        g = torch.Generator().manual_seed(20_000 + seed)
        x = spec.run(pb, pb.model(sched), n_samples, steps, None, g, **dict(options or {})).samples
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
class MarkdownTable:
    """A markdown table built row by row; each row is printed as it is added (long benchmarks show
    progress). ``str(table)`` is the table."""

    def __init__(self, *header: str):
        self.lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]

    def add(self, *cells) -> None:
        self.lines.append("| " + " | ".join(str(c) for c in cells) + " |")
        print(self.lines[-1], flush=True)

    def __str__(self) -> str:
        return "\n".join(self.lines)


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


def environment_header(title: str, command: str) -> str:
    import pyro

    return (f"# {title}\n\n"
            f"- command: `{command}`\n"
            f"- date: {datetime.date.today().isoformat()}\n"
            f"- machine: {platform.platform()}, {os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()}\n"
            f"- versions: python {platform.python_version()}, torch {torch.__version__}, pyro {pyro.__version__}\n")


def write_table(path: str, title: str, command: str, body: str, notes: str = "") -> str:
    text = environment_header(title, command) + "\n" + body + "\n" + (f"\n{notes}\n" if notes else "")
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as fh:
        fh.write(text)
    return text
