"""Base classes of the forward operators and the helpers they share.

:class:`Operator` (shape checks, ``.to``), :class:`LinearOperator` (adjoint, normal map, pseudo-inverse,
prox, dense ``matrix()`` and the implicit-SVD interface), the zero-singular-value convention
(:data:`ZERO_SINGULAR_VALUE`, :func:`nonzero_singular`) used by the operators and by every solver
that works in the singular basis, and private shape / dtype helpers.
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F

from .cg import conjugate_gradient

__all__ = ["Operator", "LinearOperator", "ZERO_SINGULAR_VALUE", "nonzero_singular"]


# ----------------------------------------------------------------------------------------------
# zero singular values

#: Relative threshold below which a singular value counts as zero: ``s_i`` is zero when
#: ``s_i <= ZERO_SINGULAR_VALUE * max(s)`` (relative, so ``A`` and ``c A`` have the same null space).
#: Why 1e-8: the operators compute their singular values in float64 (an SVD, FFT magnitudes), where a
#: structural zero comes back as round-off of order ``n * eps64 * max(s)``, below 1e-10 * max(s) up to
#: n = 4e5 entries, so 1e-8 separates round-off from signal with two orders to spare; and a kept
#: coordinate's data ``(U^T y)_i / s_i`` amplifies the float64 round-off of ``U^T y`` by at most
#: ``eps64 / 1e-8 ~ 2e-8`` relative, below float32 resolution. Genuine singular values of the shipped
#: operators lie far above it (>= 2e-4 * max(s) for a sigma = 1 Gaussian blur).
ZERO_SINGULAR_VALUE = 1e-8


def nonzero_singular(s: torch.Tensor, rtol: float = ZERO_SINGULAR_VALUE) -> torch.Tensor:
    """Boolean mask of the singular values ``s`` (any shape) that count as non-zero:
    ``s > rtol * max(s)``. ``rtol = 0`` keeps exactly the positive values; an all-zero ``s`` gives an
    all-False mask, an empty ``s`` an empty one."""
    if s.numel() == 0:
        return s > 0
    return s > float(rtol) * float(s.detach().max())


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
    is ``eps(dtype)**0.75``). ``pinv_rtol`` (default :data:`ZERO_SINGULAR_VALUE`): singular values
    ``<= pinv_rtol * max(s)`` count as zero in the pseudo-inverse. ``has_prox`` is True for every
    linear operator (closed form here, CG for user callables).

    To write a new one: implement ``forward`` (and ``_adjoint`` if autograd is too slow); for an SVD
    set ``has_svd = True``, a ``singular_values`` tensor and ``_Vt``, ``_V``, ``_Ut``, ``_U``.
    """

    is_linear = True
    has_prox = True
    pinv_rtol = ZERO_SINGULAR_VALUE
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
        keep = nonzero_singular(s, self.pinv_rtol)
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
