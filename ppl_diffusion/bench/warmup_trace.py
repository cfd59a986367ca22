"""What the automatic warm-up sees, against the truth: PnP-DM's chains on one exactness problem, every
comparison of ``warmup="auto"`` (:mod:`~ppl_diffusion.inference.kernels.auto_warmup`) beside the
fraction of the chains that sit in mixture components without posterior mass.

The chains run once for ``max_warmup`` iterations with every ``first / 16``-th state kept (the times the
warm-up records). The kept states are fed, in order, to the warm-up's own recorder
(:class:`~ppl_diffusion.inference.kernels.auto_warmup.WindowRecorder`), so each row's p-values are the
ones ``draw(warmup="auto")`` computes on the same chains (same generator), and its ``settled`` column says
where that warm-up would have stopped. Beside them, from the exact posterior: the share of the chain-time
of each window spent in components whose posterior weight is below ``zero_mass`` (1e-6; a state belongs
to the component of largest posterior responsibility), and how many chains visit one.

    OMP_NUM_THREADS=1 python benchmarks/warmup_trace.py --seeds 16,9 --max-warmup 1600
"""
from __future__ import annotations

import argparse
import shlex
import sys
import time

import torch

from ..schedules import VPSchedule
from .exactness import FAMILIES, PNPDM_REPLICAS, exactness_problem
from .report import RESULTS_DIR, MarkdownTable, add_out_argument, write_result

__all__ = ["warmup_trace", "run", "main"]


def _zero_mass_share(x: torch.Tensor, posterior, zero_mass: float) -> torch.Tensor:
    """``(T, C)`` booleans: whether each state ``x`` ``(T, C, d)`` lies in a component with posterior
    weight below ``zero_mass`` (largest responsibility)."""
    return (posterior.weights < zero_mass)[posterior.responsibilities(x).argmax(-1)]


