"""The training loop: :func:`train_prior` fits a UNet to a data set of :mod:`.data`, evaluates its EMA
copy on the held-out images, and writes the weights in diffusers format with a ``training.json``
record (including the command that reproduces the run)."""
from __future__ import annotations

import json
import math
import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..metrics import nearest_distances
from .data import DATASETS, PATCH_SCALES, PATCH_TRAIN_IMAGES, SPLIT_SEED, _make_source
from .unet import PRESETS, SCHEDULER_CONFIG, build_unet, ddpm_sample

__all__ = ["train_prior"]

def _lr_factor(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    prog = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, prog)))


@torch.no_grad()
def _denoising_loss(unet, x0, alphas_cumprod, seed: int, repeats: int = 4, batch: int = 512) -> float:
    """Mean epsilon-MSE over ``x0`` with ``repeats`` fixed (seeded) draws of timestep and noise each."""
    dev = x0.device
    g = torch.Generator(device=dev).manual_seed(seed)
    T = alphas_cumprod.numel()
    tot, n = 0.0, 0
    xs = x0.repeat(repeats, 1, 1, 1)
    for i in range(0, xs.shape[0], batch):
        x = xs[i: i + batch]
        t = torch.randint(0, T, (x.shape[0],), generator=g, device=dev)
        eps = torch.randn(x.shape, generator=g, device=dev)
        ab = alphas_cumprod[t].view(-1, 1, 1, 1)
        xt = ab.sqrt() * x + (1 - ab).sqrt() * eps
        pred = unet(xt, t).sample
        tot += F.mse_loss(pred, eps, reduction="sum").item()
        n += eps.numel()
    return tot / n


def _save_grid(x: torch.Tensor, path: Path, ncol: int = 8, scale: int = 4, pad: int = 1):
    from PIL import Image

    x = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)[:, 0].numpy()
    n, h, w = x.shape
    nrow = math.ceil(n / ncol)
    grid = np.full((nrow * (h + pad) + pad, ncol * (w + pad) + pad), 255, np.uint8)
    for k in range(n):
        r, c = divmod(k, ncol)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = x[k]
    img = Image.fromarray(grid, mode="L")
    img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    img.save(path)


_nn_dist = nearest_distances  # RMS per-pixel distance of each row of ``a`` to its nearest row of ``b``


