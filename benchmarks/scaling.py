"""Thin wrapper: `python benchmarks/scaling.py --help` (see ppl_diffusion.bench.scaling)."""
import sys

from ppl_diffusion.bench.scaling import main

if __name__ == "__main__":
    main(sys.argv[1:])
