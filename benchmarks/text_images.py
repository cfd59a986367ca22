"""Thin wrapper: `python benchmarks/text_images.py --help` (see ppl_diffusion.bench.text_images)."""
import sys

from ppl_diffusion.bench.text_images import main

if __name__ == "__main__":
    main(sys.argv[1:])
