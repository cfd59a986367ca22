"""What the blind solvers (BlindDPS, GibbsDDRM, Blind RED-Diff) share: finding the operator-parameter
site of the model, the measurement at a batch of parameter values, and the theta record a
:class:`~.guides.base.DiffusionGuide` returns.

A blind model has exactly one free latent site besides the image prior: the operator parameter
``phi`` (a kernel ``k = pyro.sample("k", kernel_prior)``, a blur width, ...), and a
``GaussianMeasurement`` whose operator is built from it. The solvers refuse, at construction and
naming the site, a model without such a site, with several, or whose site lacks what the method
needs (a diffusion prior for BlindDPS, a density or the l1 fallback for GibbsDDRM, an FFT-SVD
operator for GibbsDDRM).
"""
from __future__ import annotations

import pyro.poutine as poutine
import torch

from ..models.blind import ParameterDiffusionPrior
from ..models.measurement import GaussianMeasurement
from .problem import Problem, _StubPrior, unwrap_distribution

__all__ = ["operator_site", "measurement_at", "ThetaRecord", "site_density"]


def operator_site(problem: Problem, method: str, site: str | None = None, diffusion: bool = False):
    """``(name, distribution)`` of the operator-parameter site, or a ValueError naming what is wrong."""
    free = problem.free_latents
    if not free:
        raise ValueError(
            f"{method}: the model has no operator-parameter site besides the image prior {problem.prior_site!r} "
            "(a blind solver infers an unknown operator: write k = pyro.sample('k', kernel_prior) and build the "
            "operator from k). For a known operator use a non-blind solver (ddrm, dps, ...).")
    if site is None:
        if len(free) > 1:
            raise ValueError(f"{method}: the model has several free latent sites {free}; name the operator "
                             "parameter with theta_site= and condition the others (pyro.condition)")
        site = free[0]
    elif site not in free:
        raise ValueError(f"{method}: theta_site {site!r} is not a free latent site of the model; free sites: {free}")
    elif len(free) > 1:
        others = [n for n in free if n != site]
        raise ValueError(f"{method}: the model has free latent sites {others} besides {site!r}; condition them "
                         "(pyro.condition(model, data={...}))")
    fn = unwrap_distribution(problem.latent[site]["fn"])
    if diffusion and not isinstance(fn, ParameterDiffusionPrior):
        raise ValueError(
            f"{method}: the operator-parameter site {site!r} has a {type(fn).__name__} prior; {method} runs a reverse "
            "diffusion on it and needs a ParameterDiffusionPrior (e.g. load_prior('kernels') for a blur kernel). "
            "With another prior use gibbs_ddrm or blind_red_diff.")
    return site, fn


def site_density(fn, value, method: str, site: str):
    """``log p(value)`` of the site's prior, or a ValueError naming the site if it has none."""
    try:
        return fn.log_prob(value)
    except (ValueError, NotImplementedError) as e:
        raise ValueError(f"{method}: the operator-parameter site {site!r} has no log density ({e})") from None


def measurement_at(problem: Problem, site: str, value: torch.Tensor, x: torch.Tensor) -> GaussianMeasurement:
    """The model's ``GaussianMeasurement`` with the prior site at ``x`` ``(n, *event)`` and the
    operator parameter at ``value`` ``(n, *site_shape)`` (one per sample; the model must broadcast
    it, as ``KernelBlur`` does with a batch of kernels)."""
    data = dict(problem.latent_values)
    data[problem.prior_site] = x
    data[site] = value
    with poutine.block(), _StubPrior(data):
        tr = poutine.trace(problem.model).get_trace(*problem.args, **problem.kwargs)
    (name,) = list(problem.observed)
    g = unwrap_distribution(tr.nodes[name]["fn"])
    if not isinstance(g, GaussianMeasurement):
        raise ValueError(f"the likelihood site {name!r} must be a GaussianMeasurement for a blind solver")
    return g


class ThetaRecord:
    """The operator-parameter draws of a blind run, in the shape a DiffusionGuide expects of its
    joint theta state (``values()``, ``finish()``, ``trace()``)."""

    def __init__(self, site: str):
        self.site = site
        self.value: torch.Tensor | None = None
        self.history: list = []

    def set(self, value: torch.Tensor) -> None:
        self.value = value.detach()
        self.history.append(self.value.mean(0))

    def values(self) -> dict:
        return {self.site: self.value}

    def finish(self, x, generator=None) -> None:
        return None

    def trace(self) -> dict:
        return {self.site: torch.stack(self.history) if self.history else torch.empty(0)}
