import math

import pytest
import torch

from ppl_diffusion.models.gmm import GaussianMixture, gaussian_check_problem, gmm_benchmark_problem
from ppl_diffusion.schedules import VPSchedule


def test_benchmark_constants():
    pb = gmm_benchmark_problem(d=8, d_y=2, seed=3)
    means = pb.prior.means
    assert means.shape == (25, 8)
    assert torch.equal(means[0], torch.tensor([16.0, 16.0] * 4, dtype=torch.float64))  # i = j = -2
    assert torch.allclose(pb.prior.weights.sum(), torch.tensor(1.0, dtype=torch.float64))
    s = torch.linalg.svdvals(pb.A)
    assert torch.all(s <= 1) and torch.all(s[:-1] >= s[1:])
    assert 0 <= pb.noise_std <= float(s.max())
    again = gmm_benchmark_problem(d=8, d_y=2, seed=3)
    assert torch.equal(again.y, pb.y) and torch.equal(again.A, pb.A)
    with pytest.raises(ValueError, match="even dimension.*d=7"):
        gmm_benchmark_problem(d=7)


def test_denoiser_matches_monte_carlo():
    pb = gmm_benchmark_problem(d=8, d_y=1, seed=1)
    sched = VPSchedule.gmm_benchmark()
    den = pb.prior.denoiser(sched)
    g = torch.Generator().manual_seed(2)
    x0 = pb.prior.sample(200_000, generator=g)
    for tval in [0.05, 0.3, 0.6]:
        t = torch.tensor(tval, dtype=torch.float64)
        a, s = sched.alpha(t), sched.sigma(t)
        xt = a * x0[0] + s * torch.randn(8, generator=g, dtype=torch.float64)
        w = torch.softmax(-0.5 * ((xt - a * x0) ** 2).sum(-1) / s**2, 0)  # self-normalised IS with prior proposals
        mc = (w[:, None] * x0).sum(0)
        ess = 1 / (w**2).sum()
        se = torch.sqrt((w[:, None] ** 2 * (x0 - mc) ** 2).sum(0))  # delta-method standard error
        exact = den(xt, t)
        assert ess > 1000
        assert torch.all((exact - mc).abs() <= 5 * se + 1e-3), (tval, exact, mc, se)


def test_full_covariance_denoiser_equals_gaussian_formula():
    g = torch.Generator().manual_seed(0)
    B = torch.randn(4, 4, generator=g, dtype=torch.float64)
    C = B @ B.T + 0.1 * torch.eye(4, dtype=torch.float64)
    mu = torch.randn(1, 4, generator=g, dtype=torch.float64)
    gm = GaussianMixture(torch.ones(1), mu, C[None])
    x = torch.randn(5, 4, generator=g, dtype=torch.float64)
    a, s = 0.7, 0.5
    S = a**2 * C + s**2 * torch.eye(4, dtype=torch.float64)
    expect = mu + (a * C @ torch.linalg.solve(S, (x - a * mu).T)).T
    assert torch.allclose(gm.denoise(x, a, s), expect, atol=1e-12)
    mvn = torch.distributions.MultivariateNormal(mu[0], C)
    assert torch.allclose(gm.log_prob(x), mvn.log_prob(x), atol=1e-10)


def test_isotropic_and_full_agree():
    pb = gmm_benchmark_problem(d=4, d_y=1, seed=0)
    iso = pb.prior
    full = GaussianMixture(iso.weights, iso.means, iso.full_covs())
    x = torch.randn(7, 4, dtype=torch.float64) * 10
    assert torch.allclose(iso.denoise(x, 0.5, 0.8), full.denoise(x, 0.5, 0.8), atol=1e-10)
    assert torch.allclose(iso.log_prob(x), full.log_prob(x), atol=1e-10)


def test_isotropic_denoiser_with_one_time_per_sample_matches_the_full_covariance_formula():
    """The isotropic fast path with per-sample ``alpha``, ``sigma`` of shape ``(n, 1)`` (PnP-DM's
    replicas, each at its own noise level) against the full-covariance eigenbasis formula, sample by
    sample, and against the scalar path."""
    pb = gmm_benchmark_problem(d=6, d_y=2, seed=3)
    iso = pb.prior
    full = GaussianMixture(iso.weights, iso.means, iso.full_covs())
    g = torch.Generator().manual_seed(0)
    x = torch.randn(9, 6, generator=g, dtype=torch.float64) * 4
    a = torch.rand(9, 1, generator=g, dtype=torch.float64) + 0.05
    s = torch.rand(9, 1, generator=g, dtype=torch.float64) * 3 + 0.01
    out = iso.denoise(x, a, s)
    assert torch.allclose(out, full.denoise(x, a, s), atol=1e-10)
    for i in range(9):
        assert torch.allclose(out[i], iso.denoise(x[i:i + 1], float(a[i]), float(s[i]))[0], atol=1e-10)


