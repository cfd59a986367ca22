"""Masking operators: :class:`Identity` (denoising) and :class:`Inpainting` (``y = mask * x``)."""
from __future__ import annotations

import math

import torch

from .base import LinearOperator, _as_bool_mask, _as_shape, _batch, _cast, _float_dtype, _rho_view

__all__ = ["Identity", "Inpainting"]


class Identity(LinearOperator):
    """``y = x`` (denoising). SVD: ``U = V = I`` (flattening), ``s = 1`` (length ``in_dim``)."""

    name = "denoising"
    has_svd = True

    def __init__(self, shape, dtype=None, device=None):
        super().__init__(shape, shape)
        self.singular_values = torch.ones(self.in_dim, dtype=_float_dtype(dtype), device=device)

    def forward(self, x):
        return x

    def _adjoint(self, y):
        return y

    def _normal(self, x):
        return x

    def _pinv(self, y):
        return y

    def _prox(self, x0, y, rho):
        rr = _rho_view(rho, len(self.in_shape))
        return (y + rr * x0) / (1.0 + rr)

    def _Vt(self, x):
        return x.reshape(*_batch(x, self.in_shape), self.in_dim)

    def _V(self, c):
        return c.reshape(*c.shape[:-1], *self.in_shape)

    _Ut = _Vt
    _U = _V


class Inpainting(LinearOperator):
    """``y = mask * x`` at full size (``out_shape == in_shape``; unobserved entries of ``y`` are 0).

    ``mask``: bool tensor (True = observed) of ``in_shape``; with ``shape`` given, a mask that
    broadcasts to ``shape`` (e.g. an ``(H, W)`` mask for a ``(C, H, W)`` image). SVD (as DDRM's
    inpainting H-functions, but in the natural C-order flattening, not channel-interleaved):
    ``Vt(x) = Ut(x) = [x_kept, x_missing]`` (each in increasing flat index), ``s = 1`` for the r kept
    entries, ``U = V``.
    """

    name = "inpainting"
    has_svd = True

    def __init__(self, mask: torch.Tensor, shape=None, dtype=None):
        mask = _as_bool_mask(mask, "mask")
        if shape is None:
            if mask.dim() == 0:
                raise ValueError("mask must have at least one dimension")
            shape = tuple(mask.shape)
        else:
            shape = _as_shape(shape, "shape")
            try:
                ok = mask.dim() <= len(shape) and torch.broadcast_shapes(mask.shape, shape) == torch.Size(shape)
            except RuntimeError:
                ok = False
            if not ok:
                raise ValueError(f"mask of shape {tuple(mask.shape)} does not match (broadcast to) shape {shape}")
        super().__init__(shape, shape)
        self.mask = mask.expand(shape).contiguous()
        flat = self.mask.reshape(-1)
        kept = torch.nonzero(flat).squeeze(1)
        missing = torch.nonzero(~flat).squeeze(1)
        self.perm = torch.cat([kept, missing])
        self.inv_perm = torch.argsort(self.perm)
        self.singular_values = torch.ones(kept.numel(), dtype=_float_dtype(dtype), device=mask.device)

    @classmethod
    def random(cls, shape, missing_fraction: float, generator: torch.Generator | None = None,
               per_pixel: bool = True, dtype=None, device=None) -> Inpainting:
        """Drop exactly ``round(missing_fraction * n)`` entries uniformly at random.

        For a shape with 3 or more dims and ``per_pixel=True`` (default) pixels are dropped in all
        channels (the mask is drawn over the last two dims); otherwise entry by entry.
        """
        shape = _as_shape(shape, "shape")
        if not 0.0 <= float(missing_fraction) <= 1.0:
            raise ValueError(f"missing_fraction must be in [0, 1], got {missing_fraction}")
        draw = shape[-2:] if (per_pixel and len(shape) >= 3) else shape
        n = math.prod(draw)
        if generator is not None:
            device = generator.device
        idx = torch.randperm(n, generator=generator, device=device)
        flat = torch.ones(n, dtype=torch.bool, device=device)
        flat[idx[: int(round(float(missing_fraction) * n))]] = False
        return cls(flat.reshape(draw), shape=shape, dtype=dtype)

    @classmethod
    def box(cls, shape, top: int, left: int, height: int, width: int, dtype=None, device=None) -> Inpainting:
        """Missing rectangle ``[top:top+height, left:left+width]`` over the last two dims, all channels."""
        shape = _as_shape(shape, "shape")
        if len(shape) < 2:
            raise ValueError(f"shape must have at least 2 dims (..., H, W), got {shape}")
        H, W = shape[-2:]
        if not (0 <= top and 0 <= left and height >= 0 and width >= 0 and top + height <= H and left + width <= W):
            raise ValueError(f"box top={top}, left={left}, height={height}, width={width} "
                             f"does not fit in (H, W)=({H}, {W})")
        mask = torch.ones(shape, dtype=torch.bool, device=device)
        mask[..., top: top + height, left: left + width] = False
        return cls(mask, dtype=dtype)

    def forward(self, x):
        return torch.where(_cast(self.mask, x), x, 0.0)

    _adjoint = forward
    _normal = forward
    _pinv = forward

    def _prox(self, x0, y, rho):
        m = _cast(self.mask, x0).to(x0.dtype)
        rr = _rho_view(rho, len(self.in_shape))
        return (m * y + rr * x0) / (m + rr)

    def _Vt(self, x):
        return x.reshape(*_batch(x, self.in_shape), self.in_dim)[..., _cast(self.perm, x)]

    def _V(self, c):
        return c[..., _cast(self.inv_perm, c)].reshape(*c.shape[:-1], *self.in_shape)

    _Ut = _Vt
    _U = _V
