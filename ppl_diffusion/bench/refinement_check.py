"""Does :func:`~ppl_diffusion.refinement.refinement_check` see a discretisation error, and does it stay quiet
without one? Two parts, on the exactness families (:func:`~ppl_diffusion.bench.exactness.exactness_problem`):

* ``planted``: the fine set is exact posterior draws; the coarse set is exact draws of the same posterior
  (``same law``: a flag is a false alarm, at most ``alpha`` = 1 % by construction), of the posterior with every
  component's covariance scaled by ``0.92^2`` (``narrower components``: about what a coarse grid does to a
  sampler's draws), or with 0.03 of weight moved from the heaviest to the second-heaviest component
  (``minor weight + 0.03``). Per row the share of ``reps`` runs flagged and the mean of the check's coverage
  (the coarse draws' 90 % intervals' content of the fine draws).
* ``solvers``: a sampler at a coarse and at a fine number of steps (SMC: one draw from each of ``draws``
  independent runs, so the draws are independent units; PnP-DM: a coarse and a fine grid of its prior step,
  ``num_grid``, its chains the units). Both sets are scored against the exact spread
  (:func:`~ppl_diffusion.bench.exactness.verdict`: inside SW / TV / coverage), and the check compares them with
  the problem's closed-form log-likelihood.

    OMP_NUM_THREADS=1 python benchmarks/refinement_check.py --part planted --reps 30
    OMP_NUM_THREADS=1 python benchmarks/refinement_check.py --part solvers --method mcgdiff:particles=64 \\
        --coarse 10,20,50 --fine 200 --draws 1000
    OMP_NUM_THREADS=1 python benchmarks/refinement_check.py --part solvers \\
        --method pnpdm:replicas=12,rho0=20.0,rho_min=0.1,rho_max=20.0,chains=100,thin=5,prior_solver=analytic \\
        --coarse 10,25 --fine 200 --draws 400 --name refinement_check_pnpdm
"""
from __future__ import annotations

import argparse
import shlex
import sys
import time
import warnings

import torch

from ..refinement import refinement_check
from .exactness import Reference, _draws, _parse_method, exact_spread, exactness_problem, score, verdict
from .report import RESULTS_DIR, MarkdownTable, add_out_argument, write_result

__all__ = ["perturbed", "planted_draws", "run_planted", "run_solvers", "main", "CASES"]

CASES = ("same law", "narrower components", "minor weight + 0.03")
PLANTED_PROBLEMS = "uneven,8,2,1;fullcov,8,2,4;uneven,80,2,1"
#: PnP-DM's fixed warm-up in the solvers part (iterations, annealing included)
KERNEL_WARMUP = 200
SOLVER_PROBLEMS = "uneven,8,2,100;spectrum,8,2,101;fullcov,8,2,102;uneven,8,2,103;spectrum,8,2,104;fullcov,8,2,105"


def perturbed(posterior, scale: float = 1.0, moved: float = 0.0):
    """``posterior`` (a :class:`~ppl_diffusion.models.gmm.GaussianMixture`) with every component's covariance
    times ``scale^2`` and ``moved`` of weight taken from the heaviest component to the second-heaviest."""
    from ..models.gmm import GaussianMixture

    w = posterior.weights.clone()
    top = w.argsort(descending=True)
    moved = min(moved, float(w[top[0]]))
    w[top[0]] -= moved
    w[top[1]] += moved
    return GaussianMixture(w, posterior.means, scale ** 2 * posterior.full_covs())


def planted_draws(posterior, n: int, case: str, generator: torch.Generator) -> torch.Tensor:
    """``n`` exact draws ``(n, d)`` of ``posterior`` perturbed per ``case`` (see the module docstring)."""
    if case not in CASES:
        raise ValueError(f"case must be one of {CASES}, got {case!r}")
    if case == "same law":
        return posterior.sample(n, generator=generator)
    mix = perturbed(posterior, scale=0.92) if case == "narrower components" else perturbed(posterior, moved=0.03)
    return mix.sample(n, generator=generator)


def _own_report(rel) -> str:
    """An SMC run's reliability flag for one draw per run, with its estimated mode-weight bias (or ``-``)."""
    if rel is None:
        return "-"
    if not bool(rel["unreliable_independent"].any()):
        return "no flag"
    return f"FLAG (bias est. {float(rel['bias_estimate'].max()):.3f}, se {float(rel['bias_se'].max()):.3f})"


def _problems(spec: str):
    out = []
    for item in filter(None, spec.split(";")):
        fam, d, d_y, seed = item.split(",")
        out.append((fam, int(d), int(d_y), int(seed)))
    return out


