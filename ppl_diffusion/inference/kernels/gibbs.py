"""Gibbs composition: ``x | theta, y`` by one of our diffusion kernels, ``theta | x, y`` by a Pyro kernel.

A model with latent sites besides the diffusion prior (an unknown noise level, an operator
parameter)::

    def model(y=None):
        sigma = pyro.sample("sigma", dist.LogNormal(-3.0, 1.0))
        x = pyro.sample("x", prior)
        pyro.sample("y", GaussianMeasurement(op, x, sigma), obs=y)

    kernel = Gibbs(model, x_kernel=lambda m: ParticleGibbs(TDS(m, particles=64)), theta_kernel=NUTS)
    mcmc = pyro.infer.MCMC(kernel, num_samples=500, warmup_steps=200)
    mcmc.run(y=y)
    idata = arviz.from_pyro(mcmc)          # sigma and x
    draws = kernel.draw(2000, y=y, chains=4, warmup=200)  # or: 4 runs as one Draws, theta in extra["theta"]

Each iteration alternates two exact conditional updates (a Metropolis-within-Gibbs sampler,
Geman & Geman 1984; Tierney 1994):

1. ``x | theta, y``: one step of the ``x_kernel``, built ONCE by ``x_kernel(conditioned_model)`` on the
   model conditioned on the current ``theta`` (the conditioning dictionary is updated in place, and the
   kernel re-reads the problem after every theta move). ``ParticleGibbs(TDS(...))`` is exact: TDS's
   path-space target is ``p(x_{0:T}) p(y | x_0, theta)`` on a time grid that does not depend on theta,
   so its theta-conditional is ``p(theta | x_0, y)`` (Wu et al. 2023, Sec. 3; Andrieu, Doucet &
   Holenstein 2010 for particle Gibbs). ``PnPDM`` and ``PMC`` are their own (relaxed) targets.
   MCGDiff is refused: its time grid and potentials depend on the noise level through the matching
   times ``tau_i`` (Cardoso et al. 2024, Eq. 3.3), so a move of ``sigma`` changes the path space.
2. ``theta | x, y``: one step of a Pyro kernel (``NUTS`` by default, or ``HMC``, or any callable
   ``model -> MCMCKernel``) on the model with ``x`` fixed at its current value (its prior term does
   not depend on theta and is dropped), so the step costs likelihood evaluations only, no network call.
   Pyro's HMC caches the potential of the current point; the cache is cleared after every ``x`` move.

Samples carry the prior site and every theta site; ``transforms`` are the theta kernel's (Pyro
returns theta in its constrained space).
"""
from __future__ import annotations

from collections import OrderedDict

import pyro
import pyro.distributions as dist
import torch
from pyro.infer.mcmc.mcmc_kernel import MCMCKernel
from pyro.poutine.messenger import Messenger

from ..theta import theta_structure
from .pyro_chains import PyroChainsDraw

__all__ = ["Gibbs", "fix_site"]


class fix_site(Messenger):
    """Fix the sample site ``name`` at ``value()`` as an observed site with zero log-density."""

    def __init__(self, name: str, value):
        super().__init__()
        self.name, self.value = name, value

    def _pyro_sample(self, msg):
        if msg["name"] != self.name:
            return
        x = self.value()
        ne = len(msg["fn"].event_shape)
        msg["fn"] = dist.Delta(x, event_dim=ne)
        msg["value"] = x
        msg["is_observed"] = True


