"""Speed of the vectorised R-hat / bulk-ESS maps against ArviZ on an image posterior.

4 chains x 500 draws x (3, 64, 64) float64 AR(1) chains (fixed seed). Times
``ppl_diffusion.diagnostics.rhat`` + ``ess_bulk`` (two calls, as a user would write them), the
shared-work ``rhat_ess``, and ``arviz.rhat`` + ``arviz.ess(method="bulk")`` on the same array; checks
that the maps agree and prints / writes a markdown table ``diagnostics_speed.md`` under ``--out``
(default ``benchmarks/results`` under the current directory).

    python benchmarks/diagnostics_speed.py [--repeats 3] [--threads 1] [--out DIR | --no-write]

ArviZ (without numba) runs on one core, so by default torch is also limited to one thread
(``--threads 0`` keeps torch's default); on a CPU shared with other jobs one thread is also the
robust choice (OpenMP threads spin while waiting for descheduled siblings).
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import time

import numpy as np
import torch

from ..diagnostics import ess_bulk, rhat, rhat_ess
from .report import add_out_argument, output_path

__all__ = ["main", "ar1_chains", "best_of"]

SHAPE = (4, 500, 3, 64, 64)
PHI = 0.7
SEED = 0


def ar1_chains(shape=SHAPE, phi=PHI, seed=SEED) -> np.ndarray:
    """Stationary AR(1) chains ``x_t = phi x_{t-1} + sqrt(1 - phi^2) eps_t`` (float64), with a
    small per-chain offset so that R-hat is not trivially 1."""
    rng = np.random.default_rng(seed)
    eps = rng.standard_normal(shape)
    x = np.empty(shape)
    x[:, 0] = eps[:, 0]
    s = np.sqrt(1.0 - phi**2)
    for t in range(1, shape[1]):  # data generation only
        x[:, t] = phi * x[:, t - 1] + s * eps[:, t]
    x += 0.05 * np.arange(shape[0]).reshape(-1, *([1] * (len(shape) - 1)))
    return x


def best_of(fn, repeats: int) -> tuple[float, float, object]:
    """Best wall-clock and best CPU (process) seconds over ``repeats`` runs, and the last output."""
    best_wall, best_cpu, out = float("inf"), float("inf"), None
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        best_wall = min(best_wall, time.perf_counter() - t0)
        best_cpu = min(best_cpu, time.process_time() - c0)
    return best_wall, best_cpu, out


def main(argv=None) -> str:
    ap = argparse.ArgumentParser(prog="python benchmarks/diagnostics_speed.py", description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3, help="repeats of our timings (best is kept)")
    ap.add_argument("--arviz-repeats", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    ap.add_argument("--no-write", action="store_true", help="print only (same as --out -)")
    add_out_argument(ap, "diagnostics_speed")
    args = ap.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    import arviz as az
    import scipy

    x = ar1_chains()
    ds = az.convert_to_dataset(x)
    rhat(x[:, :, :1, :4, :4])  # warm-up (imports, thread pools)

    t_ours, c_ours, (r_ours, e_ours) = best_of(lambda: (rhat(x), ess_bulk(x)), args.repeats)
    t_shared, c_shared, _ = best_of(lambda: rhat_ess(x), args.repeats)

    def run_arviz():
        return az.rhat(ds)["x"].values, az.ess(ds, method="bulk")["x"].values

    t_az, c_az, (r_az, e_az) = best_of(run_arviz, args.arviz_repeats)
    err_r = float(np.max(np.abs(r_ours.numpy() / r_az - 1)))
    err_e = float(np.max(np.abs(e_ours.numpy() / e_az - 1)))

    n_coords = int(np.prod(SHAPE[2:]))
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),)
    lines = [
        "# Diagnostics speed: R-hat + bulk-ESS maps",
        "",
        f"- date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
        f"os.cpu_count()={os.cpu_count()}, torch threads={torch.get_num_threads()}, "
        f"load average at end={', '.join(f'{v:.1f}' for v in load)}",
        f"- versions: python {platform.python_version()}, torch {torch.__version__}, numpy {np.__version__}, "
        f"scipy {scipy.__version__}, arviz {az.__version__} (numba: no)",
        f"- data: {SHAPE[0]} chains x {SHAPE[1]} draws x {SHAPE[2:]} = {n_coords} coordinates, float64 AR(1) "
        f"(phi={PHI}, seed={SEED})",
        f"- ours: best of {args.repeats}; ArviZ: best of {args.arviz_repeats}; wall-clock and CPU (process) "
        "seconds; the CPU column is the robust one when the machine is shared",
        "",
        "| method | wall (s) | CPU (s) | ArviZ / ours (wall) | ArviZ / ours (CPU) |",
        "|---|---|---|---|---|",
        f"| `arviz.rhat` + `arviz.ess(method=\"bulk\")` | {t_az:.2f} | {c_az:.2f} | 1.0 | 1.0 |",
        f"| `rhat` + `ess_bulk` (ppl_diffusion, two calls) | {t_ours:.2f} | {c_ours:.2f} | "
        f"{t_az / t_ours:.1f} | {c_az / c_ours:.1f} |",
        f"| `rhat_ess` (ppl_diffusion, shared ranking) | {t_shared:.2f} | {c_shared:.2f} | "
        f"{t_az / t_shared:.1f} | {c_az / c_shared:.1f} |",
        "",
        f"Max relative difference to ArviZ: R-hat {err_r:.1e}, ESS-bulk {err_e:.1e}.",
        "",
    ]
    if load[0] > (os.cpu_count() or 1):
        lines.insert(-1, "Note: the load average exceeded the core count (other jobs were running), so wall times are "
                     "inflated; compare the ratios, measured in the same run.\n")
    text = "\n".join(lines)
    print(text)
    path = None if args.no_write else output_path(args.out, "diagnostics_speed")
    if path is not None:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path, "w") as fh:
            fh.write(text)
        print(f"written to {path}")
    return text


if __name__ == "__main__":  # pragma: no cover
    main()
