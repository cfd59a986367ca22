"""Operators wrapping user callables: :class:`CallableOperator` and, for linear ones,
:class:`LinearCallableOperator` (adjoint by autograd, CG-based ``pinv`` / ``prox``)."""
from __future__ import annotations

from collections.abc import Callable

from .base import LinearOperator, Operator

__all__ = ["CallableOperator", "LinearCallableOperator"]


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
