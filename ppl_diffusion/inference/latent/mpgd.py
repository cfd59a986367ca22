"""MPGD: Manifold Preserving Guided Diffusion (He, Murata, Lai, Takida, Uesaka, Kim, Liao,
Mitsufuji, Kolter, Salakhutdinov, Ermon, ICLR 2024), Algorithm 2 (latent diffusion) and the
autoencoder variants of Algorithm 3 ("MPGD-AE" / "MPGD-Z"), with the official code's constants.

Step ``t -> s``: one latent-denoiser call *without* autograd through the network; the guidance acts
on the clean estimate, where the autoencoder's manifold is, then a DDIM(eta) step uses it::

    z0_hat = D^z(z_t, t)
    variant "latent":  z0_hat <- z0_hat - (c / alpha_t) grad_{z0_hat} ||y - A Dec(z0_hat)||
    variant "ae":      x0 = Dec(z0_hat);  x0 <- x0 - ae_scale (c / alpha_t) grad_{x0} ||y - A Dec(Enc(x0))||;
                       z0_hat <- Enc(x0)
    variant "z":       z = Enc(Dec(z0_hat));  z <- z - z_scale (c / alpha_t) grad_z ||y - A Dec(z)||;
                       x0 = Dec(z) + (Dec(z0_hat) - Dec(Enc(Dec(z0_hat))));  z0_hat <- Enc(x0)
    z_s = DDIM_eta(z_t, z0_hat)          (eps_hat re-derived from the corrected z0_hat)

The ``"ae"`` and ``"z"`` variants apply in the normalised-time window ``manifold_window`` (official:
``0.3 < t < 0.5``) and the plain latent step elsewhere; ``"latent"`` applies every step. With an
encoder that is an exact left inverse of the decoder (``Enc(Dec(z)) = z``), ``"z"`` is the latent step
scaled by ``z_scale`` (tested). Official constants: ``c = 5 / 10 / 20`` for 100 / 50 / 20 DDIM steps on
FFHQ super-resolution, ``eta = 0.5`` (the ``x0ddim`` sampler), ``ae_scale = 0.0075``, ``z_scale = 0.01``.
The latent inverse-problem form (the official latent script does style guidance) follows the pixel
version's ``c / alpha_t`` scale.

Cost per step: 1 latent-denoiser call (no backward through it) and one decoder (and, for the AE
variants, encoder) forward + backward.
"""
from __future__ import annotations

import torch

from ..problem import Problem
from ..sampler import Correction, Hook, StepState
from ..solver import OptionError, check_choice, check_number
from .base import LatentSolver, data_fit

__all__ = ["MPGD", "MPGD_VARIANTS"]

MPGD_VARIANTS = ("latent", "ae", "z")


class _MPGDHook(Hook):
    needs_grad = False

    def __init__(self, solver: MPGD, problem: Problem):
        self.s, self.problem = solver, problem
        self.ae = problem.prior.autoencoder
        self.form = solver.fit_form(problem)

    def _grad(self, v: torch.Tensor, fn):
        with torch.enable_grad():
            v = v.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(data_fit(self.problem, fn(v), self.form).sum(), v)
        return g

    def correct_x0(self, state: StepState):
        s, ae = self.s, self.ae
        step = s.step_size / state.alpha_t
        z0 = state.x0.detach()
        lo, hi = s.manifold_window
        variant = s.variant if (s.variant != "latent" and lo <= float(state.t) <= hi) else "latent"
        with torch.no_grad():
            if variant == "latent":
                z0 = z0 - step * self._grad(z0, ae.decode)
            elif variant == "ae":
                x0 = ae.decode(z0)
                x0 = x0 - s.ae_scale * step * self._grad(x0, lambda x: ae.decode(ae.encode(x)))
                z0 = ae.encode(x0)
            else:
                x0 = ae.decode(z0)
                z = ae.encode(x0)
                off = x0 - ae.decode(z)  # the part of x0 off the decoder's range, kept
                z = z - s.z_scale * step * self._grad(z, ae.decode)
                z0 = ae.encode(ae.decode(z) + off)
        eps = (state.x - state.alpha_t * z0) / state.sigma_t
        return Correction(x0=z0, eps=eps)


class MPGD(LatentSolver):
    """MPGD (see the module docstring).

    Args:
        model: Pyro model with a LatentDiffusionPrior site and a differentiable likelihood.
        step_size: ``c`` of the guidance step ``c / alpha_t`` (official: 5 for 100 DDIM steps).
        variant: ``"latent"`` (Algorithm 2, every step), ``"ae"`` (MPGD-AE) or ``"z"`` (MPGD-Z) in the
            manifold window, the latent step elsewhere.
        ae_scale: factor of the MPGD-AE step (official 0.0075).
        z_scale: factor of the MPGD-Z step (official 0.01).
        manifold_window: normalised-time interval ``(lo, hi)`` of the AE / Z variants (official (0.3, 0.5)).
        steps: DDIM steps (official: 100).
        eta: DDIM noise (official: 0.5).
        grid: time grid.
        form: data-fit form (``"auto"``, ``"norm"``, ``"loglik"``).
        prior_site: name of the prior site when the model has several.
        progress: show a progress bar.
    """

    name = "MPGD"

    def __init__(self, model, *, step_size: float = 5.0, variant: str = "latent", ae_scale: float = 0.0075,
                 z_scale: float = 0.01, manifold_window: tuple = (0.3, 0.5), steps: int = 100, eta: float = 0.5,
                 grid: str = "uniform", form: str = "auto", prior_site: str | None = None, progress: bool = False):
        n = self.name
        self.step_size = check_number("step_size", step_size, n, low=0.0)
        self.variant = check_choice("variant", variant, MPGD_VARIANTS, n)
        self.ae_scale = check_number("ae_scale", ae_scale, n, low=0.0)
        self.z_scale = check_number("z_scale", z_scale, n, low=0.0)
        try:
            lo, hi = (float(v) for v in manifold_window)
        except (TypeError, ValueError):
            raise OptionError(f"MPGD: manifold_window must be a pair (lo, hi), got {manifold_window!r}") from None
        if not 0 <= lo < hi <= 1:
            raise OptionError(f"MPGD: manifold_window must satisfy 0 <= lo < hi <= 1, got {manifold_window!r}")
        self.manifold_window = (lo, hi)
        super().__init__(model, steps=steps, eta=eta, grid=grid, form=form, prior_site=prior_site, progress=progress)

    def make_hook(self, problem: Problem, n: int) -> Hook:
        return _MPGDHook(self, problem)
