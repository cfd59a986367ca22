"""Training of the intermediate-layer score model of Score-ILO (``digits-latent-ilo``).

Score-guided ILO (Daras, Dagan, Dimakis, Daskalakis, ICML 2022) trains VP score networks on the
activations of a generator's intermediate layer; its "inverted latents" variant (sgilo's ``layerN``
networks) uses the layer activations of real images. Here the generator is the decoder of a shipped
latent prior split at ``layer`` (:func:`ppl_diffusion.models.ilo.decoder_split`), and the training
data are ``h = G1(s_f Enc_mean(x))`` of augmented training images, normalised to ``[-1, 1]`` with
their fixed min / max (as sgilo normalises each layer). The network is a small ``UNet2DModel`` on
``h``'s channels, trained with the library's DDPM schedule (linear betas 1e-4..0.02, 1000 steps,
epsilon prediction) and an EMA of its weights. Command::

    python -m ppl_diffusion.training.ilo --prior digits-latent --out ppl_diffusion/weights/digits-latent-ilo --threads 1

``training.json`` records the command, the wall time, the held-out denoising loss, and the
nearest-neighbour distance of ``G2`` of the score model's samples to the training images (beside
the held-out images' own distance), the criterion of the other shipped priors.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from .data import _make_source
from .loop import _denoising_loss, _nn_dist, _save_grid, fit_epsilon_on_tensor
from .unet import SCHEDULER_CONFIG, build_unet, ddpm_sample

__all__ = ["train_ilo_score", "main"]


def _layer_data(split, ae, x: torch.Tensor, batch: int = 512) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([split.g1(ae.encode(x[i: i + batch])) for i in range(0, x.shape[0], batch)])


def train_ilo_score(prior: str = "digits-latent", out_dir=None, *, layer: str = "mid_block", steps: int = 6000,
                    batch_size: int = 64, lr: float = 1e-3, channels=(64, 64), copies: int = 16,
                    ema_decay: float = 0.999, seed: int = 0, threads: int | None = None, num_samples: int = 64,
                    sample_steps: int = 250, verbose: bool = True, command: str | None = None) -> dict:
    """Train the score model on layer ``layer`` of the decoder of the shipped latent prior ``prior``
    and save it (``unet/``, ``scheduler/``, ``ilo.json``, ``training.json``, ``samples.png``) to ``out_dir``."""
    from diffusers import DDPMScheduler

    from ..models.ilo import decoder_split, save_ilo_score
    from ..models.zoo import load_prior

    if out_dir is None:
        raise ValueError("out_dir is required")
    if min(steps, batch_size, copies, num_samples, sample_steps) < 1:
        raise ValueError("steps, batch_size, copies, num_samples and sample_steps must be positive")
    if threads:
        torch.set_num_threads(int(threads))
    torch.manual_seed(seed)
    latent = load_prior(prior)
    ae = getattr(latent, "autoencoder", None)
    if ae is None:
        raise ValueError(f"{prior!r} is not a latent diffusion prior (no autoencoder to split)")
    split = decoder_split(ae, layer)
    src = _make_source("digits" if prior.startswith("digits") else "patches", torch.device("cpu"), True)
    g = torch.Generator().manual_seed(seed)
    log = print if verbose else (lambda *a, **k: None)

    t_data = time.perf_counter()
    h = torch.cat([_layer_data(split, ae, src.sample(src.train.shape[0], g)) for _ in range(copies)])
    low, high = float(h.min()), float(h.max())

    def unit(v):
        return 2.0 * (v - low) / (high - low) - 1.0

    data = unit(h)
    test = unit(_layer_data(split, ae, src.test))
    data_time = time.perf_counter() - t_data
    C, H, W = data.shape[1:]
    chans = tuple(int(c) for c in channels)
    unet = build_unet(H, chans, (False,) * len(chans), 1, in_channels=C)
    ema = build_unet(H, chans, (False,) * len(chans), 1, in_channels=C)
    ema.load_state_dict(unet.state_dict())
    ema.requires_grad_(False).eval()
    n_params = sum(q.numel() for q in unet.parameters())
    sched_cfg = dict(SCHEDULER_CONFIG)
    ac = DDPMScheduler(**sched_cfg).alphas_cumprod.to(torch.float32)
    log(f"[ilo] {prior} layer {layer}: h {tuple(data.shape[1:])} from {data.shape[0]} augmented images "
        f"(min {low:.3f}, max {high:.3f}); UNet {n_params / 1e6:.2f}M params, {steps} steps x {batch_size}", flush=True)
    curve, train_time = fit_epsilon_on_tensor(unet, ema, data, ac, steps=steps, batch_size=batch_size, lr=lr,
                                              ema_decay=ema_decay, generator=g, log=log, prefix="[ilo]")

    # evaluate: denoising loss on held-out layers; G2 of samples against the training images
    heldout_loss = _denoising_loss(ema, test, ac, seed=1234)
    gs = torch.Generator().manual_seed(seed + 1)
    t1 = time.perf_counter()
    u = ddpm_sample(ema, sched_cfg, num_samples, steps=sample_steps, generator=gs, device=torch.device("cpu"))
    with torch.no_grad():
        x = split.g2((u + 1.0) * 0.5 * (high - low) + low).clamp(-1, 1)
    sample_time = time.perf_counter() - t1
    with torch.no_grad():  # the same criterion for the latent prior's own samples and for G(Enc(x_test))
        x_ldm = latent.with_options(steps=sample_steps).sample((num_samples,), generator=torch.Generator()
                                                                .manual_seed(seed + 1)).clamp(-1, 1)
    out = Path(out_dir)
    save_ilo_score(ema, dict(sched_cfg, _class_name="DDPMScheduler"), out, low=low, high=high, layer=layer,
                   fingerprint=split.fingerprint, autoencoder=prior)
    _save_grid(x, out / "samples.png", ncol=8, scale=4)
    import diffusers

    st = out / "unet" / "diffusion_pytorch_model.safetensors"
    record = {
        "prior": prior, "layer": layer, "hidden_shape": [int(C), int(H), int(W)], "fingerprint": split.fingerprint,
        "data": (f"h = G1(s_f Enc_mean(x)) of {copies} augmented copies of the {prior} training images "
                 f"({data.shape[0]} layers), normalised to [-1, 1] with their min {low:.4f} / max {high:.4f}"),
        "seed": seed, "steps": steps, "batch_size": batch_size, "lr": lr,
        "lr_schedule": "linear warm-up 200 steps, cosine decay to 0", "ema_decay": ema_decay,
        "unet": {"channels": list(chans), "parameters": int(n_params), "safetensors_bytes": st.stat().st_size},
        "scheduler": dict(sched_cfg, _class_name="DDPMScheduler"),
        "wall_time_data_s": round(data_time, 1), "wall_time_train_s": round(train_time, 1), "loss_curve": curve,
        "heldout_denoising_loss": round(heldout_loss, 6),
        "samples": {"file": "samples.png", "num": num_samples,
                    "sampler": f"ancestral DDPM on u, {sample_steps} steps, then G2 (clipped to [-1, 1])",
                    "seed": seed + 1, "wall_time_s": round(sample_time, 2),
                    "nn_rms_samples_to_train": round(float(_nn_dist(x, src.train).mean()), 4),
                    "nn_rms_samples_to_heldout": round(float(_nn_dist(x, src.test).mean()), 4),
                    "nn_rms_heldout_to_train": round(float(_nn_dist(src.test, src.train).mean()), 4),
                    "nn_rms_latent_prior_samples_to_train": round(float(_nn_dist(x_ldm, src.train).mean()), 4),
                    "note": "mean RMS per-pixel distance to the nearest image; G2 of the score model's samples "
                            "against the latent prior's own samples (same steps and seed) and the held-out images"},
        "device": "cpu", "threads": torch.get_num_threads(),
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "diffusers": diffusers.__version__, "numpy": np.__version__},
        "command": command or (f"python -m ppl_diffusion.training.ilo --prior {prior} --layer {layer} --out {out} "
                               f"--steps {steps} --batch-size {batch_size} --seed {seed} "
                               f"--channels {','.join(str(c) for c in chans)} --copies {copies}"
                               + (f" --threads {int(threads)}" if threads else "")),
    }
    (out / "training.json").write_text(json.dumps(record, indent=1) + "\n")
    log(f"[ilo] done: {train_time:.0f}s; held-out loss {heldout_loss:.4f}; samples nn-rms to train "
        f"{record['samples']['nn_rms_samples_to_train']} (latent prior "
        f"{record['samples']['nn_rms_latent_prior_samples_to_train']}, held-out "
        f"{record['samples']['nn_rms_heldout_to_train']}); saved to {out}", flush=True)
    return record


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ppl_diffusion.training.ilo",
                                 description="Train Score-ILO's score model on a decoder layer of a latent prior.")
    ap.add_argument("--prior", default="digits-latent")
    ap.add_argument("--layer", default="mid_block")
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=6000)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--channels", default="64,64", help="UNet channels per level")
    ap.add_argument("--copies", type=int, default=16, help="augmented copies of the training set")
    ap.add_argument("--num-samples", type=int, default=64)
    ap.add_argument("--sample-steps", type=int, default=250)
    args = ap.parse_args(argv)
    try:
        train_ilo_score(args.prior, args.out, layer=args.layer, steps=args.steps, batch_size=args.batch_size,
                        seed=args.seed, threads=args.threads, channels=[int(c) for c in args.channels.split(",")],
                        copies=args.copies, num_samples=args.num_samples, sample_steps=args.sample_steps)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
