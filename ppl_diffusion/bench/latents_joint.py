"""Joint approximate inference of theta (joint DPS, RED-Diff with an autoguide on theta) against exact
posteriors by quadrature.

``python benchmarks/latents_joint.py --problems 10`` runs, on the Gaussian-mixture problems of
:mod:`ppl_diffusion.models.gmm_theta` (d = 8, d_y = 4; ``noise``: ``sigma ~ LogNormal(-1, 0.5)``,
``y = A x + sigma n``; ``gain``: ``gain ~ LogNormal(0, 0.3)``, ``y = gain A x + 0.1 n``):

* ``dps-grad`` / ``dps-langevin``: joint DPS (theta per sample, one gradient / Langevin step per
  diffusion step, then 10 steps on the returned x), the default norm form;
* ``red-normal`` / ``red-delta``: RED-Diff with an AutoNormal / AutoDelta guide on theta (x a point
  estimate, as in the paper);
* ``dps-known``: DPS on the model conditioned on the TRUE theta (the x error of DPS itself, scored
  against the same marginal posterior).

Per problem and method: theta's posterior mean error in units of the exact posterior std, the
method's 90 % interval of theta (5 % / 95 % quantiles of its draws), whether it holds the true theta
(the exact posterior's intervals hold it in 90 % of problems), and the sliced W of x to the exact
marginal posterior ``p(x | y)`` beside the noise floor (exact draws of the same size).
"""
from __future__ import annotations

import argparse
import shlex
import sys
import time

import pyro
import torch

from ..metrics import sliced_wasserstein
from ..models.gmm_theta import unknown_gain_problem, unknown_noise_problem
from ..schedules import VPSchedule
from .report import MarkdownTable, add_out_argument, write_result

__all__ = ["joint_run", "bench_joint", "main", "METHODS"]

PROBLEMS = {"noise": unknown_noise_problem, "gain": unknown_gain_problem}
METHODS = ("dps-grad", "dps-langevin", "red-normal", "red-delta", "dps-known")


def joint_run(problem, method: str, n: int, dps_steps: int, red_steps: int, seed: int):
    """``(theta (n,) or None, x (n, d), seconds)`` of one method on one problem."""
    from ..inference.guides import DPS
    from ..inference.variational import REDDiff

    gen = torch.Generator().manual_seed(seed)
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    t0 = time.perf_counter()
    if method.startswith("dps-") and method != "dps-known":
        d = DPS(problem.model, steps=dps_steps, theta_update=method[4:]).draw(n, y=problem.y, generator=gen)
        theta = d.extra["theta"][problem.theta_site][0]
    elif method == "dps-known":
        truth = torch.tensor(problem.theta_true, dtype=torch.float64)
        model = pyro.condition(problem.model, data={problem.theta_site: truth})
        d = DPS(model, steps=dps_steps).draw(n, y=problem.y, generator=gen)
        theta = None
    elif method.startswith("red-"):
        red = REDDiff(problem.model, steps=red_steps, theta_guide=method[4:], progress=False)
        d = red.draw(n, y=problem.y, generator=gen)
        theta = d.extra["theta"][problem.theta_site][0]
    else:
        raise ValueError(f"unknown method {method!r}; one of {METHODS}")
    return theta, d.flat().double(), time.perf_counter() - t0


