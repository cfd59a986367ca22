"""Thin wrapper: `python benchmarks/blind_e1.py --help` (see ppl_diffusion.bench.blind_e1)."""
import sys

from ppl_diffusion.bench.blind_e1 import main

if __name__ == "__main__":
    main(sys.argv[1:])
