"""Train the small diffusion priors that ship with the package (and any like them).

Two data sets are built from data that is installed with scikit-learn / scikit-image, so nothing
is downloaded:

* ``digits``: scikit-learn's 1797 bundled 8x8 handwritten digits, scaled to [-1, 1] and resampled
  to 16x16 (see :func:`digits_dataset` for why 16x16 and why bilinear), a stratified 12 % held out.
* ``patches``: 32x32 grayscale patches of the photographs bundled in the scikit-image wheel and
  scikit-learn's two sample photographs, at full and half resolution, with random flips and
  transposes; two whole photographs (``camera`` and sklearn's ``china``) are held out.

:func:`train_prior` trains a diffusers ``UNet2DModel`` with a ``DDPMScheduler`` (linear betas
1e-4..0.02, 1000 steps, epsilon prediction), AdamW, linear warm-up then cosine decay, an EMA of
the weights, and saves the EMA network in diffusers format::

    out_dir/unet/config.json
    out_dir/unet/diffusion_pytorch_model.safetensors
    out_dir/scheduler/scheduler_config.json
    out_dir/training.json      # data, split sizes, seed, steps, wall time, device, losses, command
    out_dir/samples.png        # ancestral DDPM samples of the EMA network
    out_dir/heldout.npy        # the held-out evaluation images, float32 (N, C, H, W) in [-1, 1]

Command line (the ``ppl-diffusion train-prior`` subcommand reuses :func:`add_train_arguments` and
:func:`main_train`)::

    python -m ppl_diffusion.training --dataset digits --out ppl_diffusion/weights/digits

Given the command (every option is written to ``training.json``) a run is reproducible: all
randomness comes from ``--seed`` through explicit generators, and CUDA runs use deterministic
kernels. Results are bit-identical on the same device type and software; CPU and CUDA runs draw
different random streams and so give different (equally good) networks.

This module imports only torch, numpy and diffusers (plus scikit-learn / scikit-image inside the
data builders and Pillow for the sample grid) so that it can run on a bare training machine.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "DATASETS",
    "PRESETS",
    "digits_dataset",
    "patches_dataset",
    "build_unet",
    "train_prior",
    "add_train_arguments",
    "main_train",
]

DATASETS = ("digits", "patches")

#: Split seed of the data sets: fixed so that the held-out images never depend on the training seed.
SPLIT_SEED = 0
DIGITS_HELDOUT_FRACTION = 0.12
#: Photographs held out whole from the patch data set (evaluation only).
PATCH_HELDOUT_IMAGES = ("skimage:camera.png", "sklearn:china.jpg")
#: Photographs the patch prior is trained on: natural scenes and textures, no text, no synthetic
#: images, none of the nearly black astronomy / microscopy images.
PATCH_TRAIN_IMAGES = (
    "skimage:astronaut.png",
    "skimage:brick.png",
    "skimage:chelsea.png",
    "skimage:coffee.png",
    "skimage:coins.png",
    "skimage:grass.png",
    "skimage:gravel.png",
    "skimage:moon.png",
    "skimage:rocket.jpg",
    "skimage:motorcycle_left.png",
    "sklearn:flower.jpg",
)
PATCH_SIZE = 32
PATCH_SCALES = (1, 2)  # full resolution and 2x2 average-pooled
PATCH_HELDOUT_COUNT = 256

#: Default network / optimisation settings of the shipped priors (CLI options override them).
_PRESET_COMMON = dict(layers_per_block=1, batch_size=64, lr=2e-3, warmup=200, ema_decay=0.999, augment=True)
PRESETS = {
    "digits": dict(_PRESET_COMMON, sample_size=16, channels=(16, 32, 64), attention=(False, False, True),
                   steps=5000, clip_sample=False),
    "patches": dict(_PRESET_COMMON, sample_size=32, channels=(16, 32, 64, 64),
                    attention=(False, False, False, True), steps=4000, clip_sample=True),
}
# The presets are sized for CPU training (the shipped priors were trained on a shared 2-core CPU):
# 0.69M / 1.09M parameters, 2.8 / 4.4 MB of float32 safetensors. ``clip_sample`` is written to the
# scheduler config: E[x0 | x_t] of data in [-1, 1] lies in [-1, 1], so clipping the network's
# estimate can only move it closer to the truth; the patch network needs it for stable ancestral
# sampling (unclipped, its samples drift to saturated black / white), the digit network does not.

SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_schedule="linear",
    beta_start=1e-4,
    beta_end=0.02,
    prediction_type="epsilon",
    variance_type="fixed_small",
    clip_sample=False,
)


def _check_split(split: str) -> str:
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return split


# ---------------------------------------------------------------------------------------------
# digits
# ---------------------------------------------------------------------------------------------
def _digits_raw():
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("the digits data set needs scikit-learn (pip install 'ppl-diffusion[images]')") from e
    d = load_digits()
    x8 = torch.as_tensor(d.images, dtype=torch.float32) / 8.0 - 1.0  # 0..16 -> [-1, 1]
    return x8.unsqueeze(1), np.asarray(d.target)


def _digits_split_indices(labels: np.ndarray):
    """Stratified, seeded split: ``round(12 %)`` of every class goes to the held-out set."""
    rng = np.random.RandomState(SPLIT_SEED)
    test = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        test.extend(idx[: int(round(DIGITS_HELDOUT_FRACTION * idx.size))].tolist())
    test = np.sort(np.asarray(test))
    train = np.setdiff1d(np.arange(labels.size), test)
    return train, test


def _upsample_digits(x8: torch.Tensor, size: int = 16) -> torch.Tensor:
    return F.interpolate(x8, size=(size, size), mode="bilinear", align_corners=False)


def digits_dataset(split: str = "train", size: int = 16, return_labels: bool = False):
    """scikit-learn's bundled 8x8 digits in [-1, 1], resampled to ``size`` x ``size``.

    Returns a float32 tensor ``(N, 1, size, size)`` (and the labels when ``return_labels``).
    The split is stratified by class and fixed (seed ``SPLIT_SEED``): 216 of the 1797 images
    (12 %) are held out, 1581 train.

    Why 16x16: at 8x8 a UNet gets at most two 2x down-samplings to a 2x2 bottleneck, box-inpainting
    and 2x super-resolution (to 4x4) leave almost nothing to look at, and the figures are
    unreadable. At 16x16 the network has two down-sampling levels (16 -> 8 -> 4, attention at
    4x4), and the inverse problems (boxes, 2x SR to 8x8, blur, phase retrieval) are meaningful.
    The cost is 4x more pixels, which a sub-1M-parameter UNet handles easily.

    Why bilinear (``align_corners=False``) rather than nearest: nearest makes every image
    piecewise constant on 2x2 blocks, a hard linear constraint that the prior would have to learn
    exactly (its score blows up orthogonal to it), and 2x super-resolution of such images is
    trivially the identity. Bilinear gives smooth strokes, closer to a real 16x16 digit. The data
    are still 64-dimensional; the training augmentation (small random rotations, scalings and
    sub-pixel shifts, resampled bilinearly from the 8x8 original) fills out the 16x16 space around
    them so that the prior is not degenerate and generalises beyond the 1581 training digits.
    """
    _check_split(split)
    x8, y = _digits_raw()
    tr, te = _digits_split_indices(y)
    idx = torch.as_tensor(tr if split == "train" else te)
    x = _upsample_digits(x8[idx], size).contiguous()
    return (x, torch.as_tensor(y[idx.numpy()])) if return_labels else x


def _random_affine_resample(x8: torch.Tensor, size: int, generator: torch.Generator,
                            max_rot_deg: float = 10.0, max_scale: float = 0.1, max_shift: float = 0.1):
    """Resample ``x8`` to ``size`` x ``size`` under a small random affine map (bilinear).

    With the identity map this equals :func:`_upsample_digits` (``padding_mode='border'``).
    Shifts are in normalised coordinates (0.1 = 0.4 input pixels = 0.8 output pixels).
    """
    B = x8.shape[0]
    dev = x8.device
    u = torch.rand(B, 4, generator=generator, device=dev) * 2 - 1
    ang = u[:, 0] * math.radians(max_rot_deg)
    s = 1.0 + u[:, 1] * max_scale
    c, si = torch.cos(ang) / s, torch.sin(ang) / s
    theta = torch.stack([torch.stack([c, -si, u[:, 2] * max_shift], -1),
                         torch.stack([si, c, u[:, 3] * max_shift], -1)], 1)
    grid = F.affine_grid(theta, (B, x8.shape[1], size, size), align_corners=False)
    return F.grid_sample(x8, grid, mode="bilinear", padding_mode="border", align_corners=False)


class _DigitsSource:
    name = "digits"

    def __init__(self, device, size=16, augment=True):
        x8, y = _digits_raw()
        tr, te = _digits_split_indices(y)
        self.size = size
        self.augment = augment
        self.train8 = x8[torch.as_tensor(tr)].to(device)
        self.train = _upsample_digits(self.train8, size)
        self.test = _upsample_digits(x8[torch.as_tensor(te)], size).to(device)
        self.description = (f"scikit-learn load_digits 8x8 -> {size}x{size} bilinear, [-1,1]; stratified "
                            f"{DIGITS_HELDOUT_FRACTION:.0%} held out (split seed {SPLIT_SEED})"
                            + ("; train augmentation: random rotation +-10 deg, scale +-10%, shift +-0.8 px"
                               if augment else ""))

    def sample(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        dev = self.train8.device
        idx = torch.randint(0, self.train8.shape[0], (batch,), generator=generator, device=dev)
        if not self.augment:
            return self.train[idx]
        return _random_affine_resample(self.train8[idx], self.size, generator)


# ---------------------------------------------------------------------------------------------
# natural-image patches
# ---------------------------------------------------------------------------------------------
def _load_photo(spec: str) -> torch.Tensor:
    """Grayscale photograph in [0, 1] as a float32 tensor (H, W); reads the bundled file directly."""
    lib, fname = spec.split(":", 1)
    if lib == "skimage":
        try:
            import skimage.data
            import skimage.io
        except ImportError as e:  # pragma: no cover
            raise ImportError("the patches data set needs scikit-image (pip install 'ppl-diffusion[images]')") from e
        path = os.path.join(os.path.dirname(skimage.data.__file__), fname)
        if not os.path.exists(path):
            raise FileNotFoundError(f"{fname} is not bundled with this scikit-image install ({path})")
        img = np.asarray(skimage.io.imread(path))
    elif lib == "sklearn":
        try:
            from sklearn.datasets import load_sample_image
        except ImportError as e:  # pragma: no cover
            raise ImportError("the patches data set needs scikit-learn (pip install 'ppl-diffusion[images]')") from e
        img = np.asarray(load_sample_image(fname))
    else:  # pragma: no cover - internal
        raise ValueError(f"unknown image source {spec!r}")
    img = img.astype(np.float64)
    if img.ndim == 3:
        img = img[..., :3] @ np.array([0.2125, 0.7154, 0.0721])  # skimage.color.rgb2gray weights
    if img.max() > 1.0:
        img = img / 255.0
    return torch.as_tensor(img, dtype=torch.float32)


def _photo_pyramid(specs: Sequence[str]):
    """Every photograph at each scale in ``PATCH_SCALES`` (2x2 average pooling), in [-1, 1]."""
    out = []
    for spec in specs:
        img = _load_photo(spec) * 2 - 1
        for s in PATCH_SCALES:
            im = img if s == 1 else F.avg_pool2d(img[None, None], s)[0, 0]
            out.append((f"{spec}@1/{s}", im))
    return out


def _gather_patches(bank, sizes, img_idx, oy, ox, p):
    ar = torch.arange(p, device=bank.device)
    rows = (oy[:, None] + ar)[:, :, None]
    cols = (ox[:, None] + ar)[:, None, :]
    return bank[img_idx[:, None, None], rows, cols].unsqueeze(1)


def _dihedral(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random horizontal flip, vertical flip and transpose per image (the 8 symmetries of a square)."""
    B = x.shape[0]
    f = torch.rand(B, 3, generator=generator, device=x.device) < 0.5
    x = torch.where(f[:, 0, None, None, None], x.flip(-1), x)
    x = torch.where(f[:, 1, None, None, None], x.flip(-2), x)
    return torch.where(f[:, 2, None, None, None], x.transpose(-1, -2), x)


