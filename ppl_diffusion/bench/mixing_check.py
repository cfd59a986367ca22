"""How often the kernels' mixing check (:func:`~ppl_diffusion.inference.kernels.mode_check.chain_convergence`,
run by every ``run_chains``) flags chains that have mixed, and how often it flags chains that have not,
with draws whose law is known: exact posterior draws of the exactness families laid out as chains.

* ``exact``: every chain draws from the whole posterior (perfect mixing; a flag is a false alarm);
* ``stuck``: every chain draws from ONE component, drawn by the posterior weights (no chain ever
  leaves its mode; the pooled weights are right on average but rest on the C chains alone);
* ``one in the minor mode``: C - 1 chains draw from the whole posterior, one from the second-heaviest
  component only (the pooled minor weight is off by about (1 - w_minor) / C).

Per row: the share of runs flagged by split R-hat alone (> 1.05, the rule before 2026-12-03) and by
the rule of ``run_chains`` (an R-hat flags only when its permutation p-value is also below 0.01).

    OMP_NUM_THREADS=1 python benchmarks/mixing_check.py --reps 40
"""
from __future__ import annotations

import argparse
import shlex
import sys
import time

import torch

from .exactness import exactness_problem
from .report import RESULTS_DIR, MarkdownTable, add_out_argument, write_result

__all__ = ["planted_chains", "two_mode_pnpdm", "run", "main"]

SHAPES = ((4, 10), (8, 20), (16, 20), (4, 50), (4, 250), (100, 4), (100, 20))
CASES = ("exact", "stuck", "one in the minor mode")


def planted_chains(posterior, C: int, S: int, case: str, generator: torch.Generator) -> torch.Tensor:
    """``(C, S, d)`` exact draws laid out as chains, per ``case`` (see the module docstring)."""
    w = posterior.weights
    L = torch.linalg.cholesky(posterior.full_covs())
    d = L.shape[-1]
    comp = torch.multinomial(w, C * S, replacement=True, generator=generator).reshape(C, S)
    if case == "stuck":
        comp = torch.multinomial(w, C, replacement=True, generator=generator)[:, None].expand(C, S)
    elif case == "one in the minor mode":
        comp = comp.clone()
        comp[-1] = int(w.argsort(descending=True)[1])
    elif case != "exact":
        raise ValueError(f"case must be one of {CASES}, got {case!r}")
    z = torch.randn(C, S, d, generator=generator, dtype=L.dtype)
    x = torch.empty_like(z)
    for k in comp.unique().tolist():  # per component: no (C, S, d, d) gather of the Cholesky factors
        at = comp == k
        x[at] = posterior.means[k] + z[at] @ L[k].T
    return x


def two_mode_pnpdm():
    """A planted non-mixing kernel run's ingredients: prior modes at x1 = -3 / +3 (weights 0.9 / 0.1, variance
    0.25), y = 0.3 observes x2 only (noise 0.5), so the exact posterior keeps 0.9 / 0.1; PnP-DM without
    replicas and with a small coupling (rho 0.1, 10-point grid) does not cross between the modes.
    Returns ``(problem, kernel, init)`` with ``init`` ``(8, 2)``: half the chains at each mode."""
    from ..inference.kernels import PnPDM
    from ..models.gmm import GaussianMixture, GMMProblem
    from ..schedules import VPSchedule

    f64 = torch.float64
    prior = GaussianMixture(torch.tensor([0.9, 0.1], dtype=f64), torch.tensor([[-3.0, 0.0], [3.0, 0.0]], dtype=f64),
                            torch.tensor([0.25, 0.25]))
    A = torch.tensor([[0.0, 1.0]], dtype=f64)
    y = torch.tensor([0.3], dtype=f64)
    pb = GMMProblem(prior, A, y, 0.5, torch.zeros(2), prior.posterior(A, y, 0.5), 0)
    kern = PnPDM(pb.model(VPSchedule.gmm_benchmark()), rho0=0.1, rho_min=0.1, decay=1.0, num_grid=10)
    init = torch.tensor([[-3.0, 0.0]] * 4 + [[3.0, 0.0]] * 4, dtype=f64)
    return pb, kern, init


def run(problems=(("uneven", 8, 2, 1), ("spectrum", 8, 1, 2), ("fullcov", 8, 2, 4), ("uneven", 80, 2, 1),
                  ("uneven", 800, 2, 7)), shapes=SHAPES,
        reps: int = 40, out=RESULTS_DIR, name: str = "mixing_check", cmd: str = ""):
    from ..inference.kernels.mode_check import RHAT_THRESHOLD, chain_convergence

    table = MarkdownTable("problem (family, d, d_y, seed)", "minor weight", "chains x draws", "case", "runs",
                          "flagged by R-hat > 1.05", "flagged by the check (and p < 0.01)", "s")
    for fam, d, d_y, seed in problems:
        pb = exactness_problem(fam, d, d_y, seed=seed)
        post = pb.posterior

        def ll(z, pb=pb):
            return -0.5 * ((z @ pb.A.T - pb.y) ** 2).sum(-1) / pb.noise_std ** 2

        minor = float(post.weights.sort(descending=True).values[1])
        for C, S in shapes:
            for case in CASES:
                t0 = time.perf_counter()
                by_rhat = flagged = 0
                for rep in range(reps):
                    g = torch.Generator().manual_seed(1000 * rep + seed)
                    r = chain_convergence(planted_chains(post, C, S, case, g), ll, generator=g)
                    by_rhat += r["max_rhat"] > RHAT_THRESHOLD
                    flagged += not r["ok"]
                table.add(f"({fam}, {d}, {d_y}, {seed})", f"{minor:.3f}", f"{C} x {S}", case, reps,
                          f"{by_rhat / reps:.2f}", f"{flagged / reps:.2f}", f"{time.perf_counter() - t0:.1f}")
    notes = ("Exact posterior draws of the exactness families (ppl_diffusion/bench/exactness.py) laid out as chains "
             "(module docstring of ppl_diffusion/bench/mixing_check.py); statistics of "
             "ppl_diffusion/inference/kernels/mode_check.py::chain_convergence with 4 k-means regions and the exact "
             "log-likelihood: rank-normalised split R-hat of log p(y | x), split R-hat of each region's indicator. "
             "'flagged by R-hat > 1.05': either exceeds 1.05; 'flagged by the check': either exceeds 1.05 with a "
             "permutation p-value (500 reshufflings of the draws among the chains) below 0.01 (the rule of "
             "run_chains, which warns with MixingWarning at >= 20 draws per chain). On 'exact' a flag is a false "
             "alarm (each permutation test has level 0.01, so about 2 % at most under the check).")
    write_result(out, name, "Kernels' mixing check: false alarms on exact draws, detection of stuck chains", cmd,
                 str(table), notes)
    return table


def main(argv=None):
    p = argparse.ArgumentParser(prog="python benchmarks/mixing_check.py", description=__doc__.split("\n")[0])
    p.add_argument("--reps", type=int, default=40, help="runs per problem, shape and case")
    p.add_argument("--name", default="mixing_check")
    add_out_argument(p, "mixing_check")
    argv = sys.argv[1:] if argv is None else list(argv)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    cmd = "OMP_NUM_THREADS=1 python benchmarks/mixing_check.py " + shlex.join(argv)
    return run(reps=a.reps, out=a.out, name=a.name, cmd=cmd)


if __name__ == "__main__":  # pragma: no cover
    main()
