"""PnP-DM's relaxed target in the measured directions, and what ``correction=True`` and the prior step's
grid change there.

At a fixed coupling rho PnP-DM's x-marginal is the posterior of ``y ~ N(A x, sigma_y^2 I + rho^2 A A^T)``
(Wu et al., NeurIPS 2024, the split target of their Eq. 4). Its variance along a right singular vector
``v_i`` of ``A`` is inflated where ``rho s_i`` is not small against ``sigma_y``; the other directions are
hardly touched, so statistics pooled over all coordinates (sliced W, marginal coverage: the exactness
tables) barely see it. This bench measures, on the exactness families
(:func:`~ppl_diffusion.bench.exactness.exactness_problem`), the variance of the draws along each measured
direction ``v_i`` over that of 20,000 exact posterior draws (1 = exact; a 0.9-1.1 band is what 200 exact
draws give), and the same ratio averaged over the coordinates (mostly unmeasured directions), for:

* ``relaxed target``: exact draws of the relaxed posterior itself at rho_min (closed form), the bias of
  the target before any sampling error;
* PnP-DM configurations (``--configs``), each with 12 replicas on rho 0.1-20 (the exactness tables'
  setting), ``chains`` chains, 200 burn-in, one draw per chain.

    OMP_NUM_THREADS=1 python benchmarks/pnpdm_relaxation.py --problems 6 --dys 2,8
"""
from __future__ import annotations

import argparse
import shlex
import sys
import time

import torch

from ..schedules import VPSchedule
from .exactness import PNPDM_REPLICAS, FAMILIES, _parse_method, exact_prior_step, exactness_problem
from .report import RESULTS_DIR, MarkdownTable, add_out_argument, write_result

__all__ = ["relaxed_posterior", "direction_variance_ratios", "run", "main"]

DEFAULT_CONFIGS = "plain=;corrected=correction=True"
BASE = PNPDM_REPLICAS


def relaxed_posterior(pb, rho: float):
    """The GMM posterior of ``y ~ N(A x, sigma_y^2 I + rho^2 A A^T)`` (whitened to unit noise)."""
    A, y = pb.A, pb.y
    L = torch.linalg.cholesky(pb.noise_std**2 * torch.eye(A.shape[0], dtype=A.dtype) + rho**2 * A @ A.T)
    Aw = torch.linalg.solve_triangular(L, A, upper=False)
    yw = torch.linalg.solve_triangular(L, y[:, None], upper=False)[:, 0]
    return pb.prior.posterior(Aw, yw, 1.0)


def direction_variance_ratios(x: torch.Tensor, ref: torch.Tensor, A: torch.Tensor) -> dict:
    """Variance of ``x`` over that of ``ref`` along each right singular vector of ``A`` (``measured``, (r,)) and
    per coordinate averaged (``coords``)."""
    x, ref = x.to(torch.float64), ref.to(torch.float64)
    _, _, Vh = torch.linalg.svd(A.to(torch.float64), full_matrices=False)
    measured = (x @ Vh.T).var(0) / (ref @ Vh.T).var(0)
    return {"measured": measured, "coords": float((x.var(0) / ref.var(0)).mean())}


def _configs(spec: str):
    """``"plain=;corrected=correction=True"`` -> ``[("plain", {}), ("corrected", {"correction": True})]``."""
    out = []
    for item in filter(None, spec.split(";")):
        name, _, opts = item.partition("=")
        out.append((name, _parse_method("pnpdm:" + opts)[2]))
    return out