class _PatchSource:
    name = "patches"

    def __init__(self, specs: Sequence[str], device, p: int = PATCH_SIZE, augment: bool = True):
        imgs = _photo_pyramid(specs)
        self.names = [n for n, _ in imgs]
        H = max(im.shape[0] for _, im in imgs)
        W = max(im.shape[1] for _, im in imgs)
        bank = torch.zeros(len(imgs), H, W)
        for k, (_, im) in enumerate(imgs):
            bank[k, : im.shape[0], : im.shape[1]] = im
        self.bank = bank.to(device)
        self.sizes = torch.tensor([[im.shape[0], im.shape[1]] for _, im in imgs], device=device)
        self.p = p
        self.augment = augment
        # positions uniform within each scale, every scale drawn equally often (otherwise the
        # half-resolution copies, with a quarter of the positions, would be rare)
        counts = ((self.sizes[:, 0] - p + 1) * (self.sizes[:, 1] - p + 1)).double()
        scale = torch.tensor([int(n.rsplit("/", 1)[1]) for n in self.names], device=counts.device)
        w = torch.zeros_like(counts)
        for s in scale.unique():
            m = scale == s
            w[m] = counts[m] / counts[m].sum()
        self.weights = w / w.sum()

    def sample(self, batch: int, generator: torch.Generator, augment: bool | None = None) -> torch.Tensor:
        dev = self.bank.device
        k = torch.multinomial(self.weights, batch, replacement=True, generator=generator)
        u = torch.rand(batch, 2, generator=generator, device=dev, dtype=torch.float64)
        hmax = (self.sizes[k, 0] - self.p + 1).double()
        wmax = (self.sizes[k, 1] - self.p + 1).double()
        oy = (u[:, 0] * hmax).long()
        ox = (u[:, 1] * wmax).long()
        x = _gather_patches(self.bank, self.sizes, k, oy, ox, self.p)
        if self.augment if augment is None else augment:
            x = _dihedral(x, generator)
        return x


