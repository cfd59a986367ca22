"""``python -m ppl_diffusion.training ...`` (the command recorded beside the shipped weights)."""
import sys

from .cli import main

sys.exit(main())
