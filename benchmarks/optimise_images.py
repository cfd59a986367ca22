"""Thin wrapper: `python benchmarks/optimise_images.py --help` (see ppl_diffusion.bench.optimise_images)."""
import sys

from ppl_diffusion.bench.optimise_images import main

if __name__ == "__main__":
    main(sys.argv[1:])