def test_posterior_agrees_with_importance_sampling():
    pb = gmm_benchmark_problem(d=8, d_y=2, seed=5)
    g = torch.Generator().manual_seed(1)
    x = pb.prior.sample(400_000, generator=g)
    logw = -0.5 * ((pb.y - x @ pb.A.T) ** 2).sum(-1) / pb.noise_std**2
    w = torch.softmax(logw, 0)
    mc_mean = (w[:, None] * x).sum(0)
    se = torch.sqrt((w[:, None] ** 2 * (x - mc_mean) ** 2).sum(0))
    exact_mean = pb.posterior.mean()
    assert torch.all((exact_mean - mc_mean).abs() <= 5 * se + 1e-3)
    # evidence: log p(y) = log E_prior N(y; A x, s^2)
    m = pb.y.numel()
    log_lik = logw - m * math.log(pb.noise_std) - 0.5 * m * math.log(2 * math.pi)
    mc_ev = torch.logsumexp(log_lik, 0) - math.log(x.shape[0])
    assert abs(float(mc_ev - pb.posterior.log_evidence)) < 0.05


def test_posterior_samples_and_quantiles():
    pb = gmm_benchmark_problem(d=8, d_y=4, seed=2)
    g = torch.Generator().manual_seed(0)
    xs = pb.posterior.sample(100_000, generator=g)
    assert torch.allclose(xs.mean(0), pb.posterior.mean(), atol=0.05)
    assert torch.allclose(torch.cov(xs.T), pb.posterior.covariance(), atol=0.1)
    q = pb.posterior.marginal_quantiles(torch.tensor([0.05, 0.95]))
    inside = ((xs >= q[0]) & (xs <= q[1])).double().mean()
    assert abs(float(inside) - 0.9) < 0.005


def test_gaussian_check_problem_is_gaussian():
    pb = gaussian_check_problem(d=20, d_y=10, seed=0)
    assert pb.posterior.K == 1
    C = pb.prior.full_covs()[0]
    A, s = pb.A, pb.noise_std
    P = torch.linalg.inv(torch.linalg.inv(C) + A.T @ A / s**2)
    assert torch.allclose(pb.posterior.full_covs()[0], P, atol=1e-8)
    assert torch.allclose(pb.posterior.means[0], P @ A.T @ pb.y / s**2, atol=1e-8)


def test_bad_inputs():
    with pytest.raises(ValueError, match="weights"):
        GaussianMixture(torch.ones(2), torch.zeros(3, 2))
    pb = gmm_benchmark_problem(d=8, d_y=2, seed=0)
    with pytest.raises(ValueError, match=r"noise_std.*-1\.0"):
        pb.prior.posterior(pb.A, pb.y, -1.0)
    with pytest.raises(ValueError, match=r"\(\*batch, 8\).*\(3, 5\)"):
        pb.prior.log_prob(torch.zeros(3, 5))


def test_responsibilities_are_bayes_rule_over_the_components():
    """p(k | x) = w_k N(x; mu_k, Sigma_k) / sum_j w_j N(x; mu_j, Sigma_j), isotropic and full covariances."""
    g = torch.Generator().manual_seed(3)
    means = torch.randn(3, 2, generator=g, dtype=torch.float64)
    w = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    x = 2 * torch.randn(5, 2, generator=g, dtype=torch.float64)
    for covs in (torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64),
                 torch.stack([torch.eye(2, dtype=torch.float64) * v + 0.2 for v in (0.5, 1.0, 2.0)])):
        mix = GaussianMixture(w, means, covs)
        full = covs if covs.dim() == 3 else covs[:, None, None] * torch.eye(2, dtype=torch.float64)
        logp = torch.stack([torch.distributions.MultivariateNormal(means[k], full[k]).log_prob(x)
                            for k in range(3)], -1) + w.log()
        assert torch.allclose(mix.responsibilities(x), torch.softmax(logp, -1), atol=1e-12)
