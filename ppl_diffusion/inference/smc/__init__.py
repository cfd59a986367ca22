"""Sequential Monte Carlo posterior samplers on a batched Feynman–Kac engine.

Registered in :mod:`ppl_diffusion.benchmarking` with NFE per sample defined as
(network evaluations per particle of one run x particles x runs) / samples returned; the benchmark
follows the published MCGDiff protocol (each sample from its own independent run of N particles,
the runs batched on the leading dim), so NFE/sample = particles x network steps.
"""
from __future__ import annotations

from .engine import (FeynmanKac, SMCSampler, chunked, ess, multinomial_resample, run_smc,
                     systematic_resample, trace_lineage)
from .mcgdiff import MCGDiff
from .result import SMCResult

__all__ = ["FeynmanKac", "SMCSampler", "SMCResult", "run_smc", "ess", "multinomial_resample",
           "systematic_resample", "chunked", "trace_lineage", "MCGDiff"]

_SAMPLERS = {"mcgdiff": MCGDiff}
try:  # samplers added one by one
    from .tds import TDS
    _SAMPLERS["tds"] = TDS
    __all__.append("TDS")
except ImportError:  # pragma: no cover
    pass
try:
    from .fps import FPS, FPSSMC
    _SAMPLERS["fps"] = FPS
    _SAMPLERS["fps_smc"] = FPSSMC
    __all__ += ["FPS", "FPSSMC"]
except ImportError:  # pragma: no cover
    pass
try:
    from .smcdiff import SMCDiff
    _SAMPLERS["smcdiff"] = SMCDiff
    __all__.append("SMCDiff")
except ImportError:  # pragma: no cover
    pass


def _register():
    from ...benchmarking import SolverOutput, register_solver

    def make(cls):
        def run(problem, model, n_samples, steps, eta, generator, **options):
            opts = dict(options)
            independent = opts.pop("independent", True)
            sampler = cls(model, steps=steps, eta=eta, **opts)
            res = sampler.run(y=problem.y, runs=n_samples if independent else 1, generator=generator)
            x = res.resample(n_samples, generator)
            per_particle = res.extra.get("particle_nfe") or sampler.steps
            nfe = sampler.particles * per_particle * res.num_runs / n_samples
            return SolverOutput(x.reshape(n_samples, -1), float(nfe),
                                {"log_evidence": float(res.log_evidence.mean()), "ess": float(res.ess.mean())})
        return run

    for name, cls in _SAMPLERS.items():
        register_solver(name, family="smc")(make(cls))


_register()
