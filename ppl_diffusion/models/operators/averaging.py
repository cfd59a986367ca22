"""Block-averaging operators with per-block SVDs: :class:`SuperResolution` (mean over f x f pixel
blocks) and :class:`Colorization` (mean over the channels of each pixel). Both right singular bases
are orthonormal DCT-II transforms per block, whose first basis vector is the constant."""
from __future__ import annotations

import math

import torch

from .base import LinearOperator, _as_shape, _batch, _cast, _float_dtype, _rho_view

__all__ = ["SuperResolution", "Colorization"]


def _dct_basis(n: int, dtype=None, device=None) -> torch.Tensor:
    """Orthonormal DCT-II matrix ``(n, n)``; row 0 is the constant ``1/sqrt(n)``."""
    k = torch.arange(n, dtype=torch.float64).unsqueeze(1)
    i = torch.arange(n, dtype=torch.float64).unsqueeze(0)
    Q = math.sqrt(2.0 / n) * torch.cos(math.pi * (i + 0.5) * k / n)
    Q[0] = 1.0 / math.sqrt(n)
    return Q.to(dtype=_float_dtype(dtype), device=device)



class SuperResolution(LinearOperator):
    """Block averaging by an integer ``factor`` f over the last two dims of ``(..., H, W)``.

    ``out_shape = (..., H/f, W/f)``; H and W must be divisible by f. Per f x f block the operator is
    the row ``(1/f^2) 1^T`` of norm ``sqrt(f^2)/f^2 = 1/f``: one singular value ``1/f`` with right
    vector ``1/f`` (constant, unit norm) and ``U = 1``. ``Vt`` applies the separable orthonormal
    DCT-II per block (its (0, 0) basis vector is the constant ``1/f``); layout as DDRM's SR
    H-functions: first the C*P block coefficients (0, 0) in ``y``'s (c, h, w) order, then for each
    block its f^2 - 1 other coefficients. ``Ut`` = flattening of ``y``. Never dense.
    """

    name = "super_resolution"
    has_svd = True

    def __init__(self, factor: int, in_shape, dtype=None, device=None):
        if isinstance(factor, bool) or int(factor) != factor or factor < 1:
            raise ValueError(f"factor must be a positive int, got {factor!r}")
        f = int(factor)
        in_shape = _as_shape(in_shape, "in_shape")
        if len(in_shape) < 2:
            raise ValueError(f"in_shape must be (..., H, W), got {in_shape}")
        H, W = in_shape[-2:]
        if H % f or W % f:
            raise ValueError(f"factor {f} must divide the image size (H, W)=({H}, {W})")
        super().__init__(in_shape, (*in_shape[:-2], H // f, W // f))
        self.factor = f
        self._C = math.prod(in_shape[:-2])
        self._Q = _dct_basis(f, dtype, device)
        self.singular_values = torch.full((self.out_dim,), 1.0 / f, dtype=_float_dtype(dtype), device=device)

    def forward(self, x):
        f = self.factor
        b = _batch(x, self.in_shape)
        Hb, Wb = self.out_shape[-2:]
        return x.reshape(*b, *self.in_shape[:-2], Hb, f, Wb, f).mean(dim=(-3, -1))

    def _upsample(self, y):
        f = self.factor
        b = _batch(y, self.out_shape)
        Hb, Wb = self.out_shape[-2:]
        up = y.unsqueeze(-1).unsqueeze(-3).expand(*y.shape[:-2], Hb, f, Wb, f)
        return up.reshape(*b, *self.in_shape)

    def _adjoint(self, y):
        return self._upsample(y) / self.factor**2

    def _normal(self, x):
        return self._upsample(self.forward(x)) / self.factor**2

    def _pinv(self, y):
        return self._upsample(y)

    def _prox(self, x0, y, rho):
        # (A^T A + rho)^{-1} in closed form: x0 + up((y - A x0) / (1 + rho f^2))
        rr = _rho_view(rho, len(self.out_shape))
        return x0 + self._upsample((y - self.forward(x0)) / (1.0 + rr * self.factor**2))

    def _Vt(self, x):
        f, C = self.factor, self._C
        b = _batch(x, self.in_shape)
        Hb, Wb = self.out_shape[-2:]
        Q = _cast(self._Q, x)
        coef = torch.einsum("...chiwj,ai,bj->...chwab", x.reshape(*b, C, Hb, f, Wb, f), Q, Q)
        coef = coef.reshape(*b, C, Hb * Wb, f * f)
        P = C * Hb * Wb
        return torch.cat([coef[..., 0].reshape(*b, P), coef[..., 1:].reshape(*b, P * (f * f - 1))], dim=-1)

    def _V(self, c):
        f, C = self.factor, self._C
        b = c.shape[:-1]
        Hb, Wb = self.out_shape[-2:]
        P = Hb * Wb
        head = c[..., : C * P].reshape(*b, C, P, 1)
        tail = c[..., C * P:].reshape(*b, C, P, f * f - 1)
        coef = torch.cat([head, tail], dim=-1).reshape(*b, C, Hb, Wb, f, f)
        Q = _cast(self._Q, c)
        x = torch.einsum("...chwab,ai,bj->...chiwj", coef, Q, Q)
        return x.reshape(*b, *self.in_shape)

    def _Ut(self, y):
        return y.reshape(*_batch(y, self.out_shape), self.out_dim)

    def _U(self, c):
        return c.reshape(*c.shape[:-1], *self.out_shape)


class Colorization(LinearOperator):
    """Gray = mean of the C channels of ``(C, H, W)`` (exactly 1/3 each for RGB; DDRM uses
    0.3333/0.3334/0.3333). ``out_shape = (1, H, W)``.

    SVD per pixel: the row ``(1/C) 1^T`` has one singular value ``1/sqrt(C)`` (1/sqrt(3) for RGB),
    right vector ``1/sqrt(C)`` (constant), ``U = 1``. ``Vt`` applies the orthonormal C x C DCT-II
    across channels, output channel-major: the first H*W entries are the luminance coefficients.
    """

    name = "colorization"
    has_svd = True

    def __init__(self, in_shape=(3, 64, 64), dtype=None, device=None):
        in_shape = _as_shape(in_shape, "in_shape")
        if len(in_shape) != 3:
            raise ValueError(f"in_shape must be (C, H, W), got {in_shape}")
        C, H, W = in_shape
        super().__init__(in_shape, (1, H, W))
        self._Q = _dct_basis(C, dtype, device)
        self.singular_values = torch.full((H * W,), 1.0 / math.sqrt(C), dtype=_float_dtype(dtype), device=device)

    def forward(self, x):
        return x.mean(dim=-3, keepdim=True)

    def _expand(self, y):
        return y.expand(*y.shape[:-3], *self.in_shape)

    def _adjoint(self, y):
        return self._expand(y) / self.in_shape[0]

    def _normal(self, x):
        return self._expand(self.forward(x)) / self.in_shape[0]

    def _pinv(self, y):
        return self._expand(y).clone()

    def _prox(self, x0, y, rho):
        rr = _rho_view(rho, 3)
        return x0 + self._expand((y - self.forward(x0)) / (1.0 + rr * self.in_shape[0]))

    def _Vt(self, x):
        coef = torch.einsum("...chw,kc->...khw", x, _cast(self._Q, x))
        return coef.reshape(*_batch(x, self.in_shape), self.in_dim)

    def _V(self, c):
        coef = c.reshape(*c.shape[:-1], *self.in_shape)
        return torch.einsum("...khw,kc->...chw", coef, _cast(self._Q, c))

    def _Ut(self, y):
        return y.reshape(*_batch(y, self.out_shape), self.out_dim)

    def _U(self, c):
        return c.reshape(*c.shape[:-1], *self.out_shape)