def patches_dataset(split: str = "train", num: int | None = None, seed: int = SPLIT_SEED,
                    augment: bool | None = None) -> torch.Tensor:
    """32x32 grayscale patches in [-1, 1] of photographs installed with scikit-image / scikit-learn.

    ``train``: patches of the 11 training photographs (``PATCH_TRAIN_IMAGES``), each at full
    resolution and 2x2 average-pooled, positions uniform over all valid positions, random
    flips / transposes (``augment``, default on); ``num`` defaults to 4096 (training itself draws
    fresh patches every step). ``test``: ``num`` (default 256) patches of the two held-out
    photographs (``camera``, sklearn's ``china``), both scales, no flips; deterministic for a
    ``seed``. The held-out photographs never enter training, so evaluation is on unseen scenes.
    Files are read straight from the installed packages (nothing is fetched by pooch).
    Returns float32 ``(num, 1, 32, 32)``.
    """
    _check_split(split)
    if split == "train":
        src = _PatchSource(PATCH_TRAIN_IMAGES, "cpu", augment=True if augment is None else augment)
        num = 4096 if num is None else int(num)
    else:
        src = _PatchSource(PATCH_HELDOUT_IMAGES, "cpu", augment=False if augment is None else augment)
        num = PATCH_HELDOUT_COUNT if num is None else int(num)
    if num <= 0:
        raise ValueError(f"num must be a positive number of patches, got {num}")
    g = torch.Generator().manual_seed(int(seed))
    return src.sample(num, g).contiguous()


