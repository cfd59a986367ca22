"""Thin wrapper: `python benchmarks/mixing_check.py --help` (see ppl_diffusion.bench.mixing_check)."""
import sys

from ppl_diffusion.bench.mixing_check import main

if __name__ == "__main__":
    main(sys.argv[1:])
