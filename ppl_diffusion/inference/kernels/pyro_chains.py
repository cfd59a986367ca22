"""The solver contract's ``draw()`` for our Pyro ``MCMCKernel`` compositions (Gibbs, PMMH).

Those kernels run one chain per ``pyro.infer.MCMC`` run (their moves are not batched across chains),
so ``draw(n, y=y, chains=C)`` runs ``C`` MCMC runs one after the other on the same kernel (Pyro calls
``setup`` at the start of each run, which restarts the chain and its warm-up adaptation) and stacks
their samples as ``(chain, draw, *event)``; the theta sites go to ``Draws.extra["theta"]``, so
``Draws.to_inference_data()`` shows x and theta with one convention.
"""
from __future__ import annotations

import time

import torch

from ..solver import Draws, check_int

__all__ = ["draw_pyro_chains", "PyroChainsDraw"]


def draw_pyro_chains(kernel, name: str, model, prior_site: str, theta_names, num_samples: int, *args,
                     chains: int = 4, warmup: int = 100, progress: bool = False, **kwargs) -> Draws:
    """``chains`` sequential ``pyro.infer.MCMC`` runs of ``kernel`` with ``warmup`` warm-up steps and
    ``ceil(num_samples / chains)`` kept draws each. ``nfe_per_sample``: network evaluations of single
    samples over all runs (warm-up included) per kept draw. ``extra``: ``theta`` (site -> ``(chain,
    draw, ...)``), ``accept_rate`` per chain (of the last run's kernel diagnostics) when the kernel reports one,
    ``convergence``: :func:`~.mode_check.mixing_check` of the x draws (k-means regions only; a
    :class:`~.mode_check.MixingWarning` when they flag at 20 draws per chain or more)."""
    from pyro.infer import MCMC

    from ..problem import Problem

    n = check_int("num_samples", num_samples, name)
    chains = check_int("chains", chains, name)
    warmup = check_int("warmup", warmup, name, minimum=0)
    per_chain = -(-n // chains)
    with torch.random.fork_rng():  # reading the model draws its theta sites: keep the caller's random stream,
        problem = Problem.from_model(model, *args, prior_site=prior_site, **kwargs)  # so draw() == pyro MCMC runs
    den = problem.denoiser
    evals0, t0 = den.sample_evals, time.perf_counter()
    xs, thetas, accept = [], {k: [] for k in theta_names}, []
    for _ in range(chains):
        mcmc = MCMC(kernel, num_samples=per_chain, warmup_steps=warmup, disable_progbar=not progress)
        mcmc.run(*args, **kwargs)
        s = mcmc.get_samples()
        xs.append(s[prior_site])
        for k in theta_names:
            thetas[k].append(s[k])
        # the kernel's own diagnostics as Pyro kept them before cleanup (mcmc.diagnostics() adds R-hat,
        # which needs >= 4 draws)
        rate = ((getattr(mcmc, "_diagnostics", None) or [None])[0] or {}).get("acceptance rate")
        if rate is not None:
            accept.append(float(rate))
    samples = torch.stack(xs).detach()
    extra = {"theta": {k: torch.stack(v).detach() for k, v in thetas.items()}}
    if accept:
        extra["accept_rate"] = torch.tensor(accept)
    nfe = (den.sample_evals - evals0) / (chains * per_chain)
    from .mode_check import mixing_check  # the regions of x (log p(y | x) also depends on theta here)

    extra["convergence"] = mixing_check(name, samples, None, plate_shape=tuple(problem.plate_shape) if problem.plates
                                        else (), advice="Run longer (more warmup and draws per chain).")
    plates = tuple(f.name for f in problem.plates)
    return Draws(samples, float(nfe), time.perf_counter() - t0, name, "kernel", {}, extra, prior_site,
                 problem.observation, ("measurement",) if len(plates) == 1 else plates)


class PyroChainsDraw:
    """Mixin giving a Pyro ``MCMCKernel`` with ``name``, ``user_model``, ``site`` and ``theta_names`` the
    solver contract's ``draw()``."""

    def draw(self, num_samples: int, *args, chains: int = 4, warmup: int = 100, progress: bool = False,
             **kwargs):
        """The solver contract: ``chains`` sequential ``pyro.infer.MCMC`` runs of this kernel (``warmup``
        warm-up steps each), ``ceil(num_samples / chains)`` draws per chain; x as ``Draws.samples``
        ``(chain, draw, *event)``, theta in ``Draws.extra["theta"]`` (see
        :func:`~ppl_diffusion.inference.kernels.pyro_chains.draw_pyro_chains`)."""
        return draw_pyro_chains(self, self.name, self.user_model, self.site, self.theta_names, num_samples, *args,
                                chains=chains, warmup=warmup, progress=progress, **kwargs)
