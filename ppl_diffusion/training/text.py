"""Training of the shipped caption-conditioned latent prior ``digits-text`` and its CLIP-like model.

* The autoencoder is the shipped ``digits-latent`` one (frozen; its latents and scale factor are reused).
* Captions (honest toy "text"): label + measured stroke thickness / slant terciles, random template,
  each attribute dropped with probability 1/2, and 10 % of captions replaced by the null prompt ``""``
  for classifier-free guidance (Ho & Salimans 2022, Sec. 3.2); see :mod:`ppl_diffusion.models.text`.
* Denoiser: a diffusers ``UNet2DConditionModel`` (channels (32, 64), cross-attention width 32) and a
  :class:`~ppl_diffusion.models.text.TextEncoder` (2 transformer layers, width 32) trained jointly with
  the epsilon loss under the library's DDPM schedule, EMA of the weights; training latents are the
  encoder means of ``copies`` augmented copies of each training digit.
* CLIP-like model (:class:`~ppl_diffusion.models.clip.CaptionCLIP`, width 32 = the text width) trained
  with symmetric InfoNCE on (augmented image, full caption) pairs.

``training.json`` records the command, wall times, the CLIP-like model's zero-shot class accuracy on
the 216 held-out digits, and how often samples follow their prompt (class of decoded samples at
``w = 1`` and ``w = 3`` by a logistic-regression classifier trained on the training pixels, and by the
CLIP-like model). Command::

    python -m ppl_diffusion.training.text --out ppl_diffusion/weights/digits-text --threads 1
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import time
from pathlib import Path

import torch

from ..models.text import (DIGIT_NAMES, VOCABULARY, CaptionTokenizer, TextEncoder, attribute_bins, caption,
                           digit_attributes, digit_prompt)
from .unet import SCHEDULER_CONFIG

__all__ = ["build_text_unet", "random_captions", "train_text_prior", "main"]


def build_text_unet(latent_channels: int = 4, size: int = 4, channels=(32, 64), width: int = 32):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=size, in_channels=latent_channels, out_channels=latent_channels,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=tuple(channels), layers_per_block=1, cross_attention_dim=width, attention_head_dim=8,
        norm_num_groups=8)


def random_captions(labels, thick, slant, g: torch.Generator, p_null: float = 0.1) -> list[str]:
    """One caption per image (random template, each attribute kept with probability 1/2, null prompt
    with probability ``p_null``)."""
    n = len(labels)
    u = torch.rand(n, 3, generator=g)
    tmpl = torch.randint(0, 4, (n,), generator=g)
    out = []
    for i in range(n):
        if u[i, 0] < p_null:
            out.append("")
            continue
        out.append(caption(int(labels[i]), int(thick[i]) if u[i, 1] < 0.5 else None,
                           int(slant[i]) if u[i, 2] < 0.5 else None, int(tmpl[i])))
    return out


def _augmented(copies: int, g: torch.Generator):
    from .data import _digits_raw, _digits_split_indices, _random_affine_resample, _upsample_digits

    x8, y = _digits_raw()
    tr, _ = _digits_split_indices(y)
    x8, lab = x8[torch.as_tensor(tr)], torch.as_tensor(y[tr])
    xs = [_upsample_digits(x8, 16)] + [_random_affine_resample(x8, 16, g) for _ in range(copies - 1)]
    return torch.cat(xs), lab.repeat(copies)


def _pixel_classifier(seed: int = 0):
    from sklearn.linear_model import LogisticRegression

    from .data import digits_dataset

    x, y = digits_dataset("train", return_labels=True)
    clf = LogisticRegression(max_iter=2000, C=0.5, random_state=seed).fit(x.flatten(1).numpy(), y.numpy())
    return clf


def train_text_prior(out_dir, *, autoencoder="digits-latent", seed: int = 0, minutes: float = 7.0,
                     clip_minutes: float = 1.5, copies: int = 8, batch_size: int = 64, lr: float = 1e-3,
                     threads: int | None = None, verbose: bool = True, command: str | None = None) -> dict:
    from ..models.clip import CaptionCLIP, clip_loss
    from ..models.latent import LatentDiffusionPrior, load_autoencoder
    from ..models.text import UNetTextDenoiser
    from ..models.text_prior import save_text_latent_prior
    from ..models.zoo import prior_folder
    from .data import digits_dataset
    from .loop import _lr_factor, _save_grid

    if threads:
        torch.set_num_threads(int(threads))
    torch.manual_seed(seed)
    log = print if verbose else (lambda *a, **k: None)
    g = torch.Generator().manual_seed(seed)
    ae = load_autoencoder(prior_folder(autoencoder))
    x, lab = _augmented(copies, g)
    mass, sl = digit_attributes(x)
    m_edges = torch.quantile(mass[: len(mass) // copies], torch.tensor([1 / 3, 2 / 3])).tolist()
    s_edges = torch.quantile(sl[: len(sl) // copies], torch.tensor([1 / 3, 2 / 3])).tolist()
    thick, slant = attribute_bins(mass, m_edges), attribute_bins(sl, s_edges)
    with torch.no_grad():
        z = torch.cat([ae.encode(x[i: i + 512]) for i in range(0, len(x), 512)]).float()
    tok = CaptionTokenizer(VOCABULARY, 8)
    enc = TextEncoder(len(tok), 8, 32, 2, 4)
    unet = build_text_unet(z.shape[1], z.shape[-1])
    abar = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0).float()
    params = list(unet.parameters()) + list(enc.parameters())
    n_par = sum(p.numel() for p in params)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    ema_u, ema_e = copy.deepcopy(unet).requires_grad_(False), copy.deepcopy(enc).requires_grad_(False)
    log(f"[text] {n_par / 1e6:.2f}M params, {len(z)} latents, budget {minutes} min", flush=True)
    t0, step, curve, run, k = time.perf_counter(), 0, [], 0.0, 0
    budget = 60 * minutes
    est_total = None
    while True:
        el = time.perf_counter() - t0
        if el > budget:
            break
        if step == 200:
            est_total = int(budget / (el / 200))
        f = _lr_factor(step, 200, est_total or 10**9)
        for pg in opt.param_groups:
            pg["lr"] = lr * f
        idx = torch.randint(0, len(z), (batch_size,), generator=g)
        caps = random_captions(lab[idx], thick[idx], slant[idx], g)
        c = enc(tok(caps))
        ti = torch.randint(0, 1000, (batch_size,), generator=g)
        a = abar[ti].sqrt()[:, None, None, None]
        s = (1 - abar[ti]).sqrt()[:, None, None, None]
        eps = torch.randn(z[idx].shape, generator=g)
        pred = unet(a * z[idx] + s * eps, ti, encoder_hidden_states=c).sample
        loss = (pred - eps).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        d = min(0.999, (1 + step) / (10 + step))
        with torch.no_grad():
            for m, em in ((unet, ema_u), (enc, ema_e)):
                for p, q in zip(m.parameters(), em.parameters()):
                    q.mul_(d).add_(p.detach(), alpha=1 - d)
        run, k, step = run + float(loss.detach()), k + 1, step + 1
        if step % 250 == 0:
            curve.append([step, round(run / k, 5)])
            log(f"[text] step {step} loss {run / k:.4f} {time.perf_counter() - t0:.0f}s", flush=True)
            run, k = 0.0, 0
    unet_time = time.perf_counter() - t0

    # CLIP-like model ---------------------------------------------------------------------------
    clip = CaptionCLIP(tok, 32, 1, 32)
    copt = torch.optim.AdamW(clip.parameters(), lr=2e-3, weight_decay=0.0)
    t1, cstep = time.perf_counter(), 0
    while time.perf_counter() - t1 < 60 * clip_minutes:
        idx = torch.randint(0, len(x), (128,), generator=g)
        caps = random_captions(lab[idx], thick[idx], slant[idx], g, p_null=0.0)
        loss = clip_loss(clip, x[idx], caps)
        copt.zero_grad(set_to_none=True)
        loss.backward()
        copt.step()
        cstep += 1
    clip.eval().requires_grad_(False)
    clip_time = time.perf_counter() - t1
    xt, yt = digits_dataset("test", return_labels=True)
    prompts = [digit_prompt(i) for i in range(10)]
    zs_acc = float((clip.classify(xt, prompts) == yt).float().mean())
    log(f"[text] CLIP-like: {cstep} steps, zero-shot held-out accuracy {zs_acc:.3f}", flush=True)

    folder = save_text_latent_prior(ae.vae, ema_u, ema_e, tok, SCHEDULER_CONFIG, out_dir, clip=clip)
    # prompt following -----------------------------------------------------------------------------
    den = UNetTextDenoiser(ema_u, ema_e, tok, SCHEDULER_CONFIG, clip=clip)
    prior = LatentDiffusionPrior(ae, den, steps=50, eta=1.0)
    clf = _pixel_classifier(seed)
    follow, grids = {}, []
    for w in (1.0, 3.0):
        hits_clf, hits_clip = 0, 0
        for c_ in range(10):
            xs = prior.condition(prompts[c_], guidance=w).sample((20,), generator=torch.Generator().manual_seed(c_))
            hits_clf += int((clf.predict(xs.flatten(1).numpy()) == c_).sum())
            hits_clip += int((clip.classify(xs, prompts) == c_).sum())
            if w == 3.0:
                grids.append(xs[:8])
        follow[f"w={w:g}"] = {"classifier_accuracy": hits_clf / 200, "clip_accuracy": hits_clip / 200}
    log(f"[text] prompt following: {follow}", flush=True)
    _save_grid(torch.cat(grids), Path(folder) / "samples.png", ncol=8)
    info = {
        "model": "caption-conditioned latent diffusion (UNet2DConditionModel + TextEncoder), digits",
        "honesty": "captions are generated from the digit label and two measured attributes (thickness, slant "
                   "terciles); a class/attribute-conditional model with a text interface, no language understanding",
        "autoencoder": f"frozen, from {autoencoder}",
        "vocabulary": list(VOCABULARY), "token_length": 8, "digit_names": list(DIGIT_NAMES),
        "thickness_edges_mass": m_edges, "slant_edges": s_edges,
        "latents": int(len(z)), "augmented_copies": copies, "parameters": int(n_par), "steps": step,
        "batch_size": batch_size, "lr": lr, "null_prompt_rate": 0.1, "ema": 0.999,
        "wall_time_train_s": round(unet_time, 1), "loss_curve": curve,
        "clip": {"width": 32, "steps": cstep, "wall_time_s": round(clip_time, 1),
                 "zero_shot_heldout_accuracy": zs_acc, "prompts": "a handwritten digit <name>",
                 "heldout_images": int(len(yt)), "chance": 0.1},
        "prompt_following": {"samples_per_class": 20, "sampler": "50 DDPM steps",
                             "classifier": "logistic regression on the training pixels", **follow},
        "seed": seed, "threads": torch.get_num_threads(), "python": platform.python_version(),
        "torch": torch.__version__,
        "command": command or "python -m ppl_diffusion.training.text --out " + str(out_dir),
    }
    (Path(folder) / "training.json").write_text(json.dumps(info, indent=1) + "\n")
    return info


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ppl_diffusion.training.text", description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--autoencoder", default="digits-latent")
    ap.add_argument("--minutes", type=float, default=7.0, help="wall-time budget of the denoiser training")
    ap.add_argument("--clip-minutes", type=float, default=1.5)
    ap.add_argument("--copies", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args(argv)
    cmd = "python -m ppl_diffusion.training.text " + " ".join(sys.argv[1:] if argv is None else argv)
    train_text_prior(a.out, autoencoder=a.autoencoder, seed=a.seed, minutes=a.minutes, clip_minutes=a.clip_minutes,
                     copies=a.copies, batch_size=a.batch_size, threads=a.threads, command=cmd)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

