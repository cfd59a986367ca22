"""Latent DPS: DPS (Chung et al., ICLR 2023) run on the latent of a latent diffusion model, the
baseline of the latent family (eq. 3.74 of the survey by Daras et al. 2024, "A Survey on Diffusion
Models for Inverse Problems"; the DPS branches of the TReg and DreamSampler code, and PSLD with
gamma = 0).

Step ``t -> s`` with one latent-denoiser call under autograd::

    z0_hat = D^z(z_t, t),  z'_s = DDIM_eta(z_t, z0_hat),
    z_s = z'_s - zeta_t grad_{z_t} ||y - A(Dec(z0_hat))||        (unsquared norm, per sample)

with ``zeta_t = zeta * alpha_s`` (``zeta_schedule="alpha_s"``: TReg / DreamSampler's
``sqrt(alphabar_prev)``), ``zeta`` (``"constant"``: PSLD's code with gamma = 0, and pixel DPS) or
``zeta * alpha_t^2 / 2`` (``"half_alpha_t_sq"``: ReSample's inner DPS). With an identity decoder and
the constant schedule it is pixel DPS exactly (tested).

Cost per step: 1 latent-denoiser call, 1 decoder call, and one backward pass through both.
"""
from __future__ import annotations

import torch

from ..problem import Problem
from ..sampler import Hook, StepState
from ..solver import check_choice, check_number
from .base import LatentSolver, data_fit

__all__ = ["LatentDPS", "ZETA_SCHEDULES", "zeta_t"]

ZETA_SCHEDULES = ("alpha_s", "constant", "half_alpha_t_sq")


def zeta_t(zeta: float, schedule: str, state: StepState):
    """The step size of a DPS step ``t -> s`` under ``schedule`` (see the module docstring)."""
    if schedule == "alpha_s":
        return zeta * state.alpha_s
    if schedule == "half_alpha_t_sq":
        return 0.5 * zeta * state.alpha_t**2
    return zeta


class _LatentDPSHook(Hook):
    needs_grad = True

    def __init__(self, problem: Problem, zeta: float, schedule: str, form: str):
        self.problem, self.zeta, self.schedule, self.form = problem, zeta, schedule, form
        self.decode = problem.prior.autoencoder.decode

    def correct_step(self, state: StepState, z_next: torch.Tensor) -> torch.Tensor:
        L = data_fit(self.problem, self.decode(state.x0), self.form)
        (grad,) = torch.autograd.grad(L.sum(), state.x)
        return z_next.detach() - zeta_t(self.zeta, self.schedule, state) * grad


class LatentDPS(LatentSolver):
    """Latent DPS (see the module docstring).

    Args:
        model: Pyro model whose prior site is a LatentDiffusionPrior, with a differentiable likelihood.
        zeta: guidance scale (default 1.0).
        zeta_schedule: ``"alpha_s"`` (default, TReg / DreamSampler), ``"constant"`` (PSLD's code with
            gamma = 0; pixel DPS) or ``"half_alpha_t_sq"`` (ReSample's inner step).
        steps: latent reverse-diffusion steps.
        eta: DDIM noise (0 = deterministic DDIM, the reference codes' setting; 1 = DDPM).
        grid: time grid (see ``ppl_diffusion.schedules.time_grid``).
        form: ``"auto"`` (the unsquared residual norm for a GaussianMeasurement, ``-log p(y | x)``
            otherwise), ``"norm"`` or ``"loglik"``.
        prior_site: name of the prior site when the model has several.
        progress: show a progress bar.
    """

    name = "LatentDPS"

    def __init__(self, model, *, zeta: float = 1.0, zeta_schedule: str = "alpha_s", steps: int = 200,
                 eta: float = 0.0, grid: str = "uniform", form: str = "auto", prior_site: str | None = None,
                 progress: bool = False):
        self.zeta = check_number("zeta", zeta, self.name, low=0.0)
        self.zeta_schedule = check_choice("zeta_schedule", zeta_schedule, ZETA_SCHEDULES, self.name)
        super().__init__(model, steps=steps, eta=eta, grid=grid, form=form, prior_site=prior_site, progress=progress)

    def make_hook(self, problem: Problem, n: int) -> Hook:
        return _LatentDPSHook(problem, self.zeta, self.zeta_schedule, self.fit_form(problem))
