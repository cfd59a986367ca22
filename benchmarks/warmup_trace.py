"""Thin wrapper: `python benchmarks/warmup_trace.py --help` (see ppl_diffusion.bench.warmup_trace)."""
import sys

from ppl_diffusion.bench.warmup_trace import main

if __name__ == "__main__":
    main(sys.argv[1:])