def run(d: int = 80, dys=(2, 8), n_problems: int = 6, chains: int = 200, burn: int = 200, configs=DEFAULT_CONFIGS,
        out=RESULTS_DIR, name: str = "pnpdm_relaxation", cmd: str = ""):
    from ..inference.kernels import PnPDM

    sched = VPSchedule.gmm_benchmark()
    table = MarkdownTable("problem (family, d, d_y, seed)", "sigma_y / s_max", "sampler",
                          "measured directions: var ratio mean (min-max)", "all coordinates: var ratio mean",
                          "correction acceptance", "swap min", "s")
    for d_y in dys:
        for i in range(n_problems):
            fam = FAMILIES[i % len(FAMILIES)]
            pb = exactness_problem(fam, d, d_y, seed=i)
            label = f"({fam}, {d}, {d_y}, {i})"
            ref = pb.posterior.sample(20_000, generator=torch.Generator().manual_seed(70_000 + i))
            smax = float(torch.linalg.svdvals(pb.A).max())
            rows = [("relaxed target (exact draws)",
                     relaxed_posterior(pb, BASE["rho_min"]).sample(chains, generator=torch.Generator().manual_seed(i)),
                     None, None, 0.0)]
            pb32 = pb.to(torch.float32)
            for cname, kw in _configs(configs):
                kw = dict(kw)
                grid = kw.pop("num_grid", None)
                kern = PnPDM(pb32.model(sched), **BASE, **kw, **({} if grid in (None, "exact") else {"num_grid": grid}))
                if grid == "exact":
                    kern = exact_prior_step(kern, pb32.prior)
                t0 = time.perf_counter()
                r = kern.draw(chains, y=pb32.y, chains=chains, warmup=burn, thin=1,
                              generator=torch.Generator().manual_seed(40_000 + i))
                rows.append((cname, r.flat().reshape(chains, -1), kern.correction_acceptance,
                             float(kern.swap_acceptance.min()), time.perf_counter() - t0))
            for cname, x, acc, swap, sec in rows:
                v = direction_variance_ratios(x, ref, pb.A)
                m = v["measured"]
                table.add(label, f"{pb.noise_std / smax:.3f}", cname,
                          f"{float(m.mean()):.2f} ({float(m.min()):.2f}-{float(m.max()):.2f})", f"{v['coords']:.3f}",
                          "-" if acc is None or acc != acc else f"{acc:.2f}", "-" if swap is None else f"{swap:.2f}",
                          f"{sec:.0f}")
    notes = (f"d = {d}; PnP-DM with 12 replicas on a geometric ladder rho 0.1-20 (rho annealed from 20 by 0.9 per "
             f"iteration), marginal swap ratio, {chains} chains from N(0, I), {burn} burn-in iterations, one draw per "
             "chain; configurations: " + configs.replace(";", "; ") + " (num_grid=exact: the mixture's exact "
             "p(x | z) as prior step, bench only). Variance ratios against 20,000 exact posterior draws; "
             f"measured directions: the d_y right singular vectors of A. With {chains} exact draws a ratio's sd is "
             f"about {(2 / (chains - 1)) ** 0.5:.2f}.")
    write_result(out, name, "PnP-DM: the relaxed target in the measured directions", cmd, str(table), notes)
    return table


def main(argv=None):
    p = argparse.ArgumentParser(prog="python benchmarks/pnpdm_relaxation.py", description=__doc__.split("\n")[0])
    p.add_argument("--d", type=int, default=80)
    p.add_argument("--dys", default="2,8")
    p.add_argument("--problems", type=int, default=6)
    p.add_argument("--chains", type=int, default=200)
    p.add_argument("--burn", type=int, default=200)
    p.add_argument("--configs", default=DEFAULT_CONFIGS,
                   help="';'-separated name=opt=value,... PnP-DM options on top of the replicas' setting")
    p.add_argument("--name", default="pnpdm_relaxation")
    add_out_argument(p, "pnpdm_relaxation")
    argv = sys.argv[1:] if argv is None else list(argv)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    cmd = "OMP_NUM_THREADS=1 python benchmarks/pnpdm_relaxation.py " + shlex.join(argv)
    return run(a.d, [int(v) for v in a.dys.split(",")], a.problems, a.chains, a.burn, a.configs, a.out, a.name, cmd)


if __name__ == "__main__":  # pragma: no cover
    main()
