"""The one registry of solvers: name -> class, family, what it needs from the problem, one-line doc.

Filled by the explicit declarations below (one line per method; classes load lazily, so listing
the registry imports no solver). Adding a method means writing its file and one line here.

>>> from ppl_diffusion.inference.registry import get_solver
>>> get_solver("ddrm").family
'guide'
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass

__all__ = ["SolverInfo", "SOLVERS", "get_solver", "solver_class", "build_solver", "available_solvers",
           "solver_names", "FAMILIES"]

#: family -> how it is used from Pyro
FAMILIES = {
    "guide": "explicit approximation: a Pyro guide (Predictive)",
    "variational": "variational: pyro.infer.SVI",
    "kernel": "asymptotically exact: a pyro.infer.MCMC kernel",
    "smc": "asymptotically exact: sequential Monte Carlo",
    "latent": "explicit approximation on a latent diffusion prior (LatentDiffusionPrior)",
    "optimisation": "point estimates by optimising a sampler's input (restarts are the draws)",
    "text": "explicit approximation on a text-conditioned latent prior (prior.condition(prompt))",
}


@dataclass(frozen=True)
class SolverInfo:
    """One registered solver. ``target`` is ``"module:Class"`` under ``ppl_diffusion.inference``;
    ``needs`` names what the problem must provide (see ``Problem.require``)."""

    name: str
    target: str
    family: str
    needs: str
    doc: str
    aliases: tuple = ()

    def load(self) -> type:
        module, cls = self.target.split(":")
        return getattr(importlib.import_module(f"ppl_diffusion.inference.{module}"), cls)


def _s(name, target, family, needs, doc, *aliases) -> SolverInfo:
    return SolverInfo(name, target, family, needs, doc, tuple(aliases))


_DECLARATIONS = [
    # explicit approximations (Pyro guides)
    _s("dps", "guides.dps:DPS", "guide", "likelihood", "DPS (Chung et al. 2023): any differentiable likelihood"),
    _s("pigdm", "guides.pigdm:PiGDM", "guide", "linear", "PiGDM (Song et al. 2023): linear Gaussian"),
    _s("mmps", "guides.mmps:MMPS", "guide", "linear", "MMPS (Rozet et al. 2024): linear Gaussian likelihood"),
    _s("mcg", "guides.mcg:MCG", "guide", "likelihood", "MCG (Chung et al. 2022): any differentiable likelihood"),
    _s("score_ald", "guides.score_ald:ScoreALD", "guide", "likelihood",
       "Score-ALD (Jalal et al. 2021): any differentiable likelihood", "score-ald", "scoreald"),
    _s("snips", "guides.snips:SNIPS", "guide", "svd", "SNIPS (Kawar et al. 2021): operator with an SVD"),
    _s("ddrm", "guides.ddrm:DDRM", "guide", "svd", "DDRM (Kawar et al. 2022): operator with an SVD"),
    _s("ddnm", "guides.ddnm:DDNM", "guide", "linear", "DDNM (Wang et al. 2023): linear operator"),
    _s("ddnm_plus", "guides.ddnm:DDNMPlus", "guide", "svd", "DDNM+ (Wang et al. 2023): operator with an SVD",
       "ddnm+"),
    _s("dds", "guides.dds:DDS", "guide", "linear", "DDS (Chung et al. 2024): linear operator (CG)"),
    _s("diffpir", "guides.diffpir:DiffPIR", "guide", "prox", "DiffPIR (Zhu et al. 2023): operator with a prox"),
    _s("repaint", "guides.repaint:RePaint", "guide", "mask", "RePaint (Lugmayr et al. 2022): inpainting only"),
    _s("ilvr", "guides.ilvr:ILVR", "guide", "linear", "ILVR (Choi et al. 2021): linear operator"),
    _s("score_sde", "guides.score_sde:ScoreSDE", "guide", "svd",
       "Score-SDE PC (Song et al. 2021): operator with an SVD"),
    _s("ks", "guides.kadkhodaie_simoncelli:KadkhodaieSimoncelli", "guide", "svd",
       "Kadkhodaie & Simoncelli (2021): operator with an SVD", "kadkhodaie_simoncelli"),
    # blind: an unknown operator parameter (a blur kernel) inferred with x
    _s("blind_dps", "guides.blind_dps:BlindDPS", "guide", "gaussian",
       "BlindDPS (Chung et al. 2023): x and kernel diffusions in parallel", "blinddps", "blind-dps"),
    _s("gibbs_ddrm", "guides.gibbs_ddrm:GibbsDDRM", "guide", "gaussian",
       "GibbsDDRM (Murata et al. 2023): DDRM for x, Langevin for the kernel", "gibbsddrm", "gibbs-ddrm"),
    # variational (SVI)
    _s("red_diff", "variational.red_diff:REDDiff", "variational", "likelihood",
       "RED-Diff (Mardani et al. 2024) via SVI; draws from its Gaussian q", "reddiff", "red-diff"),
    _s("score_prior", "variational.score_prior:ScorePrior", "variational", "likelihood",
       "Score prior (Feng et al. 2023): normalizing-flow q, exact ODE prior"),
    _s("efficient_score_prior", "variational.score_prior:EfficientScorePrior", "variational", "likelihood",
       "Efficient score prior (Feng & Bouman 2024): normalizing-flow q, ELBO prior"),
    _s("blind_red_diff", "variational.blind_red_diff:BlindREDDiff", "variational", "gaussian",
       "Blind RED-Diff (Alkan et al. 2023): point estimates of x and the kernel", "blind-red-diff"),
    # MCMC kernels
    _s("pnpdm", "kernels.pnpdm:PnPDM", "kernel", "likelihood", "PnP-DM split Gibbs (Wu et al. 2024): any likelihood",
       "pnp-dm", "pnp_dm"),
    _s("pmc", "kernels.pmc:PMC", "kernel", "likelihood", "Plug-and-play Monte Carlo (Sun et al. 2023), PnP variant"),
    # SMC
    _s("mcgdiff", "smc.mcgdiff:MCGDiff", "smc", "svd", "MCGDiff (Cardoso et al. 2024): operator with an SVD"),
    _s("tds", "smc.tds:TDS", "smc", "likelihood", "TDS (Wu et al. 2023): differentiable likelihood"),
    _s("fps", "smc.fps:FPS", "smc", "linear", "FPS (Dou & Song 2024): linear Gaussian"),
    _s("fps_smc", "smc.fps:FPSSMC", "smc", "linear", "FPS-SMC (Dou & Song 2024): linear Gaussian", "fps-smc"),
    _s("smcdiff", "smc.smcdiff:SMCDiff", "smc", "mask", "SMCDiff (Trippe et al. 2023): inpainting"),
    # optimise the input of a deterministic sampler (point estimates; one draw per random restart)
    _s("dmplug", "optimise.dmplug:DMPlug", "optimisation", "likelihood",
       "DMPlug (Wang et al. 2024): fit the input noise of a 3-step DDIM; point estimates"),
    _s("shred", "optimise.shred:SHRED", "optimisation", "likelihood",
       "SHRED (Chihaoui et al. 2024): sphere-constrained 10-step DDIM inversion; point estimates"),
    _s("consistent_csgm", "optimise.consistent_csgm:ConsistentCSGM", "optimisation", "likelihood",
       "Consistent-CSGM: CSGM through a consistency model (digits_cm: distilled, then "
       "consistency-trained); point estimates",
       "consistent-csgm"),
    _s("score_ilo", "optimise.score_ilo:ScoreILO", "optimisation", "likelihood",
       "Score-ILO (Daras et al. 2022): fit z, then a decoder layer h, with score pulls; latent prior",
       "score-ilo", "sgilo"),
]

_DECLARATIONS += [  # latent diffusion priors (LatentDiffusionPrior), inference/latent/
    _s("latent_dps", "latent.latent_dps:LatentDPS", "latent", "likelihood",
       "Latent DPS (survey eq. 3.74): DPS on the latent, any differentiable likelihood", "latent-dps"),
    _s("psld", "latent.psld:PSLD", "latent", "linear", "PSLD (Rout et al. 2023): A^T A a projection, gluing term"),
    _s("resample", "latent.resample:ReSample", "latent", "gaussian",
       "ReSample (Song et al. 2024): hard data consistency + stochastic resampling"),
    _s("mpgd", "latent.mpgd:MPGD", "latent", "likelihood", "MPGD (He et al. 2024): manifold-preserving guidance"),
    _s("stsl", "latent.stsl:STSL", "latent", "likelihood",
       "STSL (Rout et al. 2024): second-order Tweedie (our constants)"),
]

_DECLARATIONS += [  # text-conditioned latent priors (prior.condition(prompt)), inference/text/
    _s("p2l", "text.p2l:P2L", "text", "linear", "P2L (Chung et al. 2023): prompt tuning + latent DPS + projection"),
    _s("treg", "text.treg:TReg", "text", "linear",
       "TReg (Kim et al. 2025): CG data consistency + adaptive negation of the null prompt"),
    _s("dreamsampler", "text.dreamsampler:DreamSampler", "text", "linear",
       "DreamSampler (Kim et al. 2024): text-guided inpainting by score distillation + DPS", "dream-sampler"),
]

SOLVERS: dict[str, SolverInfo] = {info.name: info for info in _DECLARATIONS}
_ALIASES = {a: info.name for info in _DECLARATIONS for a in info.aliases}


def solver_names() -> list:
    return list(SOLVERS)


def get_solver(name: str) -> SolverInfo:
    """The registry entry of ``name`` (case-insensitive; aliases such as ``"ddnm+"`` accepted)."""
    key = str(name).lower()
    key = _ALIASES.get(key, key)
    if key not in SOLVERS:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(SOLVERS)}")
    return SOLVERS[key]


def solver_class(name: str) -> type:
    return get_solver(name).load()


def build_solver(name: str, model, **options):
    """``Class(model, **options)`` for the registered solver ``name``."""
    return solver_class(name)(model, **options)


def available_solvers() -> dict:
    """``{name: family}`` of the registered solvers whose module imports in this installation."""
    out = {}
    for name, info in SOLVERS.items():
        try:
            info.load()
        except (ImportError, AttributeError):
            continue
        out[name] = info.family
    return out
