"""Batched conjugate gradients for symmetric positive (semi-)definite systems (Hestenes & Stiefel 1952)."""
from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["conjugate_gradient"]


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
