"""Tests of ``ppl_diffusion.models.operators`` (float64, fixed seeds, small shapes).

Every linear operator is checked against its own dense matrix (built by ``matrix()``): adjoint,
implicit SVD (orthonormality and exact reconstruction), pseudo-inverse, prox, batch handling.
"""
import math

import pytest
import torch

from ppl_diffusion.models.operators import (
    MRI,
    Blur,
    CallableOperator,
    Colorization,
    CompressedSensing,
    Identity,
    Inpainting,
    LinearCallableOperator,
    LinearOperator,
    Matrix,
    Operator,
    PhaseRetrieval,
    SuperResolution,
    conjugate_gradient,
)

DT = torch.float64


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _callable_op():
    M = torch.randn(4, 6, generator=gen(11), dtype=DT)
    return CallableOperator(lambda x: x.reshape(*x.shape[:-2], 6) @ M.T, (2, 3), (4,), linear=True)


def _rank_deficient_matrix():
    g = gen(12)
    A = torch.randn(8, 3, generator=g, dtype=DT) @ torch.randn(3, 10, generator=g, dtype=DT)
    return Matrix(A, in_shape=(2, 5))


FACTORIES = {
    "identity": lambda: Identity((2, 3, 4), dtype=DT),
    "inpaint_random": lambda: Inpainting.random((2, 5, 6), 0.4, gen(1), dtype=DT),
    "inpaint_entrywise": lambda: Inpainting.random((2, 4, 4), 0.5, gen(2), per_pixel=False, dtype=DT),
    "inpaint_box": lambda: Inpainting.box((3, 6, 5), 1, 2, 3, 2, dtype=DT),
    "matrix_wide": lambda: Matrix(torch.randn(7, 12, generator=gen(3), dtype=DT)),
    "matrix_tall": lambda: Matrix(torch.randn(12, 5, generator=gen(4), dtype=DT)),
    "matrix_rank3": _rank_deficient_matrix,
    "compressed_sensing": lambda: CompressedSensing(10, (1, 4, 5), gen(5), dtype=DT),
    "sr2": lambda: SuperResolution(2, (2, 4, 6), dtype=DT),
    "sr4": lambda: SuperResolution(4, (1, 8, 8), dtype=DT),
    "blur_nonsym_odd": lambda: Blur(torch.rand(3, 2, generator=gen(6), dtype=DT), (2, 6, 7)),
    "blur_nonsym_hw": lambda: Blur(torch.randn(4, 5, generator=gen(7), dtype=DT), (5, 8)),
    "blur_gaussian": lambda: Blur.gaussian((1, 8, 8), 1.0, dtype=DT),
    "blur_uniform_even": lambda: Blur.uniform((1, 6, 6), 2, dtype=DT),
    "colorization": lambda: Colorization((3, 4, 5), dtype=DT),
    "mri_odd": lambda: MRI(torch.rand(6, 7, generator=gen(8)) > 0.5, (1, 6, 7), dtype=DT),
    "mri_even_hw": lambda: MRI(torch.rand(6, 8, generator=gen(9)) > 0.5, (6, 8), dtype=DT),
    "mri_channels": lambda: MRI(torch.rand(5, 4, generator=gen(10)) > 0.3, (2, 5, 4), dtype=DT),
    "callable_linear": _callable_op,
}
SVD_NAMES = [k for k in FACTORIES if k != "callable_linear"]
_CACHE = {}


@pytest.fixture(params=list(FACTORIES))
def op(request):
    if request.param not in _CACHE:
        _CACHE[request.param] = FACTORIES[request.param]()
    return _CACHE[request.param]


@pytest.fixture(params=SVD_NAMES)
def svd_op(request):
    if request.param not in _CACHE:
        _CACHE[request.param] = FACTORIES[request.param]()
    return _CACHE[request.param]


def rand(shape, seed):
    return torch.randn(*shape, generator=gen(seed), dtype=DT)


def flat(t, event_shape):
    return t.reshape(*t.shape[: t.dim() - len(event_shape)], -1)


def dense(op):
    key = ("dense", id(op))
    if key not in _CACHE:
        _CACHE[key] = op.matrix()
    return _CACHE[key]


