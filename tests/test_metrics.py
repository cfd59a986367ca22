"""Metrics against closed forms (fixed seeds, stated tolerances)."""
import math

import numpy as np
import pytest
import torch

from ppl_diffusion import metrics as M

F64 = torch.float64


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------ sliced Wasserstein


def test_sw_identical_sets_is_zero():
    x = torch.randn(200, 5, generator=gen(), dtype=F64)
    assert M.sliced_wasserstein(x, x, generator=gen(1)).item() == 0.0
    assert M.sliced_wasserstein(x, x, max_sliced=True, generator=gen(1)).item() == 0.0
    assert M.max_sliced_wasserstein(x, x, generator=gen(1)).item() == 0.0
    # a permutation of the same set is the same empirical measure
    assert M.sliced_wasserstein(x, x.flip(0), generator=gen(1)).item() < 1e-12


def test_sw_gaussian_shift_matches_closed_form():
    # W1(N(0,1), N(a,1)) = |a|, so SW_1 = E|<m, theta>| = |m| Gamma(d/2) / (sqrt(pi) Gamma((d+1)/2)).
    d, n, m = 3, 4000, 3000  # unequal sizes on purpose
    shift = torch.tensor([2.0, 0.0, 0.0], dtype=F64)
    x = torch.randn(n, d, generator=gen(0), dtype=F64)
    y = torch.randn(m, d, generator=gen(1), dtype=F64) + shift
    exact = shift.norm().item() * math.gamma(d / 2) / (math.sqrt(math.pi) * math.gamma((d + 1) / 2))
    sw = M.sliced_wasserstein(x, y, n_projections=1000, generator=gen(2)).item()
    # MC over directions: sd 2 * sqrt(1/12) / sqrt(1000) ~ 0.018; sample bias ~ 0.02
    assert abs(sw - exact) < 0.08, (sw, exact)
    msw = M.sliced_wasserstein(x, y, n_projections=1000, generator=gen(2), max_sliced=True).item()
    assert msw >= sw
    assert abs(msw - 2.0) < 0.1  # the best direction is (close to) the shift itself


def test_unequal_sizes_hand_computed():
    # x = {0, 1}, y = {0, 0, 3}: quantile jumps at 1/2 (x) and 1/3, 2/3 (y)
    # W1 = 1/6 * 1 + 1/3 * 2 = 5/6 ; W2^2 = 1/6 + 4/3 = 3/2
    x = torch.tensor([0.0, 1.0], dtype=F64)
    y = torch.tensor([0.0, 0.0, 3.0], dtype=F64)
    assert M.wasserstein_1d(x, y, p=1).item() == pytest.approx(5 / 6, abs=1e-14)
    assert M.wasserstein_1d(y, x, p=1).item() == pytest.approx(5 / 6, abs=1e-14)
    assert M.wasserstein_1d(x, y, p=2).item() == pytest.approx(math.sqrt(1.5), abs=1e-14)
    # batched columns, numpy input
    xb = np.stack([x.numpy(), x.numpy() + 1.0], axis=1)
    yb = np.stack([y.numpy(), y.numpy() + 1.0], axis=1)
    np.testing.assert_allclose(M.wasserstein_1d(xb, yb).numpy(), [5 / 6, 5 / 6], atol=1e-14)


def test_sw_matches_scipy_1d_with_unequal_sizes():
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal(37), rng.standard_normal(53) * 2 + 0.5
    ref = scipy_stats.wasserstein_distance(x, y)
    assert M.wasserstein_1d(x, y).item() == pytest.approx(ref, rel=1e-12)
    # in 1-D every direction is +-1, so SW_1 equals W1
    sw = M.sliced_wasserstein(x[:, None], y[:, None], n_projections=7, generator=gen()).item()
    assert sw == pytest.approx(ref, rel=1e-12)


def test_max_sliced_pot_definition_hand_example():
    # POT: (max_theta W_p^p)^(1/p), p=2 by default, directions = normalised Gaussian columns (d, L).
    x = torch.tensor([[0.0, 0.0], [3.0, 0.0]], dtype=F64)
    y = torch.tensor([[1.0, 0.0]], dtype=F64)
    proj = torch.tensor([[1.0, 0.0, 2**-0.5], [0.0, 1.0, 2**-0.5]], dtype=F64)
    # direction e1: x -> {0, 3}, y -> {1}: W2^2 = (1 + 4) / 2 = 2.5; e2: 0; diagonal: 1.25
    val = M.max_sliced_wasserstein(x, y, projections=proj).item()
    assert val == pytest.approx(math.sqrt(2.5), abs=1e-14)  # W_2, not W_2^2
    assert M.max_sliced_wasserstein(x, y, projections=proj, p=1).item() == pytest.approx(1.5, abs=1e-14)
    # mean-sliced W1 over the same three directions: (1.5 + 0 + W1_diag) / 3 with, on the diagonal,
    # x -> {0, 3/sqrt2}, y -> {1/sqrt2}: W1_diag = (1/sqrt2 + 2/sqrt2) / 2
    w_diag = 0.5 * abs(0 - 1 / math.sqrt(2)) + 0.5 * abs(3 / math.sqrt(2) - 1 / math.sqrt(2))
    sw = M.sliced_wasserstein(x, y, projections=proj, p=1).item()
    assert sw == pytest.approx((1.5 + 0.0 + w_diag) / 3, abs=1e-14)


