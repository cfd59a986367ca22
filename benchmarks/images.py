"""Thin wrapper: `python benchmarks/images.py --help` (see ppl_diffusion.bench.images)."""
import sys

from ppl_diffusion.bench.images import main

if __name__ == "__main__":
    main(sys.argv[1:])
