"""Thin wrapper: `python benchmarks/variational.py --help` (see ppl_diffusion.bench.variational)."""
import sys

from ppl_diffusion.bench.variational import main

if __name__ == "__main__":
    main(sys.argv[1:])
