"""Blind RED-Diff (Alkan, Oscanoa, Abraham, Gao, Nurdinova, Setsompop, Pauly, Mardani, Vasanawala,
"Variational diffusion models for blind MRI inverse problems", NeurIPS 2023 workshop; survey of
Daras et al. 2024, §3.2.2): RED-Diff (Mardani et al., ICLR 2024) for the image and a point estimate
of the operator parameter, fitted together by stochastic optimisation.

Objective (mean-field point masses ``q(x) = delta_mu``, ``q(phi) = delta_phi``)::

    -log p(y | mu, phi) + lam_t * sum(sg(eps_hat - eps) * mu) + R(phi)

At step ``k`` of a descending time sweep: ``eps ~ N(0, I)``, ``x_t = alpha_t mu + sigma_t eps``,
``eps_hat = eps_theta(x_t, t)`` (no gradient), one Adam step on ``mu`` and one on ``phi`` (the
paper's alternating optimisation, both from the same evaluation). ``lam_t = lam * rho_t * m / (d
sigma_y^2)`` (RED-Diff's linear weighting in its paper's balance of ``mean`` terms). ``R``
(``theta_reg``):

* ``"diffusion"``: the parameter's own diffusion prior as a RED-Diff regulariser at the same ``t``,
  ``theta_lam * rho_t * sum(sg(eps_hat_u - eps_u) * u(phi))`` on its diffusion representation ``u``
  (``kappa = 2k / max k - 1`` for a kernel);
* ``"prior"``: ``-log p(phi)`` of the site's Pyro prior (an AutoDelta, i.e. MAP, on phi);
* ``"none"``.

A kernel site is parametrised as ``k = softmax(logits)`` over its entries, started flat (logits 0;
``theta_init="random"``: N(0, 1) logits, as in DMPlug's blind deblurring code); another site by its
value (started from a prior draw). The image starts at zeros for a kernel site and at ``y`` otherwise
(``init="auto"``): started at ``y`` with random logits, some restarts fall into the no-blur solution
(a near-delta kernel and a blurry image; measured on one held-out digit, 4 restarts: 13.0-26.8 dB,
kernel MSE 14-186e-4, against 21.4-24.8 dB and 25-29e-4 from a flat kernel and a zero image; over
the ``blind_images.md`` cells 24.0-25.2 dB instead of 19.3-20.7). The
survey describes the method without code; these choices are ours. ``draw(n)`` runs ``n`` independent
restarts in one batch and returns their point estimates (one "draw" per restart), with the
parameter in ``Draws.extra["theta"]``: an optimiser, not a posterior sampler.
"""
from __future__ import annotations

import torch

from ...models.blind import ParameterDiffusionPrior
from ...schedules import time_grid
from ..blind import measurement_at, operator_site, site_density
from ..problem import Problem
from ..solver import Draws, Solver, check_choice, check_int, check_number, measure

__all__ = ["BlindREDDiff"]

THETA_REGS = ("auto", "diffusion", "prior", "none")