def test_random_directions_are_unit_and_reproducible():
    a = M.random_directions(5, 100, gen(3))
    b = M.random_directions(5, 100, gen(3))
    assert a.shape == (5, 100) and a.dtype == F64
    torch.testing.assert_close(a.norm(dim=0), torch.ones(100, dtype=F64))
    assert torch.equal(a, b)


def test_sw_bad_inputs():
    x = torch.randn(10, 3)
    with pytest.raises(ValueError, match="dimensions"):
        M.sliced_wasserstein(x, torch.randn(10, 4))
    with pytest.raises(ValueError, match="point clouds"):
        M.sliced_wasserstein(x[0], x)
    with pytest.raises(ValueError, match="projections"):
        M.max_sliced_wasserstein(x, x, projections=torch.randn(4, 5))


def test_noise_floor_sampler_and_pool():
    def sample_fn(n, generator=None):
        return torch.randn(n, 4, generator=generator, dtype=F64)

    nf = M.noise_floor(sample_fn, 500, generator=gen(0), n_projections=200)
    assert 0.0 < nf.item() < 0.15
    pool = sample_fn(3000, generator=gen(1))
    nf2 = M.noise_floor(pool, 1000, 2000, metric=M.max_sliced_wasserstein, generator=gen(2), n_repeats=2)
    assert 0.0 < nf2.item() < 0.2
    with pytest.raises(ValueError, match="n \\+ m"):
        M.noise_floor(pool, 2000, 2000)


# ------------------------------------------------------------------ images


def test_psnr_identical_and_constant_offset():
    ref = torch.rand(2, 3, 8, 8, generator=gen(), dtype=F64) * 2 - 1
    assert torch.isinf(M.psnr(ref, ref)).all()
    # MSE = 0.01 -> 10 log10(2^2 / 0.01) = 10 log10(400)
    val = M.psnr(ref + 0.1, ref)
    assert val.shape == (2,)
    torch.testing.assert_close(val, torch.full((2,), 10 * math.log10(400.0), dtype=F64))
    # batch of samples against one reference, numpy input, grayscale (H, W) events
    out = M.psnr(np.zeros((5, 4, 4)), np.full((4, 4), 0.5), event_ndim=2)
    torch.testing.assert_close(out, torch.full((5,), 10 * math.log10(4 / 0.25), dtype=F64))


def test_ssim_identity_noise_and_constants():
    g = gen(0)
    ref = (torch.rand(1, 3, 16, 16, generator=g, dtype=F64) * 2 - 1).expand(3, -1, -1, -1)
    noise = torch.randn(3, 3, 16, 16, generator=g, dtype=F64)
    levels = torch.tensor([0.0, 0.1, 0.5], dtype=F64).view(3, 1, 1, 1)
    s = M.ssim(ref + levels * noise, ref)
    assert s.shape == (3,)
    assert s[0].item() == pytest.approx(1.0, abs=1e-12)
    assert s[0] > s[1] > s[2]
    # constant images a, b: sigma terms vanish, SSIM = (2ab + C1) / (a^2 + b^2 + C1) exactly
    a, b = 0.3, -0.2
    c1 = (0.01 * 2.0) ** 2
    val = M.ssim(torch.full((1, 8, 8), a, dtype=F64), torch.full((1, 8, 8), b, dtype=F64))
    assert val.item() == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), rel=1e-10)
    # tiny images: the window is clamped (8x8 -> 7, 5x5 -> 5) and still gives 1 on identity
    tiny = torch.rand(2, 1, 5, 5, generator=g, dtype=F64)
    torch.testing.assert_close(M.ssim(tiny, tiny), torch.ones(2, dtype=F64))


# ------------------------------------------------------------------ UQ


def test_coverage_of_exact_gaussian_samples():
    g = gen(0)
    samples = torch.randn(1000, 50, 50, generator=g, dtype=F64)
    truth = torch.randn(50, 50, generator=g, dtype=F64)
    cov = M.coverage(samples, truth, level=0.9).item()
    # 2500 coordinates: binomial sd 0.006, plus finite-sample interval error
    assert abs(cov - 0.9) < 0.03, cov
    # a truth far away is never covered; the map form has the truth's shape
    assert M.coverage(samples, truth + 100).item() == 0.0
    assert M.coverage(samples, truth, reduce=False).shape == (50, 50)
    with pytest.raises(ValueError, match="level"):
        M.coverage(samples, truth, level=1.5)


