"""Study throughput: cells per minute with the in-process backend against Ray with 1 and 2 workers.

The same study (the shipped ``digits`` prior, 2x super-resolution at sigma_y = 0.05, held-out images,
DDRM and MCGDiff, 16 draws per cell) runs in this process, then on a local Ray with 1 and with 2 CPU
slots, each Ray configuration twice: *cold* (fresh worker processes: imports and the prior load
inside the first tasks) and *warm* (a second study on the same Ray session: the workers and their
cached prior are reused). Every run writes to a fresh folder and checks that its table equals the
in-process one. Also measured: ``ray.init`` time, the round trip of an empty Ray task, the per-cell
overhead (driver wall time x slots - the cells' own wall time, per cell), the prior load time and
the size of a cell's netCDF. Run: ``python benchmarks/study_scaling.py [--measurements 8]``.
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from .report import MarkdownTable, add_out_argument, write_result

__all__ = ["main", "make_study"]


def make_study(measurements: int, samples: int = 16, steps: int = 50, mcg_steps: int = 40, particles: int = 32):
    from ..study import Study

    return Study(name="scaling", problem={"kind": "image", "prior": "digits", "operator": "sr",
                                          "op_args": {"factor": 2}, "noise_std": 0.05},
                 measurements=measurements, samples=samples,
                 methods={"ddrm": {"steps": steps},
                          "mcgdiff": {"steps": mcg_steps, "particles": particles, "independent": False}})


def _noop():
    return 0


def _run(study, root: Path, tag: str, **kw):
    from ..study import run_study

    out = root / tag
    t0 = time.perf_counter()
    res = run_study(study, out, merge=False, **kw)
    wall = time.perf_counter() - t0
    return res, wall


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--measurements", type=int, default=8, help="held-out images (default 8; cells = 2x)")
    p.add_argument("--samples", type=int, default=16)
    p.add_argument("--steps", type=int, default=50, help="DDRM steps (default 50)")
    p.add_argument("--mcg-steps", type=int, default=40, help="MCGDiff steps (default 40)")
    p.add_argument("--particles", type=int, default=32, help="MCGDiff particles (default 32)")
    p.add_argument("--noop-tasks", type=int, default=200, help="empty Ray tasks timed for the round trip")
    add_out_argument(p, "study_scaling")
    args = p.parse_args(argv)
    import ray
    import torch

    torch.set_num_threads(1)
    study = make_study(args.measurements, args.samples, args.steps, args.mcg_steps, args.particles)
    n = len(study.cells())
    root = Path(tempfile.mkdtemp(prefix="study_scaling_"))
    load0 = os.getloadavg()[0]
    rows = []
    ref, wall = _run(study, root, "inprocess")
    metrics = ["psnr", "coverage90", "rmse", "mean_std"]

    def record(label, res, wall, slots):
        t = res.table
        assert (t["status"] == "ok").all(), t[t["status"] != "ok"]["error"].tolist()
        equal = np.array_equal(t[metrics].to_numpy(), ref.table[metrics].to_numpy())
        over = (wall * slots - t["wall_s"].sum()) / n
        rows.append((label, slots, wall, 60 * n / wall, t["wall_s"].mean(), over, int((t["prior_load_s"] > 0).sum()),
                     t["prior_load_s"][t["prior_load_s"] > 0].mean(), equal))

    record("in-process", ref, wall, 1)
    noop = {}
    for workers in (1, 2):
        t0 = time.perf_counter()
        ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False, configure_logging=False)
        init_s = time.perf_counter() - t0
        for phase in ("cold", "warm"):
            res, wall = _run(study, root, f"ray{workers}_{phase}", backend="ray")
            record(f"Ray, {workers} worker{'s' if workers > 1 else ''}, {phase}", res, wall, workers)
        f = ray.remote(num_cpus=1)(_noop)
        ray.get([f.remote() for _ in range(20)])
        t0 = time.perf_counter()
        ray.get([f.remote() for _ in range(args.noop_tasks)])
        noop[workers] = ((time.perf_counter() - t0) / args.noop_tasks, init_s)
        ray.shutdown()
    nc = [os.path.getsize(f) for f in (root / "inprocess" / "cells").glob("*.nc")]
    load1 = os.getloadavg()[0]
    table = MarkdownTable("backend", "CPU slots", "wall s", "cells / min", "s per cell (in task)",
                          "overhead s / cell", "prior loads", "prior load s", "table = in-process")
    for r in rows:
        table.add(r[0], r[1], f"{r[2]:.1f}", f"{r[3]:.1f}", f"{r[4]:.2f}", f"{r[5]:.2f}", r[6],
                  "-" if not np.isfinite(r[7]) else f"{r[7]:.2f}", "yes" if r[8] else "NO")
    extra = MarkdownTable("Ray workers", "ray.init s", "empty task round trip ms (warm, 1 CPU each)")
    for w, (rt, init_s) in noop.items():
        extra.add(w, f"{init_s:.1f}", f"{1000 * rt:.1f}")
    body = (f"{n} cells: {args.measurements} held-out digits x (DDRM {args.steps} steps, MCGDiff {args.mcg_steps} "
            f"steps x {args.particles} particles, one run) x {args.samples} draws, 2x SR, sigma_y 0.05; torch 1 "
            f"thread per cell. Load average of the machine (1 min) before / after: {load0:.1f} / {load1:.1f} on "
            f"{os.cpu_count()} cores.\n\n{table}\n\n{extra}\n\nnetCDF per cell: {np.mean(nc) / 1024:.0f} KiB "
            f"(mean of {len(nc)}).")
    shutil.rmtree(root, ignore_errors=True)
    cmd = "python benchmarks/study_scaling.py " + " ".join(argv or [])
    write_result(args.out, "study_scaling", "Study throughput: in-process against Ray (1 and 2 workers)",
                 cmd.strip(), body)
    return rows, noop
