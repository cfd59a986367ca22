"""Exact latent problems: a linear "autoencoder" with a Gaussian-mixture latent prior.

With ``Dec(z) = W z + b`` (``W`` of full column rank, ``k < d``), ``Enc(x) = E (x - b)`` a left inverse
(``E W = I``), a Gaussian mixture on ``z`` (its exact denoiser is the latent denoiser) and
``y = A Dec(z) + sigma_y n``, the measurement is linear in ``z``: ``y - A b = (A W) z + sigma_y n``, so
``p(z | y)`` is an exact Gaussian mixture (:meth:`GaussianMixture.posterior`) and ``p(x | y)`` is its
push-forward by ``Dec``. Every latent solver can be measured against it, and ``Enc(x) = z`` on the
decoder's range, so a solver's draws of ``x`` are compared in ``z`` without loss.

Variants (``variant=``):

* ``"a"``: ``W`` with orthonormal columns, ``E = W^T``;
* ``"b"``: ill-conditioned ``W = Q diag(s)`` (singular values log-spaced over two decades), ``E = W^+``;
* ``"c"``: oblique encoder ``E = W^+ + N`` with ``N W = 0`` (still a left inverse, but ``Dec(Enc(x))``
  is not the orthogonal projection off the range: methods that re-encode images which left the
  range, such as PSLD's gluing term or ReSample's pixel-space solver, see a biased encoder).

The latent mixture is the 25-component benchmark mixture of MCGDiff (Cardoso et al., ICLR 2024) in
``k`` dimensions, scaled by ``latent_scale``; the operator is an inpainting mask (``A^T A`` a
projection, which PSLD needs) keeping ``d_y`` of the ``d`` pixels.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .autoencoder import AffineAutoencoder
from .gmm import GaussianMixture, gmm_benchmark_problem

__all__ = ["LatentGMMProblem", "latent_gmm_problem", "E2_VARIANTS"]

E2_VARIANTS = ("a", "b", "c")


@dataclass
class LatentGMMProblem:
    """An exact latent inverse problem (see the module docstring)."""

    latent_prior: GaussianMixture
    autoencoder: AffineAutoencoder
    operator: object
    y: torch.Tensor
    noise_std: float
    z_true: torch.Tensor
    posterior: GaussianMixture  # exact p(z | y)
    variant: str
    seed: int

    @property
    def A(self) -> torch.Tensor:
        return self.operator.matrix(torch.float64)

    def prior(self, schedule=None, **prior_kwargs):
        """The :class:`~ppl_diffusion.models.latent.LatentDiffusionPrior` (exact latent GMM denoiser)."""
        from ..schedules import VPSchedule
        from .latent import LatentDiffusionPrior

        den = self.latent_prior.denoiser(schedule or VPSchedule.linear())
        return LatentDiffusionPrior(self.autoencoder, den, **prior_kwargs)

    def model(self, schedule=None, **prior_kwargs):
        """The Pyro model ``x ~ LatentDiffusionPrior``, ``y ~ GaussianMeasurement(A x, sigma_y)``."""
        import pyro

        from .measurement import GaussianMeasurement

        prior = self.prior(schedule, **prior_kwargs)
        op, noise = self.operator, self.noise_std

        def model(y=None):
            x = pyro.sample("x", prior)
            return pyro.sample("y", GaussianMeasurement(op, x, noise), obs=y)

        return model

    def posterior_x(self, n: int, generator=None) -> torch.Tensor:
        """``n`` exact posterior draws of ``x = Dec(z)``."""
        return self.autoencoder.decode(self.posterior.sample(n, generator=generator))


def latent_gmm_problem(variant: str = "a", d: int = 16, k: int = 4, d_y: int = 6, noise_std: float = 0.5,
                       latent_scale: float = 0.25, seed: int = 0, dtype=torch.float64) -> LatentGMMProblem:
    """The E2 problem ``variant`` (``"a"``, ``"b"``, ``"c"``) with seed ``seed`` (see the module docstring)."""
    from .operators import Inpainting

    if variant not in E2_VARIANTS:
        raise ValueError(f"variant must be one of {E2_VARIANTS}, got {variant!r}")
    if not 1 <= k < d or not 1 <= d_y <= d:
        raise ValueError(f"need 1 <= k < d and 1 <= d_y <= d, got d={d}, k={k}, d_y={d_y}")
    base = gmm_benchmark_problem(k, 1, seed=seed, dtype=dtype).prior
    gmm = GaussianMixture(base.weights, latent_scale * base.means, latent_scale**2 * base.full_covs())
    g = torch.Generator().manual_seed(10_000 + seed)
    Q, _ = torch.linalg.qr(torch.randn(d, k, generator=g, dtype=dtype))
    if variant == "b":
        W = Q * torch.logspace(-1, 1, k, dtype=dtype)[torch.randperm(k, generator=g)]
    else:
        W = Q
    E = torch.linalg.pinv(W)
    if variant == "c":  # N W = 0: N = M (I - W W^+)
        M = torch.randn(k, d, generator=g, dtype=dtype)
        E = E + M @ (torch.eye(d, dtype=dtype) - W @ torch.linalg.pinv(W))
    b = 0.3 * torch.randn(d, generator=g, dtype=dtype)
    ae = AffineAutoencoder(W, b, E)
    keep = torch.zeros(d, dtype=torch.bool)
    keep[torch.randperm(d, generator=g)[:d_y]] = True
    op = Inpainting(keep)
    A = op.matrix(dtype)
    z_true = gmm.sample(1, generator=g)[0]
    y = A @ (W @ z_true + b) + noise_std * torch.randn(d, generator=g, dtype=dtype) * keep
    post = gmm.posterior((A @ W)[keep], (y - A @ b)[keep], noise_std)
    return LatentGMMProblem(gmm, ae, op, y, float(noise_std), z_true, post, variant, seed)
