"""Forward operators ``y = A(x)`` for inverse problems.

Shapes. An operator maps ``(*batch, *in_shape) -> (*batch, *out_shape)``; any number of leading batch
dimensions (zero included) is allowed and samples never interact. Calling ``op(x)`` checks the
trailing shape of ``x`` (``ValueError``) and runs :meth:`Operator.forward`, which is differentiable by
autograd.

dtype / device. Operators hold their parameters (masks, kernels, index tables, singular values) as
tensor attributes; :meth:`Operator.to` moves them (and casts the floating ones when ``dtype`` is
given). User tensors (a matrix, a kernel) keep their dtype; derived buffers (SVD factors, spectra,
orthonormal bases, ``singular_values``) are computed and stored in float64 unless a ``dtype`` is
passed to the constructor. Every method casts its buffers to the dtype and device of its input, so
outputs follow the inputs: float32 inputs give float32 outputs, float64 CUDA inputs float64 CUDA
outputs (move the operator once with ``.to`` to avoid per-call copies). Solvers reading
``singular_values`` directly should cast them, e.g. ``op.singular_values.to(x)``.

Linear operators (:class:`LinearOperator`) add ``adjoint``, ``normal`` (``A^T A``), ``pinv``
(Moore-Penrose), ``prox`` (the closed-form proximal / data-consistency step) and ``matrix()``. When
``has_svd`` they also expose an implicit SVD ``A = U diag(s) V^T`` in the style of DDRM's
"H-functions" (Kawar et al. 2022, ``svd_replacement.py``): ``Vt(x) -> (*b, in_dim)``, its inverse
``V``, ``Ut(y) -> (*b, out_dim)``, its inverse ``U``, and ``singular_values`` (length r, s >= 0) aligned
with the *first* r entries of ``Vt(x)`` and ``Ut(y)``, so that exactly::

    A x = U(add_zeros(s * Vt(x)[..., :r], out_dim))

``Vt``/``V``/``Ut``/``U`` are real orthonormal maps implemented without dense matrices (gathers,
per-block transforms, FFTs). Singular values are sorted in descending order wherever the choice is
free (all operators here: constant ones, SVD order, or an explicit sort for Blur / MRI).
"""
from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from . import _fourier

__all__ = [
    "Operator",
    "LinearOperator",
    "Identity",
    "Inpainting",
    "Matrix",
    "CompressedSensing",
    "SuperResolution",
    "Blur",
    "Colorization",
    "MRI",
    "PhaseRetrieval",
    "CallableOperator",
    "LinearCallableOperator",
    "conjugate_gradient",
]


# ----------------------------------------------------------------------------------------------
# small helpers


def _as_shape(shape, name: str) -> tuple:
    if isinstance(shape, int):
        shape = (shape,)
    try:
        out = tuple(int(s) for s in shape)
    except TypeError:
        raise ValueError(f"{name} must be a tuple of positive ints, got {shape!r}") from None
    if any(s <= 0 for s in out):
        raise ValueError(f"{name} must be a tuple of positive ints, got {shape!r}")
    return out


