"""Thin wrapper: `python benchmarks/smc.py --help` (see ppl_diffusion.bench.smc)."""
import sys

from ppl_diffusion.bench.smc import main

if __name__ == "__main__":
    main(sys.argv[1:])
