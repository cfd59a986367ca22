"""Thin wrapper: `python benchmarks/latent_e2.py --help` (see ppl_diffusion.bench.latent_e2)."""
import sys

from ppl_diffusion.bench.latent_e2 import main

if __name__ == "__main__":
    main(sys.argv[1:])
