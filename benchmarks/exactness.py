"""Thin wrapper: `python benchmarks/exactness.py --help` (see ppl_diffusion.bench.exactness)."""
import sys

from ppl_diffusion.bench.exactness import main

if __name__ == "__main__":
    main(sys.argv[1:])