def warmup_trace(family: str = "uneven", d: int = 800, d_y: int = 8, seed: int = 16, chains: int = 100,
                 max_warmup: int = 1600, zero_mass: float = 1e-6, **kernel_options) -> list:
    """The rows of the trace (see the module docstring): one dict per comparison of the automatic
    warm-up, with its check (``p``, ``p_region``, ``p_loglik``, ...) and ``zero_w1`` / ``zero_w2`` (share
    of the window's chain-time in zero-mass components), ``chains_w2`` (chains visiting one in the second
    window), ``zero_end`` (share of the chains in one at the checkpoint) and ``settled``. PnP-DM with the
    exactness tables' replicas, its defaults otherwise (``kernel_options`` on top), float32 chains,
    generator seeded ``90_000 + seed`` as in the exactness tables."""
    from ..inference.kernels import PnPDM
    from ..inference.kernels.auto_warmup import AutoWarmup, WindowRecorder, resolve_warmup
    from ..inference.kernels.base import _log_likelihood

    pb = exactness_problem(family, d, d_y, seed=seed)
    pb32 = pb.to(torch.float32)
    kern = PnPDM(pb32.model(VPSchedule.gmm_benchmark()), **{**PNPDM_REPLICAS, **kernel_options})
    settings = resolve_warmup(AutoWarmup(max_warmup=max_warmup), kern.name, kern.min_warmup, chains)
    rec = WindowRecorder(settings, d)
    every, S = rec.every, settings.max_warmup // rec.every
    r = kern.draw(S * chains, y=pb32.y, chains=chains, warmup=0, thin=every,
                  generator=torch.Generator().manual_seed(90_000 + seed))
    x = r.extra["result"].samples.transpose(0, 1)  # (S, C, d): the state after iterations every, 2 every, ...
    problem = kern.problem(y=pb32.y)
    zero = _zero_mass_share(x, pb.posterior, zero_mass)
    share = zero.double()
    rows, stopped = [], False
    times = every * torch.arange(1, S + 1)
    for t in range(1, settings.max_warmup + 1):  # the kernel's loop: record, then check at a checkpoint
        if t % every == 0 and rec.wants(t):
            s = t // every - 1
            rec.add(t, x[s], _log_likelihood(problem, x[s]))
        if rec.checkpoints and t == rec.checkpoints[0]:
            rec.checkpoints.pop(0)
            check = rec.check(t, 1)
            if check is None:
                continue
            lo, mid = check["from"] // 2, check["from"]
            w1, w2 = (times > lo) & (times <= mid), (times > mid) & (times <= t)
            settled = check["p"] >= settings.alpha
            rows.append({**check, "zero_w1": float(share[w1].mean()), "zero_w2": float(share[w2].mean()),
                         "chains_w2": int(zero[w2].any(0).sum()), "zero_end": float(share[t // every - 1].mean()),
                         "settled": settled, "stops_here": settled and not stopped})
            stopped = stopped or settled
    return rows


def run(seeds=(16,), family: str = "uneven", d: int = 800, d_y: int = 8, chains: int = 100, max_warmup: int = 1600,
        out=RESULTS_DIR, name: str = "pnpdm_warmup_trace", cmd: str = ""):
    table = MarkdownTable("problem (family, d, d_y, seed)", "windows", "zero-mass share W1 / W2",
                          "chains visiting in W2", "zero-mass share at checkpoint", "p region (shift, region weight)",
                          "p log-lik", "settled (p >= 0.05)", "s")
    for seed in seeds:
        t0 = time.perf_counter()
        rows = warmup_trace(family, d, d_y, seed, chains, max_warmup)
        sec = time.perf_counter() - t0
        for r in rows:
            table.add(f"({family}, {d}, {d_y}, {seed})", f"{r['from'] // 2}-{r['from']} / {r['from']}-{r['to']}",
                      f"{r['zero_w1']:.4f} / {r['zero_w2']:.4f}", r["chains_w2"], f"{r['zero_end']:.2f}",
                      f"{r['p_region']:.3g} ({r['shift']:+.3f}, {r['region_weight']:.3f})", f"{r['p_loglik']:.3g}",
                      ("yes, stops here" if r["stops_here"] else "yes") if r["settled"] else "no", f"{sec:.0f}")
    notes = (f"PnP-DM, 12 replicas on rho 0.1-20, its defaults otherwise (analytic prior step), {chains} chains, run "
             f"once for {max_warmup} iterations; each row is one comparison of warmup='auto' on those chains (its "
             "recorder and test, ppl_diffusion/inference/kernels/auto_warmup.py; 'stops here': the first settled "
             "comparison, where draw(warmup='auto') would end the warm-up). Zero-mass share: the fraction of the "
             "window's recorded chain-time in mixture components of exact posterior weight < 1e-6 (largest "
             "responsibility); at checkpoint: the fraction of chains in one at that iteration (one draw per chain "
             "taken there would put that much weight where the posterior has none).")
    write_result(out, name, "PnP-DM: the automatic warm-up's comparisons against zero-mass components", cmd,
                 str(table), notes)
    return table


def main(argv=None):
    p = argparse.ArgumentParser(prog="python benchmarks/warmup_trace.py", description=__doc__.split("\n")[0])
    p.add_argument("--seeds", default="16", help="comma-separated problem seeds")
    p.add_argument("--family", default="uneven", choices=FAMILIES)
    p.add_argument("--d", type=int, default=800)
    p.add_argument("--dy", type=int, default=8)
    p.add_argument("--chains", type=int, default=100)
    p.add_argument("--max-warmup", type=int, default=1600)
    p.add_argument("--name", default="pnpdm_warmup_trace")
    add_out_argument(p, "pnpdm_warmup_trace")
    argv = sys.argv[1:] if argv is None else list(argv)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    cmd = "OMP_NUM_THREADS=1 python benchmarks/warmup_trace.py " + shlex.join(argv)
    return run([int(s) for s in a.seeds.split(",")], a.family, a.d, a.dy, a.chains, a.max_warmup, a.out, a.name, cmd)


if __name__ == "__main__":  # pragma: no cover
    main()