def _check_trailing(t, shape: tuple, name: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    n = len(shape)
    if t.dim() < n or tuple(t.shape[t.dim() - n:]) != tuple(shape):
        raise ValueError(f"{name} must have shape (*batch, {', '.join(map(str, shape))}), got {tuple(t.shape)}")


def _batch(t: torch.Tensor, event_shape: tuple) -> torch.Size:
    return t.shape[: t.dim() - len(event_shape)]


_COMPLEX = {torch.float64: torch.complex128, torch.float32: torch.complex64, torch.float16: torch.complex32}


def _complex_of(dtype: torch.dtype) -> torch.dtype:
    return _COMPLEX.get(dtype, torch.complex64)


def _cast(t: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """``t`` on ``ref``'s device; floating buffers take ``ref``'s dtype, complex ones its complex twin."""
    if t.is_complex():
        dtype = _complex_of(ref.dtype)
    elif t.is_floating_point():
        dtype = ref.dtype
    else:
        dtype = t.dtype
    return t.to(device=ref.device, dtype=dtype)


def _move(t: torch.Tensor, device, dtype) -> torch.Tensor:
    if dtype is not None and t.is_complex():
        return t.to(device=device, dtype=_complex_of(dtype))
    if dtype is not None and t.is_floating_point():
        return t.to(device=device, dtype=dtype)
    return t.to(device=device)


def _float_dtype(dtype) -> torch.dtype:
    """dtype of derived buffers: float64 unless asked otherwise (cast to the input's dtype at use)."""
    return torch.float64 if dtype is None else dtype


def _rho_view(rho, ndim: int):
    """A per-sample ``rho`` of shape ``batch`` reshaped to broadcast over ``ndim`` event dims."""
    if isinstance(rho, torch.Tensor):
        return rho.reshape(rho.shape + (1,) * ndim)
    return rho


def _dct_basis(n: int, dtype=None, device=None) -> torch.Tensor:
    """Orthonormal DCT-II matrix ``(n, n)``; row 0 is the constant ``1/sqrt(n)``."""
    k = torch.arange(n, dtype=torch.float64).unsqueeze(1)
    i = torch.arange(n, dtype=torch.float64).unsqueeze(0)
    Q = math.sqrt(2.0 / n) * torch.cos(math.pi * (i + 0.5) * k / n)
    Q[0] = 1.0 / math.sqrt(n)
    return Q.to(dtype=_float_dtype(dtype), device=device)


def _rfft2(x: torch.Tensor) -> torch.Tensor:
    """Orthonormal 2-D rFFT over the last two dims (empty batches allowed; MKL rejects them)."""
    if x.numel() == 0:
        return torch.zeros(x.shape[:-1] + (x.shape[-1] // 2 + 1,), dtype=_complex_of(x.dtype), device=x.device)
    return torch.fft.rfft2(x, norm="ortho")


def _irfft2(X: torch.Tensor, s: tuple) -> torch.Tensor:
    if X.numel() == 0:
        return torch.zeros(X.shape[:-2] + tuple(s), dtype=X.real.dtype, device=X.device)
    return torch.fft.irfft2(X, s=s, norm="ortho")


def _fft2(x: torch.Tensor) -> torch.Tensor:
    if x.numel() == 0:
        dtype = x.dtype if x.is_complex() else _complex_of(x.dtype)
        return torch.zeros(x.shape, dtype=dtype, device=x.device)
    return torch.fft.fft2(x, norm="ortho")


def _ifft2(X: torch.Tensor) -> torch.Tensor:
    if X.numel() == 0:
        return torch.zeros_like(X)
    return torch.fft.ifft2(X, norm="ortho")


def _as_bool_mask(mask, name: str) -> torch.Tensor:
    if not isinstance(mask, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor (bool, True = observed), got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError(f"{name} must be boolean or contain only 0/1 values")
        mask = mask != 0
    return mask


def _default_cg_tol(dtype: torch.dtype) -> float:
    return float(torch.finfo(dtype).eps) ** 0.75


# ----------------------------------------------------------------------------------------------
# conjugate gradients


def conjugate_gradient(
    apply_A: Callable[[torch.Tensor], torch.Tensor],
    b: torch.Tensor,
    x0: torch.Tensor | None = None,
    max_iter: int = 100,
    tol: float = 1e-6,
    event_dim: int | None = None,
) -> torch.Tensor:
    """Solve ``A x = b`` for a symmetric positive (semi-)definite ``A`` independently per sample.

    ``b`` has shape ``(*batch, *event)`` with ``event_dim`` trailing event dimensions (default: all
    but the first dimension, or the whole tensor when ``b`` is 1-D). ``apply_A`` maps tensors of
    ``b``'s shape to the same shape, acting per sample. Step sizes ``alpha`` / ``beta`` and the
    stopping test ``||r|| <= tol ||b||`` are per sample: samples never couple, and a converged sample
    stops moving while the others go on. Stops after ``max_iter`` iterations. Differentiable (the
    iterations are unrolled). For singular ``A`` started at ``x0 = 0`` with ``b`` in the range of
    ``A``, CG returns the minimum-norm solution.
    """
    if not isinstance(b, torch.Tensor):
        raise ValueError(f"b must be a torch.Tensor, got {type(b).__name__}")
    if event_dim is None:
        event_dim = b.dim() - 1 if b.dim() > 1 else b.dim()
    if not 1 <= event_dim <= b.dim():
        raise ValueError(f"event_dim must be in [1, b.dim()={b.dim()}], got {event_dim}")
    dims = tuple(range(b.dim() - event_dim, b.dim()))

    def dot(u, v):
        return (u * v).sum(dim=dims, keepdim=True)

    if x0 is None:
        x = torch.zeros_like(b)
        r = b
    else:
        x = x0 + torch.zeros_like(b)
        r = b - apply_A(x)
    p = r
    rs = dot(r, r)
    thresh = (float(tol) ** 2) * dot(b, b)
    active = rs > thresh
    for _ in range(int(max_iter)):
        if not bool(active.any()):
            break
        Ap = apply_A(p)
        pAp = dot(p, Ap)
        ok = active & (pAp > 0)
        alpha = torch.where(ok, rs / torch.where(ok, pAp, torch.ones_like(pAp)), torch.zeros_like(pAp))
        x = x + alpha * p
        r = r - alpha * Ap
        rs_new = dot(r, r)
        beta = torch.where(ok, rs_new / torch.where(rs > 0, rs, torch.ones_like(rs)), torch.zeros_like(rs))
        p = r + beta * p
        rs = rs_new
        active = ok & (rs_new > thresh)
    return x


# ----------------------------------------------------------------------------------------------
# base classes


class Operator:
    """A differentiable forward map ``(*batch, *in_shape) -> (*batch, *out_shape)``.

    Subclasses implement :meth:`forward`; ``op(x)`` validates ``x`` first. Attributes: ``in_shape``,
    ``out_shape``, ``in_dim``, ``out_dim``, and the capability flags ``is_linear``, ``has_svd``,
    ``has_prox`` that solvers check when they are built.
    """

    name = "operator"
    is_linear = False
    has_svd = False
    has_prox = False

    def __init__(self, in_shape, out_shape):
        self.in_shape = _as_shape(in_shape, "in_shape")
        self.out_shape = _as_shape(out_shape, "out_shape")

    @property
    def in_dim(self) -> int:
        return math.prod(self.in_shape)

    @property
    def out_dim(self) -> int:
        return math.prod(self.out_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.forward(x)

    def check_input(self, x: torch.Tensor) -> None:
        """``ValueError`` unless ``x`` is a tensor of shape ``(*batch, *in_shape)``."""
        _check_trailing(x, self.in_shape, "x")

    def check_output(self, y: torch.Tensor) -> None:
        """``ValueError`` unless ``y`` has shape ``(*batch, *out_shape)`` and finite values."""
        _check_trailing(y, self.out_shape, "y")
        if not bool(torch.isfinite(y).all()):
            raise ValueError("y contains NaN or Inf values")

    def to(self, device=None, dtype=None) -> Operator:
        """A shallow copy with every tensor attribute moved (floating ones cast to ``dtype``)."""
        new = copy.copy(self)
        for key, val in vars(self).items():
            if isinstance(val, torch.Tensor):
                setattr(new, key, _move(val, device, dtype))
            elif isinstance(val, Operator):
                setattr(new, key, val.to(device=device, dtype=dtype))
            elif isinstance(val, tuple) and val and all(isinstance(v, torch.Tensor) for v in val):
                setattr(new, key, tuple(_move(v, device, dtype) for v in val))
        return new

    def _buffer_device(self):
        for val in vars(self).values():
            if isinstance(val, torch.Tensor):
                return val.device
        return torch.device("cpu")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(in_shape={self.in_shape}, out_shape={self.out_shape})"


class LinearOperator(Operator):
    """A linear operator ``A``.

    Public methods validate shapes and dispatch to ``_adjoint``, ``_normal``, ``_pinv``, ``_prox``,
    ``_Vt``, ``_V``, ``_Ut``, ``_U`` that subclasses override. Defaults: the adjoint by autograd
    (vector-Jacobian product at 0), ``pinv`` / ``prox`` from the SVD when ``has_svd`` else by
    conjugate gradients on the normal equations (``cg_max_iter``, ``cg_tol``; the default tolerance
    is ``eps(dtype)**0.75``). ``pinv_rtol``: singular values ``<= pinv_rtol * max(s)`` count as zero
    in the pseudo-inverse. ``has_prox`` is True for every linear operator (closed form here, CG for
    user callables).

    To write a new one: implement ``forward`` (and ``_adjoint`` if autograd is too slow); for an SVD
    set ``has_svd = True``, a ``singular_values`` tensor and ``_Vt``, ``_V``, ``_Ut``, ``_U``.
    """

    is_linear = True
    has_prox = True
    pinv_rtol = 0.0
    cg_max_iter = 500
    cg_tol: float | None = None

    # -- public, validated -------------------------------------------------------------------
    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """``A^T y``: ``(*b, *out_shape) -> (*b, *in_shape)``."""
        _check_trailing(y, self.out_shape, "y")
        return self._adjoint(y)

    def normal(self, x: torch.Tensor) -> torch.Tensor:
        """``A^T A x``."""
        _check_trailing(x, self.in_shape, "x")
        return self._normal(x)

    def pinv(self, y: torch.Tensor) -> torch.Tensor:
        """Moore-Penrose pseudo-inverse ``A^+ y`` (zero / thresholded singular values give 0)."""
        _check_trailing(y, self.out_shape, "y")
        return self._pinv(y)

    def prox(self, x0: torch.Tensor, y: torch.Tensor, rho) -> torch.Tensor:
        """``argmin_x ||y - A x||^2 + rho ||x - x0||^2 = (A^T A + rho I)^{-1} (A^T y + rho x0)``.

        ``rho > 0`` is a float or a tensor of shape ``batch`` (one value per sample, broadcast).
        """
        _check_trailing(x0, self.in_shape, "x0")
        _check_trailing(y, self.out_shape, "y")
        batch = torch.broadcast_shapes(_batch(x0, self.in_shape), _batch(y, self.out_shape))
        return self._prox(x0, y, self._check_rho(rho, batch, x0))

    def matrix(self, dtype: torch.dtype = torch.float64, device=None) -> torch.Tensor:
        """The dense ``(out_dim, in_dim)`` matrix, built column by column. Small problems only."""
        device = self._buffer_device() if device is None else device
        eye = torch.eye(self.in_dim, dtype=dtype, device=device).reshape(self.in_dim, *self.in_shape)
        with torch.no_grad():
            cols = self.forward(eye).reshape(self.in_dim, self.out_dim)
        return cols.T.contiguous()

    # -- SVD interface -------------------------------------------------------------------------
    @property
    def rank(self) -> int:
        """Number r of singular values (zeros included where the operator keeps them)."""
        self._require_svd()
        return int(self.singular_values.shape[0])

    def Vt(self, x: torch.Tensor) -> torch.Tensor:
        """Spectral coordinates ``V^T x``: ``(*b, *in_shape) -> (*b, in_dim)``."""
        self._require_svd()
        _check_trailing(x, self.in_shape, "x")
        return self._Vt(x)

    def V(self, c: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`Vt`: ``(*b, in_dim) -> (*b, *in_shape)``."""
        self._require_svd()
        _check_trailing(c, (self.in_dim,), "c")
        return self._V(c)

    def Ut(self, y: torch.Tensor) -> torch.Tensor:
        """Measurement-space coordinates ``U^T y``: ``(*b, *out_shape) -> (*b, out_dim)``."""
        self._require_svd()
        _check_trailing(y, self.out_shape, "y")
        return self._Ut(y)

    def U(self, c: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`Ut`: ``(*b, out_dim) -> (*b, *out_shape)``."""
        self._require_svd()
        _check_trailing(c, (self.out_dim,), "c")
        return self._U(c)

    def add_zeros(self, c: torch.Tensor, size: int | None = None) -> torch.Tensor:
        """Pad ``(*b, k)`` with zeros at the end to ``(*b, size)`` (default ``in_dim``), as in DDRM."""
        size = self.in_dim if size is None else int(size)
        k = c.shape[-1]
        if k > size:
            raise ValueError(f"c has {k} entries, more than size={size}")
        return F.pad(c, (0, size - k)) if k < size else c

    def svd_forward(self, x: torch.Tensor) -> torch.Tensor:
        """``U(add_zeros(s * Vt(x)[:r]))``: the forward map rebuilt from the SVD (for checks)."""
        s = _cast(self.singular_values, x)
        return self.U(self.add_zeros(s * self.Vt(x)[..., : s.shape[0]], self.out_dim))

    def svd_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """``V(add_zeros(s * Ut(y)[:r]))``."""
        s = _cast(self.singular_values, y)
        return self.V(self.add_zeros(s * self.Ut(y)[..., : s.shape[0]], self.in_dim))

    def svd_pinv(self, y: torch.Tensor) -> torch.Tensor:
        """``V(add_zeros(Ut(y)[:r] / s))`` with ``1/s`` replaced by 0 where ``s <= pinv_rtol * max s``."""
        s = _cast(self.singular_values, y)
        keep = s > self.pinv_rtol * s.max() if s.numel() else s > 0
        inv = torch.where(keep, 1.0 / torch.where(keep, s, torch.ones_like(s)), torch.zeros_like(s))
        return self.V(self.add_zeros(inv * self.Ut(y)[..., : s.shape[0]], self.in_dim))

    def svd_prox(self, x0: torch.Tensor, y: torch.Tensor, rho) -> torch.Tensor:
        """Closed-form prox in the V basis (generic fallback for any ``has_svd`` operator).

        With ``c = Vt(x0)``, ``u = Ut(y)``: ``c_i += s_i (u_i - s_i c_i) / (s_i^2 + rho)`` for i < r,
        the other coordinates are unchanged.
        """
        s = _cast(self.singular_values, x0)
        r = s.shape[0]
        rr = _rho_view(rho, 1)
        c = self.Vt(x0)[..., :r]
        u = self.Ut(y)[..., :r]
        delta = s * (u - s * c) / (s * s + rr)
        return x0 + self.V(self.add_zeros(delta, self.in_dim))

    # -- generic implementations ---------------------------------------------------------------
    def _require_svd(self):
        if not self.has_svd:
            raise NotImplementedError(f"operator {type(self).__name__} ({self.name}) has no SVD (has_svd=False)")

    def _adjoint(self, y: torch.Tensor) -> torch.Tensor:
        batch = _batch(y, self.out_shape)
        with torch.enable_grad():
            x = torch.zeros(batch + self.in_shape, dtype=y.dtype, device=y.device, requires_grad=True)
            out = self.forward(x)
            (g,) = torch.autograd.grad(out, x, grad_outputs=y, create_graph=y.requires_grad, allow_unused=True)
        return torch.zeros_like(x) if g is None else g

    def _normal(self, x: torch.Tensor) -> torch.Tensor:
        return self.adjoint(self.forward(x))

    def _pinv(self, y: torch.Tensor) -> torch.Tensor:
        return self.svd_pinv(y) if self.has_svd else self.cg_pinv(y)

    def _prox(self, x0, y, rho):
        return self.svd_prox(x0, y, rho) if self.has_svd else self.cg_prox(x0, y, rho)

    def _Vt(self, x):
        raise NotImplementedError

    def _V(self, c):
        raise NotImplementedError

    def _Ut(self, y):
        raise NotImplementedError

    def _U(self, c):
        raise NotImplementedError

    def _cg_settings(self, dtype):
        tol = self.cg_tol if self.cg_tol is not None else _default_cg_tol(dtype)
        return dict(max_iter=self.cg_max_iter, tol=tol, event_dim=len(self.in_shape))

    def cg_pinv(self, y: torch.Tensor) -> torch.Tensor:
        """``A^+ y`` by CG on ``A^T A x = A^T y`` from 0 (minimum-norm least squares)."""
        b = self.adjoint(y)
        return conjugate_gradient(self.normal, b, None, **self._cg_settings(b.dtype))

    def cg_prox(self, x0: torch.Tensor, y: torch.Tensor, rho) -> torch.Tensor:
        """The prox by CG on ``(A^T A + rho I) x = A^T y + rho x0``, started at ``x0``."""
        rr = _rho_view(rho, len(self.in_shape))
        b = self.adjoint(y) + rr * x0
        return conjugate_gradient(lambda v: self.normal(v) + rr * v, b, x0, **self._cg_settings(b.dtype))

    @staticmethod
    def _check_rho(rho, batch: torch.Size, like: torch.Tensor):
        if isinstance(rho, torch.Tensor):
            if rho.dim() > 0:
                try:
                    ok = torch.broadcast_shapes(rho.shape, batch) == batch
                except RuntimeError:
                    ok = False
                if not ok:
                    raise ValueError(
                        f"rho must be a float or a tensor of the batch shape {tuple(batch)}, "
                        f"got shape {tuple(rho.shape)}")
            return rho.to(device=like.device, dtype=like.dtype)
        try:
            val = float(rho)
        except (TypeError, ValueError):
            raise ValueError(f"rho must be a positive float or a tensor, got {rho!r}") from None
        if not (math.isfinite(val) and val > 0):
            raise ValueError(f"rho must be a finite float > 0, got {val}")
        return val


# ----------------------------------------------------------------------------------------------
# Identity / Inpainting


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


# ----------------------------------------------------------------------------------------------
# dense matrices


def _householder(a: torch.Tensor, tau: torch.Tensor, v: torch.Tensor, transpose: bool) -> torch.Tensor:
    """Apply the full orthogonal ``Q`` (or ``Q^T``) of a ``geqrf`` factorisation to ``(*b, n)``."""
    a, tau = _cast(a, v), _cast(tau, v)
    n = v.shape[-1]
    flat = v.reshape(-1, n).T
    out = torch.ormqr(a, tau, flat, left=True, transpose=transpose)
    return out.T.reshape(v.shape)


class Matrix(LinearOperator):
    """A dense ``(m, n)`` matrix ``A`` acting on ``x`` flattened from ``in_shape`` (default ``(n,)``);
    ``out_shape = (m,)``.

    SVD: ``torch.linalg.svd`` (reduced, computed once in float64). ``singular_values`` are the r
    values above ``rtol * s_max`` (default ``rtol = max(m, n) * eps(A.dtype)``), descending. The
    first ``k = min(m, n)`` coordinates of ``Vt`` / ``Ut`` are the reduced singular vectors; the
    orthogonal complement is completed implicitly with Householder reflectors (``geqrf`` /
    ``ormqr``), so no ``n x n`` matrix is formed even for image-sized ``n``.
    """

    name = "matrix"
    has_svd = True

    def __init__(self, A: torch.Tensor, in_shape=None, rtol: float | None = None):
        if not isinstance(A, torch.Tensor) or A.dim() != 2:
            raise ValueError(f"A must be a 2-D tensor (m, n), got {getattr(A, 'shape', type(A).__name__)}")
        if not A.is_floating_point():
            A = A.to(torch.float64)
        m, n = A.shape
        in_shape = (n,) if in_shape is None else _as_shape(in_shape, "in_shape")
        if math.prod(in_shape) != n:
            raise ValueError(f"in_shape {in_shape} has {math.prod(in_shape)} entries but A has n={n} columns")
        super().__init__(in_shape, (m,))
        self.A = A
        U, S, Vh = torch.linalg.svd(A.to(torch.float64), full_matrices=False)
        k = S.numel()
        tol = (max(m, n) * torch.finfo(A.dtype).eps) if rtol is None else float(rtol)
        r = int((S > tol * S[0]).sum()) if k > 0 else 0
        self.k = k
        self.singular_values = S[:r]
        self._Vk = Vh.T.contiguous()
        self._Uk = U
        self._vqr = tuple(torch.geqrf(Vh.T.contiguous())) if k < n else None
        self._uqr = tuple(torch.geqrf(U)) if k < m else None

    def _flat(self, x):
        return x.reshape(*_batch(x, self.in_shape), self.in_dim)

    def forward(self, x):
        return self._flat(x) @ _cast(self.A, x).T

    def _adjoint(self, y):
        return (y @ _cast(self.A, y)).reshape(*y.shape[:-1], *self.in_shape)

    def _normal(self, x):
        A = _cast(self.A, x)
        return ((self._flat(x) @ A.T) @ A).reshape(x.shape)

    @staticmethod
    def _complete(W, qr, k, v, transpose):
        if transpose:  # v (*b, n) -> coordinates
            head = v @ W
            if qr is None:
                return head
            tail = _householder(qr[0], qr[1], v, transpose=True)[..., k:]
            return torch.cat([head, tail], dim=-1)
        head = v[..., :k] @ W.T
        if qr is None:
            return head
        return head + _householder(qr[0], qr[1], F.pad(v[..., k:], (k, 0)), transpose=False)

    def _Vt(self, x):
        return self._complete(_cast(self._Vk, x), self._vqr, self.k, self._flat(x), True)

    def _V(self, c):
        out = self._complete(_cast(self._Vk, c), self._vqr, self.k, c, False)
        return out.reshape(*c.shape[:-1], *self.in_shape)

    def _Ut(self, y):
        return self._complete(_cast(self._Uk, y), self._uqr, self.k, y, True)

    def _U(self, c):
        return self._complete(_cast(self._Uk, c), self._uqr, self.k, c, False)

    def _pinv(self, y):
        s = _cast(self.singular_values, y)
        r = s.shape[0]
        c = (y @ _cast(self._Uk, y)[:, :r]) / s
        return (c @ _cast(self._Vk, y)[:, :r].T).reshape(*y.shape[:-1], *self.in_shape)

    def _prox(self, x0, y, rho):
        s = _cast(self.singular_values, x0)
        r = s.shape[0]
        Vr, Ur = _cast(self._Vk, x0)[:, :r], _cast(self._Uk, x0)[:, :r]
        x0f = self._flat(x0)
        c = x0f @ Vr
        delta = s * (y @ Ur - s * c) / (s * s + _rho_view(rho, 1))
        return (x0f + delta @ Vr.T).reshape(*delta.shape[:-1], *self.in_shape)


class CompressedSensing(Matrix):
    """Gaussian compressed sensing: a :class:`Matrix` with i.i.d. ``N(0, 1/m)`` entries, ``m`` rows."""

    name = "compressed_sensing"

    def __init__(self, m: int, in_shape, generator: torch.Generator | None = None, dtype=None, device=None):
        if int(m) != m or m < 1:
            raise ValueError(f"m must be a positive int, got {m}")
        in_shape = _as_shape(in_shape, "in_shape")
        if generator is not None:
            device = generator.device
        A = torch.randn(int(m), math.prod(in_shape), generator=generator, dtype=_float_dtype(dtype), device=device)
        super().__init__(A / math.sqrt(m), in_shape)


# ----------------------------------------------------------------------------------------------
# super-resolution / colorization (per-block SVDs)


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


# ----------------------------------------------------------------------------------------------
# Fourier operators


class _FourierMixin:
    """Shared helpers for operators on real ``(..., H, W)`` images with the real Fourier basis."""

    def _setup_fourier(self, in_shape, s_local: torch.Tensor):
        H, W = in_shape[-2:]
        self._H, self._W, self._Wr = H, W, W // 2 + 1
        self._C = math.prod(in_shape[:-2])
        lay = _fourier.layout(H, W)
        s_sorted, order, fi, fw, ii, iw = _fourier.sort_coordinates(lay, s_local, self._C)
        self._fwd_idx, self._fwd_w, self._inv_idx, self._inv_w = fi, fw, ii, iw
        return s_sorted, order

    def _rfft(self, x, event_shape):
        b = _batch(x, event_shape)
        return _rfft2(x.reshape(*b, self._C, self._H, self._W))

    def _irfft(self, X):
        out = _irfft2(X, (self._H, self._W))
        return out.reshape(*X.shape[:-3], *self.in_shape)

    def _coords(self, X, ref):
        return _fourier.to_coords(X, _cast(self._fwd_idx, ref), _cast(self._fwd_w, ref))

    def _uncoords(self, c):
        return _fourier.from_coords(c, _cast(self._inv_idx, c), _cast(self._inv_w, c), self._C, self._H, self._Wr)


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
    (default 1e-6) as zero; ``prox`` is the exact FFT solution.
    """

    name = "blur"
    has_svd = True

    def __init__(self, kernel: torch.Tensor, in_shape, pinv_rtol: float = 1e-6):
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
        K = _fourier.hermitian_edges(torch.fft.rfft2(kpad), W)
        absK = K.abs()
        phase = torch.where(absK > 0, K / torch.where(absK > 0, absK, torch.ones_like(absK)), torch.ones_like(K))
        thr = self.pinv_rtol * absK.max()
        kinv = torch.where(absK > thr, K.conj() / torch.where(absK > thr, absK, torch.ones_like(absK)) ** 2,
                           torch.zeros_like(K))
        self._khat, self._phase, self._kinv = K, phase, kinv
        lay = _fourier.layout(H, W)
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
        lay = _fourier.layout(H, W)
        s_local, _, _ = _fourier.mri_taps(lay, mask, torch.arange(lay.N), 1)
        s_sorted, order = self._setup_fourier(in_shape, s_local)
        _, self._ut_taps, self._u_taps = _fourier.mri_taps(lay, mask, order, self._C)
        r = int((s_sorted > 0).sum())
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
        return _fourier.apply_taps(yf, tuple(_cast(t, y) for t in self._ut_taps))

    def _U(self, c):
        yf = _fourier.apply_taps(c, tuple(_cast(t, c) for t in self._u_taps))
        return yf.reshape(*c.shape[:-1], *self.out_shape)


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


# ----------------------------------------------------------------------------------------------
# user callables


class CallableOperator(Operator):
    """Wrap a differentiable callable ``fn: (*b, *in_shape) -> (*b, *out_shape)``.

    With ``linear=True`` the constructor returns a :class:`LinearCallableOperator`: the adjoint comes
    from autograd (a vector-Jacobian product) unless ``adjoint`` is given, and ``pinv`` / ``prox``
    use conjugate gradients on the normal equations (``has_svd = False``).
    """

    name = "callable"

    def __new__(cls, *args, **kwargs):
        linear = kwargs.get("linear", args[3] if len(args) > 3 else False)
        if linear and cls is CallableOperator:
            cls = LinearCallableOperator
        return object.__new__(cls)

    def __init__(self, fn: Callable, in_shape, out_shape, linear: bool = False,
                 adjoint: Callable | None = None, name: str | None = None):
        if not callable(fn):
            raise ValueError(f"fn must be callable, got {type(fn).__name__}")
        if adjoint is not None and not callable(adjoint):
            raise ValueError(f"adjoint must be callable or None, got {type(adjoint).__name__}")
        super().__init__(in_shape, out_shape)
        self.fn = fn
        self.adjoint_fn = adjoint
        if name is not None:
            self.name = name

    def forward(self, x):
        return self.fn(x)


class LinearCallableOperator(CallableOperator, LinearOperator):
    """A linear user callable (see :class:`CallableOperator`); CG-based ``pinv`` / ``prox``."""

    def _adjoint(self, y):
        if self.adjoint_fn is not None:
            return self.adjoint_fn(y)
        return LinearOperator._adjoint(self, y)
