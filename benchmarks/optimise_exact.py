"""Thin wrapper: `python benchmarks/optimise_exact.py --help` (see ppl_diffusion.bench.optimise_exact)."""
import sys

from ppl_diffusion.bench.optimise_exact import main

if __name__ == "__main__":
    main(sys.argv[1:])