def close(a, b, tol):
    """Relative max-abs agreement."""
    scale = max(float(b.abs().max()), 1.0) if b.numel() else 1.0
    err = float((a - b).abs().max()) if a.numel() else 0.0
    assert err <= tol * scale, f"max error {err:.3e} > {tol:.1e} * {scale:.3e}"


# ----------------------------------------------------------------------------------------------
# every linear operator


def test_adjoint_identity(op):
    x = rand((3, *op.in_shape), 100)
    y = rand((3, *op.out_shape), 101)
    lhs = (op(x) * y).flatten(1).sum(1)
    rhs = (x * op.adjoint(y)).flatten(1).sum(1)
    assert torch.allclose(lhs, rhs, rtol=1e-10, atol=1e-12)
    assert op.is_linear and isinstance(op, LinearOperator)


def test_forward_adjoint_normal_match_dense(op):
    M = dense(op)
    assert M.shape == (op.out_dim, op.in_dim)
    x = rand((3, *op.in_shape), 102)
    y = rand((3, *op.out_shape), 103)
    close(flat(op(x), op.out_shape), flat(x, op.in_shape) @ M.T, 1e-12)
    close(flat(op.adjoint(y), op.in_shape), flat(y, op.out_shape) @ M, 1e-12)
    close(flat(op.normal(x), op.in_shape), flat(x, op.in_shape) @ (M.T @ M), 1e-12)


def test_autograd_through_forward_is_adjoint(op):
    x = rand((2, *op.in_shape), 104).requires_grad_(True)
    y = rand((2, *op.out_shape), 105)
    (g,) = torch.autograd.grad((op(x) * y).sum(), x)
    close(g, op.adjoint(y), 1e-12)


def test_pinv_penrose(op):
    M = dense(op)
    x = rand((3, *op.in_shape), 106)
    y = rand((3, *op.out_shape), 107)
    tol = 1e-8 if op.has_svd else 1e-7
    # A A^+ A = A (on random x), A^+ A A^+ = A^+ (on random y)
    close(op(op.pinv(op(x))), op(x), tol)
    close(op.pinv(op(op.pinv(y))), op.pinv(y), tol)
    rtol = op.pinv_rtol if op.pinv_rtol > 0 else 1e-10
    P = torch.linalg.pinv(M, rtol=rtol)
    close(flat(op.pinv(y), op.in_shape), flat(y, op.out_shape) @ P.T, 1e-7)


@pytest.mark.parametrize("per_sample", [False, True])
def test_prox_matches_dense_solve(op, per_sample):
    M = dense(op)
    x0 = rand((3, *op.in_shape), 108)
    y = rand((3, *op.out_shape), 109)
    rho = torch.tensor([0.05, 0.7, 3.0], dtype=DT) if per_sample else 0.3
    out = flat(op.prox(x0, y, rho), op.in_shape)
    rhos = rho if per_sample else torch.full((3,), rho, dtype=DT)
    eye = torch.eye(op.in_dim, dtype=DT)
    for i in range(3):
        ref = torch.linalg.solve(M.T @ M + rhos[i] * eye, M.T @ y[i].reshape(-1) + rhos[i] * x0[i].reshape(-1))
        close(out[i], ref, 1e-9)


def test_prox_cg_fallback_agrees(op):
    x0 = rand((2, *op.in_shape), 110)
    y = rand((2, *op.out_shape), 111)
    rho = torch.tensor([0.2, 1.5], dtype=DT)
    close(op.cg_prox(x0, y, rho), op.prox(x0, y, rho), 1e-8)