def test_quantile_matches_numpy():
    x = np.random.default_rng(0).standard_normal((101, 3, 4))
    q = M.quantile(x, [0.05, 0.5, 0.95])
    np.testing.assert_allclose(q.numpy(), np.quantile(x, [0.05, 0.5, 0.95], axis=0), rtol=1e-13)
    assert M.quantile(x, 0.5).shape == (3, 4)


def test_std_error_correlation():
    g = gen(0)
    scale = torch.linspace(0.1, 2.0, 64, dtype=F64).view(8, 8)
    samples = torch.randn(500, 8, 8, generator=g, dtype=F64) * scale
    # truth at mean + 2 std: the error map is exactly 2 * std -> correlation 1
    truth = samples.mean(0) + 2 * samples.std(0)
    assert M.std_error_correlation(samples, truth).item() == pytest.approx(1.0, abs=1e-12)
    # a truth drawn from the same distribution: positive correlation
    truth2 = torch.randn(8, 8, generator=g, dtype=F64) * scale
    assert M.std_error_correlation(samples, truth2).item() > 0.3


# ------------------------------------------------------------------ Gaussians


def test_gaussian_kl_closed_forms():
    g = gen(0)
    a = torch.randn(5, 5, generator=g, dtype=F64)
    cov = a @ a.T + 5 * torch.eye(5, dtype=F64)
    mean = torch.randn(5, generator=g, dtype=F64)
    assert abs(M.gaussian_kl(mean, cov, mean, cov).item()) < 1e-12
    # 1-D: log(s2/s1) + (s1^2 + (m1-m2)^2) / (2 s2^2) - 1/2
    m1, s1, m2, s2 = 0.3, 0.7, -1.0, 1.6
    exact = math.log(s2 / s1) + (s1**2 + (m1 - m2) ** 2) / (2 * s2**2) - 0.5
    val = M.gaussian_kl([m1], [[s1**2]], [m2], [[s2**2]])
    assert val.item() == pytest.approx(exact, rel=1e-12)
    # d-dimensional against torch.distributions
    b = torch.randn(5, 5, generator=g, dtype=F64)
    cov2 = b @ b.T + torch.eye(5, dtype=F64)
    mean2 = torch.randn(5, generator=g, dtype=F64)
    ref = torch.distributions.kl_divergence(
        torch.distributions.MultivariateNormal(mean, cov), torch.distributions.MultivariateNormal(mean2, cov2)
    )
    assert M.gaussian_kl(mean, cov, mean2, cov2).item() == pytest.approx(ref.item(), rel=1e-10)


def test_gaussian_w2_closed_forms():
    g = gen(0)
    m1, m2 = torch.randn(4, generator=g, dtype=F64), torch.randn(4, generator=g, dtype=F64)
    d1 = torch.rand(4, generator=g, dtype=F64) + 0.5
    d2 = torch.rand(4, generator=g, dtype=F64) + 0.5
    # diagonal covariances: W2^2 = |m1 - m2|^2 + sum (sqrt(d1) - sqrt(d2))^2
    exact = math.sqrt(((m1 - m2) ** 2).sum().item() + ((d1.sqrt() - d2.sqrt()) ** 2).sum().item())
    assert M.gaussian_w2(m1, torch.diag(d1), m2, torch.diag(d2)).item() == pytest.approx(exact, rel=1e-12)
    # symmetric, zero on equal arguments, invariant to a common rotation
    a = torch.randn(4, 4, generator=g, dtype=F64)
    c1, c2 = a @ a.T + torch.eye(4, dtype=F64), torch.diag(d2)
    w12, w21 = M.gaussian_w2(m1, c1, m2, c2), M.gaussian_w2(m2, c2, m1, c1)
    assert w12.item() == pytest.approx(w21.item(), rel=1e-10)
    assert M.gaussian_w2(m1, c1, m1, c1).item() < 1e-6
    q, _ = torch.linalg.qr(torch.randn(4, 4, generator=g, dtype=F64))
    wr = M.gaussian_w2(q @ m1, q @ c1 @ q.T, q @ m2, q @ c2 @ q.T)
    assert wr.item() == pytest.approx(w12.item(), rel=1e-9)


def test_empirical_gaussian_fit():
    x = np.random.default_rng(0).standard_normal((300, 2, 3))
    mean, cov = M.empirical_gaussian_fit(x)
    flat = x.reshape(300, -1)
    np.testing.assert_allclose(mean.numpy(), flat.mean(0), rtol=1e-12)
    np.testing.assert_allclose(cov.numpy(), np.cov(flat, rowvar=False), rtol=1e-12)


def test_gaussian_args_validated():
    with pytest.raises(ValueError, match="cov_q"):
        M.gaussian_kl(torch.zeros(3), torch.eye(2), torch.zeros(3), torch.eye(3))