def _log_likelihood(pb):
    def ll(z):
        return -0.5 * ((z.to(torch.float64) @ pb.A.T - pb.y) ** 2).sum(-1) / pb.noise_std ** 2
    return ll


def run_planted(problems: str = PLANTED_PROBLEMS, sizes=(400, 2000), reps: int = 40, out=RESULTS_DIR,
                name: str = "refinement_check_planted", cmd: str = ""):
    table = MarkdownTable("problem (family, d, d_y, seed)", "draws per set", "case", "runs", "flagged",
                          "mean coverage of the fine draws by the coarse 90 % intervals", "s")
    for fam, d, d_y, seed in _problems(problems):
        pb = exactness_problem(fam, d, d_y, seed=seed)
        ll = _log_likelihood(pb)
        for n in sizes:
            for case in CASES:
                t0 = time.perf_counter()
                flagged, cov = 0, 0.0
                for rep in range(reps):
                    g = torch.Generator().manual_seed(10_000 * rep + seed)
                    r = refinement_check(planted_draws(pb.posterior, n, case, g),
                                         planted_draws(pb.posterior, n, "same law", g), ll, generator=g)
                    flagged += not r["ok"]
                    cov += r["coverage"] / reps
                table.add(f"({fam}, {d}, {d_y}, {seed})", n, case, reps, f"{flagged / reps:.2f}", f"{cov:.3f}",
                          f"{time.perf_counter() - t0:.1f}")
    notes = ("Exact posterior draws (module docstring of ppl_diffusion/bench/refinement_check.py); the check of "
             "ppl_diffusion/refinement.py at its defaults (1,000 reshufflings of the draws between the two sets, "
             "four tests Bonferroni-combined at 0.01: the coarse intervals' coverage of the fine draws against the "
             "reverse, sliced W1 on 32 random directions, total variation of 4 k-means regions' weights, "
             "Kolmogorov-Smirnov distance of the closed-form log-likelihood). On 'same law' a flag is a false alarm.")
    write_result(out, name, "Refinement check on planted draws: false alarms and detection", cmd, str(table), notes)
    return table


