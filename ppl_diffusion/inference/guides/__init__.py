"""Explicit-approximation solvers as Pyro guides (one short file per method; the registry in
``ppl_diffusion.inference.registry`` lists them)."""
from .base import DiffusionGuide
from .ddnm import DDNM, DDNMPlus
from .ddrm import DDRM
from .dds import DDS
from .diffpir import DiffPIR
from .dps import DPS
from .ilvr import ILVR
from .kadkhodaie_simoncelli import KadkhodaieSimoncelli
from .mcg import MCG
from .mmps import MMPS
from .pigdm import PiGDM
from .repaint import RePaint
from .score_ald import ScoreALD
from .score_sde import ScoreSDE
from .snips import SNIPS

__all__ = ["DiffusionGuide", "DPS", "PiGDM", "MMPS", "MCG", "ScoreALD", "SNIPS", "DDRM", "DDNM", "DDNMPlus", "DDS",
           "DiffPIR", "RePaint", "ILVR", "ScoreSDE", "KadkhodaieSimoncelli"]