def bench_joint(kind: str, n_problems: int, methods, n: int, dps_steps: int, red_steps: int,
                threads: int = 1) -> str:
    """The markdown section (summary and per-problem tables) of one problem kind."""
    torch.set_num_threads(threads)
    sched = VPSchedule.gmm_benchmark("mcgdiff")
    detail = MarkdownTable("problem", "method", "theta true", "exact mean ± std", "mean (err / exact std)",
                           "exact 90 % interval", "method 90 % interval", "true in method 90 %",
                           "x SW / floor", "s")
    rows = {m: {"err": [], "inside": [], "ratio": [], "sw": [], "floor": [], "s": [], "width": []} for m in methods}
    exact_inside = []
    for seed in range(n_problems):
        pb = PROBLEMS[kind](d=8, d_y=4, seed=seed, schedule=sched)
        ex = pb.exact
        g = torch.Generator().manual_seed(1000 + seed)
        _, ref = ex.sample(10_000, generator=g)
        _, same = ex.sample(n, generator=g)
        floor = float(sliced_wasserstein(same, ref, generator=torch.Generator().manual_seed(0)))
        elo, ehi = ex.quantile(0.05), ex.quantile(0.95)
        exact_inside.append(elo <= pb.theta_true <= ehi)
        for m in methods:
            theta, x, secs = joint_run(pb, m, n, dps_steps, red_steps, seed)
            sw = float(sliced_wasserstein(x, ref, generator=torch.Generator().manual_seed(0)))
            r = rows[m]
            r["ratio"].append(sw / floor), r["sw"].append(sw), r["floor"].append(floor), r["s"].append(secs)
            if theta is None:
                detail.add(seed, m, f"{pb.theta_true:.4f}", f"{ex.mean:.4f} ± {ex.std:.4f}", "-",
                           f"[{elo:.4f}, {ehi:.4f}]", "-", "-", f"{sw:.3f} / {floor:.3f}", f"{secs:.1f}")
                continue
            theta = theta.double()
            mean = float(theta.mean())
            lo, hi = (float(q) for q in theta.quantile(torch.tensor([0.05, 0.95], dtype=torch.float64)))
            err = (mean - ex.mean) / ex.std
            ok = lo <= pb.theta_true <= hi
            r["err"].append(err), r["inside"].append(ok), r["width"].append((hi - lo) / (ehi - elo))
            detail.add(seed, m, f"{pb.theta_true:.4f}", f"{ex.mean:.4f} ± {ex.std:.4f}", f"{mean:.4f} ({err:+.2f})",
                       f"[{elo:.4f}, {ehi:.4f}]", f"[{lo:.4f}, {hi:.4f}]", "yes" if ok else "no",
                       f"{sw:.3f} / {floor:.3f}", f"{secs:.1f}")
    summary = MarkdownTable("method", "mean |err| / exact std", "median |err| / exact std",
                            "true theta in 90 % interval", "interval width / exact", "mean x SW", "mean floor",
                            "mean x SW / floor", "median x SW / floor", "s / run")
    for m in methods:
        r = rows[m]
        k = len(r["sw"])
        med = lambda v: float(torch.tensor(v).median()) if v else float("nan")  # noqa: E731
        if r["err"]:
            errs = [abs(e) for e in r["err"]]
            theta_cols = (f"{sum(errs) / k:.2f}", f"{med(errs):.2f}", f"{sum(r['inside'])}/{k}",
                          f"{med(r['width']):.2f}")
        else:
            theta_cols = ("-", "-", "-", "-")
        summary.add(m, *theta_cols, f"{sum(r['sw']) / k:.3f}", f"{sum(r['floor']) / k:.3f}",
                    f"{sum(r['ratio']) / k:.1f}", f"{med(r['ratio']):.1f}", f"{sum(r['s']) / k:.1f}")
    what = "noise level sigma ~ LogNormal(-1, 0.5)" if kind == "noise" else "gain ~ LogNormal(0, 0.3)"
    head = (f"## Unknown {what}\n\nThe exact posterior's own 90 % interval holds the true theta in "
            f"{sum(exact_inside)}/{n_problems} problems.\n\n")
    return head + "### Summary\n\n" + str(summary) + "\n\n### Per problem\n\n" + str(detail) + "\n"


def _section(job):
    return bench_joint(*job)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kind", choices=sorted(PROBLEMS) + ["all"], default="all")
    p.add_argument("--problems", type=int, default=10)
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {','.join(METHODS)}")
    p.add_argument("--draws", type=int, default=300)
    p.add_argument("--dps-steps", type=int, default=100)
    p.add_argument("--red-steps", type=int, default=1000)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest for these small tensors)")
    p.add_argument("--jobs", type=int, default=1, help="problem kinds run in parallel processes")
    add_out_argument(p, "latents_joint")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    methods = [m for m in a.methods.split(",") if m]
    bad = sorted(set(methods) - set(METHODS))
    if bad:
        p.error(f"unknown methods {bad}; choose from {', '.join(METHODS)}")
    cmd = shlex.join(["python", "benchmarks/latents_joint.py"] + argv)
    kinds = sorted(PROBLEMS, reverse=True) if a.kind == "all" else [a.kind]
    jobs = [(k, a.problems, methods, a.draws, a.dps_steps, a.red_steps, a.threads) for k in kinds]
    if a.jobs > 1 and len(jobs) > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=a.jobs) as pool:
            sections = list(pool.map(_section, jobs))
    else:
        sections = [_section(j) for j in jobs]
    settings = (f"d = 8, d_y = 4, {a.problems} problems per kind (seeds 0-{a.problems - 1}), {a.draws} draws per "
                f"method and problem. DPS: {a.dps_steps} steps, zeta 1, norm form, theta_lr 0.1 (Newton-"
                "preconditioned), 1 theta step per diffusion step + 10 on the returned x, theta started from prior "
                f"draws. RED-Diff: {a.red_steps} steps, default options (lr 0.1 for x and theta, lam 0.25, linear "
                "weighting, point mass on x). 'err': (method mean - exact mean) / exact std; 'interval width / "
                "exact': median over problems of the method's 90 % interval width over the exact one (0 for a "
                "point estimate); x SW: sliced W of the method's x draws to 10 000 exact draws of p(x | y), "
                "floor: the same for exact draws as many as the method's.")
    notes = ("dps-known is DPS on the model conditioned on the TRUE theta: its x SW is the error of DPS itself "
             "against the same marginal posterior p(x | y). The gain model builds Matrix(gain * A), which "
             "cannot take a batch of gains: joint DPS traces it once per sample there (the 's' column).")
    print(write_result(a.out, "latents_joint", "Joint theta inference: joint DPS and RED-Diff with an autoguide "
                       "on theta, against exact posteriors", cmd, settings + "\n\n" + "\n".join(sections), notes))


if __name__ == "__main__":
    main()
