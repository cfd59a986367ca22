"""Dense matrices: :class:`Matrix` (any ``(m, n)`` matrix, implicit full SVD) and
:class:`CompressedSensing` (a Gaussian random matrix)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .base import (ZERO_SINGULAR_VALUE, LinearOperator, _as_shape, _batch, _cast, _float_dtype, _rho_view,
                   nonzero_singular)

__all__ = ["Matrix", "CompressedSensing"]


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
    values above ``rtol * s_max``, descending; the default ``rtol`` is :data:`.base.ZERO_SINGULAR_VALUE`,
    raised to ``max(m, n) * eps(A.dtype)`` when that is larger (a low-precision ``A``, whose rounding
    leaves singular values of that relative size where exact arithmetic would give 0). The
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
        tol = max(ZERO_SINGULAR_VALUE, max(m, n) * torch.finfo(A.dtype).eps) if rtol is None else float(rtol)
        r = int(nonzero_singular(S, tol).sum())
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
