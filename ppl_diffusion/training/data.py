"""Training data built from files installed with scikit-learn / scikit-image (nothing is downloaded).

* ``digits``: the 1797 bundled 8x8 digits in [-1, 1], resampled to 16x16, a stratified 12 % held out
  (:func:`digits_dataset`);
* ``patches``: 32x32 grayscale patches of bundled photographs at two scales, two photographs held out
  whole (:func:`patches_dataset`).

The held-out split depends only on :data:`SPLIT_SEED`, never on the training seed.
"""
from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["DATASETS", "SPLIT_SEED", "DIGITS_HELDOUT_FRACTION", "PATCH_HELDOUT_IMAGES", "PATCH_TRAIN_IMAGES",
           "PATCH_SIZE", "PATCH_SCALES", "PATCH_HELDOUT_COUNT", "digits_dataset", "patches_dataset"]

DATASETS = ("digits", "patches", "kernels")

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
    if dataset == "kernels":
        from .kernel_data import KernelSource

        return KernelSource(device)
    raise ValueError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
