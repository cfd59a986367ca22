"""Particle marginal Metropolis-Hastings (Andrieu, Doucet & Holenstein 2010, Sec. 2.4.2) for the
latent sites ``theta`` of a model with a diffusion prior, around any of our SMC samplers.

Each iteration proposes ``theta'`` by a Gaussian random walk in the unconstrained space of the theta
sites, runs the SMC sampler on the model conditioned on ``theta'`` (an independent run: the
sampler may depend on theta in any way, e.g. MCGDiff's time grid on the noise level), and accepts
``(theta', x')`` with probability

    min(1, Z'(theta') p(theta') J(theta') / (Z(theta) p(theta) J(theta)))

where ``Z`` is the run's unbiased estimate of ``p(y | theta)`` (``SMCResult.log_evidence``), ``J``
the Jacobian of the map from the unconstrained space and ``x'`` one particle drawn by the final
weights. This is an exact MCMC kernel for ``p(theta, x | y)`` of the sampler's target (the
discretised prior), whatever the particle count; more particles lower the variance of ``log Z`` and
raise the acceptance rate. Unlike Gibbs, it moves theta and x jointly, so it does not slow down when
they are strongly coupled (a gain and the image's scale). The random-walk scale adapts during
warm-up towards 30 % acceptance (then stays fixed).

Usable with ``pyro.infer.MCMC(PMMH(model, sampler=lambda m: MCGDiff(m, particles=64)), ...)``; run
several chains as several MCMC runs (independent SMC runs at different thetas are not batched).
"""
from __future__ import annotations

import math
from collections import OrderedDict

import pyro
import torch
from pyro.infer.mcmc.mcmc_kernel import MCMCKernel
from torch.distributions import biject_to

from ..theta import theta_structure
from .pyro_chains import PyroChainsDraw

__all__ = ["PMMH"]


class PMMH(PyroChainsDraw, MCMCKernel):
    """Particle marginal Metropolis-Hastings over the theta sites (see the module docstring).

    Args:
        model: Pyro model with a diffusion-prior site, continuous latent sites theta and an observed
            likelihood.
        sampler: ``callable(conditioned_model) -> SMC sampler`` (MCGDiff, TDS, ...), built once on the
            model conditioned on theta (the conditioning values are updated in place).
        step_size: initial random-walk scale in the unconstrained space of theta.
        target_accept: acceptance rate the scale adapts to during warm-up.
        prior_site: the diffusion-prior site when the model has several.
    """

    name = "PMMH"

    def __init__(self, model, sampler, step_size: float = 0.2, target_accept: float = 0.3,
                 prior_site: str | None = None):
        if not callable(sampler):
            raise ValueError("PMMH: sampler must be a callable taking the conditioned model, e.g. "
                             "lambda m: MCGDiff(m, particles=64)")
        if not (step_size > 0 and math.isfinite(step_size)):
            raise ValueError(f"PMMH: step_size must be a finite number > 0, got {step_size!r}")
        if not 0 < target_accept < 1:
            raise ValueError(f"PMMH: target_accept must lie in (0, 1), got {target_accept!r}")
        structure, self.theta_names, self._theta = theta_structure(model, prior_site, "PMMH",
                                                                   "run the SMC sampler directly")
        self.site = structure.prior_site
        self.user_model = model
        self._dists = {n: structure.latent[n]["fn"] for n in self.theta_names}
        self.sampler = sampler(pyro.condition(model, data=self._theta))
        if not hasattr(self.sampler, "run") or not hasattr(self.sampler, "fk_model"):
            raise ValueError(f"PMMH: sampler must build one of our SMC samplers, got {type(self.sampler).__name__}")
        from .base import stub_model

        self.model = stub_model(model)
        self.step_size0, self.target_accept = float(step_size), float(target_accept)
        self.transforms = {}
        self._args, self._kwargs = (), {}
        self._state = None
        self._t, self._warmup = 0, 0
        self._accepted, self._proposed = 0, 0

    # -- pieces ---------------------------------------------------------------------------------
    def _log_prior(self, u: dict) -> float:
        """log p(theta) + log |J| at the unconstrained point ``u``."""
        total = 0.0
        for n, d in self._dists.items():
            tr = biject_to(d.support)
            th = tr(u[n])
            total += float(d.log_prob(th).sum() + tr.log_abs_det_jacobian(u[n], th).sum())
        return total

    def _run(self, u: dict):
        """An SMC run at theta(u): (log Z, one particle by the final weights)."""
        for n, d in self._dists.items():
            self._theta[n] = biject_to(d.support)(u[n]).detach()
        res = self.sampler.run(*self._args, runs=1, **self._kwargs)
        x = res.resample(1)[0]
        return float(res.log_evidence.reshape(-1)[0]), x

    def _params(self) -> dict:
        u, _, _, x = self._state
        out = {self.site: x}
        out.update({n: biject_to(d.support)(u[n]).detach() for n, d in self._dists.items()})
        return out

    # -- Pyro MCMCKernel contract ---------------------------------------------------------------
    def setup(self, warmup_steps, *args, **kwargs):
        self._args, self._kwargs = args, kwargs
        self._t, self._warmup = 0, int(warmup_steps)
        self._accepted = self._proposed = 0
        self.step_size = self.step_size0
        u = {n: biject_to(d.support).inv(d.sample()).detach() for n, d in self._dists.items()}
        for _ in range(100):  # a start with a finite evidence estimate
            lz, x = self._run(u)
            if math.isfinite(lz):
                break
            u = {n: biject_to(d.support).inv(d.sample()).detach() for n, d in self._dists.items()}
        else:
            raise ValueError("PMMH: the SMC evidence is not finite at 100 prior draws of theta; check the model")
        self._state = (u, lz, self._log_prior(u), x)

    @property
    def initial_params(self):
        return self._params() if self._state is not None else None

    @initial_params.setter
    def initial_params(self, params):
        pass

    def sample(self, params):
        if self._state is None:
            raise ValueError("PMMH: call setup() (MCMC.run does) before sample()")
        u, lz, lp, x = self._state
        u_new = {n: v + self.step_size * torch.randn_like(v) for n, v in u.items()}
        lp_new = self._log_prior(u_new)
        accept_prob = 0.0
        if math.isfinite(lp_new):
            with torch.no_grad():
                lz_new, x_new = self._run(u_new)
            log_a = (lz_new + lp_new) - (lz + lp)
            accept_prob = math.exp(min(0.0, log_a)) if math.isfinite(log_a) else 0.0
            if torch.rand(()).item() < accept_prob:
                self._state = (u_new, lz_new, lp_new, x_new)
        if self._t < self._warmup:  # Robbins-Monro on log(step size)
            self.step_size *= math.exp((accept_prob - self.target_accept) / math.sqrt(self._t + 1))
        else:
            self._proposed += 1
            self._accepted += int(self._state[0] is u_new)
        self._t += 1
        return self._params()

    def diagnostics(self):
        rate = self._accepted / self._proposed if self._proposed else float("nan")
        return OrderedDict([("divergences", []), ("acceptance rate", rate)])

    def logging(self):
        rate = self._accepted / self._proposed if self._proposed else float("nan")
        return OrderedDict(step_size=float(f"{self.step_size:.3g}"), accept=float(f"{rate:.3g}"))