def _resolve_device(device) -> torch.device:
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def train_prior(
    dataset_name: str,
    out_dir,
    steps: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    seed: int = 0,
    channels: Sequence[int] | None = None,
    attention: Sequence[bool] | None = None,
    layers_per_block: int | None = None,
    ema_decay: float | None = None,
    warmup: int | None = None,
    weight_decay: float = 0.0,
    augment: bool | None = None,
    clip_sample: bool | None = None,
    device=None,
    num_threads: int | None = None,
    num_samples: int = 64,
    sample_steps: int = 1000,
    log_every: int = 100,
    max_train_images: int | None = None,
    verbose: bool = True,
    command: str | None = None,
) -> dict:
    """Train a UNet prior on ``dataset_name`` ('digits' or 'patches') and save it to ``out_dir``.

    Options left at ``None`` take the values of ``PRESETS[dataset_name]``. ``max_train_images``
    keeps only the first few training images of ``digits`` (tests). Returns the ``training.json``
    record. All inputs are checked before any work starts.
    """
    if dataset_name not in DATASETS:
        raise ValueError(f"dataset_name must be one of {', '.join(DATASETS)}, got {dataset_name!r}")
    pre = dict(PRESETS[dataset_name])
    steps = int(pre["steps"] if steps is None else steps)
    batch_size = int(pre["batch_size"] if batch_size is None else batch_size)
    lr = float(pre["lr"] if lr is None else lr)
    channels = tuple(pre["channels"] if channels is None else channels)
    if attention is None:
        attention = pre["attention"] if len(channels) == len(pre["attention"]) else (False,) * len(channels)
    attention = tuple(bool(a) for a in attention)
    layers_per_block = int(pre["layers_per_block"] if layers_per_block is None else layers_per_block)
    ema_decay = float(pre["ema_decay"] if ema_decay is None else ema_decay)
    warmup = int(min(pre["warmup"], max(1, steps // 10)) if warmup is None else warmup)
    augment = bool(pre["augment"] if augment is None else augment)
    clip_sample = bool(pre["clip_sample"] if clip_sample is None else clip_sample)
    sched_cfg = dict(SCHEDULER_CONFIG, clip_sample=clip_sample)
    for name, v in (("steps", steps), ("batch_size", batch_size), ("num_samples", num_samples),
                    ("sample_steps", sample_steps), ("log_every", log_every)):
        if v <= 0:
            raise ValueError(f"{name} must be a positive integer, got {v}")
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr}")
    if not 0 <= ema_decay < 1:
        raise ValueError(f"ema_decay must lie in [0, 1), got {ema_decay}")
    if sample_steps > SCHEDULER_CONFIG["num_train_timesteps"]:
        raise ValueError(f"sample_steps must be at most {SCHEDULER_CONFIG['num_train_timesteps']}, got {sample_steps}")
    if out_dir is None:
        raise ValueError("out_dir is required")
    dev = _resolve_device(device)
    if num_threads:
        torch.set_num_threads(int(num_threads))

    from diffusers import DDPMScheduler

    out = Path(out_dir)
    torch.manual_seed(seed)
    if dev.type == "cuda":
        # deterministic kernels (cuBLAS needs the workspace setting before its first use); TF32
        # matmuls/convolutions are deterministic too and make the patch network ~2x faster
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    src = _make_source(dataset_name, dev, augment)
    if max_train_images is not None:
        if dataset_name != "digits":
            raise ValueError("max_train_images is only supported for the digits data set")
        src.train8 = src.train8[: int(max_train_images)]
        src.train = src.train[: int(max_train_images)]
    unet = build_unet(src.train.shape[-1], channels, attention, layers_per_block).to(dev)
    n_params = sum(p.numel() for p in unet.parameters())
    ema = build_unet(src.train.shape[-1], channels, attention, layers_per_block).to(dev)
    ema.load_state_dict(unet.state_dict())
    ema.requires_grad_(False).eval()
    scheduler = DDPMScheduler(**sched_cfg)
    ac = scheduler.alphas_cumprod.to(dev, torch.float32)

    opt = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=weight_decay, betas=(0.9, 0.999))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, warmup, steps))
    g = torch.Generator(device=dev).manual_seed(seed)
    params = [p for p in unet.parameters()]
    ema_params = [p for p in ema.parameters()]

    if verbose:
        print(f"[train_prior] {dataset_name}: {src.train.shape[0]} train / {src.test.shape[0]} held-out images, "
              f"UNet {n_params / 1e6:.2f}M params, {steps} steps x batch {batch_size} on {dev}", flush=True)
    curve, run, run_n = [], 0.0, 0
    t0 = time.perf_counter()
    unet.train()
    for step in range(steps):
        x0 = src.sample(batch_size, g)
        loss = epsilon_step(unet, x0, ac, g, opt, sched, params, ema_params, ema_decay, step)
        run += loss
        run_n += 1
        if (step + 1) % log_every == 0 or step + 1 == steps:
            m = float(run) / run_n
            curve.append([step + 1, round(m, 6)])
            if verbose:
                print(f"[train_prior] step {step + 1:6d}/{steps}  loss {m:.4f}  lr {sched.get_last_lr()[0]:.2e}  "
                      f"{time.perf_counter() - t0:7.1f}s", flush=True)
            run, run_n = 0.0, 0
    if dev.type == "cuda":
        torch.cuda.synchronize()
    train_time = time.perf_counter() - t0

    # evaluation with the EMA network ------------------------------------------------------
    ema.eval()
    heldout_loss = _denoising_loss(ema, src.test, ac, seed=1234)
    ntr = min(src.train.shape[0], src.test.shape[0])
    train_loss_ema = _denoising_loss(ema, src.train[:ntr], ac, seed=1234)
    gs = torch.Generator(device=dev).manual_seed(seed + 1)
    t1 = time.perf_counter()
    samples = ddpm_sample(ema, sched_cfg, num_samples, steps=sample_steps, generator=gs, device=dev)
    sample_time = time.perf_counter() - t1
    nn_samples_train = _nn_dist(samples, src.train)
    nn_samples_test = _nn_dist(samples, src.test)
    nn_test_train = _nn_dist(src.test, src.train)

    # save ------------------------------------------------------------------------------------
    out.mkdir(parents=True, exist_ok=True)
    ema_cpu = ema.to("cpu")
    ema_cpu.save_pretrained(out / "unet", safe_serialization=True)
    scheduler.save_pretrained(out / "scheduler")
    np.save(out / "heldout.npy", src.test.detach().cpu().numpy().astype(np.float32))
    _save_grid(samples, out / "samples.png", ncol=8, scale=4 if src.train.shape[-1] <= 16 else 3)

    import diffusers

    record = {
        "dataset": dataset_name,
        "data": src.description,
        "image_shape": list(src.train.shape[1:]),
        "split": {"train": int(src.train8.shape[0]) if dataset_name == "digits" else getattr(src, "split_note", None)
                  or "random patches of "
                  f"{len(PATCH_TRAIN_IMAGES)} photographs x {len(PATCH_SCALES)} scales",
                  "heldout": int(src.test.shape[0]), "split_seed": SPLIT_SEED},
        "seed": seed,
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "lr_schedule": f"linear warm-up {warmup} steps, cosine decay to 0",
        "optimizer": f"AdamW(betas=(0.9, 0.999), weight_decay={weight_decay}), grad-norm clip 1.0",
        "ema_decay": ema_decay,
        "augment": augment,
        "unet": {"channels": list(channels), "attention": list(attention), "layers_per_block": layers_per_block,
                 "parameters": int(n_params),
                 "safetensors_bytes": os.path.getsize(out / "unet" / "diffusion_pytorch_model.safetensors")},
        "scheduler": dict(sched_cfg, _class_name="DDPMScheduler"),
        "device": str(dev) if dev.type != "cuda" else f"cuda ({torch.cuda.get_device_name(dev)})",
        "wall_time_train_s": round(train_time, 2),
        "final_train_loss": curve[-1][1],
        "final_train_loss_note": f"mean epsilon-MSE of the online network over the last {log_every} steps",
        "ema_train_denoising_loss": round(train_loss_ema, 6),
        "heldout_denoising_loss": round(heldout_loss, 6),
        "denoising_loss_note": ("EMA network, epsilon-MSE averaged over uniform timesteps, 4 seeded draws of "
                                "(t, noise) per image; train loss on as many training images as held-out ones"),
        "samples": {"file": "samples.png", "num": num_samples,
                    "sampler": f"ancestral DDPM, {sample_steps} steps"
                               + (", x0 clipped to [-1, 1]" if clip_sample else ""),
                    "seed": seed + 1, "wall_time_s": round(sample_time, 2),
                    "nn_rms_samples_to_train": round(float(nn_samples_train.mean()), 4),
                    "nn_rms_samples_to_heldout": round(float(nn_samples_test.mean()), 4),
                    "nn_rms_heldout_to_train": round(float(nn_test_train.mean()), 4),
                    "note": "mean RMS per-pixel distance to the nearest image; samples that are about as "
                            "far from the training set as held-out images are do not copy it"},
        "loss_curve": curve,
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "diffusers": diffusers.__version__, "numpy": np.__version__},
        "command": command or _command_line(dataset_name, out, steps, batch_size, lr, seed, channels, attention,
                                            layers_per_block, ema_decay, warmup, weight_decay, augment, dev,
                                            num_samples, sample_steps, num_threads, clip_sample),
    }
    (out / "training.json").write_text(json.dumps(record, indent=1) + "\n")
    if verbose:
        print(f"[train_prior] done in {train_time:.1f}s: final loss {record['final_train_loss']:.4f}, held-out "
              f"denoising loss {heldout_loss:.4f} (train {train_loss_ema:.4f}); saved to {out}", flush=True)
    return record


