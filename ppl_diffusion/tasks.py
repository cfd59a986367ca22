"""Inverse problems by name: forward operators with their parameters and the Pyro model.

* :data:`OPERATORS` / :func:`make_operator` — an operator by name (``inpainting``, ``box``, ``sr``,
  ``blur``, ``phase``, ``identity``, ``cs``, ``mri``) for images of a given shape;
* :func:`parse_op_args` — ``key=value`` command-line parameters to a dict;
* :func:`make_model` — the Pyro model ``x ~ prior; y ~ GaussianMeasurement(A, x, sigma_y)``.
"""
from __future__ import annotations

import json
import math

import torch

__all__ = ["OPERATORS", "parse_op_args", "make_operator", "make_model"]

OPERATORS = {
    "inpainting": "random pixel inpainting; args: missing=0.5 (fraction of pixels removed), seed=0",
    "box": "box inpainting; args: top, left, height, width (default: a centred box of half the side)",
    "sr": "super-resolution by block averaging; args: factor=2",
    "blur": "Gaussian deblurring (periodic FFT blur); args: sigma=1.0, size (odd kernel size, default 4*sigma+1)",
    "phase": "Fourier phase retrieval y = |FFT(pad(x))|; args: oversampling=2.0",
    "identity": "denoising (y = x + noise); no args",
    "cs": "compressed sensing with a Gaussian matrix; args: m (measurements, default d/4), seed=0",
    "mri": "Cartesian MRI (subsampled Fourier rows); args: acceleration=4, center_fraction=0.08, seed=0",
}
_ALIASES = {"random": "inpainting", "inpaint": "inpainting", "super_resolution": "sr", "superres": "sr",
            "deblur": "blur", "phase_retrieval": "phase", "denoise": "identity", "denoising": "identity",
            "compressed_sensing": "cs"}


def parse_op_args(items) -> dict:
    """``["factor=2", "sigma=1.5"]`` or ``"factor=2,sigma=1.5"`` -> ``{"factor": 2, "sigma": 1.5}``."""
    if items is None:
        return {}
    if isinstance(items, dict):
        return dict(items)
    if isinstance(items, str):
        items = [items]
    out = {}
    for item in items:
        for part in str(item).split(","):
            part = part.strip()
            if not part:
                continue
            if "=" not in part:
                raise ValueError(f"--op-args: expected key=value, got {part!r}")
            k, v = part.split("=", 1)
            try:
                out[k.strip()] = json.loads(v)
            except json.JSONDecodeError:
                out[k.strip()] = v
    return out


def make_operator(name: str, shape, dtype=torch.float32, **args):
    """An operator by name (see :data:`OPERATORS`) for images of ``shape`` ``(C, H, W)``."""
    from .models import operators as O

    key = _ALIASES.get(str(name).lower(), str(name).lower())
    if key not in OPERATORS:
        raise ValueError(f"unknown operator {name!r}; choose one of {', '.join(OPERATORS)}")
    shape = tuple(int(s) for s in shape)
    args = dict(args)
    allowed = {"inpainting": {"missing", "seed"}, "box": {"top", "left", "height", "width"}, "sr": {"factor"},
               "blur": {"sigma", "size"}, "phase": {"oversampling"}, "identity": set(), "cs": {"m", "seed"},
               "mri": {"acceleration", "center_fraction", "seed"}}[key]
    unknown = set(args) - allowed
    if unknown:
        raise ValueError(f"operator {key!r}: unknown arguments {sorted(unknown)}; allowed: {sorted(allowed) or 'none'}")
    H, W = shape[-2:]
    if key == "inpainting":
        g = torch.Generator().manual_seed(int(args.get("seed", 0)))
        return O.Inpainting.random(shape, float(args.get("missing", 0.5)), generator=g, dtype=dtype)
    if key == "box":
        h, w = int(args.get("height", H // 2)), int(args.get("width", W // 2))
        top, left = int(args.get("top", (H - h) // 2)), int(args.get("left", (W - w) // 2))
        return O.Inpainting.box(shape, top, left, h, w, dtype=dtype)
    if key == "sr":
        f = int(args.get("factor", 2))
        if f < 1 or H % f or W % f:
            raise ValueError(f"operator 'sr': factor {f} must divide the image size {H}x{W}")
        return O.SuperResolution(f, shape, dtype=dtype)
    if key == "blur":
        kw = {"size": int(args["size"])} if "size" in args else {}
        return O.Blur.gaussian(shape, float(args.get("sigma", 1.0)), dtype=dtype, **kw)
    if key == "phase":
        return O.PhaseRetrieval(shape, oversampling=float(args.get("oversampling", 2.0)))
    if key == "identity":
        return O.Identity(shape, dtype=dtype)
    if key == "cs":
        g = torch.Generator().manual_seed(int(args.get("seed", 0)))
        d = math.prod(shape)
        return O.CompressedSensing(int(args.get("m", d // 4)), shape, generator=g, dtype=dtype)
    g = torch.Generator().manual_seed(int(args.get("seed", 0)))
    return O.MRI.cartesian(shape, acceleration=float(args.get("acceleration", 4.0)),
                           center_fraction=float(args.get("center_fraction", 0.08)), generator=g, dtype=dtype)


def make_model(prior, operator, noise_std: float):
    """The Pyro model ``x ~ prior; y ~ GaussianMeasurement(operator, x, noise_std)``."""
    import pyro

    from .models.measurement import GaussianMeasurement

    def model(y=None):
        x = pyro.sample("x", prior)
        return pyro.sample("y", GaussianMeasurement(operator, x, noise_std), obs=y)

    return model
