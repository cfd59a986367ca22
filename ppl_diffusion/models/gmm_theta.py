"""Exact joint posteriors ``p(theta, x | y)`` of Gaussian-mixture problems with one unknown scalar
``theta`` (a noise level, an operator parameter), by quadrature over ``theta``.

For every ``theta`` on a fine grid, ``p(x | theta, y)`` is an exact mixture and ``p(y | theta)`` its
exact evidence (:meth:`GaussianMixture.posterior`), so

    p(theta | y) ∝ p(theta) p(y | theta)          (normalised on the grid, trapezoid weights)
    p(x | y)     = sum_theta p(theta | y) p(x | theta, y)

The reference for the samplers that infer ``theta`` (``Gibbs``, joint guides, SVI with an
autoguide on ``theta``).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .gmm import GaussianMixture

__all__ = ["ThetaPosterior", "theta_posterior"]


@dataclass
class ThetaPosterior:
    """``p(theta | y)`` on a grid and the exact conditional posteriors of ``x``."""

    grid: torch.Tensor            # (G,)
    log_weights: torch.Tensor     # (G,) normalised log probabilities of the grid cells
    posteriors: list              # G exact GaussianMixture posteriors p(x | theta_g, y)

    @property
    def weights(self) -> torch.Tensor:
        return self.log_weights.exp()

    @property
    def mean(self) -> float:
        return float((self.weights * self.grid).sum())

    @property
    def std(self) -> float:
        w = self.weights
        m = (w * self.grid).sum()
        return float(((w * (self.grid - m) ** 2).sum()).sqrt())

    def quantile(self, q: float) -> float:
        """Quantile of ``p(theta | y)`` (linear interpolation of the grid's CDF)."""
        cdf = torch.cumsum(self.weights, 0)
        i = int(torch.searchsorted(cdf, torch.tensor(q, dtype=cdf.dtype)).clamp(max=len(cdf) - 1))
        if i == 0:
            return float(self.grid[0])
        c0, c1 = float(cdf[i - 1]), float(cdf[i])
        f = 0.0 if c1 == c0 else (q - c0) / (c1 - c0)
        return float(self.grid[i - 1] + f * (self.grid[i] - self.grid[i - 1]))

    def sample(self, n: int, generator: torch.Generator | None = None):
        """``n`` exact joint draws ``(theta (n,), x (n, d))``."""
        idx = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        theta = self.grid[idx]
        x = torch.empty((n, self.posteriors[0].d), dtype=self.grid.dtype)
        for g in torch.unique(idx).tolist():
            sel = idx == g
            x[sel] = self.posteriors[g].sample(int(sel.sum()), generator=generator)
        return theta, x


def theta_posterior(prior: GaussianMixture, y: torch.Tensor, grid: torch.Tensor,
                    log_prior: Callable[[torch.Tensor], torch.Tensor],
                    forward: Callable[[float], tuple]) -> ThetaPosterior:
    """Exact ``p(theta, x | y)`` on ``grid`` for ``y = A(theta) x + noise(theta) n``.

    ``forward(theta) -> (A, noise_std)`` gives the linear operator (a matrix or an operator with
    ``matrix()``) and the noise level at ``theta``; ``log_prior(grid)`` the prior log-density of theta.
    The grid must cover the posterior's mass (checked: the end cells must carry < 1e-6 of it)."""
    grid = torch.as_tensor(grid, dtype=torch.float64)
    posts, log_ev = [], []
    for th in grid.tolist():
        A, noise = forward(th)
        post = prior.posterior(A, y, float(noise))
        posts.append(post)
        log_ev.append(post.log_evidence)
    log_ev = torch.stack(log_ev).to(torch.float64)
    # trapezoid cell widths on a possibly non-uniform grid
    d = torch.diff(grid)
    width = torch.zeros_like(grid)
    width[:-1] += d / 2
    width[1:] += d / 2
    logw = log_prior(grid).to(torch.float64) + log_ev + torch.log(width)
    logw = logw - torch.logsumexp(logw, 0)
    edge = float(logw[0].exp() + logw[-1].exp())
    if edge > 1e-6:
        raise ValueError(f"the theta grid [{float(grid[0]):.4g}, {float(grid[-1]):.4g}] cuts the posterior "
                         f"(end cells hold {edge:.2g} of its mass): widen it")
    return ThetaPosterior(grid, logw, posts)


@dataclass
class ThetaProblem:
    """A Gaussian-mixture inverse problem with one unknown scalar ``theta`` and its exact posterior."""

    model: Callable               # Pyro model(y=None): theta site, "x" (diffusion prior), "y"
    y: torch.Tensor
    theta_site: str
    theta_true: float
    x_true: torch.Tensor
    exact: ThetaPosterior
    prior: GaussianMixture


def _benchmark_parts(d: int, d_y: int, seed: int):
    from .gmm import gmm_benchmark_problem

    pb = gmm_benchmark_problem(d, d_y, seed=seed)
    return pb.prior, pb.A, pb.x_true


def unknown_noise_problem(d: int = 8, d_y: int = 4, seed: int = 0, schedule=None, loc: float = -1.0,
                          scale: float = 0.5, grid_size: int = 400) -> ThetaProblem:
    """``sigma ~ LogNormal(loc, scale)``, ``x ~`` the 25-component benchmark mixture (Cardoso et al.
    2024), ``y = A x + sigma n`` with ``sigma`` and ``x`` drawn from their priors (seeded)."""
    import pyro
    import pyro.distributions as dist

    from .measurement import GaussianMeasurement
    from .operators import Matrix

    gmm, A, x_true = _benchmark_parts(d, d_y, seed)
    g = torch.Generator().manual_seed(50_000 + seed)
    sigma_true = float(torch.exp(loc + scale * torch.randn((), generator=g, dtype=torch.float64)))
    y = A @ x_true + sigma_true * torch.randn(d_y, generator=g, dtype=torch.float64)
    prior = gmm.diffusion_prior(schedule)
    op = Matrix(A)
    ln = dist.LogNormal(torch.tensor(loc, dtype=torch.float64), torch.tensor(scale, dtype=torch.float64))

    def model(y=None):
        sigma = pyro.sample("sigma", ln)
        x = pyro.sample("x", prior)
        return pyro.sample("y", GaussianMeasurement(op, x, sigma), obs=y)

    grid = torch.exp(torch.linspace(loc - 7 * scale, loc + 7 * scale, grid_size, dtype=torch.float64))
    exact = theta_posterior(gmm, y, grid, ln.log_prob, lambda s: (A, s))
    return ThetaProblem(model, y, "sigma", sigma_true, x_true, exact, gmm)


def unknown_gain_problem(d: int = 8, d_y: int = 4, seed: int = 0, schedule=None, noise_std: float = 0.1,
                         scale: float = 0.3, grid_size: int = 400) -> ThetaProblem:
    """An operator parameter: ``gain ~ LogNormal(0, scale)``, ``y = gain * A x + noise_std n`` (a
    sensor gain; ``A`` from the benchmark family), ``gain`` and ``x`` drawn from their priors."""
    import pyro
    import pyro.distributions as dist

    from .measurement import GaussianMeasurement
    from .operators import Matrix

    gmm, A, x_true = _benchmark_parts(d, d_y, seed)
    g = torch.Generator().manual_seed(60_000 + seed)
    gain_true = float(torch.exp(scale * torch.randn((), generator=g, dtype=torch.float64)))
    y = gain_true * (A @ x_true) + noise_std * torch.randn(d_y, generator=g, dtype=torch.float64)
    prior = gmm.diffusion_prior(schedule)
    ln = dist.LogNormal(torch.tensor(0.0, dtype=torch.float64), torch.tensor(scale, dtype=torch.float64))

    def model(y=None):
        gain = pyro.sample("gain", ln)
        x = pyro.sample("x", prior)
        return pyro.sample("y", GaussianMeasurement(Matrix(gain * A), x, noise_std), obs=y)

    grid = torch.exp(torch.linspace(-7 * scale, 7 * scale, grid_size, dtype=torch.float64))
    exact = theta_posterior(gmm, y, grid, ln.log_prob, lambda k: (k * A, noise_std))
    return ThetaProblem(model, y, "gain", gain_true, x_true, exact, gmm)


__all__ += ["ThetaProblem", "unknown_noise_problem", "unknown_gain_problem"]
