"""Benchmarks of the MCMC kernels (PnP-DM, PMC): GMM d = 8 setting-B-like max-sliced W vs iterations
with the noise floor, NFE and time per sample; 90 % marginal coverage against the exact posterior's
quantiles; Pyro's one-process-per-chain MCMC vs our vectorised chains.

    OMP_NUM_THREADS=1 python benchmarks/kernels.py [gmm|coverage|chains|replicas|all] [--problems 3]
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
import warnings

import torch

from ..inference.kernels import PMC, PnPDM
from ..models.gmm import gmm_benchmark_problem
from ..schedules import VPSchedule
from .gmm import format_table, run_gmm
from .report import RESULTS_DIR, MarkdownTable, add_out_argument, write_result

__all__ = ["main", "bench_gmm", "bench_coverage", "bench_replicas", "bench_chains", "chain_diagnostics"]

PNPDM_OPTS = dict(rho_min=0.1, num_grid=50, chains=100, thin=5)
PMC_OPTS = dict(sigma0=20.0, decay=0.98, sigma_min=0.1, step_fraction=0.5, chains=100, thin=20)


def bench_gmm(n_problems: int, out=RESULTS_DIR, cmd=""):
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
    write_result(out, "kernels_gmm", "Kernels on the GMM benchmark (d = 8, d_y = 2, max-sliced W)",
                cmd, format_table(rows), notes)


def coverage_row(name, kernel, pb, chains, draws, warmup, thin):
    r = kernel.run_chains(y=pb.y, num_chains=chains, num_samples=draws, warmup_steps=warmup, thin=thin,
                          generator=torch.Generator().manual_seed(0))
    x = r.flat()
    q = pb.posterior.marginal_quantiles(torch.tensor([0.05, 0.95], dtype=torch.float64))
    inside = ((x >= q[0]) & (x <= q[1])).double().mean().item()
    return inside


def bench_coverage(n_problems: int, out=RESULTS_DIR, cmd=""):
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
    write_result(out, "kernels_coverage", "Kernels: 90 % marginal coverage vs exact posterior",
                cmd, "\n".join(lines), notes)


def _replica_run(pb, opts, chains, draws, warmup, thin, q):
    """One vectorised PnP-DM run on a GMM problem: the kernel, its ChainResult, max-SW / floor and
    coverage of the pooled draws."""
    from ..metrics import max_sliced_wasserstein

    k = PnPDM(pb.model(VPSchedule.gmm_benchmark()), **opts)
    r = k.run_chains(y=pb.y, num_chains=chains, num_samples=draws, warmup_steps=warmup, thin=thin,
                     generator=torch.Generator().manual_seed(0))
    x = r.flat()
    g = torch.Generator().manual_seed(10_000 + pb.seed)
    ref = pb.posterior.sample(10000, generator=g)
    sw = float(max_sliced_wasserstein(x, ref, generator=g))
    floor = float(max_sliced_wasserstein(pb.posterior.sample(x.shape[0], generator=g), ref, generator=g))
    cov = ((x >= q[0]) & (x <= q[1])).double().mean().item()
    acc = "-" if k.replicas == 1 else f"{float(k.swap_acceptance.min()):.2f}-{float(k.swap_acceptance.max()):.2f}"
    return k, r, sw, floor, cov, acc


def bench_replicas(n_problems: int, long_draws: int = 1600, out=RESULTS_DIR, cmd=""):
    """PnP-DM with and without replica exchange on the multimodal d_y = 2 problems: max-sliced W,
    coverage and R-hat of 1,000 draws (100 chains x 10 draws, thin 5) per problem; then 16 long
    chains on problem 0 for R-hat / ESS."""
    from ..diagnostics import rhat_ess

    q_levels = torch.tensor([0.05, 0.95], dtype=torch.float64)
    rex = dict(rho0=20.0, rho_min=0.1, num_grid=50, replicas=12, rho_max=20.0)
    plain = dict(rho_min=0.1, num_grid=50)
    settings = [("pnpdm", 1000, plain), ("pnpdm, 12 replicas (rho 0.1-20)", 200, rex),
                ("pnpdm, 12 replicas (rho 0.1-20)", 1000, rex)]
    table = MarkdownTable("kernel", "burn-in", "problem (d, d_y, seed)", "max-SW", "noise floor", "ratio",
                          "coverage (nominal 0.90)", "max R-hat", "swap acceptance", "NFE / sample", "ms / sample")
    for seed in range(n_problems):
        pb = gmm_benchmark_problem(8, 2, seed=seed)
        q = pb.posterior.marginal_quantiles(q_levels)
        for name, warmup, opts in settings:
            t0 = time.perf_counter()
            k, r, sw, floor, cov, acc = _replica_run(pb, opts, 100, 10, warmup, 5, q)
            sec = (time.perf_counter() - t0) / 1000
            nfe = r.nfe_per_iteration * (warmup + 50) * 100 / 1000
            table.add(name, warmup, f"(8, 2, {seed})", f"{sw:.3g}", f"{floor:.3g}", f"{sw / floor:.2f}", f"{cov:.3f}",
                      f"{float(rhat_ess(r.samples)[0].max()):.3f}", acc, f"{nfe:.0f}", f"{1e3 * sec:.3g}")
    long = MarkdownTable("kernel", "chains x draws (thin 5, after 1,000 burn-in)", "max R-hat", "min / median bulk ESS",
                         "max-SW (floor)", "coverage", "swap acceptance", "seconds")
    pb = gmm_benchmark_problem(8, 2, seed=0)
    q = pb.posterior.marginal_quantiles(q_levels)
    for name, opts in (("pnpdm", plain), ("pnpdm, 12 replicas (rho 0.1-20)", rex)):
        t0 = time.perf_counter()
        k, r, sw, floor, cov, acc = _replica_run(pb, opts, 16, long_draws, 1000, 5, q)
        rh, ess = rhat_ess(r.samples)
        long.add(name, f"16 x {long_draws}", f"{float(rh.max()):.4f}",
                 f"{float(ess.min()):.0f} / {float(ess.median()):.0f}", f"{sw:.3g} ({floor:.3g})", f"{cov:.3f}",
                 acc, f"{time.perf_counter() - t0:.0f}")
    notes = ("GMM d = 8, d_y = 2 (setting B problems, seeds 0..), posteriors with several separated modes. Vectorised "
             "chains from N(0, I), `burn-in` iterations dropped (rho annealed from rho0 by 0.9 per iteration to 0.1), "
             "then draws every 5 iterations (first table: 100 chains x 10 draws = 1,000 draws per problem). max-SW: "
             "POT definition, 100 projections, to 10,000 exact posterior draws; floor = as many exact draws as kernel "
             "draws. Coverage: fraction of draws (8 coordinates pooled) inside the exact posterior's marginal [5 %, 95"
             " %] quantiles. R-hat: rank-normalised split R-hat, ESS: bulk ESS (max / min over coordinates). Replica "
             "exchange: 12 couplings on a geometric ladder from 0.1 to 20, swaps of adjacent pairs alternating "
             "even/odd each iteration; NFE / sample counts every replica's reverse process. R-hat over 10 draws per "
             "chain (first table) only says whether each chain has visited the modes within 50 iterations; the second "
             "table runs longer chains.")
    write_result(out, "kernels_replicas", "PnP-DM with replica exchange on multimodal GMM posteriors",
                cmd, f"{table}\n\n{long}", notes)


def bench_chains(out=RESULTS_DIR, cmd=""):
    from pyro.infer import MCMC
    import pyro.infer.mcmc.api as api

    pb = gmm_benchmark_problem(8, 8, seed=1)
    model = pb.model(VPSchedule.gmm_benchmark())
    C, S, W = 4, 100, 20
    lines = ["| kernel | way | chains | iterations per chain | seconds | ratio to vectorised |",
             "|---|---|---|---|---|---|"]
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
    notes = (f"GMM d = 8 (d_y = 8, seed 1), {C} chains. This machine has {os.cpu_count()} cores shared with "
             "other jobs, so Pyro by default runs the chains one after another (it needs cpu_count - 1 >= chains); the "
             "multiprocess row patches cpu_count to force one process per chain (fork). Diagnostics: 16 vectorised "
             "chains on the same (unimodal) posterior; R-hat = rank-normalised split R-hat, ESS = bulk ESS, from "
             "ppl_diffusion.diagnostics.rhat_ess and from arviz.summary of ChainResult.to_inference_data(); the "
             "mean error is against the exact posterior mean (max over coordinates; PnP-DM targets the rho_min = 1 "
             "relaxed posterior, PMC the sigma_min = 0.5 smoothed one). Multimodal posteriors: kernels_replicas.md.")
    write_result(out, "kernels_chains", "Kernels: Pyro MCMC chains vs vectorised chains", cmd,
                "\n".join(lines) + "\n\n" + str(chain_diagnostics(pb, model)), notes)


def chain_diagnostics(pb, model) -> MarkdownTable:
    """R-hat / ESS of 16 vectorised chains of PnP-DM and PMC, ours and ArviZ's."""
    import arviz as az

    from ..diagnostics import rhat_ess

    table = MarkdownTable("kernel", "chains x draws", "max R-hat (ours / ArviZ)", "min bulk ESS (ours / ArviZ)",
                          "max abs error of the mean", "InferenceData posterior dims")
    runs = (("pnpdm", PnPDM(model, rho_min=1.0, num_grid=20), dict(num_samples=300, warmup_steps=50)),
            ("pmc", PMC(model, sigma0=20.0, decay=0.98, sigma_min=0.5, step_fraction=0.5),
             dict(num_samples=300, warmup_steps=600, thin=6)))
    for name, k, kw in runs:
        r = k.run_chains(y=pb.y, num_chains=16, generator=torch.Generator().manual_seed(0), **kw)
        rh, ess = rhat_ess(r.samples)
        idata = r.to_inference_data()
        summ = az.summary(idata, var_names=["x"], kind="diagnostics")
        err = float((r.flat().mean(0) - pb.posterior.mean()).abs().max())
        dims = ", ".join(f"{k_}={v}" for k_, v in idata.posterior["x"].sizes.items())
        table.add(name, "16 x 300", f"{float(rh.max()):.4f} / {summ['r_hat'].max():.3f}",
                  f"{float(ess.min()):.0f} / {summ['ess_bulk'].min():.0f}", f"{err:.3f}", dims)
    return table


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python benchmarks/kernels.py", description=__doc__.split("\n")[0])
    ap.add_argument("what", nargs="?", default="all", choices=["gmm", "coverage", "chains", "replicas", "all"])
    ap.add_argument("--problems", type=int, default=3)
    ap.add_argument("--long-draws", type=int, default=1600, help="draws per chain of the long replica-exchange run")
    add_out_argument(ap, "kernels_<what>")
    argv = sys.argv[1:] if argv is None else list(argv)
    a = ap.parse_args(argv)
    cmd = "OMP_NUM_THREADS=1 python benchmarks/kernels.py " + shlex.join(argv)
    torch.set_num_threads(1)
    if a.what in ("chains", "all"):
        bench_chains(a.out, cmd)
    if a.what in ("coverage", "all"):
        bench_coverage(a.problems, a.out, cmd)
    if a.what in ("gmm", "all"):
        bench_gmm(a.problems, a.out, cmd)
    if a.what in ("replicas", "all"):
        bench_replicas(a.problems, a.long_draws, a.out, cmd)


if __name__ == "__main__":  # pragma: no cover
    main()
