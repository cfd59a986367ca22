"""Blur with a kernel that is a tensor with gradients: :class:`KernelBlur` (an operator parameter for
blind problems), batched one kernel per sample, with its implicit SVD rebuilt per kernel.

``KernelBlur(k, in_shape)`` is the circular convolution of :class:`.blur.Blur` (same centre and sign
convention, so ``KernelBlur(k, s)(x) == Blur(k, s)(x)``) computed from ``k`` by FFT on every call, so
that ``d y / d k`` flows by autograd. ``k`` of shape ``(kh, kw)`` is one kernel; ``(n, kh, kw)`` is one
kernel per sample: ``x`` of shape ``(n, *in_shape)`` is blurred row by row (the leading batch dim of
``x`` must broadcast against ``n``). A blind model writes::

    k = pyro.sample("k", kernel_prior)                 # (kh, kw), or (n, kh, kw) when batched
    x = pyro.sample("x", prior)
    pyro.sample("y", GaussianMeasurement(KernelBlur(k, x_shape), x, sigma), obs=y)

SVD. With one kernel the operator has the exact SVD of :class:`.blur.Blur` (sorted singular values:
every SVD solver works). With a batch of kernels the singular values differ per sample, so the
batched SVD is offered in the canonical (unsorted) real Fourier coordinates by :meth:`spectral`:
``Vt(x)``, ``V(c)``, ``Ut(y)``, ``U(c)`` and ``s`` of shape ``(n, D)``, exactly
``A_i x_i = U_i(s_i * Vt(x_i))`` (Kawar et al. 2022's "H-functions", rebuilt for each kernel as
GibbsDDRM (Murata et al., ICML 2023) does after every kernel update).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import fourier
from .base import LinearOperator, _as_shape
from .blur import Blur

__all__ = ["KernelBlur", "BatchedFourierSVD", "check_kernel", "project_simplex"]


def check_kernel(k, site: str = "k", simplex: bool = False, size=None) -> torch.Tensor:
    """Validate a blur kernel ``(*batch, kh, kw)``: a floating tensor, finite, and with ``simplex``
    nonnegative with entries summing to one (rel. tol. 1e-4); ``size`` = the expected ``(kh, kw)``.
    A ValueError names ``site``."""
    if not isinstance(k, torch.Tensor) or k.dim() < 2:
        got = tuple(k.shape) if isinstance(k, torch.Tensor) else type(k).__name__
        raise ValueError(f"kernel site {site!r} must be a tensor of shape (*batch, kh, kw), got {got}")
    if not k.is_floating_point():
        raise ValueError(f"kernel site {site!r} must be a floating tensor, got {k.dtype}")
    if size is not None and tuple(k.shape[-2:]) != tuple(size):
        raise ValueError(f"kernel site {site!r} has shape {tuple(k.shape)}; expected (*batch, {size[0]}, {size[1]})")
    kd = k.detach()
    if not bool(torch.isfinite(kd).all()):
        raise ValueError(f"kernel site {site!r} contains NaN/Inf")
    if simplex:
        if bool((kd < 0).any()):
            raise ValueError(f"kernel site {site!r} has negative entries (min {float(kd.min()):.3g}); a blur kernel "
                             "on the simplex is nonnegative and sums to one")
        tot = kd.sum((-2, -1))
        if not bool(torch.allclose(tot, torch.ones_like(tot), rtol=0, atol=1e-4)):
            raise ValueError(f"kernel site {site!r} does not sum to one (sums {tot.flatten()[:4].tolist()}); "
                             "normalise it: k / k.sum((-2, -1), keepdim=True)")
    return k


def project_simplex(v: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of each row of ``v`` ``(..., D)`` onto the probability simplex
    ``{k >= 0, sum k = 1}`` (the sort-based algorithm of Duchi, Shalev-Shwartz, Singer, Chandra,
    ICML 2008): ``max(v - tau, 0)`` with the one ``tau`` that makes the row sum to one."""
    u = torch.sort(v, -1, descending=True).values
    css = u.cumsum(-1) - 1
    j = torch.arange(1, v.shape[-1] + 1, dtype=v.dtype, device=v.device)
    r = (u - css / j > 0).sum(-1, keepdim=True)          # >= 1: the largest entry always qualifies
    tau = css.gather(-1, r - 1) / r.to(v.dtype)
    return (v - tau).clamp(min=0)


