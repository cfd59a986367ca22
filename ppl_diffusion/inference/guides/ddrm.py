"""DDRM — Denoising Diffusion Restoration Models (Kawar, Elad, Ermon, Song, NeurIPS 2022).

Works in the spectral basis of an operator with an SVD ``A = U diag(s) V^T`` and in VE variables
(``x~ = x_t / alpha``, ``rho = sigma / alpha``). With ``x0 = V^T x0_hat``, ``e = V^T eps_hat`` and the
spectral observation ``ybar_i = (U^T y)_i / s_i`` (noise level ``sigma_y / s_i``), the next state is set
per coordinate (the paper's variational distribution in the spectral space, as in the official
``efficient_generalized_steps``)::

    s_i = 0 (null space):          x0_i + sqrt(1-eta^2) rho_s e_i + eta rho_s z_i
    rho_s <  sigma_y/s_i:          x0_i + sqrt(1-eta^2) rho_s (ybar_i - x0_i) s_i/sigma_y + eta rho_s z_i
    rho_s >= sigma_y/s_i:          (1-eta_b) x0_i + eta_b ybar_i + sqrt(rho_s^2 - eta_b^2 sigma_y^2/s_i^2) z_i

and ``x_s = alpha_s V x~_s``. Zero (or numerically zero) singular values count as null space (the
original code lets them fall into the second case). ``eta`` follows the DDRM convention (fresh-noise
share ``eta rho_s``), not the DDIM-eta one. Defaults: eta = 0.85, eta_b = 1, 20 steps.
Needs: a Gaussian likelihood with a linear operator that has an SVD. 1 network call per step.
"""
from __future__ import annotations

import torch

from ..problem import Problem
from ..sampler import Correction, Hook, StepState, reverse_diffusion
from ..solver import check_number
from ..spectral import SpectralView
from .base import DiffusionGuide

__all__ = ["DDRM", "DDRMHook", "SpectralGuide", "ddrm_spectral_step", "ddrm_initial_state"]


def ddrm_spectral_step(view: SpectralView, x0bar, epsbar, z, rho_s, eta: float, eta_b: float):
    """The per-coordinate DDRM update in VE spectral variables (returns ``x~_s`` coordinates)."""
    obs, lev, ybar = view.obs, view.level, view.ybar
    a = (1.0 - eta**2) ** 0.5
    null = x0bar + a * rho_s * epsbar + eta * rho_s * z
    lev_safe = torch.where(torch.isfinite(lev) & (lev > 0), lev, torch.ones_like(lev))
    after = obs & (rho_s < lev)            # the next state is less noisy than y
    before = obs & (rho_s >= lev)          # the next state is noisier than y (or y is noiseless)
    upd_after = x0bar + a * rho_s * (ybar - x0bar) / lev_safe + eta * rho_s * z
    lev_fin = torch.where(torch.isfinite(lev), lev, torch.zeros_like(lev))
    std_b = torch.sqrt((rho_s**2 - (eta_b * lev_fin) ** 2).clamp(min=0.0))
    upd_before = (1.0 - eta_b) * x0bar + eta_b * ybar + std_b * z
    return torch.where(before, upd_before, torch.where(after, upd_after, null))


class DDRMHook(Hook):
    """Sets the whole next state per spectral coordinate (``Correction(x_next=...)``)."""

    def __init__(self, view: SpectralView, eta: float, eta_b: float):
        self.view, self.eta, self.eta_b = view, eta, eta_b

    def correct_x0(self, st: StepState) -> Correction:
        v = self.view
        x0bar, epsbar = v.fwd(st.x0), v.fwd(st.eps)
        rho_s = st.sigma_s / st.alpha_s
        z = st.noise(x0bar)
        xs = ddrm_spectral_step(v, x0bar, epsbar, z, rho_s, self.eta, self.eta_b)
        return Correction(x_next=st.alpha_s * v.inv(xs))


def ddrm_initial_state(view: SpectralView, shape, schedule, generator, dtype, device, t_start=1.0):
    """``x~_T``: ``ybar + sqrt(rho_T^2 - (sigma_y/s)^2) z`` where ``s rho_T > sigma_y``, else ``rho_T z``."""
    t = torch.tensor(t_start, dtype=torch.float64)
    a_T, s_T = float(schedule.alpha(t)), float(schedule.sigma(t))
    rho_T = s_T / a_T
    n = shape[0]
    D = view.obs.numel()
    z = torch.randn((n, D), generator=generator, dtype=dtype, device=device)
    lev = view.level
    inside = view.obs & (lev < rho_T)
    lev_fin = torch.where(torch.isfinite(lev), lev, torch.zeros_like(lev))
    c = torch.where(inside, view.ybar + torch.sqrt((rho_T**2 - lev_fin**2).clamp(min=0.0)) * z, rho_T * z)
    return a_T * view.inv(c)


class SpectralGuide(DiffusionGuide):
    """Base of the guides that run DDRM's spectral update (DDRM, DDNM+): they start from DDRM's
    spectral initial state (conditioned on ``y``) and take over each step with :class:`DDRMHook`."""

    requires = ("linear", "svd")

    def spectral_hook(self, view: SpectralView) -> Hook:  # pragma: no cover - abstract
        raise NotImplementedError

    def run(self, problem: Problem, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """DDRM's spectral start (conditioned on ``y``), then the shared loop with the spectral hook."""
        view = SpectralView.of(problem, self.name)
        times = self.times(problem)
        x = ddrm_initial_state(view, (n,), problem.prior.schedule, generator, problem.dtype, problem.device,
                               float(times[0]))
        return reverse_diffusion(problem.denoiser, x, times, eta=self.eta, hook=self.spectral_hook(view),
                                 generator=generator, progress=self.progress, desc=self.name)


class DDRM(SpectralGuide):
    """DDRM (Kawar et al., NeurIPS 2022): per-coordinate spectral update (module docstring).

    Args:
        model: Pyro model with a diffusion-prior site and a ``GaussianMeasurement`` whose linear
            operator has an SVD.
        eta_b: weight of the measurement on the coordinates noisier than ``y`` (the paper's
            ``eta_b``, in ``[0, 1]``; default 1).
        steps: reverse-diffusion steps (default 20, the paper's setting; ``run_method`` / the CLI use
            50, which the shipped digits prior needs for a sharp posterior mean).
        eta: share of fresh noise in the update, DDRM convention (``eta`` of the paper, in
            ``[0, 1]``; default 0.85).
        grid: time grid (see ``ppl_diffusion.schedules.time_grid``).
        prior_site: name of the diffusion-prior site when the model has several.
        progress: show a progress bar.

    Cost: 1 network call per step.
    """

    name = "DDRM"

    def __init__(self, model, *, eta_b: float = 1.0, steps: int = 20, eta: float = 0.85, grid: str = "uniform",
                 prior_site: str | None = None, progress: bool = False):
        self.eta_b = check_number("eta_b", eta_b, self.name, 0.0, 1.0)
        super().__init__(model, steps=steps, eta=eta, grid=grid, prior_site=prior_site, progress=progress)

    def spectral_hook(self, view: SpectralView) -> Hook:
        return DDRMHook(view, self.eta, self.eta_b)
