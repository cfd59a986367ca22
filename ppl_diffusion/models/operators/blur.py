"""Circular 2-D convolution (:class:`Blur`), diagonal in the real Fourier basis."""
from __future__ import annotations

import math

import torch

from . import fourier
from .base import ZERO_SINGULAR_VALUE, LinearOperator, _as_shape, _cast, _float_dtype, _rho_view, nonzero_singular
from .fourier import _FourierMixin

__all__ = ["Blur"]


class Blur(_FourierMixin, LinearOperator):
    """Circular convolution of each channel of ``(..., H, W)`` with a 2-D ``kernel`` (via FFT).

    ``y[i, j] = sum_{a, b} k[a, b] x[(i - a + kh//2) % H, (j - b + kw//2) % W]``: the kernel entry
    ``k[kh//2, kw//2]`` is the centre (any odd or even size up to the image size; larger -> ValueError).
    The kernel is used as given (not normalised). In Fourier, ``Y = K_hat * X`` with ``K_hat`` the
    unnormalised rFFT of the kernel wrapped around the origin.

    SVD (real, exact): ``V^T`` = the real orthonormal Fourier coordinates (pairs ``{w, -w}`` as
    ``sqrt2 (Re, Im)``, self-conjugate bins alone), ``s = |K_hat(w)|`` (twice for a pair), and the
    phase of ``K_hat`` absorbed into ``U`` as a 2x2 rotation (``Ut(y) = coords(rfft(y) * conj(phase))``).
    All four maps are one rFFT + one gather, O(D log D). ``singular_values`` has length ``in_dim``
    (r = D), sorted descending (stable sort; the permutation is folded into the gathers), zeros and
    tiny values kept. ``pinv`` (FFT) and ``svd_pinv`` treat ``|K_hat| <= pinv_rtol * max|K_hat|``
    (default :data:`.base.ZERO_SINGULAR_VALUE`) as zero; ``prox`` is the exact FFT solution.
    """

    name = "blur"
    has_svd = True

    def __init__(self, kernel: torch.Tensor, in_shape, pinv_rtol: float = ZERO_SINGULAR_VALUE):
        if not isinstance(kernel, torch.Tensor) or kernel.dim() != 2:
            got = getattr(kernel, "shape", type(kernel).__name__)
            raise ValueError(f"kernel must be a 2-D tensor (kh, kw), got {got}")
        if not kernel.is_floating_point():
            kernel = kernel.to(torch.float64)
        in_shape = _as_shape(in_shape, "in_shape")
        if len(in_shape) < 2:
            raise ValueError(f"in_shape must be (..., H, W), got {in_shape}")
        H, W = in_shape[-2:]
        kh, kw = kernel.shape
        if kh > H or kw > W:
            raise ValueError(f"kernel of size ({kh}, {kw}) is larger than the image (H, W)=({H}, {W})")
        super().__init__(in_shape, in_shape)
        self.kernel = kernel
        self.pinv_rtol = float(pinv_rtol)
        dev = kernel.device
        kpad = torch.zeros(H, W, dtype=torch.float64, device=dev)
        rows = (torch.arange(kh, device=dev) - kh // 2) % H
        cols = (torch.arange(kw, device=dev) - kw // 2) % W
        kpad[rows[:, None], cols[None, :]] = kernel.to(torch.float64)
        K = fourier.hermitian_edges(torch.fft.rfft2(kpad), W)
        absK = K.abs()
        phase = torch.where(absK > 0, K / torch.where(absK > 0, absK, torch.ones_like(absK)), torch.ones_like(K))
        keep = nonzero_singular(absK, self.pinv_rtol)
        kinv = torch.where(keep, K.conj() / torch.where(keep, absK, torch.ones_like(absK)) ** 2,
                           torch.zeros_like(K))
        self._khat, self._phase, self._kinv = K, phase, kinv
        lay = fourier.layout(H, W)
        s_local = absK.reshape(-1).cpu()[lay.grid]
        s_sorted, _ = self._setup_fourier(in_shape, s_local)
        self.singular_values = s_sorted.to(device=dev)

    @classmethod
    def gaussian(cls, in_shape, sigma: float, size: int | None = None, dtype=None, device=None, **kw) -> Blur:
        """Normalised Gaussian kernel of std ``sigma`` (pixels); default size ``2 ceil(3 sigma) + 1``
        (capped at the largest odd size that fits in the image)."""
        if not (float(sigma) > 0 and math.isfinite(float(sigma))):
            raise ValueError(f"sigma must be a finite float > 0, got {sigma}")
        in_shape = _as_shape(in_shape, "in_shape")
        if size is None:
            m = min(in_shape[-2:])
            size = min(2 * math.ceil(3 * sigma) + 1, m if m % 2 else m - 1)
        t = torch.arange(int(size), dtype=torch.float64) - (int(size) - 1) / 2
        g = torch.exp(-(t**2) / (2 * float(sigma) ** 2))
        k = torch.outer(g, g)
        k = (k / k.sum()).to(dtype=_float_dtype(dtype), device=device)
        return cls(k, in_shape, **kw)

    @classmethod
    def uniform(cls, in_shape, size: int, dtype=None, device=None, **kw) -> Blur:
        """Box kernel ``ones(size, size) / size^2``."""
        if int(size) != size or size < 1:
            raise ValueError(f"size must be a positive int, got {size}")
        k = torch.full((int(size), int(size)), 1.0 / size**2, dtype=_float_dtype(dtype), device=device)
        return cls(k, _as_shape(in_shape, "in_shape"), **kw)

    def _filter(self, x, mult, event_shape):
        return self._irfft(self._rfft(x, event_shape) * mult)

    def forward(self, x):
        return self._filter(x, _cast(self._khat, x), self.in_shape)

    def _adjoint(self, y):
        return self._filter(y, _cast(self._khat, y).conj(), self.out_shape)

    def _normal(self, x):
        return self._filter(x, _cast(self._khat, x).abs() ** 2, self.in_shape)

    def _pinv(self, y):
        return self._filter(y, _cast(self._kinv, y), self.out_shape)

    def _prox(self, x0, y, rho):
        K = _cast(self._khat, x0)
        rr = _rho_view(rho, 3)  # (C, H, Wr) spectrum dims
        num = self._rfft(y, self.out_shape) * K.conj() + rr * self._rfft(x0, self.in_shape)
        return self._irfft(num / (K.abs() ** 2 + rr))

    def _Vt(self, x):
        return self._coords(self._rfft(x, self.in_shape), x)

    def _V(self, c):
        return self._irfft(self._uncoords(c))

    def _Ut(self, y):
        return self._coords(self._rfft(y, self.out_shape) * _cast(self._phase, y).conj(), y)

    def _U(self, c):
        return self._irfft(self._uncoords(c) * _cast(self._phase, c))
