"""Thin wrapper: `python benchmarks/score_ilo_images.py --help` (see ppl_diffusion.bench.score_ilo_images)."""
import sys

from ppl_diffusion.bench.score_ilo_images import main

if __name__ == "__main__":
    main(sys.argv[1:])
