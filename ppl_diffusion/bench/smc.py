"""Benchmarks of the SMC samplers (MCGDiff, TDS, FPS-SMC) on the d = 8 GMM problems of the MCGDiff paper
(Cardoso et al. 2024).

    OMP_NUM_THREADS=1 python benchmarks/smc.py particles     [--problems 3 --steps 50]
    OMP_NUM_THREADS=1 python benchmarks/smc.py calibration   [--problems 3 --steps 50]
    OMP_NUM_THREADS=1 python benchmarks/smc.py setting_b     [--problems 5]
    OMP_NUM_THREADS=1 python benchmarks/smc.py pg            (ParticleGibbs(MCGDiff) chains, R-hat/ESS)
    OMP_NUM_THREADS=1 python benchmarks/smc.py inpainting    [--problems 3 --steps 50]  (SMCDiff's setting)

Every sample comes from its own independent SMC run (the published protocol); wall time per sample
is the run's time / samples on this 2-core machine with one torch thread.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time

import torch

from ..metrics import sliced_wasserstein
from ..models.gmm import GMMProblem, gmm_benchmark_problem
from ..schedules import VPSchedule
from .gmm import available_solvers, format_table, run_gmm, run_setting_b
from .report import RESULTS_DIR, MarkdownTable, add_out_argument, write_result

__all__ = ["main", "bench_particles", "bench_calibration", "bench_setting_b", "bench_pg", "bench_inpainting",
           "inpainting_problem", "inpainting_model"]

METHODS = ("mcgdiff", "tds", "fps_smc")


def bench_particles(n_problems, steps, methods, Ns, n_big, d=8, n_samples=500, out=RESULTS_DIR, cmd=""):
    rows = []
    for m in methods:
        for N in Ns:
            n = n_big if N >= 1024 else n_samples
            rows.append(run_gmm(m, d, 2, steps, None, n_problems, n, 10000, "sw", options={"particles": N},
                                solver_dtype=torch.float32 if d > 8 else None))
            print(format_table(rows[-1:]), flush=True)
    notes = (f"SW = sliced Wasserstein-1 (mean of W_1 over 500 random directions) to 10,000 exact posterior draws; "
             f"noise floor = the same metric for as many exact posterior draws as method samples. d = {d}, d_y = 2, "
             f"{steps} steps, {n_problems} problems (seeds 0..{n_problems - 1}); {n_samples} samples per problem "
             f"({n_big} at N = 1024, so its floor is larger). NFE/sample = particles x network steps "
             f"(one independent run per sample); TDS also backpropagates once per particle and step."
             + (" Solvers in float32 (problems drawn in float64)." if d > 8 else ""))
    name = "smc_particles" if d == 8 else f"smc_particles_d{d}"
    write_result(out, name, f"SMC: sliced W vs particles (GMM d = {d}, d_y = 2)", cmd,
                format_table(rows), notes)


def _coverage_sw(x, pb):
    """(coverage of the exact 90 % marginal intervals, SW to 10,000 exact draws) of the samples ``x``."""
    q = pb.posterior.marginal_quantiles(torch.tensor([0.05, 0.95], dtype=torch.float64))
    x = x.reshape(x.shape[0], pb.d).to(torch.float64)
    ref = pb.posterior.sample(10000, generator=torch.Generator().manual_seed(5))
    sw = sliced_wasserstein(x, ref, 500, generator=torch.Generator().manual_seed(6))  # leaves g to the runs
    return float(((x >= q[0]) & (x <= q[1])).double().mean()), float(sw)


def _calibration_row(pb, solver, n, steps, g, **options):
    return _coverage_sw(solver.run(pb, pb.model(VPSchedule.gmm_benchmark()), n, steps, None, g, **options).samples, pb)


def _rescaled_noise(pb, scale):
    """The same prior, A and x* with sigma_y multiplied by ``scale`` (fresh noise, seed 777 + seed)."""
    sig = pb.noise_std * scale
    y = pb.A @ pb.x_true + sig * torch.randn(pb.d_y, generator=torch.Generator().manual_seed(777 + pb.seed),
                                             dtype=pb.A.dtype)
    return GMMProblem(pb.prior, pb.A, y, sig, pb.x_true, pb.prior.posterior(pb.A, y, sig), pb.seed)


def bench_calibration(n_problems, steps, methods, N, fps_checks=False, out=RESULTS_DIR, cmd=""):
    solvers = available_solvers()
    head = ["| method | particles | problem (d, d_y, seed) | coverage of exact 90% intervals "
            "| exact-draw coverage (floor) | SW (floor) | samples |", "|---|---|---|---|---|---|---|"]
    lines = list(head)
    extra = ["", "FPS-SMC checks (`--fps-checks`): more particles, smaller sigma_y, same seeds.", ""]
    extra += [h.replace("| method |", "| method | sigma_y |").replace("|---|", "|---|---|", 1) for h in head]
    summary = {}
    n = 500

    def floors(pb, g):  # the same numbers for n exact posterior draws
        return _coverage_sw(pb.posterior.sample(n, generator=g), pb)

    for seed in range(n_problems):
        pb = gmm_benchmark_problem(8, 2, seed=seed)
        g = torch.Generator().manual_seed(100 + seed)
        floor, swf = floors(pb, g)
        for m in methods:
            cov, sw = _calibration_row(pb, solvers[m], n, steps, g, particles=N)
            summary.setdefault(m, []).append(cov)
            lines.append(f"| {m} | {N} | (8, 2, {seed}) | {cov:.3f} | {floor:.3f} | {sw:.3f} ({swf:.3f}) | {n} |")
            print(lines[-1], flush=True)
        if not fps_checks:
            continue
        for scale, parts in ((1.0, 1024), (0.1, N), (0.01, N)):
            if parts > N and seed > 1:
                continue
            pbs = pb if scale == 1.0 else _rescaled_noise(pb, scale)
            gs = torch.Generator().manual_seed(100 + seed)
            floor_s, swf_s = floors(pbs, gs)
            cov, sw = _calibration_row(pbs, solvers["fps_smc"], n, steps, gs, particles=parts)
            extra.append(f"| fps_smc | {pbs.noise_std:.4f} (x{scale:g}) | {parts} | (8, 2, {seed}) | {cov:.3f} | "
                         f"{floor_s:.3f} | {sw:.3f} ({swf_s:.3f}) | {n} |")
            print(extra[-1], flush=True)
    lines.append("")
    lines.append("| method | mean coverage over problems |")
    lines.append("|---|---|")
    for m, v in summary.items():
        lines.append(f"| {m} | {sum(v) / len(v):.3f} |")
    if fps_checks:
        lines += extra
    notes = ("Fraction of method samples (all 8 coordinates pooled) inside the exact posterior's marginal "
             "[5 %, 95 %] quantiles (GaussianMixture.marginal_quantiles); nominal 0.90. The floor column is "
             f"the same for {n} exact posterior draws (its binomial spread over 8 x {n} correlated values). "
             "SW: sliced Wasserstein (metrics.sliced_wasserstein, p = 1, 500 directions, as run_gmm) to 10,000 exact "
             "draws; in brackets the same for the 500 exact draws. "
             f"{steps} steps, one independent SMC run per sample. Coverage above 0.90 means samples too "
             "concentrated. FPS-SMC's over-coverage is its target, not Monte Carlo error: it does not move "
             "with 4x the particles, and sigma_y -> 0 does not make it exact (see the fps.py docstring).")
    name = "smc_calibration" if steps == 50 else f"smc_calibration_steps{steps}"
    write_result(out, name, "SMC: 90 % marginal coverage vs exact posterior (GMM d = 8, d_y = 2)",
                cmd, "\n".join(lines), notes)


PUBLISHED = {32: {1: "19.82 ± 2.39 (6.2 s)", 2: "10.84 ± 0.67 (7.2 s)", 4: "0.996 ± 0.153 (6.8 s)"},
             128: {1: "5.23 ± 0.59 (28.5 s)", 2: "4.28 ± 0.42 (26.9 s)", 4: "0.179 ± 0.027 (24.8 s)"}}


def bench_setting_b(n_problems, Ns, dtype, options, out=RESULTS_DIR, cmd=""):
    rows = []
    for N in Ns:
        rows += run_setting_b("mcgdiff", n_problems=n_problems, options={"particles": N, **options},
                              solver_dtype=dtype)
        print(format_table(rows[-3:]), flush=True)
    cmp = ["| d_y | N | ours max-SW (mean ± 95% CI) | ours noise floor | ours s / 1,000 samples | "
           "published max-SW (s / 1,000) |", "|---|---|---|---|---|---|"]
    for r in rows:
        N = r.options["particles"]
        m, h = r.mean
        f, fh = r.floor
        cmp.append(f"| {r.d_y} | {N} | {m:.3g} ± {h:.2g} | {f:.3g} ± {fh:.2g} | {1e3 * r.sec_per_sample:.3g} | "
                   f"{PUBLISHED.get(N, {}).get(r.d_y, '-')} |")
    notes = (f"Setting B: d = 8, 100 steps (+ the matching times), 1,000 samples (each from its own independent "
             f"run), 10,000 reference draws, max-sliced W (POT definition, 100 projections); {n_problems} problems "
             f"(seeds 0..{n_problems - 1}, drawn in float64); solver in {str(dtype).replace('torch.', '')}; "
             f"options {options or 'default'} (systematic resampling when ESS < N/2, 'alpha' grid, kappa 1e-4). "
             "Published numbers: Cardoso et al. 2024 (MCGDiff authors, CPU laptop, 20 problems; resampling at "
             "every step). Times are wall seconds on this 2-core machine with one torch thread.")
    write_result(out, "gmm_b_mcgdiff", "GMM benchmark (b) — mcgdiff (N = 32, 128)", cmd,
                format_table(rows) + "\n\n" + "\n".join(cmp), notes)


def bench_pg(chains, draws, N, steps, seed=0, out=RESULTS_DIR, cmd=""):
    from ..diagnostics import ess_bulk, rhat
    from ..inference.kernels import ParticleGibbs
    from ..inference.smc import MCGDiff
    from ..metrics import sliced_wasserstein

    pb = gmm_benchmark_problem(8, 2, seed=seed)
    model = pb.model(VPSchedule.gmm_benchmark())
    g = torch.Generator().manual_seed(7)
    lines = ["| kernel | chains x draws | particles | steps | max R-hat | min / median bulk ESS | SW (floor) | "
             "90 % coverage (floor) | s total | moved |", "|---|---|---|---|---|---|---|---|---|---|"]
    q = pb.posterior.marginal_quantiles(torch.tensor([0.05, 0.95], dtype=torch.float64))
    for AS in (False, True):
        pg = ParticleGibbs(MCGDiff(model, particles=N, steps=steps), chains=chains, generator=g,
                           ancestor_sampling=AS)
        res = pg.run_chains(y=pb.y, num_samples=draws, warmup_steps=20)
        idata = res.to_inference_data()
        assert idata.posterior["x"].dims[:2] == ("chain", "draw")
        r, e = rhat(res.samples), ess_bulk(res.samples)
        ref = pb.posterior.sample(10000, generator=g)
        flat = res.flat()
        sw = float(sliced_wasserstein(flat, ref, n_projections=500, generator=g))
        exact = pb.posterior.sample(flat.shape[0], generator=g)
        fl = float(sliced_wasserstein(exact, ref, n_projections=500, generator=g))
        cov, cov_fl = (float(((v >= q[0]) & (v <= q[1])).double().mean()) for v in (flat.double(), exact))
        name = "ParticleGibbs(MCGDiff)" + (" + ancestor sampling" if AS else "")
        lines.append(f"| {name} | {chains} x {draws} | {N} | {steps} | {float(r.max()):.4f} | "
                     f"{float(e.min()):.0f} / {float(e.median()):.0f} | {sw:.3g} ({fl:.3g}) | "
                     f"{cov:.3f} ({cov_fl:.3f}) | {res.seconds:.1f} | "
                     f"{float(res.stats['moved'].double().mean()):.2f} |")
        print(lines[-1], flush=True)
    notes = ("GMM d = 8, d_y = 2, seed 0. Chains run as one batch; 20 warm-up iterations after an unconditional "
             "SMC start, dropped. R-hat = rank-normalised split R-hat, ESS = bulk ESS (ppl_diffusion.diagnostics), "
             "per coordinate. SW: sliced W-1 (500 directions) of the pooled draws to 10,000 exact draws; the "
             "floor is the same for as many exact draws. InferenceData from ChainResult.to_inference_data() has "
             "chain/draw dims. `moved`: fraction of iterations whose draw differs from the previous one.")
    name = "smc_particle_gibbs" if (steps, N) == (20, 64) else f"smc_particle_gibbs_steps{steps}_N{N}"
    write_result(out, name, "ParticleGibbs(MCGDiff): multi-chain diagnostics (GMM d = 8)",
                cmd, "\n".join(lines), notes)


def inpainting_problem(seed: int, observed) -> GMMProblem:
    """Noiseless inpainting on the d = 8 setting-B prior of ``seed``: ``y`` = the ``observed``
    coordinates of a prior draw (SMCDiff's setting). ``A`` holds only the observed rows (for the exact
    posterior); the solvers see the full-size Inpainting operator (``inpainting_model``)."""
    base = gmm_benchmark_problem(8, 1, seed=seed)
    A = torch.eye(8, dtype=torch.float64)[list(observed)]
    x = base.prior.sample(1, generator=torch.Generator().manual_seed(500 + seed))[0]
    y = A @ x
    return GMMProblem(base.prior, A, y, 0.0, x, base.prior.posterior(A, y, 0.0), seed)


def inpainting_model(pb: GMMProblem):
    """The Pyro model with ``Inpainting`` (full-size ``y``, zeros where unobserved) and its ``y``."""
    import pyro

    from ..models import GaussianMeasurement
    from ..models.operators import Inpainting

    mask = pb.A.sum(0) > 0
    op = Inpainting(mask)
    prior = pb.prior.diffusion_prior(VPSchedule.gmm_benchmark())

    def model(y=None):
        x = pyro.sample("x", prior)
        return pyro.sample("y", GaussianMeasurement(op, x, 0.0), obs=y)

    return model, torch.zeros(8, dtype=torch.float64).masked_scatter(mask, pb.y)


def bench_inpainting(n_problems, steps, methods, Ns, n_samples=500, out=RESULTS_DIR, cmd=""):
    from types import SimpleNamespace

    solvers = available_solvers()
    table = MarkdownTable("method", "observed coordinates", "particles", "SW (mean over problems)", "noise floor",
                          "ratio", "NFE / sample", "ms / sample")
    def sw(x, ref, g):
        return float(sliced_wasserstein(x.double(), ref, n_projections=500, generator=g))

    for observed in ((0,), (0, 2)):
        pbs = [inpainting_problem(seed, observed) for seed in range(n_problems)]
        refs, floors = [], []
        for pb in pbs:  # one reference set per problem; floor = mean over 5 sets of exact draws
            g = torch.Generator().manual_seed(900 + pb.seed)
            refs.append(pb.posterior.sample(10000, generator=g))
            floors.append(sum(sw(pb.posterior.sample(n_samples, generator=g), refs[-1], g) for _ in range(5)) / 5)
        mfl = sum(floors) / len(floors)
        for m in methods:
            for N in Ns:
                sws, nfe, sec = [], [], []
                for pb, ref in zip(pbs, refs):
                    model, y_full = inpainting_model(pb)
                    g = torch.Generator().manual_seed(300 + pb.seed)
                    t0 = time.perf_counter()
                    res = solvers[m].run(SimpleNamespace(y=y_full), model, n_samples, steps, None, g, particles=N)
                    sec.append((time.perf_counter() - t0) / n_samples)
                    sws.append(sw(res.samples, ref, g))
                    nfe.append(res.nfe_per_sample)
                msw = sum(sws) / len(sws)
                table.add(m, ",".join(map(str, observed)), N, f"{msw:.3g}", f"{mfl:.3g}", f"{msw / mfl:.2f}",
                          f"{sum(nfe) / len(nfe):.0f}", f"{1e3 * sum(sec) / len(sec):.3g}")
    notes = (f"Noiseless inpainting of the d = 8 setting-B prior (seeds 0..{n_problems - 1}; x* a prior draw, y its "
             "observed coordinates; observing coordinate 0 fixes i of the (i, j) grid component and leaves five modes "
             f"in j). {steps} steps, {n_samples} samples per problem, one independent run per sample; SW = sliced W "
             "(p = 1, 500 directions) to 10,000 exact posterior draws, floor = the same for as many exact draws "
             "(mean of 5 sets).")
    write_result(out, "smc_inpainting", "SMC on noiseless GMM inpainting (SMCDiff's setting)", cmd,
                str(table), notes)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python benchmarks/smc.py", description=__doc__.split("\n")[0])
    p.add_argument("what", choices=["particles", "calibration", "setting_b", "pg", "inpainting"])
    p.add_argument("--problems", type=int, default=3)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--Ns", default="16,64,256,1024")
    p.add_argument("--n-big", type=int, default=100)
    p.add_argument("--particles", type=int, default=256)
    p.add_argument("--fps-checks", action="store_true", help="calibration: extra FPS-SMC rows")
    p.add_argument("--chains", type=int, default=16)
    p.add_argument("--draws", type=int, default=200)
    p.add_argument("--d", type=int, default=8, help="dimension (particles)")
    p.add_argument("--samples", type=int, default=500, help="samples per problem (particles)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"], help="solver precision (setting_b)")
    p.add_argument("--options", default="{}", help="JSON dict of extra MCGDiff options (setting_b)")
    add_out_argument(p, "smc_<what>")
    argv = sys.argv[1:] if argv is None else list(argv)
    a = p.parse_args(argv)
    cmd = "OMP_NUM_THREADS=1 python benchmarks/smc.py " + shlex.join(argv)
    torch.set_num_threads(1)
    methods = tuple(a.methods.split(","))
    Ns = tuple(int(v) for v in a.Ns.split(","))
    if a.what == "particles":
        bench_particles(a.problems, a.steps, methods, Ns, a.n_big, a.d, a.samples, a.out, cmd)
    elif a.what == "calibration":
        bench_calibration(a.problems, a.steps, methods, a.particles, a.fps_checks, a.out, cmd)
    elif a.what == "inpainting":
        bench_inpainting(a.problems, a.steps, methods, Ns, a.samples, a.out, cmd)
    elif a.what == "setting_b":
        bench_setting_b(a.problems, Ns, getattr(torch, a.dtype), json.loads(a.options), a.out, cmd)
    else:
        bench_pg(a.chains, a.draws, a.particles, a.steps, out=a.out, cmd=cmd)


if __name__ == "__main__":  # pragma: no cover
    main()
