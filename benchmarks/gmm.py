"""GMM benchmark (BENCHMARKS.md §1-2): any registered solver against the exact posterior.

    python benchmarks/gmm.py --solver ddrm --setting b          # published setting B (d=8, max-sliced W)
    python benchmarks/gmm.py --solver dps --setting grid         # d in {8, 80, 800}, (20, 0.6), (100, 0.85)
    python benchmarks/gmm.py --solver prior --setting b          # DiffusionPrior.sample against the GMM prior
    python benchmarks/gmm.py --solver ddrm --setting gaussian    # §2 Gaussian check: KL / W2
    python benchmarks/gmm.py --solver ddrm dps mcgdiff --setting modes --dys 4   # mass per mixture component
    python benchmarks/gmm.py --setting floor --problems 200      # spread of the setting-B noise floor
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys

import torch

from ppl_diffusion import benchmarking as B


def _q(v: torch.Tensor, a: float) -> str:
    return f"{float(v.quantile(a)):.3f}"


def floor_spread(dys, n_problems: int, command: str, out: str) -> str:
    """The setting-B noise floor (max-sliced W between 1,000 and 10,000 exact posterior draws) on
    ``n_problems`` problems per d_y, and the spread of its mean over random sets of 20 problems
    (the size of a published table): what a perfect sampler scores."""
    from ppl_diffusion.metrics import max_sliced_wasserstein
    from ppl_diffusion.models.gmm import gmm_benchmark_problem

    table = B.MarkdownTable("d_y", "problems", "floor mean", "median", "5 % / 95 % quantiles over problems",
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
             "(20,000 resamples). At d_y = 4 the floor is heavy-tailed (a few problems with wide posteriors dominate the "
             "mean), so a 20-problem mean ranges over a factor of four for a perfect sampler: tables computed on "
             "different random problems can be compared only through their ratio to the floor.")
    return B.write_table(out, "GMM setting B: spread of the noise floor", command, str(table), notes)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--solver", nargs="+", default=[])
    p.add_argument("--setting", choices=["b", "grid", "gaussian", "quick", "modes", "floor"], default="b")
    p.add_argument("--problems", type=int, default=None)
    p.add_argument("--dims", type=int, nargs="+", default=[8, 80, 800])
    p.add_argument("--dys", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--samples", type=int, default=None)
    p.add_argument("--schedule", default="mcgdiff", choices=["mcgdiff", "increasing", "linear"])
    p.add_argument("--options", default="{}", help="JSON dict of solver options")
    p.add_argument("--out", default=None, help="markdown file (default benchmarks/results/gmm_<setting>_<solver>.md)")
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    opts = json.loads(a.options)
    command = "python benchmarks/gmm.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    if a.setting == "floor":
        print(floor_spread(a.dys, a.problems or 200, command, a.out or "benchmarks/results/gmm_b_floor.md"))
        return
    if not a.solver:
        p.error("--solver is required for this setting")
    if a.setting == "modes":
        lines = ["| solver | d_y | seed | exact weight of the top component | solver's fraction in it | "
                 "TV(component weights) | max-SW |", "|---|---|---|---|---|---|---|"]
        for solver in a.solver:
            for dy in a.dys:
                for r in B.run_mode_weights(solver, 8, dy, range(a.problems or 10), options=opts,
                                            schedule=a.schedule, n_samples=a.samples or 2000):
                    lines.append(f"| {solver} | {dy} | {r['seed']} | {r['w_top']:.3f} | {r['frac_top']:.3f} | "
                                 f"{r['tv']:.3f} | {r['max_sw']:.2f} |")
                    print(lines[-1], flush=True)
        notes = ("GMM setting B problems (d = 8, 100 steps, default options). Each sample is assigned to the nearest "
                 "exact posterior component mean; TV = total variation between the exact posterior component "
                 "weights and the solver's fractions. A max-SW far above the noise floor with TV near 0 is a shape "
                 "error; with a large TV it is a mode-weight error.")
        out = a.out or "benchmarks/results/gmm_modes.md"
        print(B.write_table(out, "GMM: mass per mixture component", command, "\n".join(lines), notes))
        return
    for solver in a.solver:
        if a.setting == "gaussian":
            r = B.run_gaussian_check(solver, options=opts)
            body = ("| solver | KL(fit ‖ exact) | KL floor | W2 | W2 floor | NFE/sample | ms/sample |\n|---|---|---|---|---|---|---|\n"
                    f"| {r['solver']} | {r['kl']:.4g} | {r['kl_floor']:.4g} | {r['w2']:.4g} | {r['w2_floor']:.4g} | "
                    f"{r['nfe']:.0f} | {1e3 * r['sec_per_sample']:.3g} |")
        else:
            rows = []
            if a.setting == "b":
                rows = B.run_setting_b(solver, a.dys, a.problems or 20, options=opts, schedule=a.schedule,
                                       n_samples=a.samples or 1000)
            elif a.setting == "quick":
                rows = [B.run_gmm(solver, 8, dy, 100, None, a.problems or 3, a.samples or 500, 5000, "max_sw",
                                  a.schedule, 0, opts) for dy in a.dys]
            else:
                for d in a.dims:
                    for steps, eta in [(20, 0.6), (100, 0.85)]:
                        for dy in a.dys:
                            rows.append(B.run_gmm(solver, d, dy, steps, eta, a.problems or 20, a.samples or 2000,
                                                  a.samples or 2000, "sw", a.schedule, 0, opts))
            body = B.format_table(rows)
        out = a.out or f"benchmarks/results/gmm_{a.setting}_{solver}.md"
        text = B.write_table(out, f"GMM benchmark ({a.setting}) — {solver}", command, body)
        print(text)


if __name__ == "__main__":
    main()
