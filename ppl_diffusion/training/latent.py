"""Training of the shipped latent diffusion priors (``digits-latent``, ``patches-latent``).

Two stages, as in latent diffusion (Rombach et al., CVPR 2022):

1. a KL autoencoder (diffusers ``AutoencoderKL``: stride-2 encoder levels with GroupNorm + SiLU
   ResNet blocks, a mirrored decoder, no attention), trained with ``L1(x, Dec(z)) + kl_weight * KL``
   on reparametrised latent draws;
2. the latent scale factor ``s_f = 1 / std`` of the encoder means of the (unaugmented) training images,
   written to the autoencoder config (``scaling_factor``), then a ``UNet2DModel`` trained with the
   library's DDPM schedule (linear betas 1e-4..0.02, 1000 steps, epsilon prediction) on
   ``z = s_f Enc_mean(x)`` of augmented training images, with an EMA of its weights.

The folder written (``vae/``, ``unet/``, ``scheduler/``, ``training.json``, ``heldout.npy``,
``samples.png``) is what :func:`ppl_diffusion.models.latent.load_latent_prior` reads. Command::

    python -m ppl_diffusion.training.latent --dataset digits --out ppl_diffusion/weights/digits-latent --threads 1

``training.json`` records the command, the wall time, the reconstruction PSNR on the held-out images
and nearest-neighbour distances of decoded samples (as the pixel priors' record does).
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

from .data import DATASETS, _make_source
from .loop import _lr_factor, _nn_dist, _save_grid, fit_epsilon_on_tensor
from .unet import SCHEDULER_CONFIG, build_unet

__all__ = ["LATENT_PRESETS", "train_latent_prior", "main"]

LATENT_PRESETS = {
    "digits": dict(ae_channels=(16, 32, 32), ae_groups=8, latent_channels=4, ae_steps=2000, ae_lr=2e-3,
                   kl_weight=1e-4, unet_channels=(32, 64), unet_steps=4000, unet_lr=1e-3, batch_size=32,
                   unet_batch_size=64, ema_decay=0.999, latent_copies=16),
    "patches": dict(ae_channels=(16, 32, 32), ae_groups=8, latent_channels=4, ae_steps=1500, ae_lr=2e-3,
                    kl_weight=1e-4, unet_channels=(32, 64), unet_steps=3000, unet_lr=1e-3, batch_size=32,
                    unet_batch_size=64, ema_decay=0.999, latent_copies=4),
}


def _psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    mse = (a - b).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(4.0 / mse)


def _encode_mean(vae, x: torch.Tensor, batch: int = 512) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([vae.encode(x[i: i + batch]).latent_dist.mean for i in range(0, x.shape[0], batch)])


def train_latent_prior(dataset: str, out_dir, *, seed: int = 0, ae_steps: int | None = None,
                       unet_steps: int | None = None, batch_size: int | None = None, threads: int | None = None,
                       num_samples: int = 64, sample_steps: int = 250, verbose: bool = True,
                       command: str | None = None) -> dict:
    """Train the autoencoder and the latent UNet on ``dataset`` and save the folder ``out_dir``."""
    from diffusers import DDPMScheduler

    from ..models.autoencoder import build_kl_autoencoder
    from ..models.latent import save_latent_prior

    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {', '.join(DATASETS)}, got {dataset!r}")
    p = dict(LATENT_PRESETS[dataset])
    ae_steps = int(p["ae_steps"] if ae_steps is None else ae_steps)
    unet_steps = int(p["unet_steps"] if unet_steps is None else unet_steps)
    bs = int(p["batch_size"] if batch_size is None else batch_size)
    if min(ae_steps, unet_steps, bs) < 1:
        raise ValueError("ae_steps, unet_steps and batch_size must be positive")
    if threads:
        torch.set_num_threads(int(threads))
    torch.manual_seed(seed)
    dev = torch.device("cpu")
    src = _make_source(dataset, dev, True)
    size = src.train.shape[-1]
    g = torch.Generator().manual_seed(seed)
    log = print if verbose else (lambda *a, **k: None)

    # stage 1: autoencoder --------------------------------------------------------------------
    vae = build_kl_autoencoder(size, 1, p["ae_channels"], p["latent_channels"], norm_num_groups=p["ae_groups"])
    n_ae = sum(q.numel() for q in vae.parameters())
    opt = torch.optim.AdamW(vae.parameters(), lr=p["ae_lr"], weight_decay=0.0)
    sch = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, min(200, ae_steps // 10 + 1), ae_steps))
    log(f"[latent] {dataset}: autoencoder {n_ae / 1e6:.2f}M params, {ae_steps} steps x batch {bs}", flush=True)
    t0 = time.perf_counter()
    ae_curve, run, k = [], 0.0, 0
    vae.train()
    for step in range(ae_steps):
        x = src.sample(bs, g)
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=g)
        rec = vae.decode(z).sample
        kl = 0.5 * (post.mean.pow(2) + post.var - 1.0 - post.logvar).flatten(1).sum(1).mean()
        loss = (rec - x).abs().mean() + p["kl_weight"] * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sch.step()
        run += float(loss.detach())
        k += 1
        if (step + 1) % 250 == 0 or step + 1 == ae_steps:
            ae_curve.append([step + 1, round(run / k, 5)])
            log(f"[latent] ae step {step + 1}/{ae_steps} loss {run / k:.4f} {time.perf_counter() - t0:.0f}s",
                flush=True)
            run, k = 0.0, 0
    vae.eval().requires_grad_(False)
    ae_time = time.perf_counter() - t0
    train_mu = _encode_mean(vae, src.train)
    s_f = float(1.0 / train_mu.std())
    vae.register_to_config(scaling_factor=s_f)
    with torch.no_grad():
        rec_test = torch.cat([vae.decode(_encode_mean(vae, src.test[i: i + 512])).sample
                              for i in range(0, src.test.shape[0], 512)])
        rec_train = vae.decode(train_mu[: src.test.shape[0]]).sample
    psnr_test = _psnr(rec_test, src.test)
    psnr_train = _psnr(rec_train, src.train[: src.test.shape[0]])
    log(f"[latent] s_f = {s_f:.4f}; reconstruction PSNR held-out {psnr_test.mean():.2f} dB, "
        f"train {psnr_train.mean():.2f} dB", flush=True)

    # stage 2: latent UNet --------------------------------------------------------------------
    copies = int(p["latent_copies"])
    ubs = int(p["unet_batch_size"])
    with torch.no_grad():
        lat = torch.cat([s_f * _encode_mean(vae, src.sample(src.train.shape[0], g)) for _ in range(copies)])
    C, h, w = lat.shape[1:]
    unet = build_unet(h, p["unet_channels"], (False,) * len(p["unet_channels"]), 1, in_channels=C)
    ema = build_unet(h, p["unet_channels"], (False,) * len(p["unet_channels"]), 1, in_channels=C)
    ema.load_state_dict(unet.state_dict())
    ema.requires_grad_(False).eval()
    n_unet = sum(q.numel() for q in unet.parameters())
    sched_cfg = dict(SCHEDULER_CONFIG)
    scheduler = DDPMScheduler(**sched_cfg)
    ac = scheduler.alphas_cumprod.to(torch.float32)
    log(f"[latent] latent UNet {n_unet / 1e6:.2f}M params on {tuple(lat.shape[1:])} latents ({lat.shape[0]} "
        f"encoded augmented images), {unet_steps} steps", flush=True)
    unet_curve, unet_time = fit_epsilon_on_tensor(unet, ema, lat, ac, steps=unet_steps, batch_size=ubs,
                                                  lr=p["unet_lr"], ema_decay=p["ema_decay"], generator=g, log=log,
                                                  prefix="[latent] unet")

    # save and evaluate -----------------------------------------------------------------------
    out = Path(out_dir)
    save_latent_prior(vae, ema, dict(sched_cfg, _class_name="DDPMScheduler"), out)
    np.save(out / "heldout.npy", src.test.numpy().astype(np.float32))
    from ..models.latent import load_latent_prior

    prior = load_latent_prior(out, steps=sample_steps, eta=1.0)
    t2 = time.perf_counter()
    samples = prior.sample((num_samples,), generator=torch.Generator().manual_seed(seed + 1)).clamp(-1, 1)
    sample_time = time.perf_counter() - t2
    _save_grid(samples, out / "samples.png", ncol=8, scale=4 if size <= 16 else 3)
    import diffusers

    record = {
        "dataset": dataset, "data": src.description, "image_shape": list(src.train.shape[1:]),
        "latent_shape": [int(C), int(h), int(w)], "seed": seed, "batch_size": bs,
        "autoencoder": {"class": "diffusers AutoencoderKL", "channels": list(p["ae_channels"]),
                        "latent_channels": p["latent_channels"], "parameters": int(n_ae),
                        "loss": f"L1 + {p['kl_weight']:g} * KL (sum over latent elements, batch mean)",
                        "steps": ae_steps, "lr": p["ae_lr"], "scaling_factor": s_f,
                        "wall_time_train_s": round(ae_time, 1), "loss_curve": ae_curve,
                        "reconstruction_psnr_heldout_db": round(float(psnr_test.mean()), 3),
                        "reconstruction_psnr_heldout_min_db": round(float(psnr_test.min()), 3),
                        "reconstruction_psnr_train_db": round(float(psnr_train.mean()), 3),
                        "safetensors_bytes": (out / "vae" / "diffusion_pytorch_model.safetensors").stat().st_size},
        "latent_unet": {"channels": list(p["unet_channels"]), "parameters": int(n_unet), "steps": unet_steps,
                        "batch_size": ubs,
                        "lr": p["unet_lr"], "ema_decay": p["ema_decay"],
                        "data": f"{copies} augmented copies of the training set, encoded (means) and scaled by s_f",
                        "wall_time_train_s": round(unet_time, 1), "loss_curve": unet_curve,
                        "safetensors_bytes": (out / "unet" / "diffusion_pytorch_model.safetensors").stat().st_size},
        "scheduler": dict(sched_cfg, _class_name="DDPMScheduler"),
        "samples": {"file": "samples.png", "num": num_samples,
                    "sampler": f"latent ancestral DDPM, {sample_steps} steps, then the decoder (clipped to [-1, 1])",
                    "seed": seed + 1, "wall_time_s": round(sample_time, 2),
                    "nn_rms_samples_to_train": round(float(_nn_dist(samples, src.train).mean()), 4),
                    "nn_rms_samples_to_heldout": round(float(_nn_dist(samples, src.test).mean()), 4),
                    "nn_rms_heldout_to_train": round(float(_nn_dist(src.test, src.train).mean()), 4)},
        "device": "cpu",
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "diffusers": diffusers.__version__, "numpy": np.__version__},
        "command": command or (f"python -m ppl_diffusion.training.latent --dataset {dataset} --out {out} "
                               f"--seed {seed} --ae-steps {ae_steps} --unet-steps {unet_steps} --batch-size {bs}"
                               + (f" --threads {int(threads)}" if threads else "")),
    }
    (out / "training.json").write_text(json.dumps(record, indent=1) + "\n")
    log(f"[latent] done: autoencoder {ae_time:.0f}s, UNet {unet_time:.0f}s, saved to {out}", flush=True)
    return record


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ppl_diffusion.training.latent",
                                 description="Train a KL autoencoder and a latent diffusion UNet (diffusers format).")
    ap.add_argument("--dataset", required=True, choices=DATASETS)
    ap.add_argument("--out", required=True, help="output folder (vae/, unet/, scheduler/)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ae-steps", type=int, default=None, help="autoencoder steps (default: preset)")
    ap.add_argument("--unet-steps", type=int, default=None, help="latent UNet steps (default: preset)")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    ap.add_argument("--num-samples", type=int, default=64)
    ap.add_argument("--sample-steps", type=int, default=250)
    args = ap.parse_args(argv)
    try:
        train_latent_prior(args.dataset, args.out, seed=args.seed, ae_steps=args.ae_steps,
                           unet_steps=args.unet_steps, batch_size=args.batch_size, threads=args.threads,
                           num_samples=args.num_samples, sample_steps=args.sample_steps)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
