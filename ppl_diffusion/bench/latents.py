"""Models with a latent site besides the diffusion prior, against exact posteriors by quadrature.

``python benchmarks/latents.py --problems 3 [--method gibbs|pmmh]`` runs ``Gibbs(ParticleGibbs(TDS)
for x, NUTS for theta)`` or ``PMMH(TDS)`` on the Gaussian-mixture problems of
:mod:`ppl_diffusion.models.gmm_theta`:

* ``noise``: ``sigma ~ LogNormal(-1, 0.5)``, ``y = A x + sigma n`` (an unknown noise level);
* ``gain``: ``gain ~ LogNormal(0, 0.3)``, ``y = gain A x + 0.1 n`` (an unknown operator parameter);

where ``p(theta | y)`` is exact on a 400-point grid and ``p(x | y)`` is its mixture of exact GMM
posteriors. Per problem: theta's posterior mean error in units of the exact posterior std, the
sampler's and the exact 90 % intervals, whether the true theta lies in the sampler's interval,
split R-hat and bulk ESS of theta over the chains (ArviZ), the sliced W of x to the exact marginal
posterior beside the noise floor (exact draws of the same size), and the 90 % coverage of exact
draws by the sampler's marginal intervals of x (0.90 for a perfect sampler).
"""
from __future__ import annotations

import argparse
import shlex
import sys
import time

import arviz as az
import pyro
import torch

from ..metrics import coverage, sliced_wasserstein
from ..models.gmm_theta import unknown_gain_problem, unknown_noise_problem
from ..schedules import VPSchedule
from .report import MarkdownTable, add_out_argument, write_result

__all__ = ["gibbs_run", "bench_gibbs", "main"]

PROBLEMS = {"noise": unknown_noise_problem, "gain": unknown_gain_problem}


def make_kernel(method: str, model, particles: int, steps: int, x_sampler: str = "tds"):
    """``Gibbs(ParticleGibbs(TDS), NUTS)`` or ``PMMH(TDS | MCGDiff)`` on ``model``."""
    from pyro.infer import NUTS

    from ..inference.kernels import PMMH, Gibbs, ParticleGibbs
    from ..inference.smc.mcgdiff import MCGDiff
    from ..inference.smc.tds import TDS

    if method == "pmmh":
        smc = MCGDiff if x_sampler == "mcgdiff" else TDS
        return PMMH(model, sampler=lambda m: smc(m, particles=particles, steps=steps))
    if x_sampler != "tds":
        raise ValueError("Gibbs takes ParticleGibbs(TDS) for x (ParticleGibbs(MCGDiff) is refused: its time grid "
                         "depends on the noise level); use --method pmmh for MCGDiff")
    return Gibbs(model, x_kernel=lambda m: ParticleGibbs(TDS(m, particles=particles, steps=steps)), theta_kernel=NUTS)


def gibbs_run(problem, chains: int, draws: int, warmup: int, particles: int, steps: int, seed: int,
              method: str = "gibbs", x_sampler: str = "tds"):
    """``chains`` Pyro chains of :func:`make_kernel`: theta ``(chains, draws)``, x ``(chains, draws, d)``,
    seconds."""
    from pyro.infer import MCMC

    pyro.set_rng_seed(seed)
    thetas, xs = [], []
    t0 = time.perf_counter()
    for _ in range(chains):
        kernel = make_kernel(method, problem.model, particles, steps, x_sampler)
        mcmc = MCMC(kernel, num_samples=draws, warmup_steps=warmup, disable_progbar=True)
        mcmc.run(y=problem.y)
        s = mcmc.get_samples()
        thetas.append(s[problem.theta_site].double())
        xs.append(s["x"].double())
    return torch.stack(thetas), torch.stack(xs), time.perf_counter() - t0


