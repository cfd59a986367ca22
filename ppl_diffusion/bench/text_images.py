"""Text-conditioned solvers on held-out digits (shipped ``digits-text`` prior): inpainting with a large
hole where the prompt matters, solved with the right prompt, a wrong prompt and the null prompt.

Per method and prompt, over ``images`` held-out digits (one per class, classes spread over 0-9): PSNR /
SSIM of the posterior mean (``n`` draws) to the truth, the class accuracy of the posterior mean by the
shipped CLIP-like model's zero-shot classifier (against the true label; chance 0.1), network calls
and seconds per draw. Wrong prompt: the class ``(label + 5) mod 10``.

    python benchmarks/text_images.py [--images 5] [--n 4] [--steps 40]
"""
from __future__ import annotations

import argparse
import time

import torch

from .report import MarkdownTable, add_out_argument, write_result

__all__ = ["METHODS", "run", "main"]

#: label -> (registry name, options)
METHODS = {
    "latent_dps": ("latent_dps", {}),
    "p2l": ("p2l", {}),
    "treg (AN on)": ("treg", {}),
    "dreamsampler": ("dreamsampler", {}),
}


def _box(shape):
    from ..models.operators import Inpainting

    return Inpainting.box(shape, 4, 2, 10, 12)  # rows 4-13, columns 2-13 missing: 47 % of the pixels


def run(images: int = 5, n: int = 4, steps: int = 40, guidance: float = 3.0, noise_std: float = 0.05,
        methods=None) -> str:
    import pyro

    from ..metrics import psnr, ssim
    from ..models.latent import load_latent_prior
    from ..models.measurement import GaussianMeasurement
    from ..models.text import digit_prompt
    from ..inference.registry import build_solver
    from ..training.data import digits_dataset

    prior = load_latent_prior("digits-text")
    clip = prior.latent_denoiser.clip
    prompts = [digit_prompt(i) for i in range(10)]
    xt, yt = digits_dataset("test", return_labels=True)
    classes = torch.linspace(0, 9, images).round().long().tolist()
    idx = [int(torch.nonzero(yt == c)[0]) for c in classes]
    op = _box(xt.shape[1:])
    table = MarkdownTable("method", "prompt", "PSNR (dB)", "SSIM", "CLIP class accuracy of the mean",
                          "network calls / draw", "s / draw")
    for label in methods or METHODS:
        name, opts = METHODS[label]
        for kind in ("right", "wrong", "null"):
            ps, ss, hits, calls, secs = [], [], 0, 0.0, 0.0
            for j, i in enumerate(idx):
                lab = int(yt[i])
                x = xt[i]
                y = op(x) + noise_std * torch.randn(x.shape, generator=torch.Generator().manual_seed(i)) * op.mask
                if kind == "null":
                    cond = prior.condition("")
                else:
                    c = lab if kind == "right" else (lab + 5) % 10
                    cond = prior.condition(prompts[c], guidance=guidance)

                def model(y=None, cond=cond):
                    xx = pyro.sample("x", cond)
                    return pyro.sample("y", GaussianMeasurement(op, xx, noise_std), obs=y)

                t0 = time.perf_counter()
                out = build_solver(name, model, steps=steps, **opts).draw(n, y=y,
                                                                          generator=torch.Generator().manual_seed(j))
                secs += (time.perf_counter() - t0) / n
                mean = out.samples[0].mean(0)
                ps.append(float(psnr(mean, x)))
                ss.append(float(ssim(mean[None], x[None])))
                hits += int(clip.classify(mean[None], prompts)[0] == lab)
                calls += out.extra["network_calls_per_sample"]
            k = len(idx)
            table.add(label, kind, f"{sum(ps) / k:.2f}", f"{sum(ss) / k:.3f}", f"{hits / k:.2f}",
                      f"{calls / k:.0f}", f"{secs / k:.2f}")
    return str(table)


def figure(path, method: str = "treg (AN on)", images: int = 5, n: int = 4, steps: int = 40, guidance: float = 3.0,
           noise_std: float = 0.05) -> str:
    """One row per held-out digit: truth, the measurement (hole in grey), then the posterior means of
    ``method`` with the right prompt, a wrong prompt (label + 5) and the null prompt."""
    import pyro

    from ..inference.registry import build_solver
    from ..models.latent import load_latent_prior
    from ..models.measurement import GaussianMeasurement
    from ..models.text import digit_prompt
    from ..training.data import digits_dataset
    from ..training.loop import _save_grid

    prior = load_latent_prior("digits-text")
    name, opts = METHODS[method]
    xt, yt = digits_dataset("test", return_labels=True)
    op = _box(xt.shape[1:])
    tiles = []
    for j, c in enumerate(torch.linspace(0, 9, images).round().long().tolist()):
        i = int(torch.nonzero(yt == c)[0])
        x = xt[i]
        y = op(x) + noise_std * torch.randn(x.shape, generator=torch.Generator().manual_seed(i)) * op.mask
        tiles += [x, torch.where(op.mask.bool(), y, torch.zeros_like(y))]
        for cond in (prior.condition(digit_prompt(c), guidance=guidance),
                     prior.condition(digit_prompt((c + 5) % 10), guidance=guidance), prior.condition("")):
            def model(y=None, cond=cond):
                xx = pyro.sample("x", cond)
                return pyro.sample("y", GaussianMeasurement(op, xx, noise_std), obs=y)

            gen = torch.Generator().manual_seed(j)
            out = build_solver(name, model, steps=steps, **opts).draw(n, y=y, generator=gen)
            tiles.append(out.samples[0].mean(0))
    _save_grid(torch.stack(tiles), path, ncol=5)
    return str(path)


NOTES = """Shipped digits-text prior (caption-conditioned latent diffusion on 4x4x4 latents of the digits-latent
autoencoder; its "text" is generated captions: a class/attribute-conditional model with a text interface).
Measurement: the box rows 4-13 x columns 2-13 of the 16x16 digit missing (47 % of the pixels), sigma_y = 0.05.
Prompts "a handwritten digit <name>" at classifier-free guidance 3 (right: the true class; wrong: class
label + 5 mod 10), or the null prompt "" (the unconditional model). All methods at their defaults except the
step count; TReg's adaptive negation uses the shipped CLIP-like model, DreamSampler's target prompt is the
prior's prompt and its region the latent cells under the hole. CLIP class accuracy: zero-shot class of the
posterior mean against the true label (the CLIP-like model's own held-out accuracy is in
ppl_diffusion/weights/digits-text/training.json)."""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=5)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--guidance", type=float, default=3.0)
    ap.add_argument("--methods", nargs="*", default=None, help=f"subset of {list(METHODS)}")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--figure", default=None, help="only write the right / wrong / null prompt figure (PNG) here")
    add_out_argument(ap, "text_images")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.figure:
        print(figure(args.figure, images=args.images, n=args.n, steps=args.steps, guidance=args.guidance))
        return 0
    body = run(args.images, args.n, args.steps, args.guidance, methods=args.methods)
    cmd = f"python benchmarks/text_images.py --images {args.images} --n {args.n} --steps {args.steps}"
    write_result(args.out, "text_images", "Text-conditioned solvers on held-out digits (large-hole inpainting)",
                 cmd, body, NOTES)
    return 0
