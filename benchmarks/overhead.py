"""Thin wrapper: `python benchmarks/overhead.py --help` (see ppl_diffusion.bench.overhead)."""
import sys

from ppl_diffusion.bench.overhead import main

if __name__ == "__main__":
    main(sys.argv[1:])
