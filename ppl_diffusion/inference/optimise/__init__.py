"""Optimise-the-input (CSGM-type) solvers: point estimates by fitting the input of a deterministic
sampler (a few-step DDIM, a consistency model, a split decoder: Score-ILO) to the measurement. Each draw is one
random restart; the objective each reached is in ``Draws.stats["objective"]``."""
from .consistent_csgm import ConsistentCSGM
from .dmplug import DMPlug
from .score_ilo import ScoreILO
from .shred import SHRED

__all__ = ["DMPlug", "SHRED", "ConsistentCSGM", "ScoreILO"]
