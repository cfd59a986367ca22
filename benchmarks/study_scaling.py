"""Thin wrapper: `python benchmarks/study_scaling.py --help` (see ppl_diffusion.bench.study_scaling)."""
import sys

from ppl_diffusion.bench.study_scaling import main

if __name__ == "__main__":
    main(sys.argv[1:])
