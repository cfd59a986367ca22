"""Does particle Gibbs sample its own target on a mixture, and how fast does it move between modes?

ParticleGibbs (Andrieu, Doucet & Holenstein 2010, Sec. 2.4.3; with ancestor sampling, Lindsten, Jordan &
Schön 2014, Alg. 2) leaves the SMC sampler's Feynman–Kac path target invariant, whose last marginal is the
diffusion sampler's *discretised* posterior, not the exact one. This bench separates the three errors a
ParticleGibbs draw can carry on an exactness problem (:func:`~ppl_diffusion.bench.exactness.exactness_problem`),
read on the posterior's minor mode (its second-heaviest component, a draw counted by its responsibilities):

* the target's own bias: the evidence-weighted pool of ``pool_runs`` independent runs with
  ``pool_particles`` particles each (a consistent estimate of the target's expectation, with its
  delta-method standard error) against the exact weight;
* the kernel's invariance: the chains' long-run average (``chains`` chains, ``sweeps`` conditional sweeps
  after ``burn``; standard error from means over batches of ``batch`` sweeps) against that target;
* the mixing between modes: the fraction of chain-sweeps whose draw changes posterior component (the
  component of largest responsibility), and the relaxation time it implies for two modes,
  ``1 / (a + b)`` sweeps with ``a = s / (2 w_major)``, ``b = s / (2 w_minor)`` (a two-state chain with
  the exact weights).

The chains run ParticleGibbs's default kernel, each conditional sweep followed by the independent (PIMH) move;
``--pg-no-pimh`` runs the conditional sweeps alone (the kernel before that move, as in the 2026-12-03 table).
"""
from __future__ import annotations

import math
import time

import torch

from ..schedules import VPSchedule
from .exactness import FAMILIES, exactness_problem, per_run_component_weights
from .report import RESULTS_DIR, MarkdownTable, write_result

__all__ = ["pg_target", "PG_TARGET_PROBLEMS"]

PG_TARGET_PROBLEMS = "8,2,114;8,2,101"


def _pool_target(model, post, minor, y, steps, particles, runs, seed):
    """The evidence-weighted pool's minor-mode weight over ``runs`` MCGDiff runs, its delta-method
    standard error and the runs' evidence ESS."""
    from ..inference.registry import build_solver
    from ..inference.smc.evidence import run_log_weights

    res = build_solver("mcgdiff", model, steps=steps, particles=particles).run(
        y=y, runs=runs, generator=torch.Generator().manual_seed(seed))
    P = per_run_component_weights(res, post)[:, minor].double()
    w = torch.exp(run_log_weights(res))
    est = float((w * P).sum())
    se = float(torch.sqrt((w ** 2 * (P - est) ** 2).sum()))
    return est, se, float(1.0 / (w ** 2).sum())


def _chains(model, post, minor, y, steps, particles, chains, sweeps, burn, batch, seed, pimh=True):
    """ParticleGibbs(MCGDiff): the chains' minor-mode weight averaged over sweeps after ``burn``, its
    batch-means standard error, and the fraction of chain-sweeps that change component."""
    from ..inference.kernels import ParticleGibbs
    from ..inference.registry import build_solver

    kern = ParticleGibbs(build_solver("mcgdiff", model, steps=steps, particles=particles), chains=chains,
                         generator=torch.Generator().manual_seed(seed), pimh=pimh)
    kern.setup(0, y=y)
    label = post.responsibilities(kern._x.double()).argmax(1)
    vals, switches = [], 0.0
    with torch.no_grad():
        for s in range(1, sweeps + 1):
            x = kern.sample(None)["x"].double()
            r = post.responsibilities(x)
            new = r.argmax(1)
            switches += float((new != label).double().mean())
            label = new
            if s > burn:
                vals.append(float(r[:, minor].mean()))
    v = torch.tensor(vals, dtype=torch.float64)
    nb = len(v) // batch
    if nb < 2:
        raise ValueError(f"pg_target: needs at least 2 batches of {batch} sweeps after burn-in, got {len(v)} sweeps")
    means = v[: nb * batch].reshape(nb, batch).mean(1)
    return float(v.mean()), float(means.std() / math.sqrt(nb)), switches / sweeps


def pg_target(problems: str = PG_TARGET_PROBLEMS, steps: int = 40, particles: int = 32, chains: int = 400,
              sweeps: int = 400, burn: int = 50, batch: int = 50, pool_particles: int = 2048,
              pool_runs: int = 400, out=RESULTS_DIR, name: str = "particle_gibbs_target", cmd: str = "",
              pimh: bool = True) -> str:
    """The table of this module's docstring, one row per problem of ``problems`` (``"d,d_y,seed;..."``,
    families cycled by seed as in the exactness tables)."""
    sched = VPSchedule.gmm_benchmark()
    table = MarkdownTable("problem (family, d, d_y, seed)", "exact minor", "target minor (pool, se)",
                          "target - exact", "chains' long-run minor (se)", "chains - target (z)",
                          "switch rate per chain-sweep", "relaxation (sweeps)", "pool runs ESS", "s")
    for spec in problems.split(";"):
        d, d_y, seed = (int(v) for v in spec.split(","))
        fam = FAMILIES[seed % len(FAMILIES)]
        pb = exactness_problem(fam, d, d_y, seed=seed)
        pbs = pb.to(torch.float32) if d > 8 else pb
        post, model = pb.posterior, pbs.model(sched)
        order = torch.argsort(post.weights, descending=True)
        minor, w_minor, w_major = int(order[1]), float(post.weights[order[1]]), float(post.weights[order[0]])
        t0 = time.perf_counter()
        tgt, tgt_se, ess = _pool_target(model, post, minor, pbs.y, steps, pool_particles, pool_runs, seed)
        pg, pg_se, s = _chains(model, post, minor, pbs.y, steps, particles, chains, sweeps, burn, batch, seed,
                               pimh)
        z = (pg - tgt) / math.hypot(pg_se, tgt_se)
        relax = 1.0 / (s / (2 * w_major) + s / (2 * w_minor)) if s > 0 else math.inf
        table.add(f"({fam}, {d}, {d_y}, {seed})", f"{w_minor:.4f}", f"{tgt:.4f} ({tgt_se:.4f})",
                  f"{tgt - w_minor:+.4f}", f"{pg:.4f} ({pg_se:.4f})", f"{pg - tgt:+.4f} ({z:+.1f})", f"{s:.4f}",
                  f"{relax:.0f}", f"{ess:.0f}", f"{time.perf_counter() - t0:.0f}")
    notes = (f"MCGDiff at {steps} steps. Target: the evidence-weighted pool of {pool_runs} independent runs with "
             f"{pool_particles} particles (delta-method se). Chains: ParticleGibbs(MCGDiff, {particles} particles, "
             f"ancestor sampling, {'each sweep followed by the PIMH move' if pimh else 'conditional sweeps alone'}), "
             f"{chains} chains, {sweeps} conditional sweeps, the mean over the chains and the "
             f"sweeps after {burn} of the minor component's responsibility (se: means over batches of {batch} sweeps). "
             "Switch rate: the fraction of chain-sweeps whose draw changes its component of largest responsibility; "
             "relaxation: 1 / (a + b) sweeps for a two-state chain with that switch rate and the exact weights. "
             "Minor = the exact posterior's second-heaviest component.")
    return write_result(out, name, "ParticleGibbs: its own target, its invariance and its mode switching",
                        cmd, str(table), notes)