def run_solvers(method: str = "mcgdiff:particles=64", coarse=(10, 20, 50), fine: int = 200, draws: int = 1000,
                problems: str = SOLVER_PROBLEMS, out=RESULTS_DIR, name: str = "refinement_check_solvers",
                cmd: str = ""):
    from ..schedules import VPSchedule

    from ..inference.registry import SOLVERS

    label, solver, opts = _parse_method(method)
    info = SOLVERS.get(solver)
    opts = {"draws": "independent", **opts} if info is not None and info.family == "smc" else opts
    sched = VPSchedule.gmm_benchmark()
    knob = "grid points" if solver == "pnpdm" else "steps"
    table = MarkdownTable("problem (family, d, d_y, seed)", "method", f"coarse {knob}", "coarse: SW / TV / cov",
                          "coarse inside (SW/TV/cov)", f"fine ({fine} {knob}): SW / TV / cov", "fine inside",
                          "exact bounds: SW q95 / TV q95 / cov", "check p", "check flags",
                          "runs' own report: coarse / fine", "s")
    for fam, d, d_y, seed in _problems(problems):
        pb = exactness_problem(fam, d, d_y, seed=seed)
        ref = Reference.build(pb, seed=seed)
        spread = exact_spread(ref, draws, seed=seed)
        ll = _log_likelihood(pb)

        def sample(level, pb=pb, seed=seed):
            """``(units, draws per unit, d)`` at ``level`` steps (PnP-DM: grid points, its chains the units), and
            what the run says of itself (SMC: its reliability flag; PnP-DM: the warm-up it ran)."""
            g = torch.Generator().manual_seed(1_000 * level + seed)
            if solver != "pnpdm":
                _, x, rel = _draws(solver, opts, pb, sched, draws, level, g)[0]
                return x.reshape(draws, 1, -1), _own_report(rel)
            from ..inference.kernels import PnPDM
            from .gmm import _kernel_call

            ctor, run, _ = _kernel_call()(KERNEL_WARMUP, None, dict(opts))
            with warnings.catch_warnings():  # the mixing check: read against the exact spread here
                warnings.simplefilter("ignore")
                d = PnPDM(pb.model(sched), num_grid=level, **ctor).draw(draws, y=pb.y, generator=g, **run)
            return d.samples.reshape(d.samples.shape[0], d.samples.shape[1], -1), f"warm-up {d.extra['warmup']}"

        t0 = time.perf_counter()
        x_fine, own_fine = sample(fine)
        s_fine = score(x_fine.flatten(0, 1), ref)
        v_fine = verdict(s_fine, spread)
        t_fine = time.perf_counter() - t0
        b = spread.bounds
        for steps in coarse:
            t0 = time.perf_counter()
            x, own = sample(steps)
            s = score(x.flatten(0, 1), ref)
            v = verdict(s, spread)
            r = refinement_check(x, x_fine, ll, chains=True, generator=torch.Generator().manual_seed(seed))
            short = ", ".join(r["failed"]) or "-"
            table.add(f"({fam}, {d}, {d_y}, {seed})", label, steps, f"{s['sw']:.3g} / {s['tv']:.3f} / {s['cov']:.3f}",
                      "/".join("in" if v[k] else "OUT" for k in ("sw", "tv", "cov")),
                      f"{s_fine['sw']:.3g} / {s_fine['tv']:.3f} / {s_fine['cov']:.3f}",
                      "/".join("in" if v_fine[k] else "OUT" for k in ("sw", "tv", "cov")),
                      f"{b['sw']:.3g} / {b['tv']:.3f} / [{b['cov'][0]:.3f}, {b['cov'][1]:.3f}]",
                      f"{r['p']:.3g}", short, f"{own} / {own_fine}", f"{time.perf_counter() - t0 + t_fine:.1f}")
    warm = opts.get("warmup", KERNEL_WARMUP)
    warm = ("the automatic warm-up (warmup=auto), chosen per run" if str(warm) == "auto" else
            f"a fixed warm-up of {warm} iterations")
    unit = ("PnP-DM: the draws of chains (option chains, default 100; thin 5; "
            f"{warm}), the chains the check's units; the knob is num_grid, the prior step's "
            "grid" if solver == "pnpdm" else "SMC samplers: one draw from each of that many independent runs, "
            "the runs the check's units")
    notes = (f"Each set: {draws} draws ({unit}); scored against "
             "10,000 exact draws and the spread of 20 exact sets of the same size (ppl_diffusion/bench/exactness.py). "
             "The check (ppl_diffusion/refinement.py, defaults, closed-form log-likelihood) compares the coarse set "
             "with the fine one; 'check flags' names its tests below 0.01 after the Bonferroni correction (x 4): "
             "coverage (the coarse 90 % intervals' content of the fine draws against the reverse), SW (sliced W1), "
             "regions (k-means region weights), log-likelihood (its KS distance). "
             "'runs' own report': what each run says of itself without the truth (SMC: whether its reliability "
             "check flags one draw per run, unreliable_independent of ppl_diffusion/inference/smc/evidence.py, with "
             "its estimated mode-weight bias; PnP-DM: the warm-up it ran). "
             "'s': the coarse run, the check and the fine run.")
    write_result(out, name, "Refinement check on solvers: coarse against fine steps, both against exact draws", cmd,
                 str(table), notes)
    return table


def main(argv=None):
    p = argparse.ArgumentParser(prog="python benchmarks/refinement_check.py", description=__doc__.split("\n")[0])
    p.add_argument("--part", choices=("planted", "solvers"), required=True)
    p.add_argument("--reps", type=int, default=30, help="planted: runs per problem, size and case")
    p.add_argument("--sizes", default="400,2000", help="planted: draws per set")
    p.add_argument("--problems", default=None, help="'family,d,d_y,seed;...'")
    p.add_argument("--method", default="mcgdiff:particles=64", help="solvers: a method spec as in exactness.py")
    p.add_argument("--coarse", default="10,20,50", help="solvers: coarse step counts")
    p.add_argument("--fine", type=int, default=200, help="solvers: the fine step count")
    p.add_argument("--draws", type=int, default=1000, help="solvers: draws per set")
    p.add_argument("--name", default=None)
    add_out_argument(p, "refinement_check")
    argv = sys.argv[1:] if argv is None else list(argv)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    cmd = "OMP_NUM_THREADS=1 python benchmarks/refinement_check.py " + shlex.join(argv)
    if a.part == "planted":
        return run_planted(a.problems or PLANTED_PROBLEMS, tuple(int(v) for v in a.sizes.split(",")), a.reps,
                           a.out, a.name or "refinement_check_planted", cmd)
    return run_solvers(a.method, tuple(int(v) for v in a.coarse.split(",")), a.fine, a.draws,
                       a.problems or SOLVER_PROBLEMS, a.out, a.name or "refinement_check_solvers", cmd)


if __name__ == "__main__":  # pragma: no cover
    main()
