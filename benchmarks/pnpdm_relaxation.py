"""Thin wrapper: `python benchmarks/pnpdm_relaxation.py --help` (see ppl_diffusion.bench.pnpdm_relaxation)."""
import sys

from ppl_diffusion.bench.pnpdm_relaxation import main

if __name__ == "__main__":
    main(sys.argv[1:])
