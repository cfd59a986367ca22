"""Thin wrapper: `python benchmarks/variance_loss.py --help` (see ppl_diffusion.bench.variance_loss)."""
import sys

from ppl_diffusion.bench.variance_loss import main

if __name__ == "__main__":
    main(sys.argv[1:])
