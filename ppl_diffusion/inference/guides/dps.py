"""DPS — Diffusion Posterior Sampling (Chung, Kim, McCann, Klasky, Ye, ICLR 2023).

Update (Algorithm 1 of the paper, as in the official code): one network call with autograd per step,

    x0_hat = D(x_t, t),  x'_s = DDPM/DDIM step from (x0_hat, eps_hat),
    x_s = x'_s - zeta * grad_{x_t} ||y - A(x0_hat)||_2            (unsquared norm, per sample)

which is the paper's ``zeta_t = zeta / ||y - A x0_hat||`` on the squared norm up to a factor 2.
Needs only a differentiable likelihood: with a :class:`GaussianMeasurement` (any operator, nonlinear
ones such as phase retrieval included, noiseless allowed) the norm form above is used; with any
other Pyro likelihood the step is ``x_s = x'_s + zeta * grad_{x_t} log p(y | x0_hat)``
(``form="loglik"``; ``zeta`` must then be tuned to the likelihood's scale).

Joint mode (a model with free latent sites theta, e.g. an unknown noise level ``sigma`` or an
operator parameter): the BlindDPS / GibbsDDRM idea (Chung et al., CVPR 2023; Murata et al., ICML
2023) for any Pyro prior on theta. Each sample carries its own theta, started from a prior draw; at
every step theta first takes ``theta_steps`` gradient (``theta_update="grad"``) or Langevin
(``"langevin"``) steps on ``log p(y | x0_hat, theta) + log p(theta)`` in the unconstrained space of
each site (:class:`~ppl_diffusion.inference.theta.JointTheta`), then x takes the DPS step with the
sample's new theta (after the last step, ``theta_final_steps`` theta steps on the returned x pair each
theta with its own x): ``||y - A_theta(x0_hat)||`` in the norm form, ``log p(y | x0_hat, theta)`` in
the log-likelihood form. The norm form does not contain the noise level: with an unknown ``sigma``
its x update ignores sigma (x is plain DPS, sigma is fitted to each sample's residual), while an
operator parameter (a gain) enters both updates; ``form="loglik"`` couples x to sigma too (its step
scales as ``zeta / sigma^2``, so ``zeta`` must be set for that scale), and that coupling can run away:
a large sigma weakens the guidance, the residual grows and sigma with it (observed on a 32-measurement
problem: sigma 1.5 against an exact 0.135). Draws of theta come back in ``Draws.extra["theta"]``; as a
Pyro guide DPS samples the theta sites too. Theta inherits DPS's x error: where DPS's x misses the
posterior, theta is fitted to the wrong residual (``benchmarks/results/latents_joint.md``: median
error 0.35-0.6 exact posterior std over 10 GMM problems, several problems off by 3-16 std).
"""
from __future__ import annotations

import torch

from ..likelihood import likelihood_gradient, per_sample_sq_norm, residual
from ..problem import Problem
from ..sampler import Hook, StepState
from ..solver import check_choice, check_number
from .base import DiffusionGuide

__all__ = ["DPS", "per_sample_sq_norm", "residual", "likelihood_gradient"]


class _DPSHook(Hook):
    needs_grad = True

    def __init__(self, problem: Problem, zeta: float, form: str, joint=None):
        self.problem, self.zeta, self.form, self.joint = problem, zeta, form, joint

    def correct_step(self, state: StepState, x_next: torch.Tensor) -> torch.Tensor:
        if self.joint is None:
            grad, _ = likelihood_gradient(self.problem, state, self.form)
        else:  # theta | x0_hat first, then x with each sample's new theta
            self.joint.update(state.x0, state.generator)
            (grad,) = torch.autograd.grad(self.joint.data_term(state.x0, self.form).sum(), state.x)
        sign = 1.0 if self.form == "loglik" else -1.0
        return x_next.detach() + sign * self.zeta * grad


class DPS(DiffusionGuide):
    """Diffusion Posterior Sampling (Chung et al., ICLR 2023), Algorithm 1 of the paper.

    Args:
        model: Pyro model with a diffusion-prior site and a differentiable likelihood.
        zeta: guidance step (default 1.0, as in the published GMM benchmark; the official image
            configs use 0.3-1.0).
        form: ``"auto"`` (unsquared residual norm for a GaussianMeasurement, the log-likelihood
            gradient otherwise), ``"norm"`` or ``"loglik"``.
        steps: reverse-diffusion steps (paper: 1000).
        eta: DDIM noise (1 = DDPM ancestral steps, the paper's sampler).
        grid: time grid (see ``ppl_diffusion.schedules.time_grid``).
        theta_update: joint mode (free latent sites): ``"grad"`` (gradient ascent, each sample's theta
            tracks the maximiser of ``log p(y | x0_hat, theta) + log p(theta)``) or ``"langevin"``
            (unadjusted Langevin on the same target).
        theta_lr: theta step size in the unconstrained space (a fraction of the Newton step with
            ``theta_precondition``).
        theta_steps: theta steps per diffusion step.
        theta_precondition: scale the theta steps by the target's diagonal curvature per sample.
        theta_final_steps: theta steps on the returned x after the last diffusion step (pairs each
            theta with its own x).
        prior_site: name of the diffusion-prior site when the model has several.
        progress: show a progress bar.

    Cost: 1 network call + 1 vector-Jacobian product per step (joint mode adds, per step and theta
    step, model traces and backward passes through the likelihood only, no network call).
    """

    name = "DPS"
    requires = ("likelihood",)
    infers_latents = True

    def __init__(self, model, *, zeta: float = 1.0, form: str = "auto", steps: int = 1000, eta: float = 1.0,
                 grid: str = "uniform", theta_update: str = "grad", theta_lr: float = 0.1, theta_steps: int = 1,
                 theta_precondition: bool = True, theta_final_steps: int = 10, prior_site: str | None = None,
                 progress: bool = False):
        self.zeta = check_number("zeta", zeta, self.name, low=0.0)
        self.form = check_choice("form", form, ("auto", "norm", "loglik"), self.name)
        self.set_theta_options(theta_update, theta_lr, theta_steps, theta_precondition, theta_final_steps)
        super().__init__(model, steps=steps, eta=eta, grid=grid, prior_site=prior_site, progress=progress)

    def check(self, problem: Problem) -> None:
        super().check(problem)
        if self.form == "norm":
            problem.gaussian(self.name + " (form='norm')")

    def _form(self, problem: Problem) -> str:
        if self.form != "auto":
            return self.form
        return "norm" if problem.is_gaussian else "loglik"

    def make_hook(self, problem: Problem, n: int) -> Hook:
        return _DPSHook(problem, self.zeta, self._form(problem), self.joint)
