"""PMC: Plug-and-Play Monte Carlo (Sun, Wu, Chen, Feng, Bouman, "Provable Probabilistic Imaging using
Score-Based Generative Priors", 2023; official code sunyumark/PnP-MonteCarlo): the PMC-PnP and
PMC-RED Langevin updates of the paper, with its annealed noise level and tempering.

Annealed Langevin with the data-fidelity gradient ``grad g = -grad log p(y|x)`` (``A^T(Ax - y)/sigma_y^2``
for a linear Gaussian measurement) and the diffusion score at VE noise level ``sigma_k``,
``s(x, sigma) = (D(x, sigma) - x) / sigma^2`` (``denoiser.denoise_ve``; the drift moves x toward the
denoiser output, which fixes the sign ambiguity of the official code's comment):

* PMC-PnP: ``z = x - gamma grad g(x)``; ``x' = z + gamma alpha_k s(z, sigma_k) + sqrt(2 gamma) xi``
* PMC-RED: ``x' = x - gamma grad g(x) + gamma alpha_k s(x, sigma_k) + sqrt(2 gamma) xi``

with ``sigma_k = max(sigma0 decay^k, sigma_min)`` (``decay = 1``: constant sigma) and
``alpha_k = max(alpha sigma_k^2, 1)`` (official tempering; ``alpha=None`` gives ``alpha_k = 1``).
With constant sigma and ``alpha_k = 1`` the RED chain is the unadjusted Langevin algorithm for
``exp(-g(x)) p_sigma(x)`` (the prior smoothed by ``N(0, sigma^2)``); for a Gaussian prior and a
linear operator both chains are linear (AR(1)) and their stationary law is known in closed form
(discrete Lyapunov equation), which the tests check.

Needs: a differentiable likelihood (closed-form gradient for GaussianMeasurement with a linear
operator). Cost: 1 NFE per iteration, no backprop through the network.

Limit (measured, benchmarks/results/kernels_*.md): Langevin does not cross between well-separated
posterior modes (GMM setting B: 90 % coverage 0.15-0.41 on multimodal posteriors, 0.89 on unimodal
ones). Use ParticleGibbs(MCGDiff) for multimodal targets.
"""
from __future__ import annotations

import math

import torch

from ..problem import Problem
from ..solver import OptionError, check_number
from .base import DiffusionKernel, require_differentiable

__all__ = ["PMC"]


