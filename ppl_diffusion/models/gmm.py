"""Gaussian mixtures: the exact ground truth of the library.

For a prior ``p(x0) = sum_k w_k N(mu_k, C_k)`` every quantity a diffusion solver approximates is
closed-form:

* the noised marginal ``p_t(x_t) = sum_k w_k N(alpha mu_k, alpha^2 C_k + sigma^2 I)``;
* the denoiser ``E[x0 | x_t] = sum_k r_k(x_t) [mu_k + alpha C_k (alpha^2 C_k + sigma^2 I)^{-1} (x_t - alpha mu_k)]``
  with responsibilities ``r_k`` (softmax of the component log-densities);
* the posterior under ``y = A x + sigma_y n``: a mixture whose components are Kalman-updated and whose
  log-weights are ``log w_k + log N(y; A mu_k, A C_k A^T + sigma_y^2 I)``.

Covariances are either isotropic (``covs`` of shape (K,), meaning ``c_k I``; fast path) or full
(K, d, d), kept as eigendecompositions. :func:`gmm_benchmark_problem` is the benchmark of the SMC
diffusion literature (Cardoso et al., ICLR 2024; ``docs/benchmarks.md``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..denoisers import Denoiser
from ..schedules import Schedule, VPSchedule

__all__ = ["GaussianMixture", "GMMDenoiser", "GMMProblem", "gmm_benchmark_problem", "gaussian_check_problem"]

LOG2PI = math.log(2 * math.pi)


class GaussianMixture:
    """A Gaussian mixture in R^d with exact densities, samples, denoiser and posteriors."""

    def __init__(self, weights, means, covs=None):
        means = torch.as_tensor(means)
        if means.dim() != 2:
            raise ValueError(f"means must have shape (K, d), got {tuple(means.shape)}")
        dtype = means.dtype if means.is_floating_point() else torch.float64
        self.means = means.to(dtype)
        K, d = self.means.shape
        w = torch.as_tensor(weights, dtype=dtype, device=self.means.device).flatten()
        if w.numel() != K or torch.any(w < 0) or float(w.sum()) <= 0:
            raise ValueError("weights must be K non-negative numbers with a positive sum")
        self.weights = w / w.sum()
        self.K, self.d = K, d
        if covs is None:
            covs = torch.ones(K, dtype=dtype, device=self.means.device)
        covs = torch.as_tensor(covs, dtype=dtype, device=self.means.device)
        if covs.dim() == 0:
            covs = covs.expand(K).clone()
        if covs.shape == (K,):
            if torch.any(covs < 0):
                raise ValueError("isotropic variances must be >= 0")
            self.isotropic = True
            self.variances = covs
            self.covs = None
        elif covs.shape == (K, d, d):
            self.isotropic = False
            self.covs = 0.5 * (covs + covs.transpose(-1, -2))
            evals, evecs = torch.linalg.eigh(self.covs)
            self.evals, self.evecs = evals.clamp(min=0.0), evecs
        else:
            raise ValueError(f"covs must have shape (K,) or (K, d, d), got {tuple(covs.shape)}")

    # ------------------------------------------------------------------------------------
    @property
    def dtype(self):
        return self.means.dtype

    def to(self, device=None, dtype=None) -> GaussianMixture:
        dtype = dtype or self.dtype
        covs = self.variances if self.isotropic else self.covs
        return GaussianMixture(self.weights.to(device, dtype), self.means.to(device, dtype), covs.to(device, dtype))

    def full_covs(self) -> torch.Tensor:
        if self.isotropic:
            eye = torch.eye(self.d, dtype=self.dtype, device=self.means.device)
            return self.variances[:, None, None] * eye
        return self.covs

    def mean(self) -> torch.Tensor:
        return (self.weights[:, None] * self.means).sum(0)

    def covariance(self) -> torch.Tensor:
        m = self.mean()
        dm = self.means - m
        return (self.weights[:, None, None] * (self.full_covs() + dm[:, :, None] * dm[:, None, :])).sum(0)

    # ------------------------------------------------------------------------------------
    def _component_terms(self, x: torch.Tensor, alpha, sigma):
        """Per-component log N(x; alpha mu_k, alpha^2 C_k + sigma^2 I) and the denoiser means.

        ``x``: (*b, d); ``alpha``, ``sigma``: scalars or (*b, 1). Returns (*b, K) and (*b, K, d)."""
        x = x.to(self.dtype)
        alpha = torch.as_tensor(alpha, dtype=self.dtype, device=x.device)
        sigma = torch.as_tensor(sigma, dtype=self.dtype, device=x.device)
        a = alpha[..., None] if alpha.dim() > 0 else alpha  # (*b,1,1) against (*b,K,d)
        s = sigma[..., None] if sigma.dim() > 0 else sigma
        diff = x[..., None, :] - a * self.means  # (*b, K, d)
        if self.isotropic:
            var = a**2 * self.variances[:, None] + s**2  # (*b?, K, 1)
            logn = -0.5 * ((diff**2) / var).sum(-1) - 0.5 * self.d * (torch.log(var[..., 0]) + LOG2PI)
            gain = a * self.variances[:, None] / var
            mean0 = self.means + gain * diff
        else:
            proj = torch.einsum("kij,...ki->...kj", self.evecs, diff)  # Q^T diff
            var = a**2 * self.evals + s**2  # (*b?, K, d)
            logn = -0.5 * (proj**2 / var).sum(-1) - 0.5 * (torch.log(var).sum(-1) + self.d * LOG2PI)
            gain = a * self.evals / var
            mean0 = self.means + torch.einsum("kij,...kj->...ki", self.evecs, gain * proj)
        return logn, mean0

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Exact log density, (*b, d) -> (*b)."""
        self._check(x)
        logn, _ = self._component_terms(x, 1.0, 0.0)
        return torch.logsumexp(logn + torch.log(self.weights), -1)

    def responsibilities(self, x: torch.Tensor) -> torch.Tensor:
        """Posterior component probabilities ``p(k | x)``, (*b, d) -> (*b, K)."""
        self._check(x)
        logn, _ = self._component_terms(x, 1.0, 0.0)
        return torch.softmax(logn + torch.log(self.weights), -1)

    def marginal_log_prob(self, x_t: torch.Tensor, alpha, sigma) -> torch.Tensor:
        """log p_t(x_t) of the noised mixture."""
        self._check(x_t)
        logn, _ = self._component_terms(x_t, alpha, sigma)
        return torch.logsumexp(logn + torch.log(self.weights), -1)

    def denoise(self, x_t: torch.Tensor, alpha, sigma) -> torch.Tensor:
        """Exact ``E[x0 | x_t]`` for ``x_t = alpha x0 + sigma eps``."""
        self._check(x_t)
        alpha = torch.as_tensor(alpha, dtype=self.dtype, device=x_t.device)
        sigma = torch.as_tensor(sigma, dtype=self.dtype, device=x_t.device)
        if self.isotropic and all(v.dim() == 0 or v.shape[-1] == 1 for v in (alpha, sigma)):
            # fast path (isotropic components; one time for all, or one per sample as (*b, 1)): matmuls
            # instead of (*b, K, d) tensors
            x = x_t.to(self.dtype)
            var = alpha**2 * self.variances + sigma**2  # (K,) or (*b, K)
            sq = (x * x).sum(-1, keepdim=True) - 2 * alpha * (x @ self.means.T) + alpha**2 * (self.means**2).sum(-1)
            logn = -0.5 * sq / var - 0.5 * self.d * torch.log(var)
            r = torch.softmax(logn + torch.log(self.weights), -1)
            gain = alpha * self.variances / var  # E[x0 | x_t, k] = mu_k (1 - alpha gain_k) + gain_k x_t
            return (r * (1 - alpha * gain)) @ self.means + x * (r * gain).sum(-1, keepdim=True)
        logn, mean0 = self._component_terms(x_t, alpha, sigma)
        r = torch.softmax(logn + torch.log(self.weights), -1)
        return (r[..., None] * mean0).sum(-2)

    def _check(self, x):
        if x.dim() < 1 or x.shape[-1] != self.d:
            raise ValueError(f"expected (*batch, {self.d}), got {tuple(x.shape)}")

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` exact draws, shape (n, d)."""
        dev = self.means.device
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.d, generator=generator, dtype=self.dtype, device=dev)
        if self.isotropic:
            return self.means[k] + torch.sqrt(self.variances[k])[:, None] * z
        root = self.evecs * torch.sqrt(self.evals)[:, None, :]  # Q diag(sqrt(l))
        out = self.means[k].clone()
        for c in torch.unique(k).tolist():  # one (n_c, d) x (d, d) product per component drawn
            sel = k == c
            out[sel] += z[sel] @ root[c].T
        return out

    def marginal_quantiles(self, levels: torch.Tensor, iters: int = 80) -> torch.Tensor:
        """Quantiles of every 1-D marginal, shape (len(levels), d), by bisection on the mixture CDF."""
        levels = torch.as_tensor(levels, dtype=self.dtype, device=self.means.device)
        var = self.full_covs().diagonal(dim1=-2, dim2=-1)  # (K, d)
        std = torch.sqrt(var.clamp(min=1e-300))
        lo = (self.means - 10 * std).min(0).values.expand(levels.numel(), -1).clone()
        hi = (self.means + 10 * std).max(0).values.expand(levels.numel(), -1).clone()
        for _ in range(iters):
            mid = 0.5 * (lo + hi)
            z = (mid[:, None, :] - self.means) / std  # (L, K, d)
            cdf = (self.weights[:, None] * 0.5 * torch.erfc(-z / math.sqrt(2))).sum(1)
            below = cdf < levels[:, None]
            lo = torch.where(below, mid, lo)
            hi = torch.where(below, hi, mid)
        return 0.5 * (lo + hi)

    # ------------------------------------------------------------------------------------
    def posterior(self, A, y: torch.Tensor, noise_std: float) -> GaussianMixture:
        """Exact posterior ``p(x | y)`` for ``y = A x + noise_std * n``.

        ``A`` is an (m, d) tensor or a linear operator with ``matrix()``. Noiseless (``noise_std=0``)
        works when ``A C_k A^T`` is invertible."""
        if noise_std < 0:
            raise ValueError(f"noise_std must be >= 0, got {noise_std}")
        A = A.matrix() if hasattr(A, "matrix") else torch.as_tensor(A)
        A = A.to(self.dtype).to(self.means.device)
        y = torch.as_tensor(y, dtype=self.dtype, device=self.means.device).reshape(-1)
        if A.dim() != 2 or A.shape[1] != self.d or A.shape[0] != y.numel():
            raise ValueError(f"A must be (m, {self.d}) with m = y.numel() = {y.numel()}, got {tuple(A.shape)}")
        m = A.shape[0]
        C = self.full_covs()  # (K, d, d)
        CAt = C @ A.T  # (K, d, m)
        S = A @ CAt + noise_std**2 * torch.eye(m, dtype=self.dtype, device=A.device)  # (K, m, m)
        S = 0.5 * (S + S.transpose(-1, -2))
        L = torch.linalg.cholesky(S)
        resid = y - self.means @ A.T  # (K, m)
        sol = torch.cholesky_solve(resid[..., None], L)[..., 0]  # S^{-1} r
        post_means = self.means + torch.einsum("kdm,km->kd", CAt, sol)
        gain_t = torch.cholesky_solve(CAt.transpose(-1, -2), L)  # S^{-1} A C  (K, m, d)
        post_covs = C - CAt @ gain_t
        logdet = 2 * torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1)
        log_ev = -0.5 * ((resid * sol).sum(-1) + logdet + m * LOG2PI)
        logw = torch.log(self.weights) + log_ev
        post = GaussianMixture(torch.softmax(logw, 0), post_means, post_covs)
        post.log_evidence = torch.logsumexp(logw, 0)
        return post

    def denoiser(self, schedule: Schedule | None = None) -> GMMDenoiser:
        return GMMDenoiser(self, schedule or VPSchedule.linear())

    def diffusion_prior(self, schedule: Schedule | None = None, **kwargs):
        """A :class:`~ppl_diffusion.models.prior.DiffusionPrior` whose denoiser is this mixture's exact one."""
        from .prior import DiffusionPrior

        return DiffusionPrior(self.denoiser(schedule), **kwargs)


class GMMDenoiser(Denoiser):
    """The exact denoiser ``E[x0 | x_t]`` of a :class:`GaussianMixture` under ``schedule``."""

    def __init__(self, gmm: GaussianMixture, schedule: Schedule):
        super().__init__(schedule, (gmm.d,))
        self.gmm = gmm

    def denoise(self, x_t, t):
        alpha, sigma = self.coefficients(t, x_t)
        gmm = self.gmm if self.gmm.means.device == x_t.device else self.gmm.to(x_t.device)
        if gmm is not self.gmm:
            self.gmm = gmm
        return gmm.denoise(x_t, alpha, sigma).to(x_t.dtype)

    def sample_terminal(self, shape, generator=None, dtype=None, device=None):
        """Exact draws of ``x_1`` (the noised mixture at ``t = 1``), shape ``(*batch, d)``."""
        n = int(torch.Size(shape[:-1]).numel())
        t1 = torch.tensor(1.0, dtype=torch.float64)
        a, s = float(self.schedule.alpha(t1)), float(self.schedule.sigma(t1))
        x0 = self.gmm.sample(n, generator=generator)
        z = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
        return (a * x0 + s * z).reshape(tuple(shape)).to(dtype=dtype or x0.dtype, device=device)

    def terminal_log_prob_ve(self, x_tilde, rho):
        """Exact log density of ``x~ = x0 + rho eps`` (VE coordinates)."""
        return self.gmm.marginal_log_prob(x_tilde, 1.0, rho).to(x_tilde.dtype)

    def marginal_log_prob(self, x_t, t):
        alpha, sigma = self.coefficients(t, x_t)
        return self.gmm.marginal_log_prob(x_t, alpha, sigma)


@dataclass
class GMMProblem:
    """A GMM inverse problem with its exact posterior (``docs/benchmarks.md``)."""

    prior: GaussianMixture
    A: torch.Tensor
    y: torch.Tensor
    noise_std: float
    x_true: torch.Tensor
    posterior: GaussianMixture
    seed: int

    @property
    def d(self):
        return self.prior.d

    @property
    def d_y(self):
        return self.A.shape[0]

    def operator(self):
        from .operators import Matrix

        return Matrix(self.A)

    def to(self, dtype: torch.dtype) -> GMMProblem:
        """The same problem with prior, ``A`` and ``y`` cast to ``dtype`` (the exact posterior keeps its
        precision: it is the reference, not the solver's input)."""
        return GMMProblem(self.prior.to(dtype=dtype), self.A.to(dtype), self.y.to(dtype), self.noise_std,
                          self.x_true.to(dtype), self.posterior, self.seed)

    def model(self, schedule: Schedule | None = None, **prior_kwargs):
        """The Pyro model ``x ~ DiffusionPrior(exact GMM denoiser)``, ``y ~ GaussianMeasurement(A x, sigma_y)``."""
        import pyro

        from .measurement import GaussianMeasurement

        prior = self.prior.diffusion_prior(schedule, **prior_kwargs)
        op = self.operator()
        noise = self.noise_std

        def model(y=None):
            x = pyro.sample("x", prior)
            return pyro.sample("y", GaussianMeasurement(op, x, noise), obs=y)

        return model


def _grid_means(d: int, dtype=torch.float64) -> torch.Tensor:
    if d % 2:
        raise ValueError(f"the GMM benchmark needs an even dimension, got d={d}")
    pairs = torch.tensor([(-8.0 * i, -8.0 * j) for i in range(-2, 3) for j in range(-2, 3)], dtype=dtype)
    return pairs.repeat(1, d // 2)


def gmm_benchmark_problem(d: int = 8, d_y: int = 1, seed: int = 0, dtype=torch.float64) -> GMMProblem:
    """The 25-component GMM inverse problem of MCGDiff (Cardoso et al., ICLR 2024).

    Means ``(-8i, -8j, -8i, -8j, ...)`` for i, j in {-2..2}, identity covariances, weights
    ``z^2 / sum z^2`` with ``z ~ N(0, I_25)``; ``A = U diag(s) V[:d_y]`` from the SVD of a Gaussian
    matrix with singular values replaced by sorted U(0,1) draws; ``x* ~ prior``;
    ``sigma_y = u * max(s)``, ``u ~ U(0, 1)``; ``y = A x* + sigma_y eps``. Seeded."""
    if d_y < 1 or d_y > d:
        raise ValueError(f"need 1 <= d_y <= d, got d_y={d_y}, d={d}")
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(25, generator=g, dtype=dtype)
    prior = GaussianMixture(z**2 / (z**2).sum(), _grid_means(d, dtype), torch.ones(25, dtype=dtype))
    A0 = torch.randn(d_y, d, generator=g, dtype=dtype)
    U, _, Vh = torch.linalg.svd(A0, full_matrices=True)
    s = torch.sort(torch.rand(d_y, generator=g, dtype=dtype), descending=True).values
    A = U @ torch.diag(s) @ Vh[:d_y]
    x_true = prior.sample(1, generator=g)[0]
    noise_std = float(torch.rand((), generator=g, dtype=dtype) * s.max())
    y = A @ x_true + noise_std * torch.randn(d_y, generator=g, dtype=dtype)
    return GMMProblem(prior, A, y, noise_std, x_true, prior.posterior(A, y, noise_std), seed)


def gaussian_check_problem(d: int = 100, d_y: int = 50, noise_std: float = 0.1, seed: int = 0,
                           dtype=torch.float64) -> GMMProblem:
    """The Gaussian closed-form check (``docs/benchmarks.md``): zero-mean Gaussian prior with a random
    SPD covariance, ``A`` with N(0,1) entries, ``sigma_y = 0.1``: the posterior is one Gaussian."""
    g = torch.Generator().manual_seed(seed)
    B = torch.randn(d, d, generator=g, dtype=dtype) / math.sqrt(d)
    evals = torch.linspace(0.05, 2.0, d, dtype=dtype)
    Q, _ = torch.linalg.qr(B)
    cov = (Q * evals) @ Q.T
    prior = GaussianMixture(torch.ones(1, dtype=dtype), torch.zeros(1, d, dtype=dtype), cov[None])
    A = torch.randn(d_y, d, generator=g, dtype=dtype)
    x_true = prior.sample(1, generator=g)[0]
    y = A @ x_true + noise_std * torch.randn(d_y, generator=g, dtype=dtype)
    return GMMProblem(prior, A, y, noise_std, x_true, prior.posterior(A, y, noise_std), seed)
