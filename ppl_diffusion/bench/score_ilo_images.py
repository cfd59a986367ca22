"""Score-ILO on held-out digits with the shipped ``digits-latent`` prior and its layer score model
``digits-latent-ilo``, on the tasks of :mod:`.optimise_images` (sigma_y = 0.05): random inpainting
(70 % missing), 2x super-resolution, Gaussian deblur.

Rows: Score-ILO with the official constants (MAP mode, noise 0), its ablations (plain ILO: no score
pulls; CSGM through the decoder: the z round only, no pull) and the official sampling mode (noise
0.025). Per (variant, task), averaged over the images: PSNR / SSIM of the restart with the smallest
objective (selected without the ground truth), the mean and the spread (std) of the PSNR over
restarts, network calls per restart (score-model + decoder calls, each with a backward pass through
the decoder) and seconds per image.

Baseline rows (unless ``--no-baselines``): pixel-space DPS and DDRM on the shipped pixel prior
``digits`` (the same 16x16 held-out digits), on the same measurements y; their first two columns are
those of the posterior mean of ``--draws`` draws, the spread is over the draws.

    python benchmarks/score_ilo_images.py [--images 4] [--restarts 3] [--draws 8] [--no-baselines]
"""
from __future__ import annotations

import argparse
import shlex
import sys

import torch

from . import set_threads
from .images import tasks
from .report import MarkdownTable, add_out_argument, write_result

__all__ = ["VARIANTS", "BASELINES", "TASKS", "run", "main"]

TASKS = ("inpaint_random70", "sr2", "deblur_gauss")
#: label -> Score-ILO options (the official 300 + 300 iterations, Adam lr 0.05, tau 0.1)
VARIANTS = {
    "score_ilo (MAP, noise 0)": {},
    "ILO without score pulls": dict(z_temperature=0.0, h_temperature=0.0, score_model=None),
    "CSGM through the decoder (z round only)": dict(h_steps=0, z_temperature=0.0, score_model=None),
    "score_ilo sampling mode (noise 0.025)": dict(noise=0.025),
}
#: label -> (method, options) of the pixel-space baselines on the pixel prior ``digits``
BASELINES = {
    "dps (pixel prior, posterior mean)": ("dps", dict(steps=100)),
    "ddrm (pixel prior, posterior mean)": ("ddrm", dict(steps=50)),
}


def run(variants=None, n_images: int = 4, restarts: int = 3, seed: int = 0, noise_std: float = 0.05, out=None,
        cmd: str = "", baselines=tuple(BASELINES), draws: int = 8) -> str:
    from ..methods import run_method
    from ..models.zoo import heldout_images, load_prior
    from ..tasks import make_model
    from .optimise_images import draw_summary

    prior = load_prior("digits-latent")
    pixel = load_prior("digits") if baselines else None
    xs = heldout_images("digits-latent")[:n_images]
    if pixel is not None and tuple(pixel.event_shape) != tuple(xs.shape[1:]):
        raise ValueError(f"score_ilo_images: the pixel prior's event shape {tuple(pixel.event_shape)} is not the "
                         f"images' {tuple(xs.shape[1:])}; run with baselines=() (--no-baselines)")
    ops = tasks()
    table = MarkdownTable("variant", "task", "PSNR (best objective)", "SSIM (best objective)",
                          "PSNR mean over restarts", "PSNR std over restarts", "network calls / restart", "s / image")
    rows_of = [(label, prior, "score_ilo", VARIANTS[label], restarts, True) for label in variants or VARIANTS]
    rows_of += [(label, pixel) + BASELINES[label] + (draws, False) for label in baselines]
    for task in TASKS:
        op = ops[task]
        g = torch.Generator().manual_seed(seed)
        ys = [op(x) + noise_std * torch.randn(op.out_shape, generator=g, dtype=x.dtype) for x in xs]
        for label, p, method, options, n, point in rows_of:
            g = torch.Generator().manual_seed(seed + 1)
            model = make_model(p, op, noise_std)
            rows = []
            for x, y in zip(xs, ys):
                res = run_method(method, model, y, n, generator=g, options=options)
                calls = res.extra.get("network_calls_per_sample", res.nfe_per_sample)
                rows.append(draw_summary(res, x, point) + (calls, res.seconds))
            m = [sum(r[i] for r in rows) / len(rows) for i in range(6)]
            table.add(label, task, f"{m[0]:.2f}", f"{m[1]:.3f}", f"{m[2]:.2f}", f"{m[3]:.2f}", f"{m[4]:.0f}",
                      f"{m[5]:.1f}")
    notes = (f"Prior: shipped `digits-latent` (KL autoencoder 16x16 -> 4x4x4, latent UNet), layer score model: "
             "shipped `digits-latent-ilo` (UNet on the decoder's mid-block layer h, 32x4x4, trained on G1(Enc(x)) of "
             f"training digits). Images: `heldout_images('digits-latent')[:{n_images}]`; sigma_y = {noise_std}; "
             f"{restarts} restarts per image; the measurements y of each task are drawn once with seed {seed} and "
             f"shared by every row, the methods' generator is seeded {seed + 1}. Score-ILO: 300 iterations on z "
             "(through the whole decoder, "
             "pulled by the latent prior's own denoiser) then 300 on h (through the rest of the decoder, pulled by "
             "the layer score model), Adam lr 0.05, tau 0.1, t = 0.01, 1 hot PC step (snr 1e-4), z projected on its "
             "sphere, output clamped to [-1, 1]. Restarts are point estimates: 'best objective' is chosen without "
             "the ground truth, the PSNR std over restarts is NOT a posterior spread. Network calls: score-model "
             "evaluations (2 per iteration) plus decoder passes, each with a backward pass through the decoder. "
             "Wall time on 2 CPU cores shared with other jobs, 1 torch thread (noisy). Pixel-space solvers on the "
             "pixel prior for the same tasks: optimise_images.md.")
    if baselines:
        notes += (f" Baselines: {', '.join(BASELINES[b][0] + ' ' + str(BASELINES[b][1]) for b in baselines)} on the "
                  "shipped pixel prior `digits` (trained on the same digits; same 16x16 image space and held-out "
                  f"images), {draws} draws per image: their first two columns are the posterior mean of the draws, "
                  "the 'restarts' columns are over the draws (a posterior spread), network calls per draw are "
                  "denoiser evaluations (DPS: each with a backward pass).")
    return write_result(out, "score_ilo_images", "Score-ILO on held-out digits (digits-latent)", cmd, str(table), notes)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(prog="python benchmarks/score_ilo_images.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=4)
    p.add_argument("--restarts", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--variants", default=None, help=f"semicolon-separated subset of {list(VARIANTS)}")
    p.add_argument("--draws", type=int, default=8, help="draws per image of the DPS / DDRM baselines")
    p.add_argument("--no-baselines", action="store_true", help="leave out the DPS / DDRM rows")
    add_out_argument(p, "score_ilo_images")
    a = p.parse_args(argv)
    set_threads()
    variants = a.variants.split(";") if a.variants else None
    unknown = sorted(set(variants or []) - set(VARIANTS))
    if unknown:
        p.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    text = run(variants, a.images, a.restarts, a.seed, out=a.out, baselines=() if a.no_baselines else tuple(BASELINES),
               draws=a.draws,
               cmd=shlex.join(["python", "benchmarks/score_ilo_images.py"] + argv))
    print(text)
    return text


if __name__ == "__main__":  # pragma: no cover
    main()