class PMC(DiffusionKernel):
    """Plug-and-Play Monte Carlo kernel (see module docstring).

    Args:
        model: Pyro model with a DiffusionPrior site and an observed likelihood.
        variant: ``"pnp"`` or ``"red"``.
        step_size: Langevin step gamma (float > 0) or ``"auto"``: ``step_fraction / L`` with
            ``L = max(s)^2/sigma_y^2 + max_k alpha_k/sigma_k^2`` (needs an operator with an SVD).
        step_fraction: the fraction of ``1 / L`` of ``step_size="auto"`` (in (0, 2), Langevin stability).
        sigma0: initial noise level of the score (clamped to the schedule's largest rho).
        decay: ``sigma_k = max(sigma0 decay^k, sigma_min)``, in (0, 1] (1: constant sigma).
        sigma_min: final noise level (<= sigma0).
        alpha: official tempering constant (``alpha_k = max(alpha sigma_k^2, 1)``), ``None`` for 1.
        prior_site, init, init_scale, progress: see :class:`~ppl_diffusion.inference.kernels.base.DiffusionKernel`.
    """

    name = "PMC"
    mixing_advice = ("PMC's Langevin chains do not cross between separated modes: for a multimodal posterior use "
                     "PnPDM(..., replicas=12) or ParticleGibbs.")

    def __init__(self, model, *, variant: str = "pnp", step_size="auto", step_fraction: float = 0.1,
                 sigma0: float = 1.0, decay: float = 0.99, sigma_min: float = 0.05, alpha: float | None = None,
                 prior_site: str | None = None, init="randn", init_scale: float = 1.0, progress: bool = False):
        n = self.name
        if variant not in ("pnp", "red"):
            raise OptionError(f"{n}: variant must be 'pnp' or 'red', got {variant!r}")
        self.variant = variant
        self.name = f"PMC-{variant.upper()}"
        if isinstance(step_size, str):
            if step_size != "auto":
                raise OptionError(f"{n}: step_size must be a positive float or 'auto', got {step_size!r}")
            self.step_size = "auto"
        else:
            self.step_size = check_number("step_size", step_size, n, low=0.0, low_open=True)
        self.step_fraction = check_number("step_fraction", step_fraction, n, low=0.0, low_open=True)
        if self.step_fraction >= 2:
            raise OptionError(f"{n}: step_fraction must be < 2 (Langevin stability), got {step_fraction}")
        self.sigma0 = check_number("sigma0", sigma0, n, low=0.0, low_open=True)
        self.sigma_min = check_number("sigma_min", sigma_min, n, low=0.0, low_open=True)
        self.decay = check_number("decay", decay, n, low=0.0, low_open=True)
        if self.decay > 1:
            raise OptionError(f"{n}: decay must lie in (0, 1], got {decay}")
        if self.sigma_min > self.sigma0:
            raise OptionError(f"{n}: sigma_min ({sigma_min}) must not exceed sigma0 ({sigma0})")
        self.alpha = None if alpha is None else check_number("alpha", alpha, n, low=0.0, low_open=True)
        super().__init__(model, prior_site=prior_site, init=init, init_scale=init_scale, progress=progress)

    # ------------------------------------------------------------------------------------
    def sigma(self, k: int) -> float:
        return max(self.sigma0 * self.decay**k, self.sigma_min)

    def alpha_k(self, k: int) -> float:
        return 1.0 if self.alpha is None else max(self.alpha * self.sigma(k) ** 2, 1.0)

    def schedule_info(self, k: int) -> dict:
        return {"sigma": self.sigma(k), "step_size": self.gamma}

    def _linear(self, problem: Problem):
        try:
            return problem.linear_gaussian(self.name)
        except ValueError:
            return None

    def check(self, problem: Problem) -> None:
        lg = self._linear(problem)
        if lg is not None and lg.noise_std == 0:
            raise ValueError(f"{self.name} needs a noisy measurement (noise_std > 0): the data-fidelity "
                             "gradient A^T(Ax - y)/noise_std^2 is undefined for noise_std = 0")
        if lg is None:
            require_differentiable(problem, self.name)
        if self.step_size == "auto" and (lg is None or not getattr(lg.operator, "has_svd", False)):
            raise ValueError(f"{self.name}: step_size='auto' needs a linear operator with an SVD; "
                             "pass a numeric step_size")

    def prepare(self, problem: Problem) -> None:
        lg = self._linear(problem)
        self.lin = lg
        if self.sigma0 > problem.prior.schedule.rho_max:
            self._sig_cap = problem.prior.schedule.rho_max
        else:
            self._sig_cap = float("inf")
        if self.step_size == "auto":
            s_max = float(lg.operator.singular_values.max())
            a_over_s2 = max(self.alpha or 0.0, 1.0 / self.sigma_min**2)
            L = s_max**2 / lg.noise_std**2 + a_over_s2
            self.gamma = self.step_fraction / L
        else:
            self.gamma = self.step_size

    def _grad_g(self, x):
        """``grad g(x) = -grad log p(y | x)``."""
        lg = self.lin
        if lg is not None:
            op = lg.operator
            return op.adjoint(op(x) - lg.y) / lg.noise_std**2
        _, g = self.current_problem.grad_log_likelihood(x)
        return -g

    def step(self, x, k, generator=None):
        den = self.current_problem.denoiser
        gamma = self.gamma
        sig = min(self.sigma(k), self._sig_cap)
        ak = self.alpha_k(k)
        z = x - gamma * self._grad_g(x)
        at = z if self.variant == "pnp" else x
        score = (den.denoise_ve(at, sig) - at) / sig**2
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        return z + gamma * ak * score + math.sqrt(2 * gamma) * noise
