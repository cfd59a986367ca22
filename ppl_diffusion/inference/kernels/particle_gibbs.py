"""Particle Gibbs (Andrieu, Doucet & Holenstein 2010): conditional SMC around an SMC sampler.

Each MCMC step runs the sampler's Feynman–Kac model with particle 0 of every run pinned to the
current reference trajectory (its ancestor is always 0 and its moves are replaced by the
reference's states), then draws the new reference from the final weights and traces its lineage.
This is a valid MCMC kernel whose stationary law is the SMC target (for MCGDiff / TDS: the
posterior of the discretised prior), for any particle count >= 2; multinomial resampling is required.
``C`` chains run as one batch of ``C`` independent conditional-SMC runs. FPS-SMC and SMCDiff draw
auxiliary measurement trajectories at each run and are not supported.

Usable with ``pyro.infer.MCMC(ParticleGibbs(MCGDiff(model, particles=32)), num_samples=..., warmup_steps=0)``
(pass ``y=`` to ``mcmc.run``).
"""
from __future__ import annotations

from typing import Optional

import torch
from pyro.infer.mcmc.mcmc_kernel import MCMCKernel

from ..smc.engine import run_smc, trace_lineage

__all__ = ["ParticleGibbs"]


class ParticleGibbs(MCMCKernel):
    def __init__(self, sampler, chains: int = 1, generator: Optional[torch.Generator] = None):
        from ..smc.fps import FPSSMC
        from ..smc.smcdiff import SMCDiff

        if isinstance(sampler, (FPSSMC, SMCDiff)):
            raise ValueError("ParticleGibbs: FPS-SMC / SMCDiff redraw auxiliary trajectories; use MCGDiff or TDS")
        if sampler.particles < 2:
            raise ValueError(f"ParticleGibbs: needs particles >= 2, got {sampler.particles}")
        if sampler.resampling != "multinomial" or sampler.ess_threshold < 1.0:
            sampler.resampling, sampler.ess_threshold = "multinomial", 1.0
        if int(chains) < 1:
            raise ValueError(f"ParticleGibbs: chains must be >= 1, got {chains}")
        self.sampler, self.chains, self.generator = sampler, int(chains), generator
        self.model = sampler.model
        self.transforms = {}
        self._reference = None
        self._x = None
        self._args, self._kwargs = (), {}
        self._fk = None

    def _sweep(self, reference):
        res = run_smc(self._fk, self.chains, self.sampler.particles, "multinomial", 1.0, self.generator,
                      reference=reference, keep_history=True)
        j = torch.multinomial(res.weights.cpu(), 1, generator=self.generator).flatten().to(res.weights.device)
        traj = trace_lineage(res, j)
        rows = torch.arange(self.chains, device=j.device)
        x = res.particles[rows, j]
        return traj, x

    def setup(self, warmup_steps, *args, **kwargs):
        self._args, self._kwargs = args, kwargs
        problem = self.sampler.problem(*args, **kwargs)
        self.sampler.check(problem)
        self._fk = self.sampler.fk_model(problem)
        with torch.no_grad():
            self._reference, self._x = self._sweep(None)

    @property
    def initial_params(self):
        return {"x": self._x if self.chains > 1 else self._x[0]}

    @initial_params.setter
    def initial_params(self, params):
        pass

    def sample(self, params):
        with torch.no_grad():
            self._reference, self._x = self._sweep(self._reference)
        return {"x": self._x if self.chains > 1 else self._x[0]}

    def diagnostics(self):
        return {"divergences": [], "acceptance rate": 1.0}

    def logging(self):
        return {}
