"""Explicit-approximation solvers as Pyro guides (one short file per method)."""
from ... import benchmarking as _benchmarking
from .base import DiffusionGuide
from .ddrm import DDRM
from .ddnm import DDNM, DDNMPlus
from .dds import DDS
from .diffpir import DiffPIR
from .repaint import RePaint
from .ilvr import ILVR
from .score_sde import ScoreSDE
from .kadkhodaie_simoncelli import KadkhodaieSimoncelli

__all__ = ["DiffusionGuide", "DDRM", "DDNM", "DDNMPlus", "DDS", "DiffPIR", "RePaint", "ILVR", "ScoreSDE",
           "KadkhodaieSimoncelli"]

_benchmarking.register_guide("ddrm", DDRM)
_benchmarking.register_guide("ddnm", DDNM)
_benchmarking.register_guide("ddnm_plus", DDNMPlus)
_benchmarking.register_guide("dds", DDS)
_benchmarking.register_guide("diffpir", DiffPIR)
_benchmarking.register_guide("repaint", RePaint)
_benchmarking.register_guide("ilvr", ILVR)
_benchmarking.register_guide("score_sde", ScoreSDE)
_benchmarking.register_guide("ks", KadkhodaieSimoncelli)

# gradient-type guides (each registers itself in the GMM harness on import)
from .dps import DPS
from .pigdm import PiGDM
from .mmps import MMPS
from .mcg import MCG
from .score_ald import ScoreALD
from .snips import SNIPS

__all__ += ["DPS", "PiGDM", "MMPS", "MCG", "ScoreALD", "SNIPS"]
