"""``Problem``: everything a solver needs, read from the user's Pyro model.

``Problem.from_model(model, *args, **kwargs)`` traces the model once with the diffusion-prior site
stubbed (no reverse diffusion runs), and finds

* the :class:`~ppl_diffusion.models.prior.DiffusionPrior` site (or the one named by ``prior_site``);
* the observed sites (``obs=`` given, or passed through the model's arguments);
* any other latent sites (kept at the values of the trace unless given in ``latent_values``).

It then offers the batched log-likelihood ``log p(y | x)`` and its gradient for ANY Pyro
likelihood (``x`` of shape ``(N, *event_shape)``), and the linear-Gaussian view
``(operator, y, noise_std)`` when the likelihood is a :class:`GaussianMeasurement`; solvers that
need more than the model offers get a ``ValueError`` naming the missing piece.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from collections.abc import Callable

import pyro.poutine as poutine
import torch
from pyro.poutine.messenger import Messenger

from ..models.measurement import GaussianMeasurement
from ..models.prior import DiffusionPrior

__all__ = ["Problem", "LinearGaussian", "unwrap_distribution", "find_prior_sites"]


def unwrap_distribution(fn):
    """Strip Pyro/torch wrappers (Expanded, Independent, Masked, ...) down to the base distribution."""
    seen = 0
    while hasattr(fn, "base_dist") and seen < 10:
        fn = fn.base_dist
        seen += 1
    return fn


class _StubPrior(Messenger):
    """Give named latent sites the values in ``values`` and every other DiffusionPrior site zeros, so
    that tracing never runs the reverse diffusion."""

    def __init__(self, values: dict | None = None):
        super().__init__()
        self.values = values or {}

    def _pyro_sample(self, msg):
        if msg["value"] is not None or msg["is_observed"]:
            return
        if msg["name"] in self.values:  # substituted latent value (stays a latent site)
            msg["value"] = self.values[msg["name"]]
            return
        base = unwrap_distribution(msg["fn"])
        if isinstance(base, DiffusionPrior):
            dtype, device = base._reference()
            msg["value"] = torch.zeros(msg["fn"].shape(), dtype=dtype, device=device)
            msg["infer"] = dict(msg.get("infer") or {}, _stubbed=True)


def find_prior_sites(trace) -> list:
    return [name for name, site in trace.nodes.items()
            if site["type"] == "sample" and isinstance(unwrap_distribution(site["fn"]), DiffusionPrior)
            and not site["is_observed"]]


@dataclass
class LinearGaussian:
    """The linear-Gaussian view ``y = A x + noise_std * n`` of a problem."""

    operator: Any
    y: torch.Tensor
    noise_std: float


class Problem:
    """The inverse problem a Pyro model describes (see module docstring)."""

    def __init__(self, model: Callable, args: tuple, kwargs: dict, trace, prior_site: str,
                 latent_values: dict, allow_unobserved: bool = False):
        self.model, self.args, self.kwargs = model, args, kwargs
        self.trace = trace
        self.prior_site = prior_site
        site = trace.nodes[prior_site]
        self.prior: DiffusionPrior = unwrap_distribution(site["fn"])
        self.observed = {n: s for n, s in trace.nodes.items() if s["type"] == "sample" and s["is_observed"]}
        self.latent = {n: s for n, s in trace.nodes.items()
                       if s["type"] == "sample" and not s["is_observed"] and n != prior_site}
        if not self.observed and allow_unobserved:
            # structure-only view (a solver checking its requirements before it sees y): the sampled
            # non-prior sites stand in for the observations
            self.observed, self.latent = self.latent, {}
        self.latent_values = {n: s["value"] for n, s in self.latent.items()}
        self.latent_values.update(latent_values)
        if not self.observed:
            raise ValueError(
                "the model has no observed site: pass the measurement, e.g. guide.sample(16, y=y), "
                "or write pyro.sample('y', likelihood, obs=y)"
            )
        for name, s in self.observed.items():
            v = s["value"]
            if isinstance(v, torch.Tensor) and v.is_floating_point() and not torch.isfinite(v).all():
                raise ValueError(f"observed site {name!r} contains NaN/Inf values")
            base = unwrap_distribution(s["fn"])
            if isinstance(base, GaussianMeasurement):
                base.check_observation(v)
                ne = len(base.event_shape)
                if tuple(v.shape[v.dim() - ne:]) != tuple(base.event_shape):
                    raise ValueError(
                        f"observed site {name!r}: y has shape {tuple(v.shape)} but the operator "
                        f"{type(base.operator).__name__} produces {tuple(base.event_shape)}"
                    )
        self._gaussian = self._find_gaussian()

    # ------------------------------------------------------------------------------------
    @classmethod
    def from_model(cls, model: Callable, *args, prior_site: str | None = None,
                   latent_values: dict | None = None, allow_unobserved: bool = False, **kwargs) -> Problem:
        """Read the problem from ``model(*args, **kwargs)``.

        ``allow_unobserved=True`` gives a structure-only view when no observation is passed (used by
        solvers to check their requirements at construction)."""
        if not callable(model):
            raise ValueError("model must be a callable Pyro model")
        latent_values = dict(latent_values or {})
        with poutine.block(), _StubPrior(latent_values):
            tr = poutine.trace(model).get_trace(*args, **kwargs)
        names = find_prior_sites(tr)
        if not names:
            raise ValueError(
                "the model has no DiffusionPrior site: write x = pyro.sample('x', prior) with a "
                "ppl_diffusion DiffusionPrior (e.g. load_prior('digits'))"
            )
        if prior_site is None:
            if len(names) > 1:
                raise ValueError(f"the model has several DiffusionPrior sites {names}: name one with prior_site=")
            prior_site = names[0]
        elif prior_site not in names:
            raise ValueError(f"prior_site {prior_site!r} is not a DiffusionPrior site of the model; found {names}")
        return cls(model, args, kwargs, tr, prior_site, latent_values, allow_unobserved)

    # ------------------------------------------------------------------------------------
    @property
    def event_shape(self) -> torch.Size:
        return self.prior.event_shape

    @property
    def denoiser(self):
        return self.prior.denoiser

    @property
    def dtype(self):
        return self.prior._reference()[0]

    @property
    def device(self):
        return self.prior._reference()[1]

    def _find_gaussian(self) -> GaussianMeasurement | None:
        if len(self.observed) != 1:
            return None
        (site,) = self.observed.values()
        base = unwrap_distribution(site["fn"])
        return base if isinstance(base, GaussianMeasurement) else None

    @property
    def is_gaussian(self) -> bool:
        return self._gaussian is not None

    @property
    def observation(self) -> torch.Tensor:
        """The single observed value (``y``)."""
        if len(self.observed) != 1:
            raise ValueError(f"expected one observed site, the model has {list(self.observed)}")
        return next(iter(self.observed.values()))["value"]

    def linear_gaussian(self, method: str = "this solver") -> LinearGaussian:
        """``(operator, y, noise_std)`` or a ValueError saying what the model must provide."""
        g = self._gaussian
        if g is None:
            raise ValueError(
                f"{method} needs a Gaussian likelihood with a known operator: write "
                "pyro.sample('y', GaussianMeasurement(operator, x, noise_std), obs=y)"
            )
        if not getattr(g.operator, "is_linear", False):
            raise ValueError(f"{method} needs a linear operator; {type(g.operator).__name__} is nonlinear")
        return LinearGaussian(g.operator, self.observation, g.noise_std)

    def gaussian(self, method: str = "this solver"):
        """``(operator, y, noise_std)`` for a GaussianMeasurement with any (also nonlinear) operator."""
        g = self._gaussian
        if g is None:
            raise ValueError(
                f"{method} needs a Gaussian likelihood: write "
                "pyro.sample('y', GaussianMeasurement(operator, x, noise_std), obs=y)"
            )
        return LinearGaussian(g.operator, self.observation, g.noise_std)

    def require_svd(self, method: str = "this solver") -> LinearGaussian:
        lg = self.linear_gaussian(method)
        if not getattr(lg.operator, "has_svd", False):
            raise ValueError(f"{method} needs an operator with an SVD; {type(lg.operator).__name__} has none")
        return lg

    def require_prox(self, method: str = "this solver") -> LinearGaussian:
        lg = self.linear_gaussian(method)
        if not getattr(lg.operator, "has_prox", False) and not getattr(lg.operator, "has_svd", False):
            raise ValueError(f"{method} needs a closed-form proximal step; {type(lg.operator).__name__} has none")
        return lg

    def require(self, requirements, method: str = "this solver") -> None:
        """Check a solver's requirements (``likelihood``, ``gaussian``, ``linear``, ``svd``, ``prox``,
        ``mask``), raising a ValueError that names the missing piece."""
        for req in requirements:
            if req == "likelihood":
                continue
            if req == "gaussian":
                self.gaussian(method)
            elif req == "linear":
                self.linear_gaussian(method)
            elif req == "svd":
                self.require_svd(method)
            elif req == "prox":
                self.require_prox(method)
            elif req == "mask":
                op = self.linear_gaussian(method).operator
                if getattr(op, "name", "") != "inpainting" and not hasattr(op, "mask"):
                    raise ValueError(f"{method} needs an inpainting (mask) operator, got {type(op).__name__}")
            else:
                raise ValueError(f"unknown requirement {req!r}")

    # ------------------------------------------------------------------------------------
    def _flatten(self, x: torch.Tensor):
        ne = len(self.event_shape)
        if x.dim() < ne or tuple(x.shape[x.dim() - ne:]) != tuple(self.event_shape):
            raise ValueError(f"x must have shape (*batch, {tuple(self.event_shape)}), got {tuple(x.shape)}")
        batch = x.shape[: x.dim() - ne]
        return x.reshape((-1,) + tuple(self.event_shape)), batch

    def log_likelihood(self, x: torch.Tensor) -> torch.Tensor:
        """``log p(y | x)`` for a batch ``x`` of shape ``(*batch, *event_shape)`` -> ``(*batch,)``."""
        flat, batch = self._flatten(x)
        g = self._gaussian
        if g is not None:
            if g.noise_std == 0:
                raise ValueError("the log-likelihood of a noiseless measurement (noise_std=0) is not defined")
            y = self.observation
            return GaussianMeasurement(g.operator, flat, g.noise_std).log_prob(y).reshape(batch)
        data = dict(self.latent_values)
        data[self.prior_site] = flat
        with poutine.block(), _StubPrior(data):
            tr = poutine.trace(self.model).get_trace(*self.args, **self.kwargs)
        n = flat.shape[0]
        total = torch.zeros(n, dtype=flat.dtype, device=flat.device)
        for name in self.observed:
            site = tr.nodes[name]
            lp = site["fn"].log_prob(site["value"])
            if lp.dim() == 0:
                lp = lp.expand(n)
            if lp.shape[0] != n:
                lp = lp.reshape(-1)
                if lp.numel() % n:
                    raise ValueError(f"cannot batch the likelihood of site {name!r} over {n} samples")
            total = total + lp.reshape(n, -1).sum(-1)
        return total.reshape(batch)

    def grad_log_likelihood(self, x: torch.Tensor):
        """``(log p(y|x), d log p(y|x) / dx)``, batched, by autograd (nonlinear operators included)."""
        with torch.enable_grad():
            xx = x.detach().requires_grad_(True)
            ll = self.log_likelihood(xx)
            (g,) = torch.autograd.grad(ll.sum(), xx)
        return ll.detach(), g

    def __repr__(self) -> str:
        return (f"Problem(prior_site={self.prior_site!r}, event_shape={tuple(self.event_shape)}, "
                f"observed={list(self.observed)}, latent={list(self.latent)}, gaussian={self.is_gaussian})")
