"""Deprecated: the benchmark harness lives in :mod:`ppl_diffusion.bench.gmm` (runs, rows, tables) and
:mod:`ppl_diffusion.bench.report` (markdown output); solvers are registered once, in
:mod:`ppl_diffusion.inference.registry`. This module re-exports the former public names."""
from __future__ import annotations

import warnings

from .bench.gmm import (BenchRow, SolverOutput, available_solvers, format_table, run_gaussian_check, run_gmm,
                        run_mode_weights, run_setting_b)
from .bench.report import MarkdownTable, environment_header, write_table

__all__ = ["MarkdownTable", "SolverOutput", "available_solvers", "run_gmm", "run_setting_b", "run_gaussian_check",
           "run_mode_weights", "format_table", "write_table", "BenchRow", "environment_header"]

warnings.warn("ppl_diffusion.benchmarking is deprecated: use ppl_diffusion.bench.gmm (harness) and "
              "ppl_diffusion.bench.report (tables); solvers come from ppl_diffusion.inference.registry",
              DeprecationWarning, stacklevel=2)
