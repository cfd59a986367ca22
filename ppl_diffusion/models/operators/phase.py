"""Fourier phase retrieval (:class:`PhaseRetrieval`), the nonlinear operator ``|fft2(pad(x))|``."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .base import Operator, _as_shape
from .fourier import _fft2

__all__ = ["PhaseRetrieval"]


class PhaseRetrieval(Operator):
    """Fourier phase retrieval ``y = |fft2(pad(x), norm="ortho")|`` (nonlinear, differentiable).

    ``x`` of shape ``(..., H, W)`` is zero-padded (centred: ``(Hp - H) // 2`` rows before) to
    ``Hp = round(oversampling * H)``, ``Wp = round(oversampling * W)``; ``out_shape = (..., Hp, Wp)``.
    (DPS / PnP-DM pad ``(os/8) * side`` per side for ``os = 2`` - a padded side of 1.5 x; here the
    padded side is ``oversampling`` x the image side.) The gradient of ``|z|`` at ``z = 0`` is taken
    as 0.
    """

    name = "phase_retrieval"

    def __init__(self, in_shape, oversampling: float = 2.0):
        in_shape = _as_shape(in_shape, "in_shape")
        if len(in_shape) < 2:
            raise ValueError(f"in_shape must be (..., H, W), got {in_shape}")
        os_ = float(oversampling)
        if not (math.isfinite(os_) and os_ >= 1.0):
            raise ValueError(f"oversampling must be a finite float >= 1, got {oversampling}")
        H, W = in_shape[-2:]
        Hp, Wp = int(round(os_ * H)), int(round(os_ * W))
        super().__init__(in_shape, (*in_shape[:-2], Hp, Wp))
        self.oversampling = os_
        top, left = (Hp - H) // 2, (Wp - W) // 2
        self._pad = (left, Wp - W - left, top, Hp - H - top)

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """The zero-padded image ``(..., Hp, Wp)``."""
        return F.pad(x, self._pad)

    def forward(self, x):
        return _fft2(self.pad(x)).abs()
