"""Sequential Monte Carlo posterior samplers on a batched Feynman–Kac engine.

Each sampler's :meth:`~ppl_diffusion.inference.smc.engine.SMCSampler.draw` reports network
evaluations per sample as (network evaluations per particle of one run x particles x runs) /
samples returned; with the published MCGDiff protocol (each sample from its own independent run of
N particles, the runs batched on the leading dim) that is particles x network steps.
"""
from __future__ import annotations

from .engine import (FeynmanKac, SMCSampler, chunked, ess, multinomial_resample, run_smc,
                     systematic_resample, trace_lineage)
from .fps import FPS, FPSSMC
from .kalman import gaussian_condition
from .mcgdiff import MCGDiff
from .mcgdiff_grid import mcgdiff_grid
from .result import SMCResult
from .smcdiff import SMCDiff
from .tds import TDS

__all__ = ["FeynmanKac", "SMCSampler", "SMCResult", "run_smc", "ess", "multinomial_resample",
           "systematic_resample", "chunked", "trace_lineage", "gaussian_condition", "mcgdiff_grid",
           "MCGDiff", "TDS", "FPS", "FPSSMC", "SMCDiff"]