@pytest.mark.parametrize("batch", [(), (2,), (2, 3)])
def test_batch_dims(op, batch):
    n = math.prod(batch)
    x = rand((n, *op.in_shape), 112)
    y = rand((n, *op.out_shape), 113)
    rho = torch.rand(n, generator=gen(114), dtype=DT) + 0.1
    xb, yb, rb = x.reshape(*batch, *op.in_shape), y.reshape(*batch, *op.out_shape), rho.reshape(batch)
    pairs = [
        (op(xb), op(x), op.out_shape),
        (op.adjoint(yb), op.adjoint(y), op.in_shape),
        (op.pinv(yb), op.pinv(y), op.in_shape),
        (op.prox(xb, yb, rb), op.prox(x, y, rho), op.in_shape),
    ]
    if op.has_svd:
        pairs += [
            (op.Vt(xb), op.Vt(x), (op.in_dim,)),
            (op.Ut(yb), op.Ut(y), (op.out_dim,)),
            (op.V(op.Vt(xb)), x, op.in_shape),
            (op.U(op.Ut(yb)), y, op.out_shape),
        ]
    for got, ref, ev in pairs:
        assert tuple(got.shape) == tuple(batch) + tuple(ev)
        close(got.reshape(ref.shape), ref, 1e-9)


def test_empty_batch(op):
    x = torch.zeros(0, 2, *op.in_shape, dtype=DT)
    y = torch.zeros(0, 2, *op.out_shape, dtype=DT)
    outs = [op(x), op.adjoint(y), op.pinv(y), op.prox(x, y, 0.5)]
    if op.has_svd:
        outs += [op.Vt(x), op.V(op.Vt(x)), op.Ut(y), op.U(op.Ut(y))]
    assert all(tuple(t.shape[:2]) == (0, 2) for t in outs)


# ----------------------------------------------------------------------------------------------
# implicit SVD


def test_svd_orthonormal_and_invertible(svd_op):
    op = svd_op
    x = rand((4, *op.in_shape), 120)
    y = rand((4, *op.out_shape), 121)
    c = op.Vt(x)
    assert c.shape == (4, op.in_dim)
    close(op.V(c), x, 1e-12)
    close(c.norm(dim=-1), flat(x, op.in_shape).norm(dim=-1), 1e-12)
    cv = rand((4, op.in_dim), 122)
    close(op.Vt(op.V(cv)), cv, 1e-12)
    d = op.Ut(y)
    assert d.shape == (4, op.out_dim)
    close(op.U(d), y, 1e-12)
    close(d.norm(dim=-1), flat(y, op.out_shape).norm(dim=-1), 1e-12)
    cu = rand((4, op.out_dim), 123)
    close(op.Ut(op.U(cu)), cu, 1e-12)


def test_svd_reproduces_forward(svd_op):
    op = svd_op
    s = op.singular_values
    r = op.rank
    assert s.dim() == 1 and r <= min(op.in_dim, op.out_dim)
    assert bool((s >= 0).all()) and bool((s[:-1] >= s[1:]).all()), "singular values must be >= 0, descending"
    x = rand((3, *op.in_shape), 124)
    y = rand((3, *op.out_shape), 125)
    close(op.svd_forward(x), op(x), 1e-12)
    close(op.svd_adjoint(y), op.adjoint(y), 1e-12)
    tail = op.Ut(op(x))[..., r:]  # the range of A is spanned by the first r U-vectors
    assert tail.numel() == 0 or float(tail.abs().max()) < 1e-12
    close(op.svd_prox(x, y, 0.4), op.prox(x, y, 0.4), 1e-10)


def test_svd_dense_reconstruction(svd_op):
    op = svd_op
    M = dense(op)
    Vt = op.Vt(torch.eye(op.in_dim, dtype=DT).reshape(op.in_dim, *op.in_shape)).T  # (in_dim, in_dim)
    U = op.U(torch.eye(op.out_dim, dtype=DT)).reshape(op.out_dim, op.out_dim).T  # columns = U e_j
    r = op.rank
    close(Vt @ Vt.T, torch.eye(op.in_dim, dtype=DT), 1e-12)
    close(U.T @ U, torch.eye(op.out_dim, dtype=DT), 1e-12)
    close(U[:, :r] @ torch.diag(op.singular_values) @ Vt[:r], M, 1e-12)
    # singular values agree with the dense SVD (as multisets)
    ref = torch.linalg.svdvals(M)
    ours = torch.sort(torch.cat([op.singular_values, torch.zeros(min(M.shape) - r, dtype=DT)]), descending=True).values
    close(ours, ref, 1e-10)


# ----------------------------------------------------------------------------------------------
# operator-specific checks


