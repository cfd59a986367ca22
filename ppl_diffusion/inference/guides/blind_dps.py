"""BlindDPS (Chung, Kim, Kim, Ye, "Parallel diffusion models of operator and image for blind inverse
problems", CVPR 2023): joint reverse diffusion of the image ``x`` and the operator parameter ``phi``,
each with its own diffusion prior, guided by the shared likelihood.

Per step ``t -> s`` (both chains in parallel, one call of each network; Algorithm 1 of the paper,
with the step size of the official code)::

    x0_hat = D_x(x_t, t),   u0_hat = D_phi(u_t, t),   phi0_hat = to_value(u0_hat)
    L = ||y - A_{phi0_hat}(x0_hat)||_2 + l1 * ||phi0_hat||_1          (per sample, unsquared norm)
    x_s = DDPM(x_t, x0_hat) - zeta_t grad_{x_t} L,   u_s = DDPM(u_t, u0_hat) - zeta^phi_t grad_{u_t} L

with ``zeta_t = scale * alpha_t`` (``alpha_t = sqrt(alpha_bar_t)``, the "gradually increasing" step of
the official code, which replaces the paper's constant 0.3) and ``zeta^phi_t = theta_scale * alpha_t``.
For a blur kernel the parameter diffuses in the representation ``kappa = 2k / max k - 1`` and
``to_value`` normalises per sample, ``k = ((kappa + 1) / 2) / sum`` (the official code sums over the
whole batch, valid only for one sample). After that normalisation ``||k||_1 = 1`` for every kernel, so
the l1 term of the paper has zero gradient (kept as an option, a no-op on kernels; a unit test
checks this).

The model: ``phi = pyro.sample("k", prior)`` with a
:class:`~ppl_diffusion.models.blind.ParameterDiffusionPrior` (``load_prior("kernels")`` for 7x7 blur
kernels), ``x = pyro.sample("x", image_prior)``, ``y ~ GaussianMeasurement(KernelBlur(k, shape), x,
sigma)``. Draws of the parameter come back in ``Draws.extra["theta"]``. ``nfe_per_sample`` counts the
image network; the parameter network makes as many calls on its smaller input.
"""
from __future__ import annotations

import torch

from ..blind import ThetaRecord, measurement_at, operator_site
from ..problem import Problem
from ..sampler import ddim_coefficients, terminal_noise
from ..solver import check_number
from .base import DiffusionGuide

__all__ = ["BlindDPS"]


class BlindDPS(DiffusionGuide):
    """BlindDPS (see the module docstring).

    Args:
        steps: reverse-diffusion steps (both chains).
        eta: DDIM-eta of both chains (1 = ancestral DDPM, the paper's sampler).
        scale: ``c`` of the image step ``zeta_t = c * alpha_t``.
        theta_scale: ``c`` of the parameter step (the paper shares one step: 1.0 like ``scale``;
            on the scalar E1 parameter 0.001-0.01 is better, see ``benchmarks/results/blind_e1.md``).
        l1: weight of ``||phi0_hat||_1`` in the guidance loss (no gradient on normalised kernels).
        theta_site: the operator-parameter site (default: the model's one free latent site).
        grid: time grid kind.
        prior_site: the image prior site (default: the model's DiffusionPrior site).
        progress: progress bar.
    """

    name = "blind_dps"
    requires = ("gaussian",)
    infers_latents = True
    supports_plates = False

    def __init__(self, model, *, steps: int = 100, eta: float = 1.0, scale: float = 1.0, theta_scale: float = 1.0,
                 l1: float = 0.0, theta_site: str | None = None, grid: str = "uniform",
                 prior_site: str | None = None, progress: bool = False):
        self.scale = check_number("scale", scale, self.name, low=0.0)
        self.theta_scale = check_number("theta_scale", theta_scale, self.name, low=0.0)
        self.l1 = check_number("l1", l1, self.name, low=0.0)
        self.theta_site = theta_site
        super().__init__(model, steps=steps, eta=eta, grid=grid, prior_site=prior_site, progress=progress)
        structure = Problem.from_model(model, prior_site=prior_site, allow_unobserved=True)
        operator_site(structure, self.name, theta_site, diffusion=True)

    def run(self, problem: Problem, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        site, pprior = operator_site(problem, self.name, self.theta_site, diffusion=True)
        self.joint = record = ThetaRecord(site)
        y = problem.observation
        times = self.times(problem)
        dx, du = problem.denoiser, pprior.denoiser
        x = terminal_noise(problem.prior, (n,) + tuple(problem.event_shape), generator, problem.dtype, problem.device)
        u = terminal_noise(pprior.prior, (n,) + tuple(pprior.prior.event_shape), generator, problem.dtype,
                           problem.device)
        ax, sx = dx.schedule.alpha(times).to(x), dx.schedule.sigma(times).to(x)
        au, su = du.schedule.alpha(times).to(u), du.schedule.sigma(times).to(u)
        for i in range(len(times) - 1):
            t = times[i].to(x)
            with torch.enable_grad():
                x = x.detach().requires_grad_(True)
                u = u.detach().requires_grad_(True)
                x0 = dx(x, t)
                u0 = du(u, t.to(u))
                phi0 = pprior.to_value(u0)
                g = measurement_at(problem, site, phi0, x0)
                sq = (y - g.loc).pow(2).reshape(n, -1).sum(-1)
                loss = torch.sqrt(sq.clamp(min=torch.finfo(sq.dtype).tiny))
                if self.l1:
                    loss = loss + self.l1 * phi0.abs().reshape(n, -1).sum(-1)
                gx, gu = torch.autograd.grad(loss.sum(), [x, u])
            x = self._ddim(x.detach(), x0.detach(), ax[i], sx[i], ax[i + 1], sx[i + 1], self.eta, generator)
            u = self._ddim(u.detach(), u0.detach(), au[i], su[i], au[i + 1], su[i + 1], self.eta, generator)
            x = x - self.scale * ax[i] * gx
            u = u - self.theta_scale * au[i] * gu
            record.set(phi0.detach())
        record.set(pprior.to_value(u))
        return x

    @staticmethod
    def _ddim(x, x0, a_t, s_t, a_s, s_s, eta, generator):
        eps = (x - a_t * x0) / s_t
        c_eps, c = ddim_coefficients(a_t, s_t, a_s, s_s, eta)
        out = a_s * x0 + c_eps * eps
        if float(c) > 0:
            out = out + c * torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        return out
