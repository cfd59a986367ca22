"""The blind family against an exact posterior: problem E1 (:func:`~ppl_diffusion.models.blind.blind_gmm_problem`).

``x`` ~ the 25-component benchmark mixture in R^8 (a 1-D circular signal), ``phi`` ~ a two-component
1-D mixture (means 0.1, 0.22, std 0.03) whose exact denoiser is the parameter's diffusion prior,
``y = [phi, 1 - 2 phi, phi] (*) x + n`` (circular, ``sigma_y = 1``); ``p(phi | y)`` by quadrature
(512 points) and ``p(x | y)`` as the grid mixture of exact conditionals. Per problem and method:
the posterior-mean error of phi in units of the exact posterior std, whether the method's central
90 % interval of phi holds the true phi (coverage over the problems; the exact posterior's own
coverage beside it), the sliced Wasserstein distance of x to exact joint draws and the floor (two
exact sets of the same size). Blind RED-Diff returns point estimates (one per restart): its phi
error is that of the restarts' median, its "interval" the restarts' spread, and its x SW measures
how far point estimates are from the posterior (not a sampler's error).

``python benchmarks/blind_e1.py [--problems 20] [--draws 128]`` -> ``benchmarks/results/blind_e1.md``.
"""
from __future__ import annotations

import argparse
import time

import torch

from .report import MarkdownTable, add_out_argument, write_result

__all__ = ["run", "main", "METHODS"]

#: method -> (class path, options) as benchmarked
METHODS = {
    "gibbs_ddrm": ("guides.gibbs_ddrm:GibbsDDRM", dict(steps=100, langevin_steps=20)),
    "gibbs_ddrm (ddrm etas)": ("guides.gibbs_ddrm:GibbsDDRM",
                               dict(steps=100, langevin_steps=20, eta_b=1.0, eta_c=0.6, eta_d=0.8)),
    "blind_dps": ("guides.blind_dps:BlindDPS", dict(steps=100, scale=1.0, theta_scale=0.001)),
    "blind_red_diff (prior)": ("variational.blind_red_diff:BlindREDDiff", dict(steps=300, lr=1.0, theta_reg="prior")),
    "blind_red_diff (diffusion)": ("variational.blind_red_diff:BlindREDDiff",
                                   dict(steps=300, lr=1.0, theta_reg="diffusion", theta_lr=0.003)),
}


def _load(target):
    import importlib

    mod, cls = target.split(":")
    return getattr(importlib.import_module(f"ppl_diffusion.inference.{mod}"), cls)


def run(problems: int = 20, draws: int = 128, methods=None, seed: int = 0):
    from ..metrics import sliced_wasserstein
    from ..models.blind import blind_gmm_problem

    torch.set_num_threads(1)
    methods = list(methods or METHODS)
    rows = {m: [] for m in methods}
    exact_cover, floors = [], []
    for p in range(problems):
        pb = blind_gmm_problem(seed=p)
        ex = pb.exact
        lo, hi = ex.quantile(0.05), ex.quantile(0.95)
        exact_cover.append(lo <= pb.theta_true <= hi)
        g = torch.Generator().manual_seed(1000 + p)
        _, xa = ex.sample(draws, generator=g)
        _, xb = ex.sample(draws, generator=g)
        floors.append(float(sliced_wasserstein(xa, xb)))
        for m in methods:
            target, opts = METHODS[m]
            t0 = time.perf_counter()
            n = 16 if "red_diff" in m else draws
            d = _load(target)(pb.model, **opts).draw(n, y=pb.y, generator=torch.Generator().manual_seed(seed + p))
            sec = time.perf_counter() - t0
            phi = d.extra["theta"]["phi"].reshape(-1).to(torch.float64)
            est = float(phi.median()) if "red_diff" in m else float(phi.mean())
            q = torch.quantile(phi, torch.tensor([0.05, 0.95], dtype=phi.dtype))
            rows[m].append(dict(err=(est - ex.mean) / ex.std, cover=bool(q[0] <= pb.theta_true <= q[1]),
                                sw=float(sliced_wasserstein(d.samples[0].to(torch.float64), xa)),
                                std_ratio=float(phi.std()) / ex.std, sec=sec, nfe=d.nfe_per_sample))
            print(f"problem {p} {m}: phi {est:.4f} (exact {ex.mean:.4f} +- {ex.std:.4f}, true {pb.theta_true:.4f}) "
                  f"err {rows[m][-1]['err']:+.2f} std, SW {rows[m][-1]['sw']:.2f} (floor {floors[-1]:.2f}), "
                  f"{sec:.1f}s", flush=True)
    table = MarkdownTable("method", "phi: median abs(mean error) [exact std]", "phi: max abs(error)",
                          "90 % interval holds true phi", "phi spread / exact std (median)",
                          "x SW to exact (median)", "SW floor (median)", "NFE / sample", "s / run")
    med = lambda v: float(torch.tensor(v).median())  # noqa: E731
    for m in methods:
        r = rows[m]
        table.add(m, f"{med([abs(x['err']) for x in r]):.2f}", f"{max(abs(x['err']) for x in r):.2f}",
                  f"{sum(x['cover'] for x in r)}/{len(r)}", f"{med([x['std_ratio'] for x in r]):.2f}",
                  f"{med([x['sw'] for x in r]):.2f}", f"{med(floors):.2f}", f"{med([x['nfe'] for x in r]):.0f}",
                  f"{med([x['sec'] for x in r]):.1f}")
    table.add("exact posterior", "0", "0", f"{sum(exact_cover)}/{problems}", "1.00", f"{med(floors):.2f} (floor)",
              f"{med(floors):.2f}", "-", "-")
    return table, rows