def _make_source(dataset: str, device, augment: bool):
    if dataset == "digits":
        return _DigitsSource(device, 16, augment)
    if dataset == "patches":
        src = _PatchSource(PATCH_TRAIN_IMAGES, device, augment=augment)
        src.test = patches_dataset("test").to(device)
        g = torch.Generator(device=device).manual_seed(SPLIT_SEED + 1)
        src.train = src.sample(2048, g, augment=False)
        src.description = (f"{PATCH_SIZE}x{PATCH_SIZE} grayscale patches, [-1,1], scales 1 and 1/2, of "
                           f"{', '.join(PATCH_TRAIN_IMAGES)}; held out whole: {', '.join(PATCH_HELDOUT_IMAGES)}"
                           + ("; random flips/transposes" if augment else ""))
        return src
    raise ValueError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")


# ---------------------------------------------------------------------------------------------
# network, training, sampling
# ---------------------------------------------------------------------------------------------
def build_unet(sample_size: int, channels: Sequence[int], attention: Sequence[bool] | None = None,
               layers_per_block: int = 1, in_channels: int = 1, norm_num_groups: int = 8,
               attention_head_dim: int = 32):
    """A small diffusers ``UNet2DModel``; ``attention[i]`` puts self-attention in level ``i``."""
    from diffusers import UNet2DModel

    channels = tuple(int(c) for c in channels)
    if not channels or any(c <= 0 or c % norm_num_groups for c in channels):
        raise ValueError(f"channels must be positive multiples of {norm_num_groups}, got {channels}")
    attention = tuple(bool(a) for a in (attention if attention is not None else [False] * len(channels)))
    if len(attention) != len(channels):
        raise ValueError(f"attention needs one flag per level ({len(channels)}), got {len(attention)}")
    if sample_size % (2 ** (len(channels) - 1)):
        raise ValueError(f"sample_size {sample_size} is not divisible by 2^{len(channels) - 1}")
    # the mid block always has self-attention on channels[-1]: it needs at least one head too
    att_ch = [c for c, a in zip(channels, attention) if a] + [channels[-1]]
    attention_head_dim = min([attention_head_dim] + att_ch)  # at least one head per attention level
    down = tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attention)
    up = tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention))
    return UNet2DModel(
        sample_size=sample_size, in_channels=in_channels, out_channels=in_channels,
        block_out_channels=channels, layers_per_block=layers_per_block,
        down_block_types=down, up_block_types=up, norm_num_groups=norm_num_groups,
        attention_head_dim=attention_head_dim,
    )


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


