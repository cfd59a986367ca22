"""Thin wrapper: `python benchmarks/text_e3.py --help` (see ppl_diffusion.bench.text_e3)."""
import sys

from ppl_diffusion.bench.text_e3 import main

if __name__ == "__main__":
    main(sys.argv[1:])
