"""Thin wrapper: `python benchmarks/latents.py --help` (see ppl_diffusion.bench.latents)."""
import sys

from ppl_diffusion.bench.latents import main

if __name__ == "__main__":
    main(sys.argv[1:])