class BlindREDDiff(Solver):
    """Blind RED-Diff (see the module docstring).

    Args:
        steps: optimisation steps (one per time of the descending sweep).
        lr: Adam learning rate of the image ``mu``.
        theta_lr: Adam learning rate of the parameter (kernel logits or value).
        lam: RED-Diff weight of the image regulariser (paper balance).
        theta_reg: ``"auto"`` (``"diffusion"`` for a ParameterDiffusionPrior site, else ``"prior"``),
            ``"diffusion"``, ``"prior"`` or ``"none"``.
        theta_lam: weight of the diffusion regulariser of the parameter.
        init: ``"auto"`` (``"zeros"`` for a kernel site, else ``"measurement"``), ``"measurement"``
            (``mu = y`` when the operator keeps the shape, else zeros) or ``"zeros"``.
        theta_init: kernel logits ``"flat"`` (zeros) or ``"random"`` (N(0, 1)).
        theta_site: the operator-parameter site (default: the one free latent site).
        prior_site: the image prior site.
        progress: unused (kept for the shared interface).
    """

    name = "blind_red_diff"
    family = "variational"
    requires = ("gaussian",)
    infers_latents = True
    supports_plates = False

    def __init__(self, model, *, steps: int = 300, lr: float = 0.1, theta_lr: float = 0.01, lam: float = 0.25,
                 theta_reg: str = "auto", theta_lam: float = 0.25, init: str = "auto",
                 theta_site: str | None = None, prior_site: str | None = None, progress: bool = False,
                 theta_init: str = "flat"):
        self.theta_init = check_choice("theta_init", theta_init, ("random", "flat"), self.name)
        self.steps = check_int("steps", steps, self.name)
        self.lr = check_number("lr", lr, self.name, low=0.0, low_open=True)
        self.theta_lr = check_number("theta_lr", theta_lr, self.name, low=0.0, low_open=True)
        self.lam = check_number("lam", lam, self.name, low=0.0)
        self.theta_lam = check_number("theta_lam", theta_lam, self.name, low=0.0)
        self.theta_reg = check_choice("theta_reg", theta_reg, THETA_REGS, self.name)
        self.init = check_choice("init", init, ("auto", "measurement", "zeros"), self.name)
        self.theta_site = theta_site
        structure = self.setup_solver(model, prior_site, progress)
        self._resolve(structure)

    def _resolve(self, problem: Problem):
        site, fn = operator_site(problem, self.name, self.theta_site)
        reg = self.theta_reg
        if reg == "auto":
            reg = "diffusion" if isinstance(fn, ParameterDiffusionPrior) else "prior"
        if reg == "diffusion" and not isinstance(fn, ParameterDiffusionPrior):
            raise ValueError(f"{self.name}: theta_reg='diffusion' needs a ParameterDiffusionPrior at site {site!r}, "
                             f"got {type(fn).__name__}; use theta_reg='prior'")
        if reg == "prior":
            site_density(fn, torch.as_tensor(problem.latent[site]["value"]).detach(), self.name, site)
        return site, fn, reg

    def draw(self, num_samples: int, *args, generator: torch.Generator | None = None, **kwargs) -> Draws:
        """``num_samples`` independent restarts (point estimates) for the measurement in ``kwargs``."""
        n = check_int("num_samples", num_samples, self.name)
        problem = self.problem(*args, **kwargs)
        site, fn, reg = self._resolve(problem)
        den = problem.denoiser
        with measure(den) as meter:
            mu, theta, losses = self._fit(problem, site, fn, reg, n, generator)
        return self._draws(mu[None], meter, problem, n, extra={"theta": {site: theta[None]}, "loss_trace": losses,
                                                               "point_estimate": True})

    def _fit(self, problem, site, fn, reg, n, generator):
        dtype, dev = problem.dtype, problem.device
        ev = tuple(problem.event_shape)
        y = problem.observation
        kernel = isinstance(fn, ParameterDiffusionPrior) and fn.kind == "kernel"
        shape = (n,) + tuple(fn.batch_shape) + tuple(fn.event_shape)
        if kernel and self.theta_init == "flat":  # a kernel starts from logits: no prior draw (a diffusion)
            raw = torch.zeros(shape, dtype=dtype, device=dev)
        elif kernel:
            raw = torch.randn(shape, generator=generator, dtype=dtype, device=dev)
        else:
            with torch.no_grad():
                raw = fn.sample((n,)).to(dtype)

        def value(r):
            if kernel:
                return torch.softmax(r.reshape(n, -1), -1).reshape(r.shape)
            return r

        x_dummy = torch.zeros((n,) + ev, dtype=dtype, device=dev)
        g0 = measurement_at(problem, site, value(raw), x_dummy)
        same_shape = tuple(g0.operator.out_shape) == ev
        init = ("zeros" if kernel else "measurement") if self.init == "auto" else self.init
        if init == "measurement" and same_shape:
            mu = y.reshape(ev).expand((n,) + ev).clone()
        else:
            mu = torch.zeros((n,) + ev, dtype=dtype, device=dev)
        mu.requires_grad_(True)
        raw.requires_grad_(True)
        sigma = float(g0.noise_std)
        m = int(torch.Size(g0.event_shape).numel())
        d = int(torch.Size(ev).numel())
        lam_eff = self.lam * m / (d * sigma**2)
        opt_x = torch.optim.Adam([mu], lr=self.lr, betas=(0.9, 0.99))
        opt_t = torch.optim.Adam([raw], lr=self.theta_lr, betas=(0.9, 0.99))
        sched = problem.prior.schedule
        times = time_grid(sched, self.steps, "uniform")[:-1]
        pden = fn.denoiser if reg == "diffusion" else None
        losses = []
        for t in times:
            t = t.to(dtype)
            a, s = sched.alpha(t).to(dtype), sched.sigma(t).to(dtype)
            with torch.enable_grad():
                eps = torch.randn(mu.shape, generator=generator, dtype=dtype, device=dev)
                xt = a * mu.detach() + s * eps
                with torch.no_grad():
                    eps_hat = (xt - a * problem.denoiser(xt, t)) / s
                phi = value(raw)
                g = measurement_at(problem, site, phi, mu)
                ll = g.log_prob(y.expand(g.batch_shape + g.event_shape)).reshape(n, -1).sum(-1)
                loss = -ll + lam_eff * (s / a) * ((eps_hat - eps) * mu).reshape(n, -1).sum(-1)
                if reg == "prior":
                    loss = loss - fn.log_prob(phi).reshape(n, -1).sum(-1)
                elif reg == "diffusion":
                    u = self._representation(fn, phi, kernel)
                    au, su = pden.schedule.alpha(t).to(dtype), pden.schedule.sigma(t).to(dtype)
                    eu = torch.randn(u.shape, generator=generator, dtype=dtype, device=dev)
                    with torch.no_grad():
                        ut = au * u.detach() + su * eu
                        eu_hat = (ut - au * pden(ut, t)) / su
                    loss = loss + self.theta_lam * (su / au) * ((eu_hat - eu) * u).reshape(n, -1).sum(-1)
                opt_x.zero_grad()
                opt_t.zero_grad()
                loss.sum().backward()
            opt_x.step()
            opt_t.step()
            losses.append(float(loss.detach().mean()))
        return mu.detach(), value(raw).detach(), torch.tensor(losses)

    @staticmethod
    def _representation(fn: ParameterDiffusionPrior, phi, kernel: bool):
        if not kernel:
            return phi
        from ...training.kernel_data import kernel_to_kappa

        p = fn.prior.event_shape[-1]
        return kernel_to_kappa(phi, p).reshape((phi.shape[0],) + tuple(fn.prior.event_shape))
