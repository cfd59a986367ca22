"""Shared helpers of the examples: fast mode, the prior, a held-out image.

Every example accepts ``--fast`` (or the environment variable ``PPL_FAST=1``): tiny step counts so
that CI runs them in seconds. ``PPL_PRIOR`` picks the prior (a shipped name or a diffusers folder
holding ``heldout.npy``; default ``digits``).
"""
import os
import sys

import torch

from ppl_diffusion.compat import ensure_diffusers_importable

ensure_diffusers_importable()


def fast_mode() -> bool:
    return "--fast" in sys.argv[1:] or os.environ.get("PPL_FAST", "") not in ("", "0")


def prior_name() -> str:
    return os.environ.get("PPL_PRIOR", "digits")


def heldout(i: int = 0, name: str | None = None) -> torch.Tensor:
    from ppl_diffusion.models.zoo import heldout_images

    return heldout_images(name or prior_name())[i]


def out_dir(sub: str) -> str:
    d = os.environ.get("PPL_EXAMPLES_OUT", os.path.join("out", "examples"))
    path = os.path.join(d, sub)
    os.makedirs(path, exist_ok=True)
    return path