def bench_gibbs(kind: str, n_problems: int, chains: int, draws: int, warmup: int, particles: int, steps: int,
                out=None, cmd: str = "", method: str = "gibbs", x_sampler: str = "tds", first: int = 0) -> str:
    sched = VPSchedule.gmm_benchmark("mcgdiff")
    table = MarkdownTable("problem", "theta true", "exact mean ± std", "sampler mean (err / exact std)",
                          "exact 90 % interval", "sampler 90 % interval", "true in sampler 90 %", "R-hat", "ESS",
                          "x SW / floor", "x ESS", "x SW / floor at ESS", "x 90 % coverage", "s")
    inside, errs, rhats, covs, ratios, ess_ratios = [], [], [], [], [], []
    for seed in range(first, first + n_problems):
        pb = PROBLEMS[kind](d=8, d_y=4, seed=seed, schedule=sched)
        theta, x, secs = gibbs_run(pb, chains, draws, warmup, particles, steps, seed, method, x_sampler)
        ex = pb.exact
        mean = float(theta.mean())
        lo, hi = (float(q) for q in theta.flatten().quantile(torch.tensor([0.05, 0.95], dtype=torch.float64)))
        data = az.convert_to_dataset(theta.numpy())
        rhat, ess = float(az.rhat(data)["x"]), float(az.ess(data)["x"])
        g = torch.Generator().manual_seed(1000 + seed)
        flat = x.reshape(-1, x.shape[-1])
        _, ref = ex.sample(10_000, generator=g)
        _, same = ex.sample(flat.shape[0], generator=g)
        sw = float(sliced_wasserstein(flat, ref, generator=torch.Generator().manual_seed(0)))
        floor = float(sliced_wasserstein(same, ref, generator=torch.Generator().manual_seed(0)))
        # MCMC draws are correlated: beside the floor of as many exact draws, the floor of as many exact
        # draws as the chains' effective sample size of x (median bulk ESS over the coordinates)
        x_ess = int(az.ess(az.convert_to_dataset(x.numpy()))["x"].median())
        _, same_ess = ex.sample(max(x_ess, 2), generator=g)
        floor_ess = float(sliced_wasserstein(same_ess, ref, generator=torch.Generator().manual_seed(0)))
        cov = float(coverage(flat, ref[:2000]))
        err = (mean - ex.mean) / ex.std
        ok = lo <= pb.theta_true <= hi
        inside.append(ok), errs.append(abs(err)), rhats.append(rhat), covs.append(cov), ratios.append(sw / floor)
        ess_ratios.append(sw / floor_ess)
        table.add(seed, f"{pb.theta_true:.4f}", f"{ex.mean:.4f} ± {ex.std:.4f}", f"{mean:.4f} ({err:+.2f})",
                  f"[{ex.quantile(0.05):.4f}, {ex.quantile(0.95):.4f}]", f"[{lo:.4f}, {hi:.4f}]",
                  "yes" if ok else "no", f"{rhat:.4f}", f"{ess:.0f}", f"{sw:.3f} / {floor:.3f}", x_ess,
                  f"{sw / floor_ess:.2f}", f"{cov:.3f}",
                  f"{secs:.0f}")
    n = len(inside)
    summary = (f"\nSummary over {n} problems: true theta inside the sampler's 90 % interval {sum(inside)}/{n}; "
               f"mean |error| / exact std {sum(errs) / n:.3f}; max R-hat {max(rhats):.4f}; "
               f"mean x SW / floor {sum(ratios) / n:.2f} "
               f"({sum(ess_ratios) / n:.2f} against exact draws as many as the ESS of x); "
               f"mean x 90 % coverage {sum(covs) / n:.3f}.\n")
    what = "noise level" if kind == "noise" else "gain"
    if method == "pmmh":
        title = f"PMMH({'MCGDiff' if x_sampler == 'mcgdiff' else 'TDS'}) with an unknown {what}"
        how = "particle marginal MH on theta (random walk, scale adapted in warm-up to 30 % acceptance)"
    else:
        title = f"Gibbs(ParticleGibbs(TDS) + NUTS) with an unknown {what}"
        how = "ParticleGibbs for x, NUTS on theta (one step per iteration)"
    settings = (f"d = 8, d_y = 4, {chains} chains x {draws} draws after {warmup} warm-up iterations, "
                f"{'MCGDiff' if x_sampler == 'mcgdiff' else 'TDS'} {particles} particles x {steps} steps; {how}.")
    name = f"latents_{method}_{kind}"
    return write_result(out, name, title, cmd, settings + "\n\n" + str(table) + "\n" + summary)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kind", choices=sorted(PROBLEMS) + ["all"], default="all")
    p.add_argument("--method", choices=["gibbs", "pmmh"], default="gibbs")
    p.add_argument("--problems", type=int, default=3)
    p.add_argument("--first-problem", type=int, default=0,
                   help="seed of the first problem (to run problems in separate processes)")
    p.add_argument("--chains", type=int, default=8)
    p.add_argument("--draws", type=int, default=250)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--x-sampler", choices=["tds", "mcgdiff"], default="tds",
                   help="the SMC sampler of x (PMMH takes either; Gibbs takes ParticleGibbs(TDS))")
    p.add_argument("--particles", type=int, default=32)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest for these small tensors)")
    add_out_argument(p, "latents_<method>_<kind>")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    cmd = shlex.join(["python", "benchmarks/latents.py"] + argv)
    for kind in (sorted(PROBLEMS) if a.kind == "all" else [a.kind]):
        print(bench_gibbs(kind, a.problems, a.chains, a.draws, a.warmup, a.particles, a.steps, a.out, cmd, a.method,
                          a.x_sampler, a.first_problem))


if __name__ == "__main__":
    main()