def _command_line(dataset, out, steps, batch_size, lr, seed, channels, attention, lpb, ema_decay, warmup,
                  weight_decay, augment, dev, num_samples, sample_steps, num_threads=None, clip_sample=False) -> str:
    parts = ["python -m ppl_diffusion.training", f"--dataset {dataset}", f"--out {out}", f"--steps {steps}",
             f"--batch-size {batch_size}", f"--lr {lr:g}", f"--seed {seed}",
             f"--channels {','.join(str(c) for c in channels)}",
             f"--attention {','.join(str(int(a)) for a in attention)}", f"--layers-per-block {lpb}",
             f"--ema-decay {ema_decay:g}", f"--warmup {warmup}", f"--weight-decay {weight_decay:g}",
             f"--device {dev.type}", f"--num-samples {num_samples}", f"--sample-steps {sample_steps}"]
    if not augment:
        parts.append("--no-augment")
    parts.append("--clip-sample" if clip_sample else "--no-clip-sample")
    if num_threads:
        parts.append(f"--threads {int(num_threads)}")
    return " ".join(parts)


def epsilon_step(unet, x0, alphas_cumprod, generator, opt, scheduler, params, ema_params, ema_decay: float,
                 step: int) -> torch.Tensor:
    """One epsilon-prediction step (Ho et al. 2020, Algorithm 1) on the batch ``x0``: uniform timesteps
    of ``alphas_cumprod`` then the noise, both from ``generator`` on ``x0``'s device; gradient-norm
    clip 1.0, optimiser and learning-rate scheduler step, EMA of ``params`` into ``ema_params`` with
    decay ``min(ema_decay, (1 + step) / (10 + step))``. Returns the detached loss."""
    t = torch.randint(0, alphas_cumprod.numel(), (x0.shape[0],), generator=generator, device=x0.device)
    eps = torch.randn(x0.shape, generator=generator, device=x0.device)
    ab = alphas_cumprod[t].view(-1, 1, 1, 1)
    loss = F.mse_loss(unet(ab.sqrt() * x0 + (1 - ab).sqrt() * eps, t).sample, eps)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    scheduler.step()
    d = min(ema_decay, (1 + step) / (10 + step))
    with torch.no_grad():
        torch._foreach_lerp_(ema_params, params, 1.0 - d)
    return loss.detach()


