"""``Problem``: everything a solver needs, read from the user's Pyro model.

``Problem.from_model(model, *args, **kwargs)`` traces the model once with the diffusion-prior site
stubbed (no reverse diffusion runs), and finds

* the :class:`~ppl_diffusion.models.prior.DiffusionPrior` site (or the one named by ``prior_site``)
  and the plates around it (several measurements at once: ``with pyro.plate("images", B)``);
* the likelihood sites: observed sites whose distribution depends on ``x`` (``obs=`` given, or
  passed through the model's arguments; in a structure-only view, the sampled sites that depend
  on ``x``);
* the other latent sites ``theta`` (an unknown noise level, an operator parameter, ...): *fixed*
  when the model conditions them (``pyro.condition(model, data={"sigma": 0.05})``, or
  ``latent_values=``), else *free*. A solver that does not infer free latents refuses the model
  (:meth:`Problem.latent_error`); plate sites are not latents.

It then offers the batched log-likelihood ``log p(y | x)`` and its gradient for ANY Pyro
likelihood (``x`` of shape ``(N, *event_shape)``), and the linear-Gaussian view
``(operator, y, noise_std)`` when the likelihood is a :class:`GaussianMeasurement`; solvers that
need more than the model offers get a ``ValueError`` naming the missing piece.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyro.poutine as poutine
import torch
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample

from ..models.latent import LATENT_SOLVERS_HINT, LatentDiffusionPrior
from ..models.measurement import GaussianMeasurement
from ..models.prior import DiffusionPrior

#: the prior distributions a Problem recognises (pixel-space and latent diffusion priors)
PRIOR_TYPES = (DiffusionPrior, LatentDiffusionPrior)

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

    def __init__(self, values: dict | None = None, track: bool = False):
        super().__init__()
        self.values = values or {}
        self.track = track  # stub values require grad (to find which sites depend on x)

    def _pyro_sample(self, msg):
        if msg["value"] is not None or msg["is_observed"]:
            return
        if msg["name"] in self.values:  # substituted latent value (stays a latent site)
            msg["value"] = self.values[msg["name"]]
            return
        base = unwrap_distribution(msg["fn"])
        if isinstance(base, PRIOR_TYPES):
            dtype, device = base._reference()
            msg["value"] = torch.zeros(msg["fn"].shape(), dtype=dtype, device=device, requires_grad=self.track)
            msg["infer"] = dict(msg.get("infer") or {}, _stubbed=True)


def find_prior_sites(trace) -> list:
    return [name for name, site in trace.nodes.items()
            if site["type"] == "sample" and isinstance(unwrap_distribution(site["fn"]), PRIOR_TYPES)
            and not site["is_observed"]]


def _depends_on(site, x: torch.Tensor) -> bool:
    """Whether the site's log-density depends on ``x`` (autograd through its log_prob)."""
    if isinstance(unwrap_distribution(site["fn"]), GaussianMeasurement):
        g = unwrap_distribution(site["fn"])
        return g.x.requires_grad
    try:
        lp = site["fn"].log_prob(site["value"].detach() if isinstance(site["value"], torch.Tensor) else site["value"])
    except (ValueError, RuntimeError, NotImplementedError, TypeError):
        return True
    if not isinstance(lp, torch.Tensor) or not lp.requires_grad:
        return False
    (g,) = torch.autograd.grad(lp.sum(), x, allow_unused=True, retain_graph=True)
    return g is not None


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
        #: plates around the prior site (name, size, dim), outermost first: B measurements at once
        self.plates = sorted((f for f in site["cond_indep_stack"] if f.size is not None and f.vectorized),
                             key=lambda f: f.dim)
        sites = [(n, s) for n, s in trace.nodes.items()
                 if s["type"] == "sample" and n != prior_site and not site_is_subsample(s)]
        order = list(trace.nodes)
        after_x = {n for n in order[order.index(prior_site) + 1:]}
        x_value = site["value"]
        depends = {n: n in after_x and _depends_on(s, x_value) for n, s in sites}
        if not any(depends[n] for n, s in sites if s["is_observed"]):
            # a likelihood that ignores x (degenerate, allowed): the observed sites after x
            depends.update({n: True for n, s in sites if s["is_observed"] and n in after_x})
        structure_only = allow_unobserved and not any(s["is_observed"] and depends[n] for n, s in sites)
        #: likelihood sites: observed (or, structure-only, to be observed) and depending on x
        self.observed = {n: s for n, s in sites if depends[n] and (s["is_observed"] or structure_only)}
        #: every other latent site theta (fixed or free); plates are not latents
        self.latent = {n: s for n, s in sites if n not in self.observed}
        #: values of the fixed latents: conditioned in the model or given as ``latent_values``
        self.fixed = {n: s["value"] for n, s in self.latent.items() if s["is_observed"] or n in latent_values}
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
            if isinstance(v, torch.Tensor) and s["is_observed"]:
                ne = len(s["fn"].event_shape)
                extra = tuple(v.shape[: v.dim() - ne])
                if len(extra) > len(tuple(s["fn"].batch_shape)) and not self.plates:
                    raise ValueError(
                        f"observed site {name!r} has shape {tuple(v.shape)}: {extra[0]} measurements of shape "
                        f"{tuple(v.shape[v.dim() - ne:])}, but the model has no plate. Several measurements need "
                        f"a plate around the prior and the likelihood: with pyro.plate('images', {extra[0]}): "
                        f"x = pyro.sample('x', prior); pyro.sample({name!r}, ..., obs=y)")
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
        with poutine.block(), _StubPrior(latent_values, track=True), torch.enable_grad():
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

    # -- what the model holds beyond x and y ----------------------------------------------
    @property
    def free_latents(self) -> list:
        """Names of the latent sites other than the prior's that no value fixes (theta to infer)."""
        return [n for n in self.latent if n not in self.fixed]

    @property
    def num_measurements(self) -> int:
        """Measurements in the plates around the prior site (1 without a plate)."""
        return int(math.prod(f.size for f in self.plates)) if self.plates else 1

    @property
    def plate_shape(self) -> tuple:
        return tuple(f.size for f in self.plates)

    def latent_error(self, method: str) -> ValueError:
        """The error of a solver that cannot infer the free latent sites of the model."""
        names = self.free_latents
        example = ", ".join(f"{n!r}: <value>" for n in names)
        return ValueError(
            f"{method}: the model has latent site(s) {names} besides the diffusion prior {self.prior_site!r}, "
            f"and {method} does not infer them (it would condition on one random draw). Either fix them: "
            f"pyro.condition(model, data={{{example}}}) (or Problem.from_model(..., latent_values=...)), or infer "
            "them jointly: pyro.infer.MCMC(PMMH(model, sampler=lambda m: TDS(m))) or "
            "pyro.infer.MCMC(Gibbs(model, x_kernel=PnPDM or ParticleGibbs(TDS), theta_kernel=NUTS)) "
            "(ppl_diffusion.inference.kernels).")

    def plate_error(self, method: str) -> ValueError:
        names = [f.name for f in self.plates]
        return ValueError(
            f"{method}: the model puts the prior site {self.prior_site!r} in plate(s) {names} "
            f"({self.num_measurements} measurements); {method} solves one measurement at a time. Loop over "
            "the measurements with a model without the plate, or use a solver that batches plates (every solver "
            "with supports_plates: the guides, RED-Diff, PnP-DM, PMC and the SMC samplers).")

    def check_model(self, method: str, latents: bool = False, plates: bool = False) -> None:
        """Refuse free latent sites unless ``latents``, plates unless ``plates`` (see the errors)."""
        if self.free_latents and not latents:
            raise self.latent_error(method)
        if self.plates and not plates:
            raise self.plate_error(method)

    @property
    def is_latent(self) -> bool:
        """Whether the prior site holds a :class:`~ppl_diffusion.models.latent.LatentDiffusionPrior`."""
        return isinstance(self.prior, LatentDiffusionPrior)

    def check_prior(self, method: str, latent: bool = False) -> None:
        """Refuse a latent diffusion prior unless ``latent`` (a latent solver), and a pixel-space prior
        if ``latent``, naming the site and the solvers that fit."""
        if self.is_latent and not latent:
            raise ValueError(
                f"{method}: the prior site {self.prior_site!r} is a LatentDiffusionPrior (diffusion on the latents of "
                f"an autoencoder); {method} runs its diffusion in pixel space and needs a DiffusionPrior. Use a latent "
                f"solver: {LATENT_SOLVERS_HINT}, or a pixel prior (e.g. load_prior('digits')).")
        if latent and not self.is_latent:
            raise ValueError(
                f"{method}: the prior site {self.prior_site!r} is a pixel-space DiffusionPrior; {method} needs a "
                "LatentDiffusionPrior (an autoencoder and a latent diffusion model, e.g. load_prior('digits-latent') "
                "or ppl_diffusion.models.latent_gmm). For a pixel prior use a pixel-space solver (dps, ddrm, ...).")

    def expand_measurements(self, n: int) -> Problem:
        """A one-plate-free view of a plated problem for ``n`` samples per measurement: the
        observation becomes ``y`` repeated per sample, flattened to ``(n * B, *out)`` with sample
        ``i`` of measurement ``b`` at index ``i * B + b``, so that any batched solver conditions each
        element of a batch of ``n * B`` on its own measurement."""
        view = copy.copy(self)
        B = self.num_measurements
        view.plates, view._expanded = [], (int(n), B)
        view.observed = {}
        for name, s in self.observed.items():
            v = s["value"]
            ne = len(s["fn"].event_shape)
            one = v.reshape((B,) + tuple(v.shape[v.dim() - ne:]))
            rep = one.unsqueeze(0).expand((int(n),) + tuple(one.shape)).reshape((int(n) * B,) + tuple(one.shape[1:]))
            view.observed[name] = dict(s, value=rep)
        return view

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
        if not g.is_scalar_noise:
            raise ValueError(f"{method} needs one scalar noise level; the model's noise_std has shape "
                             f"{tuple(g.noise_std.shape)}")
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
                check_mask_operator(self.linear_gaussian(method).operator, self.event_shape, method)
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
        expanded = getattr(self, "_expanded", None)
        if expanded is not None:  # element i * B + b of the batch belongs to measurement b
            B = expanded[1]
            if flat.shape[0] % B:
                raise ValueError(f"a batch of {flat.shape[0]} is not a whole number of {B} measurements")
            data[self.prior_site] = flat.reshape((flat.shape[0] // B, B) + tuple(self.event_shape))
        else:
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

    def log_likelihood_theta(self, x: torch.Tensor, theta: dict, batched: bool = True, form: str = "loglik"):
        """``(log p(y | x, theta), log p(theta))`` with the free latent sites at ``theta`` (gradients flow
        to both ``x`` and ``theta``), by tracing the model with the prior site at ``x``.

        * ``batched=True``: one theta per sample, ``theta[name]`` of shape ``(n, *site_shape)``; ``x`` of
          shape ``(n, *event)``, or ``(n * B, *event)`` on the view of :meth:`expand_measurements`
          (element ``i * B + b`` uses ``theta[i]``). Returns ``(ll (n[*B],), log_prior (n,))``. The
          model must broadcast a leading sample dim of its theta sites (a value ``(n, 1, ..., 1,
          *site_shape)`` aligned left of its plates); callers check it (see ``inference/theta.py``).
        * ``batched=False``: ``theta[name]`` of the site's own shape, shared by every element of ``x``
          (``(*batch, *event)``; ``(*plate_shape, *event)`` on a plated problem). Returns
          ``(ll (*batch,), log_prior ())``.

        ``form="sqnorm"`` returns ``||y - A_theta(x)||^2`` per element instead of the log-likelihood
        (a GaussianMeasurement likelihood; DPS's norm form). Free latent sites missing from ``theta``
        keep the problem's values."""
        flat, batch = self._flatten(x)
        m = flat.shape[0]
        expanded = getattr(self, "_expanded", None)
        B = expanded[1] if expanded is not None else 1
        if m % B:
            raise ValueError(f"a batch of {m} is not a whole number of {B} measurements")
        data = dict(self.latent_values)
        data[self.prior_site] = flat.reshape((m // B, B) + tuple(self.event_shape)) if expanded else flat
        nest = 1 if expanded else 0  # plate dims right of the sample dim (expand_measurements: one plate)
        n = m // B
        for name, value in theta.items():
            if name not in self.latent:
                raise ValueError(f"{name!r} is not a latent site of the model; latent sites: {list(self.latent)}")
            site = self.latent[name]
            shape = tuple(torch.as_tensor(site["value"]).shape)
            if not batched:
                data[name] = value
                continue
            if tuple(value.shape) != (n,) + shape:
                raise ValueError(f"theta[{name!r}] must have shape {(n,) + shape} (one value per sample), "
                                 f"got {tuple(value.shape)}")
            pad = max(0, nest - len(site["fn"].batch_shape))
            data[name] = value.reshape((n,) + (1,) * pad + shape)
        with poutine.block(), _StubPrior(data):
            tr = poutine.trace(self.model).get_trace(*self.args, **self.kwargs)
        total = torch.zeros(m, dtype=flat.dtype, device=flat.device)
        for name in self.observed:
            site = tr.nodes[name]
            if form == "sqnorm":
                g = unwrap_distribution(site["fn"])
                if not isinstance(g, GaussianMeasurement):
                    raise ValueError(f"form='sqnorm' needs a GaussianMeasurement at {name!r}")
                lp = (site["value"] - g.loc).pow(2)
                lp = lp.reshape(tuple(lp.shape[: lp.dim() - len(g.event_shape)]) + (-1,)).sum(-1)
            else:
                lp = site["fn"].log_prob(site["value"])
            if lp.dim() == 0:
                lp = lp.expand(m)
            if lp.numel() % m:
                raise ValueError(f"cannot batch the likelihood of site {name!r} over {m} samples")
            total = total + lp.reshape(m, -1).sum(-1)
        log_prior = torch.zeros(n if batched else (), dtype=flat.dtype, device=flat.device)
        for name in theta:
            site = tr.nodes[name]
            lp = site["fn"].log_prob(site["value"])
            log_prior = log_prior + (lp.reshape(n, -1).sum(-1) if batched else lp.sum())
        return total.reshape(batch), log_prior

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


def check_mask_operator(op, event_shape, method: str = "this solver") -> None:
    """Raise a ValueError unless ``op`` is a real inpainting operator on ``event_shape``: a ``.mask``
    with one 0/1 entry per pixel, output of the image's shape, and ``op(x) = mask * x`` (checked on
    one probe, so that an operator with an unrelated ``.mask``, e.g. a k-space mask, is refused
    at construction instead of failing at run time)."""
    name = type(op).__name__
    mask = getattr(op, "mask", None)
    shape = tuple(event_shape)
    if not isinstance(mask, torch.Tensor):
        raise ValueError(f"{method} needs an inpainting (mask) operator with a boolean .mask tensor, got {name}; "
                         "use ppl_diffusion.models.operators.Inpainting")
    if mask.numel() != math.prod(shape) or not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError(f"{method} needs an inpainting operator whose .mask has one 0/1 entry per pixel of "
                         f"{shape}; {name}.mask has shape {tuple(mask.shape)}")
    if tuple(getattr(op, "out_shape", ())) != shape:
        raise ValueError(f"{method} needs an inpainting operator whose output has the image's shape {shape}; "
                         f"{name} outputs {tuple(getattr(op, 'out_shape', ()))}")
    probe = torch.arange(1, math.prod(shape) + 1, dtype=torch.float64).reshape(shape)
    try:
        with torch.no_grad():
            out = op(probe.to(getattr(mask, "device", None)))
        ok = torch.is_tensor(out) and not out.is_complex() and torch.allclose(
            out.to(torch.float64).reshape(shape), probe * mask.reshape(shape).to(torch.float64))
    except Exception:  # noqa: BLE001 - an operator that cannot take the probe is not a mask
        ok = False
    if not ok:
        raise ValueError(f"{method} needs an inpainting operator (y = mask * x); {name} has a .mask but does "
                         "not act as one")
