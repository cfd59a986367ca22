"""Thin wrapper: `python benchmarks/diagnostics_speed.py --help` (see ppl_diffusion.bench.diagnostics_speed)."""
import sys

from ppl_diffusion.bench.diagnostics_speed import main

if __name__ == "__main__":
    main(sys.argv[1:])
