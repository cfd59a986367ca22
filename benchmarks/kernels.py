"""Thin wrapper: `python benchmarks/kernels.py --help` (see ppl_diffusion.bench.kernels)."""
import sys

from ppl_diffusion.bench.kernels import main

if __name__ == "__main__":
    main(sys.argv[1:])
