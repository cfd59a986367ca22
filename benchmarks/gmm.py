"""Thin wrapper: `python benchmarks/gmm.py --help` (see ppl_diffusion.bench.gmm)."""
import sys

from ppl_diffusion.bench.gmm import main

if __name__ == "__main__":
    main(sys.argv[1:])
