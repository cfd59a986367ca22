"""DDRM — Denoising Diffusion Restoration Models (Kawar, Elad, Ermon, Song, NeurIPS 2022).

Works in the spectral basis of an operator with an SVD ``A = U diag(s) V^T`` and in VE variables
(``x~ = x_t / alpha``, ``rho = sigma / alpha``). With ``x0 = V^T x0_hat``, ``e = V^T eps_hat`` and the
spectral observation ``ybar_i = (U^T y)_i / s_i`` (noise level ``sigma_y / s_i``), the next state is set
per coordinate (METHODS_SPEC §4.4, official ``efficient_generalized_steps``)::

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

from ..sampler import Hook, StepState, reverse_diffusion
from .base import DiffusionGuide

__all__ = ["DDRM", "SpectralView", "DDRMHook"]


class SpectralView:
    """Spectral coordinates of a linear-Gaussian problem with an SVD.

    ``fwd(x) = V^T x`` (``(B, D)``), ``inv(c) = V c``; ``obs`` marks the coordinates with a non-zero
    singular value (``s > rtol * max s``), ``s`` (``(D,)``, zero off ``obs``), ``ybar = U^T y / s`` on
    ``obs`` (0 elsewhere) and ``level = sigma_y / s`` (the noise level of ``ybar``; ``inf`` off ``obs``).
    """

    def __init__(self, operator, y: torch.Tensor, noise_std: float, dtype, device, rtol: float = 1e-8):
        self.op = operator
        s = operator.singular_values.to(dtype=dtype, device=device)
        r = s.numel()
        D = operator.in_dim
        keep = s > (rtol * float(s.max()) if r else 0.0)
        s_safe = torch.where(keep, s, torch.ones_like(s))
        u = operator.Ut(y.to(dtype=dtype, device=device))[..., :r]
        self.obs = torch.zeros(D, dtype=torch.bool, device=device)
        self.obs[:r] = keep
        self.s = torch.zeros(D, dtype=dtype, device=device)
        self.s[:r] = torch.where(keep, s, torch.zeros_like(s))
        self.ybar = torch.zeros(u.shape[:-1] + (D,), dtype=dtype, device=device)
        self.ybar[..., :r] = torch.where(keep, u / s_safe, torch.zeros_like(u))
        self.noise_std = float(noise_std)
        lev = torch.full((D,), float("inf"), dtype=dtype, device=device)
        lev[:r] = torch.where(keep, self.noise_std / s_safe, torch.full_like(s, float("inf")))
        self.level = lev

    def fwd(self, x: torch.Tensor) -> torch.Tensor:
        return self.op.Vt(x)

    def inv(self, c: torch.Tensor) -> torch.Tensor:
        return self.op.V(c)


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
    """Sets the whole next state per spectral coordinate (``{"x_next": ...}``)."""

    def __init__(self, view: SpectralView, eta: float, eta_b: float):
        self.view, self.eta, self.eta_b = view, eta, eta_b

    def correct_x0(self, st: StepState):
        v = self.view
        x0bar, epsbar = v.fwd(st.x0), v.fwd(st.eps)
        rho_s = st.sigma_s / st.alpha_s
        z = st.noise(x0bar)
        xs = ddrm_spectral_step(v, x0bar, epsbar, z, rho_s, self.eta, self.eta_b)
        return {"x_next": st.alpha_s * v.inv(xs), "x0": st.x0}


def ddrm_initial_state(view: SpectralView, shape, schedule, generator, dtype, device, t_start=1.0):
    """``x~_T``: ``ybar + sqrt(rho_T^2 - (sigma_y/s)^2) z`` where ``s rho_T > sigma_y``, else ``rho_T z``."""
    t = torch.tensor(t_start, dtype=torch.float64)
    a_T, s_T = float(schedule.alpha(t)), float(schedule.sigma(t))
    rho_T = s_T / a_T
    n = shape[0]
    D = view.obs.numel()
    z = torch.randn((n, D), generator=generator, dtype=dtype, device=device)
    lev = torch.where(torch.isfinite(view.level), view.level, torch.full_like(view.level, float("inf")))
    inside = view.obs & (lev < rho_T)
    lev_fin = torch.where(torch.isfinite(lev), lev, torch.zeros_like(lev))
    c = torch.where(inside, view.ybar + torch.sqrt((rho_T**2 - lev_fin**2).clamp(min=0.0)) * z, rho_T * z)
    return a_T * view.inv(c)


class SpectralGuide(DiffusionGuide):
    """Base of the guides that work in the SVD basis (DDRM, DDNM+): spectral start + hook."""

    requires = ("linear", "svd")

    def view(self, problem) -> SpectralView:
        lg = problem.require_svd(self.name)
        return SpectralView(lg.operator, lg.y, lg.noise_std, problem.dtype, problem.device)

    def spectral_hook(self, view):  # pragma: no cover - abstract
        raise NotImplementedError

    def run(self, problem, n, generator=None):
        view = self.view(problem)
        times = self.times(problem)
        x = ddrm_initial_state(view, (n,), problem.prior.schedule, generator, problem.dtype, problem.device,
                               float(times[0]))
        with torch.no_grad():
            return reverse_diffusion(problem.denoiser, x, times, eta=self.eta, hook=self.spectral_hook(view),
                                     generator=generator, progress=self.progress, desc=self.name)


class DDRM(SpectralGuide):
    """DDRM (Kawar et al., NeurIPS 2022): per-coordinate spectral update (module docstring).

    ``DDRM(model, steps=20, eta=0.85, eta_b=1.0)``. Needs a linear operator with an SVD."""

    name = "DDRM"
    default_steps = 20
    default_eta = 0.85

    def configure(self, eta_b: float = 1.0, **options):
        super().configure(**options)
        self.eta_b = float(eta_b)
        if not 0.0 <= self.eta_b <= 1.0:
            raise ValueError(f"{self.name}: eta_b must lie in [0, 1], got {eta_b}")

    def spectral_hook(self, view):
        return DDRMHook(view, self.eta, self.eta_b)
