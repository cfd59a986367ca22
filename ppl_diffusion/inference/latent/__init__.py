"""Solvers for latent diffusion priors (:class:`~ppl_diffusion.models.latent.LatentDiffusionPrior`):
Latent DPS, PSLD, ReSample, MPGD and STSL, one file each (see ``docs/latent.md``)."""
from .base import LatentSolver
from .latent_dps import LatentDPS
from .mpgd import MPGD
from .psld import PSLD
from .resample import ReSample
from .stsl import STSL

__all__ = ["LatentSolver", "LatentDPS", "PSLD", "ReSample", "MPGD", "STSL"]
