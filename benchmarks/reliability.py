"""Thin wrapper: `python benchmarks/reliability.py --help` (see ppl_diffusion.bench.reliability)."""
import sys

from ppl_diffusion.bench.reliability import main

if __name__ == "__main__":
    main(sys.argv[1:])
