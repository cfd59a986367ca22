"""Latent solvers on held-out images of a shipped latent prior, beside pixel-space DPS and DDRM on the
shipped pixel prior of the same data.

Per (method, task), over ``images`` held-out images with ``n`` draws each: PSNR / SSIM of the posterior
mean, coverage of the pixel-wise 90 % intervals, seconds per draw and network calls per draw (latent
solvers: latent denoiser + decoder + encoder evaluations; pixel solvers: denoiser evaluations). A
method that refuses the task's operator (PSLD needs ``A A^T = c I``) gets a "refused" row.

    python benchmarks/latent_images.py --prior digits-latent [--images 3] [--n 16] [--steps 100]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from .report import MarkdownTable, add_out_argument, write_result

__all__ = ["METHODS", "latent_tasks", "run", "main"]

#: label -> (registry name, options, "latent" | "pixel")
METHODS = {
    "latent_dps": ("latent_dps", {}, "latent"),
    "psld": ("psld", {}, "latent"),
    "resample": ("resample", {"interval": 5, "latent_iters": 50}, "latent"),
    "mpgd": ("mpgd", {}, "latent"),
    "stsl": ("stsl", {}, "latent"),
    "dps (pixel prior)": ("dps", {"eta": 1.0}, "pixel"),
    "ddrm (pixel prior)": ("ddrm", {}, "pixel"),
}


def latent_tasks(shape, dtype=torch.float32) -> dict:
    """Box inpainting (the centre half), 2x super-resolution (average pooling), Gaussian deblurring."""
    from ..models import operators as O

    H = shape[-1]
    return {"inpaint_box": O.Inpainting.box(shape, H // 4, H // 4, H // 2, H // 2, dtype=dtype),
            "sr2": O.SuperResolution(2, shape, dtype=dtype),
            "deblur_gauss": O.Blur.gaussian(shape, 1.0, dtype=dtype)}


def _run_one(label, prior, op, x_true, n, steps, noise_std, seed):
    from ..evaluation import evaluate
    from ..inference.registry import build_solver
    from ..tasks import make_model

    name, opts, _ = METHODS[label]
    model = make_model(prior, op, noise_std)
    g = torch.Generator().manual_seed(seed)
    y = op(x_true) + noise_std * torch.randn(op.out_shape, generator=g, dtype=x_true.dtype)
    try:
        solver = build_solver(name, model, steps=steps, **opts)
    except ValueError as e:
        return {"refused": str(e).split(";")[0]}
    t0 = time.perf_counter()
    out = solver.draw(n, y=y, generator=torch.Generator().manual_seed(seed + 1))
    sec = (time.perf_counter() - t0) / n
    r = evaluate(out.samples[0], x_true)
    calls = out.extra.get("network_calls_per_sample", out.nfe_per_sample)
    return dict(psnr=r["psnr"], ssim=r["ssim"], coverage=r["coverage90"], calls=calls, seconds=sec)


def run(prior_name: str = "digits-latent", pixel_name: str | None = None, methods=None, tasks=None,
        images: int = 3, n: int = 16, steps: int = 100, noise_std: float = 0.05) -> str:
    from ..models.zoo import heldout_images, load_prior

    pixel_name = pixel_name or prior_name.replace("-latent", "")
    latent = load_prior(prior_name)
    pixel = load_prior(pixel_name)
    xs = heldout_images(prior_name)[:images]
    all_tasks = latent_tasks(tuple(xs.shape[1:]))
    table = MarkdownTable("method", "task", "PSNR", "SSIM", "90 % coverage", "network calls / draw", "s / draw")
    for label in methods or METHODS:
        for task in tasks or all_tasks:
            prior = latent if METHODS[label][2] == "latent" else pixel
            rs = [_run_one(label, prior, all_tasks[task], xs[i], n, steps, noise_std, 100 * i) for i in range(len(xs))]
            if "refused" in rs[0]:
                table.add(label, task, "refused", "", "", "", rs[0]["refused"][:90])
                continue
            m = {k: statistics.mean(r[k] for r in rs) for k in ("psnr", "ssim", "coverage", "calls", "seconds")}
            table.add(label, task, f"{m['psnr']:.2f}", f"{m['ssim']:.3f}", f"{m['coverage']:.2f}",
                      f"{m['calls']:.0f}", f"{m['seconds']:.3f}")
    return str(table)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prior", default="digits-latent")
    ap.add_argument("--images", type=int, default=3)
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--noise-std", type=float, default=0.05)
    ap.add_argument("--methods", nargs="*", default=None, help=f"subset of {list(METHODS)}")
    ap.add_argument("--threads", type=int, default=1)
    add_out_argument(ap, "latent_images_<prior>")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    body = run(args.prior, methods=args.methods, images=args.images, n=args.n, steps=args.steps,
               noise_std=args.noise_std)
    cmd = (f"python benchmarks/latent_images.py --prior {args.prior} --images {args.images} --n {args.n} "
           f"--steps {args.steps} --noise-std {args.noise_std}")
    notes = (f"Held-out images of {args.prior!r} (the first {args.images}), sigma_y = {args.noise_std}, {args.n} draws "
             f"per image, {args.steps} steps for every method, default options otherwise (ReSample: consistency every "
             "5 steps, at most 50 AdamW iterations in its latent-space solver instead of 500, to fit the CPU "
             "budget). Pixel-space DPS (eta = 1) and DDRM run on the pixel prior of the same data. PSNR / SSIM of the "
             "posterior mean; coverage: fraction of pixels inside the draws' equal-tailed 90 % interval; network "
             "calls: latent denoiser + decoder + encoder evaluations per draw (pixel solvers: denoiser evaluations). "
             "Means over the images.")
    name = f"latent_images_{args.prior.replace('-latent', '')}"
    out = args.out if args.out != "benchmarks/results" else args.out
    write_result(out, name, f"Latent solvers on held-out {args.prior} images", cmd, body, notes)
    return 0
