"""DiffPIR — Denoising Diffusion Models for Plug-and-Play Image Restoration (Zhu et al., CVPRW 2023).

Per step (Algorithm 1 of the paper), with the VE noise level ``rho_t = sigma_t / alpha_t``:

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

from ..problem import Problem
from ..sampler import Correction, Hook, StepState, ddim_coefficients
from ..solver import check_number
from .base import DiffusionGuide

__all__ = ["DiffPIR"]


class _DiffPIRHook(Hook):
    def __init__(self, op, y, noise_std, lam, zeta):
        self.op, self.y, self.lam, self.zeta = op, y, lam, zeta
        self.sn2 = max(float(noise_std), 1e-3) ** 2

    def correct_x0(self, st: StepState) -> Correction:
        rho_t = st.sigma_t / st.alpha_t
        r = self.lam * self.sn2 / rho_t**2
        x0p = self.op.prox(st.x0, self.y, r)
        if st.is_last:
            return Correction(x_next=x0p)
        eps = (st.x - st.alpha_t * x0p) / st.sigma_t
        c_eps, c = ddim_coefficients(st.alpha_t, st.sigma_t, st.alpha_s, st.sigma_s, st.eta)
        z = st.noise()  # drawn before the DDIM noise (fixed order of the random draws)
        det = c_eps * eps + (c * st.noise() if float(c) > 0 else 0.0)
        return Correction(x_next=st.alpha_s * x0p + (1.0 - self.zeta) ** 0.5 * det + self.zeta**0.5 * st.sigma_s * z)


class DiffPIR(DiffusionGuide):
    """DiffPIR (Zhu et al., CVPRW 2023; module docstring).

    Args:
        model: Pyro model with a diffusion-prior site and a ``GaussianMeasurement`` with a linear
            operator that has a closed-form proximal step (any SVD operator has one).
        lam: regularisation weight ``lambda`` of the data step (``> 0``; default 1.75, the official
            deblurring value in this library's units).
        zeta: share of fresh noise ``zeta`` in the step (in ``[0, 1]``; default 0.3).
        steps: reverse-diffusion steps (default 100).
        eta: DDIM noise of the deterministic part (in ``[0, 1]``; default 0).
        grid: time grid (see ``ppl_diffusion.schedules.time_grid``).
        prior_site: name of the diffusion-prior site when the model has several.
        progress: show a progress bar.

    Cost: 1 network call per step.
    """

    name = "DiffPIR"
    requires = ("linear", "prox")

    def __init__(self, model, *, lam: float = 1.75, zeta: float = 0.3, steps: int = 100, eta: float = 0.0,
                 grid: str = "uniform", prior_site: str | None = None, progress: bool = False):
        self.lam = check_number("lam", lam, self.name, low=0.0, low_open=True)
        self.zeta = check_number("zeta", zeta, self.name, 0.0, 1.0)
        super().__init__(model, steps=steps, eta=eta, grid=grid, prior_site=prior_site, progress=progress)

    def make_hook(self, problem: Problem, n: int) -> Hook:
        lg = problem.require_prox(self.name)
        return _DiffPIRHook(lg.operator, lg.y.to(problem.dtype), lg.noise_std, self.lam, self.zeta)
