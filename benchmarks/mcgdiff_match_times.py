"""Thin wrapper: `python benchmarks/mcgdiff_match_times.py --help` (see ppl_diffusion.bench.mcgdiff_match_times)."""
import sys

from ppl_diffusion.bench.mcgdiff_match_times import main

if __name__ == "__main__":
    main(sys.argv[1:])
