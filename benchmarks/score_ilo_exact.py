"""Thin wrapper: `python benchmarks/score_ilo_exact.py --help` (see ppl_diffusion.bench.score_ilo_exact)."""
import sys

from ppl_diffusion.bench.score_ilo_exact import main

if __name__ == "__main__":
    main(sys.argv[1:])
