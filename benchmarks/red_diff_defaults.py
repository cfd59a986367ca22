"""Thin wrapper: `python benchmarks/red_diff_defaults.py --help` (see ppl_diffusion.bench.red_diff_defaults)."""
import sys

from ppl_diffusion.bench.red_diff_defaults import main

if __name__ == "__main__":
    main(sys.argv[1:])