def _roll_blur(x, k):
    kh, kw = k.shape
    out = torch.zeros_like(x)
    for a in range(kh):
        for b in range(kw):
            out = out + k[a, b] * torch.roll(x, shifts=(a - kh // 2, b - kw // 2), dims=(-2, -1))
    return out


@pytest.mark.parametrize("ksize", [(3, 3), (3, 2), (4, 5), (6, 7)])
def test_blur_matches_direct_circular_convolution(ksize):
    k = torch.randn(*ksize, generator=gen(20), dtype=DT)  # non-symmetric, signed
    op = Blur(k, (2, 6, 7))
    x = rand((3, 2, 6, 7), 21)
    close(op(x), _roll_blur(x, k), 1e-12)
    close(op.svd_forward(x), op(x), 1e-12)
    close(op.V(op.Vt(x)), x, 1e-12)


def test_blur_is_convolution_like_scipy():
    ndimage = pytest.importorskip("scipy.ndimage")
    k = torch.rand(3, 5, generator=gen(22), dtype=DT)
    x = rand((7, 9), 23)
    ref = ndimage.convolve(x.numpy(), k.numpy(), mode="wrap")
    close(Blur(k, (7, 9))(x), torch.from_numpy(ref), 1e-12)


def test_blur_constructors():
    g = Blur.gaussian((1, 16, 16), 1.5, dtype=DT)
    assert g.kernel.shape == (11, 11) and abs(float(g.kernel.sum()) - 1) < 1e-12
    assert abs(float(g.singular_values[0]) - 1.0) < 1e-12  # DC gain of a normalised kernel
    u = Blur.uniform((1, 8, 8), 3, dtype=DT)
    assert torch.allclose(u.kernel, torch.full((3, 3), 1 / 9, dtype=DT))
    x = torch.ones(1, 8, 8, dtype=DT)
    close(u(x), x, 1e-12)


def test_superresolution_values():
    for f in (2, 4):
        op = SuperResolution(f, (3, 8, 8), dtype=DT)
        x = rand((2, 3, 8, 8), 30)
        close(op(x), torch.nn.functional.avg_pool2d(x, f), 1e-12)
        assert op.out_shape == (3, 8 // f, 8 // f)
        assert torch.allclose(op.singular_values, torch.full((3 * (8 // f) ** 2,), 1.0 / f, dtype=DT))
        y = rand((2, *op.out_shape), 31)
        close(op(op.pinv(y)), y, 1e-12)


def test_colorization_values():
    op = Colorization((3, 4, 5), dtype=DT)
    x = rand((2, 3, 4, 5), 32)
    close(op(x), x.mean(dim=-3, keepdim=True), 1e-12)
    assert op.out_shape == (1, 4, 5)
    assert torch.allclose(op.singular_values, torch.full((20,), 1 / math.sqrt(3), dtype=DT))


def test_inpainting_constructors_and_layout():
    op = Inpainting.random((3, 8, 8), 0.25, gen(40), dtype=DT)
    assert int((~op.mask[0]).sum()) == 16 and bool((op.mask == op.mask[0]).all())
    assert op.rank == 3 * 48 and op.out_shape == op.in_shape
    x = rand((2, 3, 8, 8), 41)
    y = op(x)
    assert bool((y[:, ~op.mask] == 0).all()) and torch.equal(y[:, op.mask], x[:, op.mask])
    box = Inpainting.box((3, 8, 8), 2, 3, 4, 2)
    assert int((~box.mask).sum()) == 3 * 8 and not bool(box.mask[:, 2:6, 3:5].any())
    bcast = Inpainting(torch.rand(8, 8, generator=gen(42)) > 0.5, shape=(3, 8, 8))
    assert bcast.in_shape == (3, 8, 8)


def test_mri_layout_and_singular_values():
    mask = torch.rand(6, 8, generator=gen(50)) > 0.5
    op = MRI(mask, (1, 6, 8), dtype=DT)
    assert op.out_shape == (1, 2, 6, 8)
    x = rand((2, 1, 6, 8), 51)
    X = torch.fft.fft2(x, norm="ortho") * mask
    close(op(x)[:, :, 0], X.real, 1e-12)
    close(op(x)[:, :, 1], X.imag, 1e-12)
    vals = set(round(float(v), 12) for v in op.singular_values)
    assert vals <= {1.0, round(1 / math.sqrt(2), 12)}
    assert MRI(mask, (6, 8)).out_shape == (2, 6, 8)
    cart = MRI.cartesian((1, 16, 16), acceleration=4, center_fraction=0.125, generator=gen(52))
    assert int(cart.mask[0].sum()) == 4 and bool(cart.mask[:, 0].all())


def test_phase_retrieval_values_and_gradients():
    op = PhaseRetrieval((2, 5, 6), oversampling=2.0)
    assert op.out_shape == (2, 10, 12) and not op.is_linear
    x = rand((3, 2, 5, 6), 60)
    xp = torch.zeros(3, 2, 10, 12, dtype=DT)
    xp[..., 2:7, 3:9] = x  # centred padding
    ref = torch.fft.fft2(xp).abs() / math.sqrt(10 * 12)
    close(op(x), ref, 1e-12)
    xs = rand((1, 3, 4), 61).requires_grad_(True)
    small = PhaseRetrieval((1, 3, 4), oversampling=1.5)
    assert torch.autograd.gradcheck(small, (xs,))
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad((op(xg) - op(x + 0.1)).pow(2).sum(), xg)
    assert bool(torch.isfinite(g).all()) and float(g.abs().sum()) > 0
    assert PhaseRetrieval((7, 7), oversampling=1.5).out_shape == (10, 10)  # round(10.5) = 10


def test_callable_operator():
    M = torch.randn(5, 7, generator=gen(70), dtype=DT)
    lin = CallableOperator(lambda x: x @ M.T, (7,), (5,), linear=True)
    assert isinstance(lin, LinearCallableOperator) and lin.is_linear and not lin.has_svd
    y = rand((3, 5), 71)
    close(lin.adjoint(y), y @ M, 1e-12)
    close(lin.matrix(), M, 1e-14)
    with pytest.raises(NotImplementedError, match="no SVD"):
        lin.Vt(rand((7,), 72))
    nonlin = CallableOperator(lambda x: torch.tanh(x @ M.T), (7,), (5,))
    assert type(nonlin) is CallableOperator and not nonlin.is_linear and not isinstance(nonlin, LinearOperator)
    x = rand((2, 7), 73)
    close(nonlin(x), torch.tanh(x @ M.T), 1e-14)
    given = CallableOperator(lambda x: x @ M.T, (7,), (5,), linear=True, adjoint=lambda v: v @ M)
    close(given.adjoint(y), y @ M, 1e-14)
    assert type(lin.to(dtype=torch.float32)) is LinearCallableOperator


def test_conjugate_gradient_per_sample():
    g = gen(80)
    mats = []
    for cond in (1.0, 30.0, 1e3):
        Q, _ = torch.linalg.qr(torch.randn(8, 8, generator=g, dtype=DT))
        mats.append(Q @ torch.diag(torch.logspace(0, math.log10(cond), 8, dtype=DT)) @ Q.T)
    A = torch.stack(mats)  # (3, 8, 8)
    b = torch.randn(3, 2, 4, generator=g, dtype=DT)

    def apply(v):
        return (A @ v.reshape(v.shape[0], 8, 1)).reshape(v.shape)

    x = conjugate_gradient(apply, b, max_iter=50, tol=1e-12, event_dim=2)
    ref = torch.linalg.solve(A, b.reshape(3, 8)).reshape(3, 2, 4)
    close(x, ref, 1e-9)
    # the well-conditioned sample gives the same answer alone: no coupling across the batch
    x0 = conjugate_gradient(lambda v: (A[:1] @ v.reshape(1, 8, 1)).reshape(v.shape), b[:1], max_iter=50,
                            tol=1e-12, event_dim=2)
    close(x[:1], x0, 1e-13)
    warm = conjugate_gradient(apply, b, x0=ref, max_iter=5, tol=1e-12, event_dim=2)
    close(warm, ref, 1e-10)


def test_to_and_dtype_following():
    op = Blur(torch.rand(3, 3, generator=gen(90), dtype=torch.float32), (1, 6, 6))
    x = rand((2, 1, 6, 6), 91)
    assert op(x).dtype == DT and op.Vt(x).dtype == DT and op.prox(x, x, 0.5).dtype == DT
    op64 = op.to(dtype=DT)
    assert op64.kernel.dtype == DT and op64.singular_values.dtype == DT and op.kernel.dtype == torch.float32
    assert op64._khat.dtype == torch.complex128
    op32 = op.to(dtype=torch.float32)
    assert op32.singular_values.dtype == torch.float32 and op32._khat.dtype == torch.complex64
    assert op32(x.float()).dtype == torch.float32 and op32.Ut(x.float()).dtype == torch.float32
    close(op32(x.float()).double(), op(x), 1e-5)
    col = Colorization((3, 4, 4))  # analytic buffers default to float64: exact for float64 inputs
    xc = rand((2, 3, 4, 4), 93)
    close(col.V(col.Vt(xc)), xc, 1e-14)
    close(col.V(col.Vt(xc.float())).double(), xc, 1e-5)
    cs32 = CompressedSensing(5, (8,), gen(92), dtype=DT).to(dtype=torch.float32)
    assert cs32(x.reshape(9, 8).float()).dtype == torch.float32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")
def test_cuda_matches_cpu():
    for name in SVD_NAMES + ["callable_linear"]:
        op = FACTORIES[name]()
        gop = op.to(device="cuda")
        x = rand((2, *op.in_shape), 95)
        y = rand((2, *op.out_shape), 96)
        close(gop(x.cuda()).cpu(), op(x), 1e-12)
        close(gop.adjoint(y.cuda()).cpu(), op.adjoint(y), 1e-12)
        close(gop.prox(x.cuda(), y.cuda(), 0.3).cpu(), op.prox(x, y, 0.3), 1e-9)
        if op.has_svd:
            close(gop.Vt(x.cuda()).cpu(), op.Vt(x), 1e-12)
            close(gop.U(gop.Ut(y.cuda())).cpu(), y, 1e-12)


# ----------------------------------------------------------------------------------------------
# errors


def test_value_errors():
    with pytest.raises(ValueError, match="mask"):
        Inpainting(torch.ones(5, 5, dtype=torch.bool), shape=(3, 8, 8))
    with pytest.raises(ValueError, match="mask"):
        MRI(torch.ones(5, 5, dtype=torch.bool), (1, 6, 6))
    with pytest.raises(ValueError, match="larger than the image"):
        Blur(torch.ones(9, 3), (1, 8, 8))
    with pytest.raises(ValueError, match="divide"):
        SuperResolution(3, (1, 8, 8))
    with pytest.raises(ValueError, match="in_shape"):
        Matrix(torch.randn(3, 10), in_shape=(3, 3))
    with pytest.raises(ValueError, match="oversampling"):
        PhaseRetrieval((4, 4), oversampling=0.5)
    op = SuperResolution(2, (2, 4, 4))
    with pytest.raises(ValueError, match="x must have shape"):
        op(torch.randn(3, 4, 4))
    with pytest.raises(ValueError, match="y must have shape"):
        op.adjoint(torch.randn(2, 4, 4))
    with pytest.raises(ValueError, match=r"y must have shape.*\(2, 3, 2, 2\)"):
        op.check_output(torch.randn(2, 3, 2, 2))
    y = torch.randn(2, 2, 2, 2)
    op.check_output(y)
    y[0, 1, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        op.check_output(y)
    y[0, 1, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="NaN or Inf"):
        op.check_output(y)
    x = torch.randn(3, 2, 4, 4)
    with pytest.raises(ValueError, match="rho"):
        op.prox(x, op(x), -1.0)
    with pytest.raises(ValueError, match="rho"):
        op.prox(x, op(x), torch.ones(4))
    with pytest.raises(ValueError, match="fn"):
        CallableOperator(3, (2,), (2,))
    with pytest.raises(NotImplementedError):
        Operator((2,), (2,))(torch.zeros(2))
    assert not hasattr(PhaseRetrieval((4, 4)), "adjoint")
