"""Scaling: MCGDiff (SMC) wall time and peak memory per particle from 16 to 1,024 particles, and guide
(DDRM) throughput against batch size; network denoiser (shipped ``digits`` UNet, else a tiny random
UNet at seed 0), random inpainting (50 % missing) 1x16x16, sigma_y = 0.05.

Peak memory: each particle count runs in a fresh subprocess and reports ``ru_maxrss`` (peak resident
set) minus the resident set after setup, i.e. the peak extra memory of the run (torch's CPU allocator
has no peak counter and tracemalloc does not see ATen allocations).

    python benchmarks/scaling.py [--particles 16,64,256,1024] [--steps 20]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch

from .report import add_out_argument, write_result
from . import set_threads

__all__ = ["main", "smc_one", "guide_throughput"]


def _rss_kib() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * (os.sysconf("SC_PAGE_SIZE") // 1024)


def smc_one(particles: int, steps: int, seed: int = 0) -> dict:
    """One MCGDiff run (1 run of ``particles`` particles); wall time and peak extra memory (MiB)."""
    from ..inference.smc import MCGDiff
    from .overhead import setup

    set_threads()
    model, den, op, y, label = setup(seed)
    MCGDiff(model, particles=16, steps=2).run(y=y, generator=torch.Generator().manual_seed(seed))  # warm-up
    base = _rss_kib()
    t0 = time.perf_counter()
    MCGDiff(model, particles=particles, steps=steps).run(y=y, generator=torch.Generator().manual_seed(seed))
    dt = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return dict(particles=particles, steps=steps, seconds=dt, peak_mib=max(peak - base, 0) / 1024, label=label)


def guide_throughput(batches, steps: int = 20, seed: int = 0):
    from ..inference.guides import DDRM
    from .overhead import setup

    model, den, op, y, label = setup(seed)
    rows = []
    for b in batches:
        g = torch.Generator().manual_seed(seed)
        DDRM(model, steps=2).sample(b, y=y, generator=g)
        t0 = time.perf_counter()
        DDRM(model, steps=steps).sample(b, y=y, generator=g)
        dt = time.perf_counter() - t0
        rows.append((b, steps, dt, b / dt))
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(prog="ppl-diffusion benchmark scaling", description=__doc__.split("\n")[0])
    p.add_argument("--particles", default="16,64,256,1024")
    p.add_argument("--batches", default="1,4,16,64,256")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    add_out_argument(p, "scaling")
    a = p.parse_args(argv)
    set_threads()
    smc = []
    for n in [int(v) for v in a.particles.split(",")]:
        code = (f"import json; from ppl_diffusion.bench.scaling import smc_one; "
                f"print('RESULT', json.dumps(smc_one({n}, {a.steps}, {a.seed})))")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        smc.append(json.loads(out.split("RESULT", 1)[1]))
    lines = ["| particles | steps | wall (s) | ms / particle | peak extra memory (MiB) | KiB / particle |",
             "|---|---|---|---|---|---|"]
    for r in smc:
        lines.append(f"| {r['particles']} | {r['steps']} | {r['seconds']:.3f} | "
                     f"{1e3 * r['seconds'] / r['particles']:.2f} | {r['peak_mib']:.1f} | "
                     f"{1024 * r['peak_mib'] / r['particles']:.1f} |")
    gt = guide_throughput([int(v) for v in a.batches.split(",")], a.steps, a.seed)
    lines += ["", "| DDRM batch size | steps | wall (s) | samples / s |", "|---|---|---|---|"]
    lines += [f"| {b} | {s} | {dt:.3f} | {thr:.1f} |" for b, s, dt, thr in gt]
    body = (f"Denoiser: {smc[0]['label']}; MCGDiff, 1 run, seed {a.seed}; torch threads {torch.get_num_threads()}.\n\n"
            + "\n".join(lines))
    cmd = ("python benchmarks/scaling.py " + " ".join(argv or [])).strip()
    text = write_result(a.out, "scaling", "SMC and guide scaling", cmd, body,
                        "Target: flat per-particle cost (ms / particle and KiB / particle constant in N).")
    print(text)
    return smc, gt


if __name__ == "__main__":  # pragma: no cover
    main()
