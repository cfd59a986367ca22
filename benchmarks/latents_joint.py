"""Thin wrapper: `python benchmarks/latents_joint.py --help` (see ppl_diffusion.bench.latents_joint)."""
import sys

from ppl_diffusion.bench.latents_joint import main

if __name__ == "__main__":
    main(sys.argv[1:])
