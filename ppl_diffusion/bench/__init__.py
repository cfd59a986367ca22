"""Benchmarks against peers and the cost of our layers (issue 7).

Each module exposes ``main(argv=None)``: it prints a markdown table and writes it under
``benchmarks/results/`` with machine, versions, seeds and date (``benchmarking.write_table``).

* :mod:`.peers`    — DeepInverse's DPS / DDRM / DiffPIR against ours on the same denoiser.
* :mod:`.overhead` — our solvers through the Pyro model against a bare torch loop (same arithmetic).
* :mod:`.scaling`  — SMC wall time / peak memory per particle, guide throughput against batch size.
* :mod:`.images`   — every guide on the shipped prior's held-out images for the BENCHMARKS.md §3 tasks.
"""
from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

import torch

__all__ = ["SCHEDULER_CONFIG", "image_denoiser", "heldout", "median_time", "results_path"]

#: scheduler of the fallback tiny UNet (DDPM linear betas, epsilon prediction)
SCHEDULER_CONFIG = {"num_train_timesteps": 1000, "beta_schedule": "linear", "beta_start": 1e-4,
                    "beta_end": 0.02, "prediction_type": "epsilon"}


def tiny_unet(size: int = 16, channels: int = 1, seed: int = 0):
    """A tiny random diffusers ``UNet2DModel`` at a fixed seed (used when no shipped prior exists)."""
    from diffusers import UNet2DModel

    g = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        return UNet2DModel(sample_size=size, in_channels=channels, out_channels=channels,
                           block_out_channels=(16, 32), layers_per_block=1,
                           down_block_types=("DownBlock2D", "DownBlock2D"),
                           up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=8)
    finally:
        torch.random.set_rng_state(g)


def image_denoiser(prefer_shipped: bool = True, seed: int = 0):
    """``(denoiser, label)``: the shipped ``digits`` prior's denoiser when its weights are present,
    else a tiny random UNet (16x16, 1 channel) saved at a fixed seed."""
    from ..denoisers import UNetDenoiser

    if prefer_shipped:
        try:
            from ..models.zoo import load_unet

            unet, cfg = load_unet("digits")
            return UNetDenoiser(unet, cfg), "shipped prior 'digits'"
        except Exception:  # weights not shipped yet
            pass
    return UNetDenoiser(tiny_unet(16, 1, seed), SCHEDULER_CONFIG), f"tiny random UNet (seed {seed}; no shipped prior)"


def heldout(n: int, size: int = 16):
    """``(images (n, 1, size, size) in [-1, 1], label)``: ``zoo.heldout_images('digits')`` when present,
    else scikit-learn's 8x8 digits (bundled, last ``n``), bilinearly upsampled."""
    try:
        from ..models.zoo import heldout_images

        x = heldout_images("digits")
        return x[:n], "zoo.heldout_images('digits')"
    except Exception:
        from sklearn.datasets import load_digits

        d = torch.as_tensor(load_digits().images[-n:], dtype=torch.float32)[:, None] / 16.0
        d = torch.nn.functional.interpolate(d, size=(size, size), mode="bilinear", align_corners=False)
        return (2 * d - 1).clamp(-1, 1), "scikit-learn digits (last n, upsampled; no held-out set shipped)"


def median_time(fn, repeats: int = 3, warmup: int = 1):
    """``(median seconds, last result)`` of ``fn()`` over ``repeats`` runs after ``warmup`` runs."""
    out = None
    for _ in range(warmup):
        out = fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts), out


def results_path(name: str) -> str:
    """``benchmarks/results/<name>.md`` of the repository (or of the working directory)."""
    root = Path(__file__).resolve().parents[2]
    base = root / "benchmarks" / "results" if (root / "benchmarks").is_dir() else Path.cwd() / "benchmarks" / "results"
    return str(base / f"{name}.md")


def set_threads():
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