def run_reference(problems: int = 20, draws: int = 60, chains: int = 2, particles: int = 32, steps: int = 30):
    """The asymptotically exact reference on the same problems: ``Gibbs(ParticleGibbs(TDS), NUTS)``
    (x by conditional SMC, phi by NUTS on its density), ``chains`` x ``draws`` after 50 warm-up."""
    from ..metrics import sliced_wasserstein
    from ..models.blind import blind_gmm_problem
    from .latents import gibbs_run

    torch.set_num_threads(1)
    table = MarkdownTable("problem", "phi mean error [exact std]", "90 % interval holds true phi",
                          "phi spread / exact std", "x SW to exact", "SW floor", "s")
    for p in range(problems):
        pb = blind_gmm_problem(seed=p)
        ex = pb.exact
        th, xs, sec = gibbs_run(pb, chains=chains, draws=draws, warmup=50, particles=particles, steps=steps, seed=p)
        phi = th.reshape(-1)
        q = torch.quantile(phi, torch.tensor([0.05, 0.95], dtype=phi.dtype))
        g = torch.Generator().manual_seed(1000 + p)
        _, xa = ex.sample(len(phi), generator=g)
        _, xb = ex.sample(len(phi), generator=g)
        table.add(p, f"{(float(phi.mean()) - ex.mean) / ex.std:+.2f}", bool(q[0] <= pb.theta_true <= q[1]),
                  f"{float(phi.std()) / ex.std:.2f}", f"{float(sliced_wasserstein(xs.reshape(len(phi), -1), xa)):.2f}",
                  f"{float(sliced_wasserstein(xb, xa)):.2f}", f"{sec:.0f}")
    return table


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python benchmarks/blind_e1.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--problems", type=int, default=20)
    parser.add_argument("--draws", type=int, default=128)
    parser.add_argument("--methods", nargs="*", default=None, choices=list(METHODS))
    parser.add_argument("--reference", action="store_true",
                        help="run the Gibbs(ParticleGibbs(TDS), NUTS) reference instead (blind_e1_gibbs.md)")
    add_out_argument(parser, "blind_e1")
    args = parser.parse_args(argv)
    cmd = "python benchmarks/blind_e1.py " + " ".join(argv or [])
    if args.reference:
        table = run_reference(args.problems, args.draws)
        out = args.out if args.out != "benchmarks/results" else "benchmarks/results/blind_e1_gibbs.md"
        write_result(out, "blind_e1_gibbs", "Gibbs(ParticleGibbs(TDS), NUTS) reference on problem E1", cmd,
                     str(table), "2 chains x --draws draws after 50 warm-up, TDS 32 particles x 30 steps; x SW "
                     "against as many exact draws, the floor between two exact sets of that size.")
        return
    table, _ = run(args.problems, args.draws, args.methods)
    notes = ("Problem E1 (ppl_diffusion.models.blind.blind_gmm_problem, seeds 0..N-1): 3-tap circular blur "
             "[phi, 1-2phi, phi] of a d = 8 signal with the 25-component benchmark mixture prior, sigma_y = 1, "
             "phi ~ 0.5 N(0.1, 0.03^2) + 0.5 N(0.22, 0.03^2); exact p(phi | y) by quadrature on 512 points. "
             "Blind RED-Diff rows: 16 restarts (point estimates); their 'interval' is the restarts' spread. "
             "1 CPU thread on a shared machine.")
    write_result(args.out, "blind_e1", "Blind family on the exact blind GMM problem E1", cmd, str(table), notes)


if __name__ == "__main__":
    main()