def _hermitian_edges(K: torch.Tensor, W: int) -> torch.Tensor:
    """:func:`.fourier.hermitian_edges` for a batch of half spectra ``(n, H, Wr)``."""
    K = K.clone()
    H = K.shape[-2]
    refl = (-torch.arange(H, device=K.device)) % H
    for v in [0] + ([W // 2] if W % 2 == 0 else []):
        col = K[..., :, v]
        K[..., :, v] = 0.5 * (col + col[..., refl].conj())
    return K


class BatchedFourierSVD:
    """The exact SVD of ``n`` circular blurs at once, in canonical real Fourier coordinates
    (:mod:`.fourier`), unsorted: ``s`` of shape ``(n, D)``, ``D = C * H * W``. Built from the
    unnormalised half spectra ``K (n, H, Wr)`` of the kernels (detached)."""

    def __init__(self, K: torch.Tensor, in_shape: tuple, shape2: tuple | None = None):
        self.in_shape = tuple(in_shape)
        shape2 = self.in_shape if shape2 is None else tuple(shape2)
        H, W = shape2[-2:]
        C = int(torch.Size(shape2[:-2]).numel())
        self.H, self.W, self.Wr, self.C = H, W, W // 2 + 1, C
        lay = fourier.layout(H, W)
        _, _, fi, fw, ii, iw = fourier.sort_coordinates(lay, torch.zeros(lay.N, dtype=torch.float64), C)
        dev = K.device
        self._fi, self._fw, self._ii, self._iw = fi.to(dev), fw.to(dev), ii.to(dev), iw.to(dev)
        K = _hermitian_edges(K.detach(), W)
        absK = K.abs()
        self.phase = torch.where(absK > 0, K / torch.where(absK > 0, absK, torch.ones_like(absK)),
                                 torch.ones_like(K))
        n = K.shape[0]
        s_local = absK.reshape(n, -1)[:, lay.grid.to(dev)]          # (n, N)
        self.s = s_local.repeat(1, C)                               # (n, C * N), channel-major like the coords
        self.n = n

    def _spec(self, x):
        n = x.shape[0]
        return fourier._rfft2(x.reshape(n, self.C, self.H, self.W))

    def _coords(self, X, ref):
        return fourier.to_coords(X, self._fi, self._fw.to(ref.dtype))

    def _uncoords(self, c):
        return fourier.from_coords(c, self._ii, self._iw.to(c.dtype), self.C, self.H, self.Wr)

    def _irfft(self, X):
        return fourier._irfft2(X, (self.H, self.W)).reshape((X.shape[0],) + self.in_shape)

    def _ph(self, ref):
        return self.phase.to(dtype=fourier._complex_of(ref.dtype)).unsqueeze(1)

    def Vt(self, x):
        """``(n, *in_shape) -> (n, D)``."""
        return self._coords(self._spec(x), x)

    def V(self, c):
        return self._irfft(self._uncoords(c))

    def Ut(self, y):
        return self._coords(self._spec(y) * self._ph(y).conj(), y)

    def U(self, c):
        return self._irfft(self._uncoords(c) * self._ph(c))


class KernelBlur(LinearOperator):
    """Circular blur with a differentiable (optionally batched) kernel; see the module docstring.

    Args:
        kernel: ``(kh, kw)`` or ``(n, kh, kw)``, any real values (the operator does not normalise it;
            a kernel prior or :func:`check_kernel` constrains it), gradients kept.
        in_shape: image shape ``(..., H, W)``; the kernel must fit (``kh <= H``, ``kw <= W``).
    """

    name = "kernel_blur"

    def __init__(self, kernel: torch.Tensor, in_shape):
        check_kernel(kernel, "kernel")
        if kernel.dim() > 3:
            raise ValueError("kernel must be (kh, kw) or (n, kh, kw) (one kernel per sample), "
                             f"got {tuple(kernel.shape)}")
        in_shape = _as_shape(in_shape, "in_shape")
        #: the 2-D view of the image: a 1-D signal (W,) is blurred as (1, W) with a (1, kw) kernel
        self._shape2 = in_shape if len(in_shape) >= 2 else (1,) + in_shape
        H, W = self._shape2[-2:]
        kh, kw = kernel.shape[-2:]
        if kh > H or kw > W:
            raise ValueError(f"kernel of size ({kh}, {kw}) is larger than the image (H, W)=({H}, {W})")
        super().__init__(in_shape, in_shape)
        self.kernel = kernel
        self.batched = kernel.dim() == 3
        kpad = F.pad(kernel, (0, W - kw, 0, H - kh))
        kpad = torch.roll(kpad, shifts=(-(kh // 2), -(kw // 2)), dims=(-2, -1))
        #: unnormalised half spectrum ``(*kb, H, W//2+1)`` (differentiable in the kernel)
        self.khat = torch.fft.rfft2(kpad)
        self._channels = len(self._shape2) - 2
        self._single = None

    @property
    def has_svd(self) -> bool:  # the sorted SVD of one kernel (a batch: see spectral())
        return not self.batched

    # -- the map -------------------------------------------------------------------------
    def _K(self, ref, conj=False):
        K = self.khat
        if self.batched:
            K = K.reshape((K.shape[0],) + (1,) * self._channels + tuple(K.shape[-2:]))
        K = K.to(fourier._complex_of(ref.dtype)) if K.dtype != fourier._complex_of(ref.dtype) else K
        return K.conj() if conj else K

    def _filter(self, x, conj=False):
        H, W = self._shape2[-2:]
        b = x.shape[: x.dim() - len(self.in_shape)]
        X = torch.fft.rfft2(x.reshape(tuple(b) + tuple(self._shape2)))
        return torch.fft.irfft2(X * self._K(x, conj), s=(H, W)).reshape(x.shape)

    def forward(self, x):
        return self._filter(x)

    def _adjoint(self, y):
        return self._filter(y, conj=True)

    def _normal(self, x):
        return self._adjoint(self.forward(x))

    # -- SVD -----------------------------------------------------------------------------
    def single(self) -> Blur:
        """The :class:`.blur.Blur` of the (one, detached) kernel: its exact sorted SVD, pinv and prox."""
        if self.batched:
            raise ValueError("a batch of kernels has one SVD per sample: use spectral()")
        if self._single is None:
            self._single = _Blur1D(self.kernel.detach(), self.in_shape, self._shape2)
        return self._single

    def spectral(self) -> BatchedFourierSVD:
        """The per-sample SVD ``(Vt, V, Ut, U, s (n, D))`` of the kernels (one kernel -> n = 1)."""
        K = self.khat if self.batched else self.khat.unsqueeze(0)
        return BatchedFourierSVD(K, self.in_shape, self._shape2)

    @property
    def singular_values(self):
        return self.single().singular_values

    def _pinv(self, y):
        return self.cg_pinv(y) if self.batched else self.single()._pinv(y)

    def _prox(self, x0, y, rho):
        return self.cg_prox(x0, y, rho) if self.batched else self.single()._prox(x0, y, rho)

    def _Vt(self, x):
        return self.single()._Vt(x)

    def _V(self, c):
        return self.single()._V(c)

    def _Ut(self, y):
        return self.single()._Ut(y)

    def _U(self, c):
        return self.single()._U(c)


class _Blur1D(Blur):
    """:class:`.blur.Blur` on a 1-D signal ``(W,)`` seen as ``(1, W)``: its Fourier helpers reshape by
    ``in_shape`` around a channel count and grid computed from ``(1, W)``."""

    def __init__(self, kernel, in_shape, shape2):
        super().__init__(kernel, shape2)
        if len(in_shape) == 1:
            self.in_shape = self.out_shape = tuple(in_shape)
