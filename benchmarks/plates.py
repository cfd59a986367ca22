"""Thin wrapper: `python benchmarks/plates.py --help` (see ppl_diffusion.bench.plates)."""
import sys

from ppl_diffusion.bench.plates import main

if __name__ == "__main__":
    main(sys.argv[1:])
