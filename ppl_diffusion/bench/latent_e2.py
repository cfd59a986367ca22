"""The exact latent check E2: every latent solver against the exact posterior of a linear
"autoencoder" with a Gaussian-mixture latent prior (:mod:`ppl_diffusion.models.latent_gmm`).

Per configuration (solver + options) and E2 variant (a: orthonormal decoder, b: ill-conditioned,
c: oblique encoder), over ``problems`` seeds: the sliced Wasserstein distance of ``n`` draws (read in
``z = Enc(x)``, exact on the decoder's range) to ``n`` exact posterior draws, with the noise floor
(two exact sets) beside it; the 90 % coverage (fraction of exact posterior draws' coordinates inside
the solver's marginal 90 % intervals: 0.90 when the marginals match); network calls per draw
(latent denoiser + decoder + encoder) and seconds per draw. Extra rows settle the method-specific
questions: PSLD with and without the gluing term, ReSample with the official code's pseudo-x0,
MPGD's autoencoder variants and STSL at ``gamma in {-g, 0, +g}`` (the sign question).

    python benchmarks/latent_e2.py [--problems 3] [--n 300] [--steps 100]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from .report import MarkdownTable, add_out_argument, write_result

__all__ = ["CONFIGS", "run_config", "run", "main"]

#: label -> (registry name, options); the benchmark's step count is added to every entry
CONFIGS = {
    "prior": (None, {}),  # the latent prior's own draws (no measurement): the distance to beat
    "latent_dps": ("latent_dps", {}),
    "psld": ("psld", {}),
    "psld (gamma=0)": ("psld", {"gamma": 0.0}),
    "resample": ("resample", {"interval": 5}),
    "resample (legacy pseudo-x0)": ("resample", {"interval": 5, "legacy_pseudo_x0": True}),
    "mpgd": ("mpgd", {}),
    "mpgd (ae)": ("mpgd", {"variant": "ae"}),
    "mpgd (z)": ("mpgd", {"variant": "z"}),
    "stsl": ("stsl", {}),
    "stsl (gamma=+0.1)": ("stsl", {"gamma": 0.1}),
    "stsl (gamma=0)": ("stsl", {"gamma": 0.0}),
    "stsl (gamma=-0.1)": ("stsl", {"gamma": -0.1}),
}


def run_config(label: str, variant: str, seed: int, n: int, steps: int) -> dict:
    from ..inference.registry import build_solver
    from ..metrics import coverage, sliced_wasserstein
    from ..models.latent_gmm import latent_gmm_problem

    name, opts = CONFIGS[label]
    pb = latent_gmm_problem(variant, seed=seed)
    g = torch.Generator().manual_seed(1000 + seed)
    ref = pb.posterior.sample(n, generator=g)
    ref2 = pb.posterior.sample(n, generator=g)
    sw_gen = torch.Generator().manual_seed(7)
    floor = float(sliced_wasserstein(ref, ref2, generator=sw_gen))
    if name is None:
        t0 = time.perf_counter()
        z = pb.latent_prior.sample(n, generator=torch.Generator().manual_seed(seed))
        out = None
    else:
        solver = build_solver(name, pb.model(), steps=steps, **opts)
        t0 = time.perf_counter()
        out = solver.draw(n, y=pb.y, generator=torch.Generator().manual_seed(seed))
        z = pb.autoencoder.encode(out.samples[0])
    sec = (time.perf_counter() - t0) / n
    sw = float(sliced_wasserstein(z, ref, generator=torch.Generator().manual_seed(7)))
    cov = float(coverage(z, ref2, 0.9))
    calls = 0.0 if out is None else out.extra["network_calls_per_sample"]
    return dict(sw=sw, floor=floor, coverage=cov, calls=calls, nfe=0.0 if out is None else out.nfe_per_sample,
                seconds=sec)


def run(configs=None, variants=("a", "b", "c"), problems: int = 3, n: int = 300, steps: int = 100) -> str:
    table = MarkdownTable("method", "E2 variant", "sliced W (median)", "noise floor", "W / floor",
                          "90 % coverage", "network calls / draw", "ms / draw")
    for label in configs or CONFIGS:
        for v in variants:
            rs = [run_config(label, v, s, n, steps) for s in range(problems)]
            sw = statistics.median(r["sw"] for r in rs)
            fl = statistics.median(r["floor"] for r in rs)
            table.add(label, v, f"{sw:.3f}", f"{fl:.3f}", f"{sw / fl:.1f}",
                      f"{statistics.mean(r['coverage'] for r in rs):.2f}", f"{rs[0]['calls']:.0f}",
                      f"{1e3 * statistics.mean(r['seconds'] for r in rs):.1f}")
    return str(table)


NOTES = """E2: d = 16 pixels, k = 4 latent dims, the 25-component benchmark mixture scaled by 1/4 as the latent
prior (exact denoiser, library VP schedule), an inpainting mask keeping 6 of 16 pixels, sigma_y = 0.5;
variants a (orthonormal W), b (W with singular values 0.1..10), c (oblique encoder E = W^+ + N, N W = 0).
Sliced W (1000 directions) between the solver's draws read as z = Enc(x) and exact posterior draws,
median over the problems; noise floor = two exact sets of the same size. Coverage: fraction of exact
posterior draws' coordinates inside the solver's marginal 90 % intervals (0.90 when the marginals match).
Network calls count latent-denoiser, decoder and encoder evaluations per draw (ReSample's inner solvers
are decoder calls). All solvers at their default options except the step count (and ReSample's
consistency interval 5, its toy setting); no per-problem tuning."""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problems", type=int, default=3)
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--configs", nargs="*", default=None, help=f"subset of {list(CONFIGS)}")
    ap.add_argument("--threads", type=int, default=1)
    add_out_argument(ap, "latent_e2")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    body = run(args.configs, problems=args.problems, n=args.n, steps=args.steps)
    cmd = f"python benchmarks/latent_e2.py --problems {args.problems} --n {args.n} --steps {args.steps}"
    write_result(args.out, "latent_e2", "Latent solvers on the exact linear-autoencoder problem E2", cmd, body, NOTES)
    return 0