class Gibbs(PyroChainsDraw, MCMCKernel):
    """Alternate ``x | theta, y`` (one of our kernels) and ``theta | x, y`` (a Pyro kernel).

    Args:
        model: Pyro model with a diffusion-prior site, one or more other continuous latent sites
            (theta) and an observed likelihood.
        x_kernel: ``callable(conditioned_model) -> kernel`` building the x update on the model
            conditioned on theta (e.g. ``lambda m: ParticleGibbs(TDS(m, particles=64))``,
            ``lambda m: PnPDM(m, rho_min=0.05)``, or the class ``PnPDM``).
        theta_kernel: a Pyro kernel class (``NUTS`` default, ``HMC``) or ``callable(model) -> MCMCKernel``
            for the theta update on the model with ``x`` fixed.
        theta_steps: theta updates per iteration.
        prior_site: the diffusion-prior site when the model has several.
    """

    name = "Gibbs"

    def __init__(self, model, x_kernel, theta_kernel=None, theta_steps: int = 1, prior_site: str | None = None):
        if not callable(model):
            raise ValueError("Gibbs: model must be a callable Pyro model")
        if not callable(x_kernel):
            raise ValueError("Gibbs: x_kernel must be a callable taking the conditioned model, e.g. "
                             "lambda m: ParticleGibbs(TDS(m, particles=64))")
        if int(theta_steps) != theta_steps or theta_steps < 1:
            raise ValueError(f"Gibbs: theta_steps must be a positive integer, got {theta_steps!r}")
        structure, self.theta_names, theta = theta_structure(model, prior_site, "Gibbs", "run the x kernel directly")
        self.user_model, self.site, self.prior_site = model, structure.prior_site, prior_site
        self.event_shape = tuple(structure.event_shape)
        self.batch_shape = tuple(structure.plate_shape)
        self.theta_steps = int(theta_steps)
        # theta values the x kernel conditions on (updated in place: the conditioned model reads them)
        self._theta = theta
        self.x_model = pyro.condition(model, data=self._theta)
        self.x_kernel = x_kernel(self.x_model)
        self._check_x_kernel()
        self._x = None
        self.theta_model = self._make_theta_model()
        if theta_kernel is None:
            from pyro.infer import NUTS

            theta_kernel = NUTS
        self.theta_kernel = theta_kernel(self.theta_model)  # a kernel class or a factory
        if not isinstance(self.theta_kernel, MCMCKernel):
            raise ValueError("Gibbs: theta_kernel must build a pyro MCMCKernel, got "
                             f"{type(self.theta_kernel).__name__}")
        self.model = self._stubbed_joint_model()
        self._args, self._kwargs = (), {}
        self._z = None
        self._t = 0
        self._x_divergences: list = []

    # -- construction helpers ---------------------------------------------------------------
    def _check_x_kernel(self) -> None:
        from ..smc.mcgdiff import MCGDiff
        from .particle_gibbs import ParticleGibbs

        k = self.x_kernel
        if isinstance(k, ParticleGibbs):
            if isinstance(k.sampler, MCGDiff):
                raise ValueError(
                    "Gibbs: ParticleGibbs(MCGDiff) cannot follow a moving theta: MCGDiff's time grid and "
                    "potentials depend on the noise level (matching times), so a theta move changes its path "
                    "space. Use ParticleGibbs(TDS(...)) (its grid does not depend on theta) or PnPDM.")
            if k.chains != 1:
                raise ValueError("Gibbs: use ParticleGibbs(..., chains=1); run several Pyro chains instead")
            return
        if not hasattr(k, "_safe_step"):
            raise ValueError(f"Gibbs: x_kernel must build a ParticleGibbs or one of our diffusion kernels "
                             f"(PnPDM, PMC), got {type(k).__name__}")

    def _make_theta_model(self):
        model, site = self.user_model, self.site

        def theta_model(*args, **kwargs):
            with fix_site(site, lambda: self._x):
                return model(*args, **kwargs)

        return theta_model

    def _stubbed_joint_model(self):
        """The model Pyro's MCMC / ArviZ trace: the prior site stubbed (no reverse diffusion)."""
        from .base import stub_model

        return stub_model(self.user_model)

    # -- x updates --------------------------------------------------------------------------
    def _refresh_x_kernel(self) -> None:
        """Re-read the problem after theta moved (the conditioned model sees the new values)."""
        k = self.x_kernel
        if hasattr(k, "sampler"):  # ParticleGibbs
            k._problem = k.sampler.problem(*self._args, **self._kwargs)
            k._fk = k.sampler.fk_model(k._problem)
        else:
            k._problem(*self._args, **self._kwargs)

    def _x_step(self) -> torch.Tensor:
        k = self.x_kernel
        with torch.no_grad():
            if hasattr(k, "sampler"):
                k._reference, k._x = k._sweep(k._reference)
                return k._x[0]
            new, bad = k._safe_step(self._x[None], self._t, None)
        if bool(bad[0]):
            self._x_divergences.append(self._t)
        return new[0]

    def _x_init(self) -> torch.Tensor:
        k = self.x_kernel
        if hasattr(k, "sampler"):
            k.setup(0, *self._args, **self._kwargs)
            return k._x[0]
        problem = k._problem(*self._args, **self._kwargs)
        return k.initial_state(problem, 1)[0]

    # -- theta updates ------------------------------------------------------------------------
    def _constrained(self, z: dict) -> dict:
        tr = self.theta_kernel.transforms
        return {n: (tr[n].inv(z[n]) if n in tr else z[n]).detach() for n in self.theta_names}

    def _set_theta(self, z: dict) -> None:
        for n, v in self._constrained(z).items():
            self._theta[n] = v

    # -- Pyro MCMCKernel contract ---------------------------------------------------------------
    def setup(self, warmup_steps, *args, **kwargs):
        self._args, self._kwargs = args, kwargs
        self._t = 0
        self._x_divergences = []
        self._x = self._x_init()
        self.theta_kernel.setup(warmup_steps, *args, **kwargs)
        self._z = {n: v.detach() for n, v in self.theta_kernel.initial_params.items()}
        self._set_theta(self._z)
        self._refresh_x_kernel()

    @property
    def transforms(self):
        return getattr(self.theta_kernel, "transforms", {}) or {}

    @transforms.setter
    def transforms(self, value):
        pass

    @property
    def initial_params(self):
        out = {self.site: self._x}
        out.update(self._z or {})
        return out

    @initial_params.setter
    def initial_params(self, params):
        pass

    def sample(self, params):
        if self._x is None:
            raise ValueError("Gibbs: call setup() (MCMC.run does) before sample()")
        z = {n: params[n] for n in self._z} if all(n in params for n in self._z) else self._z
        self._set_theta(z)
        self._refresh_x_kernel()
        self._x = self._x_step()
        for _ in range(self.theta_steps):
            if hasattr(self.theta_kernel, "clear_cache"):
                self.theta_kernel.clear_cache()  # its cached potential belongs to the previous x
            z = self.theta_kernel.sample(z)
        self._z = {n: v.detach() for n, v in z.items()}
        self._t += 1
        out = {self.site: self._x}
        out.update(self._z)
        return out

    def diagnostics(self):
        d = OrderedDict()
        inner = self.theta_kernel.diagnostics() if hasattr(self.theta_kernel, "diagnostics") else {}
        d["divergences"] = list(inner.get("divergences", [])) + list(self._x_divergences)
        if "acceptance rate" in inner:
            d["acceptance rate"] = inner["acceptance rate"]
        return d

    def logging(self):
        out = OrderedDict(iteration=int(self._t))
        for n, v in self._constrained(self._z or {}).items():
            if v.numel() == 1:
                out[n] = float(f"{float(v):.4g}")
        return out

    def end_warmup(self):
        if hasattr(self.theta_kernel, "end_warmup"):
            self.theta_kernel.end_warmup()

    def cleanup(self):
        if hasattr(self.theta_kernel, "cleanup"):
            self.theta_kernel.cleanup()
