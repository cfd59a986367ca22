"""Thin wrapper: `python benchmarks/latent_images.py --help` (see ppl_diffusion.bench.latent_images)."""
import sys

from ppl_diffusion.bench.latent_images import main

if __name__ == "__main__":
    main(sys.argv[1:])
