"""Thin wrapper: `python benchmarks/refinement_check.py --help` (see ppl_diffusion.bench.refinement_check)."""
import sys

from ppl_diffusion.bench.refinement_check import main

if __name__ == "__main__":
    main(sys.argv[1:])
