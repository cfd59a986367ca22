"""MCMC kernels for ``pyro.infer.MCMC`` with a diffusion prior, each also runnable as vectorised
chains (``kernel.run_chains(y=y, num_chains=C, num_samples=S)`` -> samples ``(chain, draw, *event)``)
and through the solver contract (``kernel.draw(n, y=y)`` -> :class:`~ppl_diffusion.inference.solver.Draws`).

* :class:`PnPDM` — split-Gibbs PnP-DM (Wu et al., NeurIPS 2024), optionally with replica exchange
* :class:`PMC` — Plug-and-Play Monte Carlo, PnP and RED variants (Sun et al., 2023)
* :class:`ParticleGibbs` — conditional SMC around an SMC sampler (Andrieu, Doucet & Holenstein 2010)
* :class:`Gibbs` — ``x | theta, y`` by one of the above, ``theta | x, y`` by a Pyro kernel (NUTS / HMC)
* :class:`PMMH` — particle marginal Metropolis-Hastings: theta and x moved jointly by SMC evidence
"""
from .auto_warmup import AutoWarmup, WarmupWarning
from .base import ChainResult, DiffusionKernel
from .gibbs import Gibbs
from .mode_check import MixingWarning, StartDependenceWarning
from .pmmh import PMMH
from .particle_gibbs import ParticleGibbs
from .pmc import PMC
from .pnpdm import PnPDM
from .replica_exchange import ReplicaExchange

__all__ = ["DiffusionKernel", "ChainResult", "AutoWarmup", "WarmupWarning", "MixingWarning", "StartDependenceWarning",
           "PnPDM",
           "PMC", "ParticleGibbs", "ReplicaExchange", "Gibbs", "PMMH"]
