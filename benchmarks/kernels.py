"""Benchmarks of the MCMC kernels (PnP-DM, PMC): GMM d = 8 setting-B-like max-sliced W vs iterations
with the noise floor, NFE and time per sample; 90 % marginal coverage against the exact posterior's
quantiles; Pyro's one-process-per-chain MCMC vs our vectorised chains.

    OMP_NUM_THREADS=1 python benchmarks/kernels.py [gmm|coverage|chains|all] [--problems 3]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

import torch

from ppl_diffusion.benchmarking import format_table, run_gmm, write_table
from ppl_diffusion.inference.kernels import PMC, PnPDM
from ppl_diffusion.models.gmm import gmm_benchmark_problem
from ppl_diffusion.schedules import VPSchedule

HERE = os.path.dirname(os.path.abspath(__file__))
RES = os.path.join(HERE, "results")
CMD = "OMP_NUM_THREADS=1 python benchmarks/kernels.py " + " ".join(sys.argv[1:])

PNPDM_OPTS = dict(rho_min=0.1, num_grid=50, chains=100, thin=5)
PMC_OPTS = dict(sigma0=20.0, decay=0.98, sigma_min=0.1, step_fraction=0.5, chains=100, thin=20)


def bench_gmm(n_problems: int):
    rows = []
    for steps in (20, 100, 400):
        rows.append(run_gmm("pnpdm", 8, 2, steps, None, n_problems, 1000, 10000, "max_sw", options=PNPDM_OPTS))
        print(format_table(rows[-1:]), flush=True)
    for steps in (200, 1000, 4000):
        rows.append(run_gmm("pmc", 8, 2, steps, None, n_problems, 1000, 10000, "max_sw", options=PMC_OPTS))
        print(format_table(rows[-1:]), flush=True)
    notes = ("`steps` = burn-in iterations per chain (annealing included); then 10 draws per chain every "
             "`thin` iterations from 100 vectorised chains (1000 samples). NFE/sample counts every network "
             "call of all chains divided by the 1000 samples. PnP-DM targets the rho_min-relaxed posterior "
             "(bias at rho_min = 0.1), PMC the sigma_min-smoothed one; both are local MCMC and can stay in "
             "a wrong mode of the 25-mode mixture, which dominates the gap to the noise floor.")
    write_table(os.path.join(RES, "kernels_gmm.md"), "Kernels on the GMM benchmark (d = 8, d_y = 2, max-sliced W)",
                CMD, format_table(rows), notes)


def coverage_row(name, kernel, pb, chains, draws, warmup, thin):
    r = kernel.run_chains(y=pb.y, num_chains=chains, num_samples=draws, warmup_steps=warmup, thin=thin,
                          generator=torch.Generator().manual_seed(0))
    x = r.flat()
    q = pb.posterior.marginal_quantiles(torch.tensor([0.05, 0.95], dtype=torch.float64))
    inside = ((x >= q[0]) & (x <= q[1])).double().mean().item()
    return inside


def bench_coverage(n_problems: int):
    lines = ["| solver | problem (d, d_y, seed) | coverage of exact 90% marginal intervals | samples |",
             "|---|---|---|---|"]
    sched = VPSchedule.gmm_benchmark()
    for seed in range(n_problems):
        for dy in (2, 8):
            pb = gmm_benchmark_problem(8, dy, seed=seed)
            model = pb.model(sched)
            ks = {"pnpdm": (PnPDM(model, rho_min=0.1, num_grid=50), 100, 10, 200, 5),
                  "pmc": (PMC(model, sigma0=20.0, decay=0.98, sigma_min=0.1, step_fraction=0.5), 100, 10, 2000, 20)}
            for name, (k, C, S, W, T) in ks.items():
                cov = coverage_row(name, k, pb, C, S, W, T)
                lines.append(f"| {name} | (8, {dy}, {seed}) | {cov:.3f} | {C * S} |")
                print(lines[-1], flush=True)
    notes = ("Fraction of kernel samples (all coordinates pooled) inside the exact posterior's marginal "
             "[5 %, 95 %] quantiles (GaussianMixture.marginal_quantiles); nominal 0.90.")
    write_table(os.path.join(RES, "kernels_coverage.md"), "Kernels: 90 % marginal coverage vs exact posterior",
                CMD, "\n".join(lines), notes)


def bench_chains():
    from pyro.infer import MCMC
    import pyro.infer.mcmc.api as api

    pb = gmm_benchmark_problem(8, 8, seed=1)
    model = pb.model(VPSchedule.gmm_benchmark())
    C, S, W = 4, 100, 20
    lines = ["| kernel | way | chains | iterations per chain | seconds | ratio to vectorised |", "|---|---|---|---|---|---|"]
    for name, make in (("pnpdm", lambda: PnPDM(model, rho_min=0.5, num_grid=50)),
                       ("pmc", lambda: PMC(model, sigma0=0.5, sigma_min=0.5))):
        t0 = time.perf_counter()
        make().run_chains(y=pb.y, num_chains=C, num_samples=S, warmup_steps=W)
        t_vec = time.perf_counter() - t0
        res = {"vectorised (one batch)": t_vec}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t0 = time.perf_counter()
            MCMC(make(), num_samples=S, warmup_steps=W, num_chains=C, disable_progbar=True).run(y=pb.y)
            res["pyro MCMC, sequential (cpu_count-1 < chains)"] = time.perf_counter() - t0
            orig = api.mp.cpu_count
            api.mp.cpu_count = lambda: C + 1  # force Pyro's one-process-per-chain path
            try:
                t0 = time.perf_counter()
                MCMC(make(), num_samples=S, warmup_steps=W, num_chains=C, disable_progbar=True).run(y=pb.y)
                res["pyro MCMC, multiprocess (forced)"] = time.perf_counter() - t0
            finally:
                api.mp.cpu_count = orig
        for way, t in res.items():
            lines.append(f"| {name} | {way} | {C} | {S + W} | {t:.2f} | {t / t_vec:.2f} |")
            print(lines[-1], flush=True)
    notes = (f"GMM d = 8 (d_y = 8, seed 1), {C} chains. This machine has {os.cpu_count()} cores shared with other jobs, "
             "so Pyro by default runs the chains one after another (it needs cpu_count - 1 >= chains); the "
             "multiprocess row patches cpu_count to force one process per chain (fork).")
    write_table(os.path.join(RES, "kernels_chains.md"), "Kernels: Pyro MCMC chains vs vectorised chains", CMD,
                "\n".join(lines), notes)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("what", nargs="?", default="all", choices=["gmm", "coverage", "chains", "all"])
    ap.add_argument("--problems", type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(1)
    if a.what in ("chains", "all"):
        bench_chains()
    if a.what in ("coverage", "all"):
        bench_coverage(a.problems)
    if a.what in ("gmm", "all"):
        bench_gmm(a.problems)
