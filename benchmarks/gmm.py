"""GMM benchmark (BENCHMARKS.md §1-2): any registered solver against the exact posterior.

    python benchmarks/gmm.py --solver ddrm --setting b          # published setting B (d=8, max-sliced W)
    python benchmarks/gmm.py --solver dps --setting grid         # d in {8, 80, 800}, (20, 0.6), (100, 0.85)
    python benchmarks/gmm.py --solver prior --setting b          # DiffusionPrior.sample against the GMM prior
    python benchmarks/gmm.py --solver ddrm --setting gaussian    # §2 Gaussian check: KL / W2
    python benchmarks/gmm.py --solver ddrm dps mcgdiff --setting modes --dys 4   # mass per mixture component
"""
from __future__ import annotations

import argparse
import json
import sys

import torch

from ppl_diffusion import benchmarking as B


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--solver", required=True, nargs="+")
    p.add_argument("--setting", choices=["b", "grid", "gaussian", "quick", "modes"], default="b")
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
    command = "python benchmarks/gmm.py " + " ".join(argv if argv is not None else sys.argv[1:])
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
