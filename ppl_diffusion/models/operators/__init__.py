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
"H-functions" (Kawar et al., NeurIPS 2022, official code): ``Vt(x) -> (*b, in_dim)``, its inverse
``V``, ``Ut(y) -> (*b, out_dim)``, its inverse ``U``, and ``singular_values`` (length r, s >= 0) aligned
with the *first* r entries of ``Vt(x)`` and ``Ut(y)``, so that exactly::

    A x = U(add_zeros(s * Vt(x)[..., :r], out_dim))

``Vt``/``V``/``Ut``/``U`` are real orthonormal maps implemented without dense matrices (gathers,
per-block transforms, FFTs). Singular values are sorted in descending order wherever the choice is
free (all operators here: constant ones, SVD order, or an explicit sort for Blur / MRI).

Layout: :mod:`.base` (``Operator``, ``LinearOperator``, the zero-singular-value threshold
:data:`ZERO_SINGULAR_VALUE` and :func:`nonzero_singular`), :mod:`.cg` (``conjugate_gradient``),
:mod:`.masks` (``Identity``, ``Inpainting``), :mod:`.dense` (``Matrix``, ``CompressedSensing``),
:mod:`.averaging` (``SuperResolution``, ``Colorization``), :mod:`.fourier` (real Fourier coordinates),
:mod:`.blur` (``Blur``), :mod:`.mri` (``MRI``), :mod:`.phase` (``PhaseRetrieval``) and
:mod:`.callables` (``CallableOperator``, ``LinearCallableOperator``).
"""
from .averaging import Colorization, SuperResolution
from .base import ZERO_SINGULAR_VALUE, LinearOperator, Operator, nonzero_singular
from .blur import Blur
from .callables import CallableOperator, LinearCallableOperator
from .cg import conjugate_gradient
from .dense import CompressedSensing, Matrix
from .kernel_blur import KernelBlur
from .masks import Identity, Inpainting
from .mri import MRI
from .phase import PhaseRetrieval

__all__ = [
    "Operator",
    "LinearOperator",
    "Identity",
    "Inpainting",
    "Matrix",
    "CompressedSensing",
    "SuperResolution",
    "Blur",
    "KernelBlur",
    "Colorization",
    "MRI",
    "PhaseRetrieval",
    "CallableOperator",
    "LinearCallableOperator",
    "conjugate_gradient",
    "ZERO_SINGULAR_VALUE",
    "nonzero_singular",
]
