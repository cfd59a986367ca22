"""Priors on operator parameters for blind inverse problems, and the exact blind test problem.

* :class:`ParameterDiffusionPrior`: a diffusion model on an operator parameter (a blur kernel, a
  blur width) as a Pyro distribution. It wraps a :class:`~.prior.DiffusionPrior` on the parameter's
  *diffusion representation* ``u`` and a map ``value = to_value(u)`` (identity for a scalar
  parameter; BlindDPS's ``kappa -> kernel`` normalisation for kernels). ``sample`` runs the reverse
  diffusion; ``log_prob`` uses ``log_density`` when one is given (an exact density, e.g. the
  Gaussian mixture of the test problem), else raises (the blind solvers read the denoiser instead).
* :func:`kernel_prior` / :func:`load_kernel_prior`: the shipped ``kernels`` prior (a UNet on 7x7 blur
  kernels padded to 8x8, trained by ``python -m ppl_diffusion.training --dataset kernels``): values
  are kernels on the simplex (nonnegative, summing to one).
* :func:`blind_gmm_problem`: problem E1 of the blind family. ``x`` ~ the 25-component benchmark
  mixture in R^d (a 1-D circular signal), ``phi`` ~ a 1-D Gaussian mixture whose exact denoiser is
  the "kernel diffusion prior", ``y = k_phi * x + sigma n`` with the circular 3-tap blur
  ``k_phi = [phi, 1 - 2 phi, phi]`` (sums to one for every phi). ``p(phi | y)`` by quadrature on a
  512-point grid and ``p(x | y)`` as the grid mixture of exact conditionals (:mod:`.gmm_theta`).
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from pyro.distributions import TorchDistribution
from torch.distributions import constraints

from .prior import DiffusionPrior

__all__ = ["ParameterDiffusionPrior", "kernel_prior", "load_kernel_prior", "blind_gmm_problem", "three_tap"]


class ParameterDiffusionPrior(TorchDistribution):
    """A diffusion prior on an operator parameter (see the module docstring).

    Args:
        prior: the :class:`~.prior.DiffusionPrior` on the diffusion representation ``u``.
        to_value: ``u (*batch, *u_shape) -> value (*batch, *event_shape)`` (default identity).
        event_shape: shape of a value (default ``u``'s shape).
        log_density: optional exact ``log p(value)`` (``(*batch, *event) -> (*batch,)``).
        kind: ``"parameter"`` or ``"kernel"`` (values on the simplex; solvers may check it).
    """

    arg_constraints: dict = {}
    has_rsample = False

    def __init__(self, prior: DiffusionPrior, to_value: Callable | None = None, event_shape=None,
                 log_density: Callable | None = None, kind: str = "parameter", batch_shape=torch.Size(),
                 validate_args=None):
        if not isinstance(prior, DiffusionPrior):
            raise ValueError(f"prior must be a DiffusionPrior on the parameter, got {type(prior).__name__}")
        if kind not in ("parameter", "kernel"):
            raise ValueError(f"kind must be 'parameter' or 'kernel', got {kind!r}")
        self.prior, self.kind = prior, kind
        self.to_value = to_value if to_value is not None else (lambda u: u)
        self.log_density = log_density
        event_shape = prior.event_shape if event_shape is None else torch.Size(event_shape)
        super().__init__(torch.Size(batch_shape), torch.Size(event_shape), validate_args=False)

    @property
    def support(self):
        return constraints.independent(constraints.real, len(self.event_shape))

    @property
    def denoiser(self):
        return self.prior.denoiser

    def expand(self, batch_shape, _instance=None):
        return ParameterDiffusionPrior(self.prior, self.to_value, self.event_shape, self.log_density, self.kind,
                                       batch_shape=batch_shape)

    def sample(self, sample_shape=torch.Size(), generator=None):
        u = self.prior.sample(torch.Size(sample_shape) + self.batch_shape, generator=generator)
        return self.to_value(u)

    def log_prob(self, value):
        if self.log_density is None:
            raise ValueError(
                "this ParameterDiffusionPrior has no log density (a diffusion model's density is an ODE); "
                "solvers that need log p(theta) (GibbsDDRM with theta_prior='model', Blind RED-Diff with "
                "theta_reg='prior') cannot use it: use BlindDPS / Blind RED-Diff with theta_reg='diffusion', "
                "or GibbsDDRM with theta_prior='l1' (the paper's l1 kernel prior)")
        return self.log_density(value)


def _kernel_map(size: int):
    from ..training.kernel_data import kappa_to_kernel

    def to_value(u):
        return kappa_to_kernel(u.squeeze(-3), size)

    return to_value


def kernel_prior(denoiser, size: int = 7, **prior_kwargs) -> ParameterDiffusionPrior:
    """A kernel prior from a denoiser on ``(1, p, p)`` kappa images (``p = size`` rounded up to even)."""
    return ParameterDiffusionPrior(DiffusionPrior(denoiser, **prior_kwargs), _kernel_map(size),
                                   event_shape=(size, size), kind="kernel")


def load_kernel_prior(name_or_path="kernels", device=None, dtype=None, size: int = 7,
                      **prior_kwargs) -> ParameterDiffusionPrior:
    """The shipped ``kernels`` prior (or a folder trained the same way) as a :func:`kernel_prior`."""
    from ..denoisers import UNetDenoiser
    from .zoo import load_unet

    unet, cfg = load_unet(name_or_path, device=device, dtype=dtype)
    return kernel_prior(UNetDenoiser(unet, cfg, clip_x0=True), size, **prior_kwargs)


def three_tap(phi: torch.Tensor) -> torch.Tensor:
    """``[phi, 1 - 2 phi, phi]`` as a ``(*batch, 1, 3)`` kernel (``phi`` of shape ``(*batch,)`` or
    ``(*batch, 1)``)."""
    phi = phi.squeeze(-1) if phi.dim() and phi.shape[-1] == 1 else phi
    return torch.stack([phi, 1 - 2 * phi, phi], -1).unsqueeze(-2)


def blind_gmm_problem(d: int = 8, seed: int = 0, noise_std: float = 1.0, phi_means=(0.1, 0.22),
                      phi_std: float = 0.03, phi_weights=(0.5, 0.5), grid_size: int = 512, schedule=None):
    """Problem E1 (see the module docstring) as a :class:`~.gmm_theta.ThetaProblem` with theta site
    ``"phi"`` (event shape ``(1,)``; its distribution is a :class:`ParameterDiffusionPrior` with the
    exact 1-D mixture denoiser and density). Seeded: ``phi``, ``x`` and the noise are drawn from the
    model."""
    import pyro

    from .gmm import GaussianMixture, gmm_benchmark_problem
    from .gmm_theta import ThetaProblem, theta_posterior
    from .measurement import GaussianMeasurement
    from .operators import KernelBlur

    pb = gmm_benchmark_problem(d, 1, seed=seed)
    gmm, x_true = pb.prior, pb.x_true
    f64 = torch.float64
    pg = GaussianMixture(torch.tensor(phi_weights, dtype=f64), torch.tensor(phi_means, dtype=f64).reshape(-1, 1),
                         torch.full((len(phi_means),), phi_std**2, dtype=f64))
    g = torch.Generator().manual_seed(70_000 + seed)
    phi_true = float(pg.sample(1, generator=g)[0, 0])
    A_true = KernelBlur(three_tap(torch.tensor([phi_true], dtype=f64)), (d,))
    y = A_true(x_true) + noise_std * torch.randn(d, generator=g, dtype=f64)
    x_prior = gmm.diffusion_prior(schedule)
    phi_prior = ParameterDiffusionPrior(pg.diffusion_prior(schedule), log_density=pg.log_prob)

    def model(y=None):
        phi = pyro.sample("phi", phi_prior)
        x = pyro.sample("x", x_prior)
        return pyro.sample("y", GaussianMeasurement(KernelBlur(three_tap(phi), (d,)), x, noise_std), obs=y)

    lo = min(phi_means) - 6 * phi_std
    hi = max(phi_means) + 6 * phi_std
    grid = torch.linspace(lo, hi, grid_size, dtype=f64)

    # A(phi) = I + phi * M with M the circulant of [1, -2, 1] (the model's KernelBlur, built once)
    M = KernelBlur(torch.tensor([[1.0, -2.0, 1.0]], dtype=f64), (d,)).matrix()
    eye = torch.eye(d, dtype=f64)

    def forward(p):
        return eye + p * M, noise_std

    exact = theta_posterior(gmm, y, grid, lambda v: pg.log_prob(v.reshape(-1, 1)), forward)
    out = ThetaProblem(model, y, "phi", phi_true, x_true, exact, gmm)
    out.phi_prior = pg
    return out
