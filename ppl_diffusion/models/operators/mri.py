"""Single-coil MRI: a masked orthonormal 2-D FFT (:class:`MRI`)."""
from __future__ import annotations

import torch

from . import fourier
from .base import LinearOperator, _as_bool_mask, _as_shape, _batch, _cast, _float_dtype, _rho_view, nonzero_singular
from .fourier import _FourierMixin, _fft2, _ifft2

__all__ = ["MRI"]


class MRI(_FourierMixin, LinearOperator):
    """Single-coil MRI: masked orthonormal 2-D FFT of a real image ``(..., H, W)`` (default ``(1, H, W)``).

    ``mask``: bool ``(H, W)`` sampling pattern in *unshifted* FFT order (``[0, 0]`` = DC), shared by
    the leading channels. ``y = (Re, Im)`` of ``mask * fft2(x, norm="ortho")`` stacked on a new axis
    before ``H``: ``out_shape = (..., 2, H, W)`` (``(2, H, W)`` for an ``(H, W)`` image), unsampled
    frequencies zero. ``A^T A = F^H diag(m_sym) F`` with ``m_sym(w) = (m(w) + m(-w)) / 2``, which
    gives closed-form FFT ``normal`` / ``pinv`` / ``prox``.

    SVD (real, exact): ``V^T`` = real orthonormal Fourier coordinates; singular values
    ``sqrt(m_sym)``: 1 for a self-conjugate sampled bin or a pair with both ``w`` and ``-w`` sampled
    (the measurement holds the frequency twice, ``(u_w + u_{-w})/sqrt2``), ``1/sqrt2`` for a pair with
    one of them sampled, and pairs with neither are excluded. ``singular_values`` holds the r > 0
    values, descending; ``Ut`` is a fixed orthonormal 2-tap gather on the 2*in_dim measurement
    components (aligned vectors first, then their orthogonal complement).
    """

    name = "mri"
    has_svd = True

    def __init__(self, mask: torch.Tensor, in_shape=None, dtype=None):
        mask = _as_bool_mask(mask, "mask")
        if mask.dim() != 2:
            raise ValueError(f"mask must be a 2-D (H, W) k-space mask, got shape {tuple(mask.shape)}")
        H, W = mask.shape
        in_shape = (1, H, W) if in_shape is None else _as_shape(in_shape, "in_shape")
        if len(in_shape) < 2 or tuple(in_shape[-2:]) != (H, W):
            raise ValueError(f"mask of shape {(H, W)} does not match in_shape {in_shape} (expected (..., H, W))")
        super().__init__(in_shape, (*in_shape[:-2], 2, H, W))
        self.mask = mask
        fdt = _float_dtype(dtype)
        mf = mask.to(torch.float64)
        refl_h = (-torch.arange(H, device=mask.device)) % H
        refl_w = (-torch.arange(W, device=mask.device)) % W
        msym = 0.5 * (mf + mf[refl_h][:, refl_w])
        msym = msym[:, : W // 2 + 1]
        self._msym = msym.to(fdt)
        self._msym_inv = torch.where(msym > 0, 1.0 / torch.where(msym > 0, msym, torch.ones_like(msym)),
                                     torch.zeros_like(msym)).to(fdt)
        lay = fourier.layout(H, W)
        s_local, _, _ = fourier.mri_taps(lay, mask, torch.arange(lay.N), 1)
        s_sorted, order = self._setup_fourier(in_shape, s_local)
        _, self._ut_taps, self._u_taps = fourier.mri_taps(lay, mask, order, self._C)
        r = int(nonzero_singular(s_sorted).sum())
        self.singular_values = s_sorted[:r].to(dtype=fdt, device=mask.device)

    @classmethod
    def cartesian(cls, in_shape, acceleration: float = 4.0, center_fraction: float = 0.08,
                  generator: torch.Generator | None = None, dtype=None) -> MRI:
        """Random Cartesian line sampling: full k-space columns, the ``center_fraction`` lowest
        frequencies always kept, ``W / acceleration`` columns in total."""
        in_shape = _as_shape(in_shape, "in_shape")
        if len(in_shape) < 2:
            raise ValueError(f"in_shape must be (..., H, W), got {in_shape}")
        if not acceleration >= 1 or not 0 <= center_fraction <= 1:
            raise ValueError("acceleration must be >= 1 and center_fraction in [0, 1]")
        H, W = in_shape[-2:]
        dev = generator.device if generator is not None else None
        j = torch.arange(W, device=dev)
        dist = torch.minimum(j, W - j)
        n_center = int(round(center_fraction * W))
        n_total = max(int(round(W / acceleration)), n_center, 1)
        by_freq = torch.argsort(dist, stable=True)
        rest = by_freq[n_center:]
        pick = rest[torch.randperm(rest.numel(), generator=generator, device=dev)[: n_total - n_center]]
        mask = torch.zeros(H, W, dtype=torch.bool, device=dev)
        mask[:, torch.cat([by_freq[:n_center], pick])] = True
        return cls(mask, in_shape, dtype=dtype)

    def forward(self, x):
        X = _fft2(x) * _cast(self.mask, x).to(x.dtype)
        return torch.stack([X.real, X.imag], dim=-3)

    def _adjoint(self, y):
        Yc = torch.complex(y[..., 0, :, :], y[..., 1, :, :]) * _cast(self.mask, y).to(y.dtype)
        return _ifft2(Yc).real

    def _normal(self, x):
        return self._irfft(self._rfft(x, self.in_shape) * _cast(self._msym, x))

    def _pinv(self, y):
        xt = self._adjoint(y)
        return self._irfft(self._rfft(xt, self.in_shape) * _cast(self._msym_inv, xt))

    def _prox(self, x0, y, rho):
        rr = _rho_view(rho, 3)  # (C, H, Wr) spectrum dims
        num = self._rfft(self._adjoint(y), self.in_shape) + rr * self._rfft(x0, self.in_shape)
        return self._irfft(num / (_cast(self._msym, x0) + rr))

    def _Vt(self, x):
        return self._coords(self._rfft(x, self.in_shape), x)

    def _V(self, c):
        return self._irfft(self._uncoords(c))

    def _Ut(self, y):
        yf = y.reshape(*_batch(y, self.out_shape), self.out_dim)
        return fourier.apply_taps(yf, tuple(_cast(t, y) for t in self._ut_taps))

    def _U(self, c):
        yf = fourier.apply_taps(c, tuple(_cast(t, c) for t in self._u_taps))
        return yf.reshape(*c.shape[:-1], *self.out_shape)
