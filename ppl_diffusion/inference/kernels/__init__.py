"""MCMC kernels for ``pyro.infer.MCMC`` with a diffusion prior, each also runnable as vectorised
chains (``kernel.run_chains(y=y, num_chains=C, num_samples=S)`` -> samples ``(chain, draw, *event)``).

* :class:`PnPDM` — split-Gibbs PnP-DM (Wu et al., NeurIPS 2024)
* :class:`PMC` — Plug-and-Play Monte Carlo, PnP and RED variants (Sun et al., 2023)
"""
from .base import ChainResult, DiffusionKernel
from .pmc import PMC
from .pnpdm import PnPDM

__all__ = ["DiffusionKernel", "ChainResult", "PnPDM", "PMC"]


def _register():
    """Benchmark entries (family "kernel"): ``chains`` vectorised chains, ``steps`` burn-in iterations
    (annealing included) dropped, then ``ceil(n / chains)`` draws per chain every ``thin`` iterations.
    NFE per sample = network calls per chain-iteration x iterations x chains / n."""
    import math

    from ...benchmarking import SolverOutput, register_solver

    def make(cls, **fixed):
        def run(problem, model, n_samples, steps, eta, generator, chains=100, thin=5, **options):
            opts = dict(fixed)
            opts.update(options)
            kernel = cls(model, **opts)
            per_chain = math.ceil(n_samples / chains)
            res = kernel.run_chains(y=problem.y, num_chains=chains, num_samples=per_chain,
                                    warmup_steps=steps, thin=thin, generator=generator)
            x = res.flat()[:n_samples]
            iters = steps + per_chain * thin
            nfe = res.nfe_per_iteration * iters * chains / n_samples
            return SolverOutput(x, nfe, {"chains": chains, "thin": thin, "iterations": iters})

        return run

    register_solver("pnpdm", family="kernel")(make(PnPDM))
    register_solver("pmc", family="kernel")(make(PMC, variant="pnp"))
    register_solver("pmc_red", family="kernel")(make(PMC, variant="red"))


_register()
from .particle_gibbs import ParticleGibbs
