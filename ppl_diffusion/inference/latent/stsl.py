"""STSL: Second-order Tweedie for Solving inverse problems with Latent diffusion (Rout, Chen, Kumar,
Caramanis, Shakkottai, Chu, CVPR 2024); the survey by Daras et al. (2024), eqs. 3.89-3.90. No official
code exists; the constants below are ours and are stated as such.

Per step ``t -> s``: ``inner_steps`` (K) gradient steps on the latent ``z_t`` of

    J(z_t) = omega ||y - A Dec(z0_hat(z_t))|| - gamma sigma_t^2 Tr_hat(z_t),
    Tr_hat(z_t) = v^T (s(z_t + delta v) - s(z_t)) / delta,   s = (alpha_t z0_hat - z_t) / sigma_t^2,

(``v`` Rademacher, ``delta = delta_rel * sigma_t``: a finite-difference Hutchinson estimate of the
trace of the score's Jacobian, the second-order Tweedie correction), ``z_t <- z_t - zeta_t grad J``
with ``zeta_t = zeta * alpha_s`` as in Latent DPS, then a DDIM(eta) step from the updated ``z_t``.
``sigma_t^2 Tr = alpha_t Tr(Cov[z0 | z_t]) / sigma_t^2 - dim`` is the trace of the denoiser's Jacobian
up to a constant, so ``gamma > 0`` (the survey's ``+gamma grad Tr`` ascent) pushes ``z_t`` towards
regions of large posterior covariance and ``gamma < 0`` towards small; for a Gaussian latent the
trace is constant and the term vanishes (tested). The sign question, measured on the exact latent
check E2 (``benchmarks/results/latent_e2.md``, 100 steps, 3 problems per variant): the survey's ``+``
sign widens the draws but moves them away from the exact posterior (sliced W 0.579 at gamma = +0.1
against 0.490 at 0 on variant a, 0.771 against 0.717 on c; a tuning run gave 3.6x worse at +0.5), the
``-`` sign changes little (0.491 on a, 0.752 on c), and at ``|gamma| <= 0.02`` neither differs from 0
beyond Monte Carlo noise. No gamma improved consistently on gamma = 0, so the default is the
harmless ``gamma = -0.02``; treat the trace term as unvalidated. The data term uses the unsquared norm of the
DPS family.

Cost per step: ``K`` x (2 latent-denoiser calls + 1 decoder call + their backward, second order
through the denoiser for the trace term) + 1 denoiser call for the DDIM step.
"""
from __future__ import annotations

import torch

from ..problem import Problem
from ..sampler import Correction, Hook, StepState, ddim_coefficients
from ..solver import check_int, check_number
from .base import LatentSolver, data_fit

__all__ = ["STSL", "trace_term"]


def trace_term(denoiser, z: torch.Tensor, t, alpha, sigma, v: torch.Tensor, delta, x0=None) -> torch.Tensor:
    """``sigma^2 v^T (s(z + delta v) - s(z)) / delta`` per sample (differentiable in ``z``)."""
    x0 = denoiser(z, t) if x0 is None else x0
    x0p = denoiser(z + delta * v, t)
    diff = alpha * (x0p - x0) - delta * v  # sigma^2 (s(z + delta v) - s(z))
    return (v * diff).reshape(z.shape[0], -1).sum(-1) / delta


class _STSLHook(Hook):
    needs_grad = True

    def __init__(self, solver: STSL, problem: Problem):
        self.s, self.problem = solver, problem
        self.den = problem.prior.latent_denoiser
        self.decode = problem.prior.autoencoder.decode
        self.form = solver.fit_form(problem)

    def correct_x0(self, state: StepState):
        s, den = self.s, self.den
        t = state.t.to(state.x.dtype)
        a, sig = state.alpha_t, state.sigma_t
        z, x0 = state.x, state.x0
        zeta = s.zeta * state.alpha_s
        for k in range(s.inner_steps):
            if k > 0:
                z = z.detach().requires_grad_(True)
                x0 = den(z, t)
            J = s.omega * data_fit(self.problem, self.decode(x0), self.form)
            if s.gamma != 0:
                v = torch.randint(0, 2, z.shape, generator=state.generator, device=z.device).to(z.dtype) * 2 - 1
                J = J - s.gamma * trace_term(den, z, t, a, sig, v, s.delta_rel * sig, x0)
            (g,) = torch.autograd.grad(J.sum(), z)
            z = (z - zeta * g).detach()
        with torch.no_grad():
            x0 = den(z, t)
            eps = (z - a * x0) / sig
            c_eps, c = ddim_coefficients(a, sig, state.alpha_s, state.sigma_s, state.eta)
            x_next = state.alpha_s * x0 + c_eps * eps
            if float(c) > 0:
                x_next = x_next + c * state.noise(z)
        return Correction(x0=x0, eps=eps, x_next=x_next)


class STSL(LatentSolver):
    """STSL (see the module docstring; constants are ours, the method has no official code).

    Args:
        model: Pyro model with a LatentDiffusionPrior site and a differentiable likelihood.
        zeta: step size factor (``zeta_t = zeta * alpha_s``).
        omega: weight of the data term.
        gamma: weight of the trace term (sign and size set by the exact latent check).
        inner_steps: gradient steps on ``z_t`` per diffusion step (K).
        delta_rel: finite-difference probe size relative to ``sigma_t``.
        steps: DDIM steps.
        eta: DDIM noise.
        grid: time grid.
        form: data-fit form (``"auto"``, ``"norm"``, ``"loglik"``).
        prior_site: name of the prior site when the model has several.
        progress: show a progress bar.
    """

    name = "STSL"

    def __init__(self, model, *, zeta: float = 1.0, omega: float = 1.0, gamma: float = -0.02, inner_steps: int = 2,
                 delta_rel: float = 1e-3, steps: int = 250, eta: float = 0.0, grid: str = "uniform",
                 form: str = "auto", prior_site: str | None = None, progress: bool = False):
        n = self.name
        self.zeta = check_number("zeta", zeta, n, low=0.0)
        self.omega = check_number("omega", omega, n, low=0.0)
        self.gamma = check_number("gamma", gamma, n)
        self.inner_steps = check_int("inner_steps", inner_steps, n)
        self.delta_rel = check_number("delta_rel", delta_rel, n, low=0.0, low_open=True)
        super().__init__(model, steps=steps, eta=eta, grid=grid, form=form, prior_site=prior_site, progress=progress)

    def make_hook(self, problem: Problem, n: int) -> Hook:
        return _STSLHook(self, problem)
