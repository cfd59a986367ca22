"""Thin wrapper: `python benchmarks/peers.py --help` (see ppl_diffusion.bench.peers)."""
import sys

from ppl_diffusion.bench.peers import main

if __name__ == "__main__":
    main(sys.argv[1:])
