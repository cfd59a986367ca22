"""DiffPIR — Denoising Diffusion Models for Plug-and-Play Image Restoration (Zhu et al., CVPRW 2023).

Per step (METHODS_SPEC §4.7), with the VE noise level ``rho_t = sigma_t / alpha_t``:

1. ``x0_hat`` from the denoiser;
2. closed-form data proximal step ``x0' = argmin ||y - A x||^2 + r_t ||x - x0_hat||^2`` with
   ``r_t = lam * sigma_n^2 / rho_t^2``, ``sigma_n = max(sigma_y, 1e-3)`` (``operator.prox``);
3. ``eps' = (x_t - alpha_t x0') / sigma_t``;
4. ``x_s = alpha_s x0' + sqrt(1 - zeta) (c_eps eps' + c z) + sqrt(zeta) sigma_s z'`` where
   ``(c_eps, c)`` are the DDIM-eta coefficients (DiffPIR's eta, default 0);
5. the last step returns ``x0'``.

Units: the official code measures sigma_n in [0, 1] pixel units while the diffusion works on
[-1, 1] images, so its lam = 7 (deblur) equals lam = 7/4 = 1.75 here, where sigma_n is the noise
std in the model's own units (the default). Defaults: 100 steps, lam = 1.75, zeta = 0.3, eta = 0.
Needs a linear operator with a closed-form prox (every SVD operator has one). 1 network call per
step, no backpropagation.
"""
from __future__ import annotations

import torch

from ..sampler import Hook, StepState, ddim_coefficients
from .base import DiffusionGuide

__all__ = ["DiffPIR"]


class _DiffPIRHook(Hook):
    def __init__(self, op, y, noise_std, lam, zeta):
        self.op, self.y, self.lam, self.zeta = op, y, lam, zeta
        self.sn2 = max(float(noise_std), 1e-3) ** 2

    def correct_x0(self, st: StepState):
        rho_t = st.sigma_t / st.alpha_t
        r = self.lam * self.sn2 / rho_t**2
        x0p = self.op.prox(st.x0, self.y, r)
        if st.is_last:
            return {"x_next": x0p}
        eps = (st.x - st.alpha_t * x0p) / st.sigma_t
        c_eps, c = ddim_coefficients(st.alpha_t, st.sigma_t, st.alpha_s, st.sigma_s, st.eta)
        z = st.noise()
        det = c_eps * eps + (c * st.noise() if float(c) > 0 else 0.0)
        x_next = st.alpha_s * x0p + (1.0 - self.zeta) ** 0.5 * det + self.zeta**0.5 * st.sigma_s * z
        return {"x_next": x_next}


class DiffPIR(DiffusionGuide):
    """DiffPIR (module docstring). ``DiffPIR(model, steps=100, lam=1.75, zeta=0.3, eta=0.0)``."""

    name = "DiffPIR"
    default_steps = 100
    default_eta = 0.0
    requires = ("linear", "prox")

    def configure(self, lam: float = 1.75, zeta: float = 0.3, **options):
        super().configure(**options)
        self.lam, self.zeta = float(lam), float(zeta)
        if not self.lam > 0:
            raise ValueError(f"{self.name}: lam must be > 0, got {lam}")
        if not 0.0 <= self.zeta <= 1.0:
            raise ValueError(f"{self.name}: zeta must lie in [0, 1], got {zeta}")

    def make_hook(self, problem, n):
        lg = problem.require_prox(self.name)
        return _DiffPIRHook(lg.operator, lg.y.to(problem.dtype), lg.noise_std, self.lam, self.zeta)

    def run(self, problem, n, generator=None):
        with torch.no_grad():
            return super().run(problem, n, generator)
