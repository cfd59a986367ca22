"""Thin wrapper: `python benchmarks/blind_images.py --help` (see ppl_diffusion.bench.blind_images)."""
import sys

from ppl_diffusion.bench.blind_images import main

if __name__ == "__main__":
    main(sys.argv[1:])
