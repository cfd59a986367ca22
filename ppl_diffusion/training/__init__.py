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

Layout: :mod:`.data` (data sets), :mod:`.unet` (presets, scheduler config, UNet builder, DDPM
sampler), :mod:`.loop` (:func:`train_prior`), :mod:`.cli` (command line).

This package imports only torch, numpy and diffusers (plus scikit-learn / scikit-image inside the
data builders and Pillow for the sample grid) so that it can run on a bare training machine.
"""
from .cli import add_train_arguments, main, main_train
from .data import (
    DATASETS,
    DIGITS_HELDOUT_FRACTION,
    PATCH_HELDOUT_COUNT,
    PATCH_HELDOUT_IMAGES,
    PATCH_SCALES,
    PATCH_SIZE,
    PATCH_TRAIN_IMAGES,
    SPLIT_SEED,
    _digits_raw as _digits_raw,  # the split's helpers stay importable here (tests check the split)
    _digits_split_indices as _digits_split_indices,
    digits_dataset,
    patches_dataset,
)
from .loop import train_prior
from .unet import PRESETS, SCHEDULER_CONFIG, build_unet, ddpm_sample

__all__ = [
    "DATASETS",
    "PRESETS",
    "SCHEDULER_CONFIG",
    "SPLIT_SEED",
    "DIGITS_HELDOUT_FRACTION",
    "PATCH_HELDOUT_IMAGES",
    "PATCH_TRAIN_IMAGES",
    "PATCH_SIZE",
    "PATCH_SCALES",
    "PATCH_HELDOUT_COUNT",
    "digits_dataset",
    "patches_dataset",
    "build_unet",
    "ddpm_sample",
    "train_prior",
    "add_train_arguments",
    "main_train",
    "main",
]