@torch.no_grad()
def ddpm_sample(unet, scheduler_config: dict, num: int, steps: int = 1000, generator=None, device=None):
    """Ancestral DDPM samples of ``unet`` with ``steps`` (<= 1000) evenly spaced steps, clipped to [-1, 1]."""
    from diffusers import DDPMScheduler

    sched = DDPMScheduler.from_config(scheduler_config)
    sched.set_timesteps(steps)
    cfg = unet.config
    size = cfg.sample_size
    H, W = (size, size) if isinstance(size, int) else tuple(size)
    dev = device or next(unet.parameters()).device
    x = torch.randn((num, cfg.in_channels, H, W), generator=generator, device=dev)
    for t in sched.timesteps:
        eps = unet(x, t.to(dev).expand(num)).sample
        x = sched.step(eps, t, x, generator=generator).prev_sample
    return x.clamp(-1, 1)


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


def _nn_dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """RMS per-pixel distance of each row of ``a`` to its nearest row of ``b``."""
    a, b = a.flatten(1).double(), b.flatten(1).double()
    d = torch.cdist(a, b).min(1).values
    return d / math.sqrt(a.shape[1])


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
    T = ac.numel()

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
        t = torch.randint(0, T, (batch_size,), generator=g, device=dev)
        eps = torch.randn(x0.shape, generator=g, device=dev)
        ab = ac[t].view(-1, 1, 1, 1)
        xt = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
        loss = F.mse_loss(unet(xt, t).sample, eps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        d = min(ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, params, 1.0 - d)
        run += loss.detach()
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
        "split": {"train": int(src.train8.shape[0]) if dataset_name == "digits" else "random patches of "
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
                    "sampler": f"ancestral DDPM, {sample_steps} steps" + (", x0 clipped to [-1, 1]" if clip_sample else ""),
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


# ---------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------
def _int_list(s: str):
    try:
        return tuple(int(v) for v in s.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {s!r}")


def add_train_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``train-prior`` options to ``parser`` (used by ``python -m ppl_diffusion.training``
    and by the ``ppl-diffusion train-prior`` subcommand)."""
    parser.add_argument("--dataset", required=True, choices=DATASETS,
                        help="training data: 'digits' (sklearn 8x8 digits at 16x16) or 'patches' "
                             "(32x32 grayscale patches of bundled photographs)")
    parser.add_argument("--out", required=True, help="output folder (diffusers format: unet/, scheduler/)")
    parser.add_argument("--steps", type=int, default=None, help="optimisation steps (default: digits 5000, patches 4000)")
    parser.add_argument("--batch-size", type=int, default=None, help="batch size (default 64)")
    parser.add_argument("--lr", type=float, default=None, help="peak AdamW learning rate (default 2e-3)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--channels", type=_int_list, default=None,
                        help="UNet channels per level, e.g. 32,64,64 (default: preset of the data set)")
    parser.add_argument("--attention", type=_int_list, default=None,
                        help="self-attention per level as 0/1 flags, e.g. 0,1,1 (default: preset)")
    parser.add_argument("--layers-per-block", type=int, default=None, help="ResNet blocks per level (default 1)")
    parser.add_argument("--ema-decay", type=float, default=None, help="EMA decay of the weights (default 0.999)")
    parser.add_argument("--warmup", type=int, default=None, help="learning-rate warm-up steps (default 200)")
    parser.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay (default 0)")
    parser.add_argument("--no-augment", action="store_true",
                        help="train without augmentation (digits: small affine jitter; patches: flips)")
    parser.add_argument("--clip-sample", action=argparse.BooleanOptionalAction, default=None,
                        help="write clip_sample to the scheduler config and clip x0 when drawing samples.png "
                             "(default: on for patches, off for digits)")
    parser.add_argument("--device", default="auto", help="'cpu', 'cuda', 'cuda:1' or 'auto' (default)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (e.g. 2)")
    parser.add_argument("--num-samples", type=int, default=64, help="samples in samples.png (default 64)")
    parser.add_argument("--sample-steps", type=int, default=1000,
                        help="ancestral DDPM steps for samples.png (default 1000)")
    parser.add_argument("--log-every", type=int, default=100, help="print the mean loss every N steps")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    return parser


def main_train(args: argparse.Namespace) -> int:
    """Run :func:`train_prior` from parsed ``add_train_arguments`` options; returns an exit code."""
    train_prior(
        args.dataset, args.out, steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
        channels=args.channels, attention=args.attention, layers_per_block=args.layers_per_block,
        ema_decay=args.ema_decay, warmup=args.warmup, weight_decay=args.weight_decay,
        augment=False if args.no_augment else None, clip_sample=args.clip_sample, device=args.device, num_threads=args.threads,
        num_samples=args.num_samples, sample_steps=args.sample_steps, log_every=args.log_every,
        verbose=not args.quiet,
    )
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ppl_diffusion.training",
                                     description="Train a small diffusion prior (diffusers UNet2DModel + "
                                                 "DDPMScheduler) on offline data and save it in diffusers format.")
    add_train_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return main_train(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