def fit_epsilon_on_tensor(unet, ema, data: torch.Tensor, alphas_cumprod: torch.Tensor, *, steps: int,
                          batch_size: int, lr: float, ema_decay: float, generator: torch.Generator,
                          warmup: int = 200, log_every: int = 500, log=None, prefix: str = "") -> tuple:
    """Fit ``unet`` to epsilon-prediction on the rows of the tensor ``data`` (uniform timesteps of the
    DDPM schedule ``alphas_cumprod``) with AdamW, linear warm-up + cosine decay, gradient-norm clip
    1.0 and an EMA ``ema`` of the weights (decay ``min(ema_decay, (1 + k) / (10 + k))``). Random draws
    per step, in this order from ``generator``: batch indices, timesteps, noise. Returns
    ``(loss_curve, seconds)``; ``log(f"{prefix} step ...")`` every ``log_every`` steps."""
    opt = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.0)
    sch = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, warmup, steps))
    params, ema_params = list(unet.parameters()), list(ema.parameters())
    t0 = time.perf_counter()
    curve, run, k = [], 0.0, 0
    unet.train()
    for step in range(steps):
        x0 = data[torch.randint(0, data.shape[0], (batch_size,), generator=generator)]
        run += float(epsilon_step(unet, x0, alphas_cumprod, generator, opt, sch, params, ema_params, ema_decay, step))
        k += 1
        if (step + 1) % log_every == 0 or step + 1 == steps:
            curve.append([step + 1, round(run / k, 5)])
            if log is not None:
                log(f"{prefix} step {step + 1}/{steps} loss {run / k:.4f} {time.perf_counter() - t0:.0f}s", flush=True)
            run, k = 0.0, 0
    return curve, time.perf_counter() - t0
