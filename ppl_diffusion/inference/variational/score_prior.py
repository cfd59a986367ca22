"""Score Prior (Feng, Smith, Rubinstein, Chang, Bouman, Freeman, "Score-based diffusion models as
principled priors for inverse imaging", ICCV 2023) and Efficient Score Prior (Feng & Bouman,
"Variational Bayesian imaging with an efficient surrogate score-based prior", TMLR 2024).

Both fit a normalizing flow ``q_phi`` (RealNVP: affine couplings + fixed permutations, or rational
spline couplings; built from Pyro's own transforms) over the whole flattened ``x`` by maximising

    ELBO(phi) = E_q[ log p(y | x) + log p_theta(x) - log q_phi(x) ]

with ``pyro.infer.Trace_ELBO`` (reparameterised flow draws, vectorised particles). The model is run
unchanged except for the prior term, swapped by a Pyro messenger:

* :class:`ScorePrior` — ``log p_theta(x)`` is :meth:`DiffusionPrior.log_prob`, the exact
  probability-flow ODE density (RK4 in ``log rho``, exact divergence in small dimensions,
  Hutchinson above), differentiated through the solver; ``ode_steps`` sets its cost
  (4 NFE per RK4 step, each with a VJP).
* :class:`EfficientScorePrior` — ``log p_theta(x)`` is replaced by the denoising lower bound
  :meth:`DiffusionPrior.elbo` (one network call per draw).

Needs: a denoiser and any differentiable Pyro likelihood. Since ``log q`` is exact, importance
weights ``log p(y, x) - log q(x)`` (exact ODE prior, float64) give a self-normalised correction and an
ESS diagnostic (:meth:`ScorePrior.importance_sample`, :meth:`ScorePrior.ess`).
Parameters live in Pyro's param store (``pyro.get_param_store().save/load``, or :meth:`save`/:meth:`load`
which also keep the optimiser state so that training resumes).
"""
from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pyro.distributions.transforms as T
import torch
from pyro.poutine.messenger import Messenger

from ...models.prior import DiffusionPrior
from ..problem import Problem, unwrap_distribution
from ._svi import NonFiniteLossError, svi_steps
from .red_diff import regularised_pinv

__all__ = ["ScorePrior", "EfficientScorePrior", "ess"]


def ess(log_weights: torch.Tensor) -> float:
    """Effective sample size ``(sum w)^2 / sum w^2`` of (unnormalised) log-weights, in float64."""
    lw = log_weights.detach().to(torch.float64).reshape(-1)
    lw = lw[torch.isfinite(lw)]
    if lw.numel() == 0:
        return 0.0
    w = torch.softmax(lw, 0)
    return float(1.0 / (w**2).sum())


class _ELBOPrior(DiffusionPrior):
    """A DiffusionPrior whose ``log_prob`` is the denoising ELBO (Efficient Score Prior)."""

    def __init__(self, prior: DiffusionPrior, n_samples: int = 1):
        self._elbo_samples = int(n_samples)
        self._base = prior
        super().__init__(prior.denoiser, batch_shape=prior.batch_shape, **prior._options())

    def expand(self, batch_shape, _instance=None):
        return _ELBOPrior(self._base.expand(batch_shape), self._elbo_samples)

    def log_prob(self, x):
        return self.elbo(x, n_samples=self._elbo_samples)


class _SwapPrior(Messenger):
    """Replace the DiffusionPrior at ``site`` by ``fn(prior)`` (the training prior term)."""

    def __init__(self, site: str, fn):
        super().__init__()
        self.site, self.fn = site, fn

    def _pyro_sample(self, msg):
        if msg["name"] != self.site or msg["is_observed"]:
            return
        base = unwrap_distribution(msg["fn"])
        if not isinstance(base, DiffusionPrior):
            return
        new = self.fn(base)
        if msg["fn"] is not base:
            new = new.expand(msg["fn"].batch_shape)
        msg["fn"] = new


class ScorePrior:
    """Score Prior: flow guide + exact PF-ODE prior, trained by ``Trace_ELBO`` (see module docstring).

    Args:
        model: Pyro model with a DiffusionPrior site and a differentiable likelihood.
        flow: "realnvp" (affine couplings, the paper's choice) or "spline" (rational-quadratic couplings).
        n_layers: coupling layers (each followed by a fixed random permutation; paper: 32).
        hidden: hidden widths of the coupling networks.
        count_bins, bound: spline coupling settings.
        num_particles: flow draws per ELBO estimate (paper batch 64).
        lr, clip_norm, lr_decay: Adam (pyro ClippedAdam) settings (``lr_decay`` multiplies lr every
            step); paper lr 1e-5 for images, larger is fine for small problems.
        ode_steps, hutchinson_probes, exact_divergence_max_dim: PF-ODE settings of the training prior
            term (``None`` keeps the model's prior settings).
        init: "pinv" (flow location at the regularised pseudo-inverse ``(A^T A + sigma_y^2 I)^{-1} A^T y``
            for a linear-Gaussian likelihood, else zeros), "zeros",
            "prior" (mean / std of prior draws: a broad start over the whole prior), or a tensor;
            ``init_scale``: initial flow scale (a factor of the prior std with ``init="prior"``).
        name: param-store prefix (the same name reloads saved parameters).
        seed: seed of the permutations (fixed so that a saved flow can be rebuilt).
    """

    method = "Score Prior"
    default_name = "score_prior"

    def __init__(self, model, flow: str = "realnvp", n_layers: int = 8, hidden=(64, 64), count_bins: int = 8,
                 bound: float = 4.0, num_particles: int = 16, lr: float = 1e-3, clip_norm: float = 10.0,
                 lr_decay: float = 1.0,
                 ode_steps: int | None = 12, hutchinson_probes: int | None = None,
                 exact_divergence_max_dim: int | None = None, init="pinv", init_scale: float = 1.0,
                 prior_site: str | None = None, name: str | None = None, seed: int = 0,
                 progress: bool = True, dtype=None):
        if flow not in ("realnvp", "spline"):
            raise ValueError(f"flow must be 'realnvp' or 'spline', got {flow!r}")
        if int(n_layers) < 1 or int(num_particles) < 1:
            raise ValueError("n_layers and num_particles must be >= 1")
        if lr <= 0 or init_scale <= 0:
            raise ValueError("lr and init_scale must be > 0")
        if not (isinstance(init, torch.Tensor) or init in ("pinv", "zeros", "prior")):
            raise ValueError(f"init must be 'pinv', 'zeros', 'prior' or a tensor, got {init!r}")
        self.model, self.prior_site = model, prior_site
        structure = Problem.from_model(model, prior_site=prior_site, allow_unobserved=True)
        self.site = structure.prior_site
        self.event_shape = structure.event_shape
        self.d = int(torch.Size(self.event_shape).numel())
        if self.d < 2:
            raise ValueError(f"{self.method} needs at least 2 dimensions for coupling layers, got {self.d}")
        self.dtype = dtype or structure.dtype
        self.device = structure.device
        self.flow, self.n_layers, self.hidden = flow, int(n_layers), tuple(hidden)
        self.num_particles, self.lr, self.clip_norm = int(num_particles), float(lr), float(clip_norm)
        self.lr_decay = float(lr_decay)
        self.ode_options = {k: v for k, v in dict(ode_steps=ode_steps, hutchinson_probes=hutchinson_probes,
                                                    exact_divergence_max_dim=exact_divergence_max_dim).items()
                            if v is not None}
        self.init, self.init_scale = init, float(init_scale)
        self.name = name or self.default_name
        self.progress = progress
        self.stopped_reason: str | None = None
        self.train_nfe = 0
        self.steps_done = 0
        gen = torch.Generator().manual_seed(seed)
        layers = []
        for _ in range(self.n_layers):
            if flow == "realnvp":
                layers.append(T.affine_coupling(self.d, hidden_dims=list(self.hidden)))
            else:
                layers.append(T.spline_coupling(self.d, hidden_dims=list(self.hidden), count_bins=count_bins,
                                                bound=bound))
            layers.append(T.Permute(torch.randperm(self.d, generator=gen)))
        self._couplings = torch.nn.ModuleList([m for m in layers if isinstance(m, torch.nn.Module)
                                               and len(list(m.parameters())) > 0])
        self._layers = layers
        self._couplings.to(dtype=self.dtype, device=self.device)
        for lay in layers:
            if isinstance(lay, T.Permute):
                lay.permutation = lay.permutation.to(self.device)
        self._optim = None

    # ------------------------------------------------------------------------------------
    def prior_term(self, prior: DiffusionPrior) -> DiffusionPrior:
        """The prior density used in training (exact PF-ODE with this solver's ODE options)."""
        return prior.with_options(**self.ode_options) if self.ode_options else prior

    def training_model(self, *args, **kwargs):
        """The user's model with its prior term swapped for :meth:`prior_term`."""
        with _SwapPrior(self.site, self.prior_term):
            return self.model(*args, **kwargs)

    def initial_loc(self, *args, **kwargs) -> torch.Tensor:
        if isinstance(self.init, torch.Tensor):
            x = self.init.to(self.dtype).reshape(-1)
            if x.numel() != self.d:
                raise ValueError(f"init must have {self.d} entries, got {x.numel()}")
            return x.clone()
        if self.init == "prior":  # broad start: mean / std of 256 prior draws (sets the scale too)
            prior = Problem.from_model(self.model, prior_site=self.prior_site, allow_unobserved=True).prior
            with torch.no_grad():
                xs = prior.with_options(steps=min(prior.steps, 50)).sample((256,)).reshape(256, -1).to(self.dtype)
            self._prior_std = xs.std(0)
            return xs.mean(0)
        if self.init == "pinv" and (args or kwargs):
            try:
                problem = Problem.from_model(self.model, *args, prior_site=self.prior_site, **kwargs)
                lg = problem.linear_gaussian(self.method)
                return regularised_pinv(lg).to(self.dtype).reshape(-1).clone()
            except ValueError:
                pass
        return torch.zeros(self.d, dtype=self.dtype, device=self.device)

    def distribution(self, *args, **kwargs):
        """The flow ``q_phi`` (registering its parameters in Pyro's param store)."""
        pyro.module(f"{self.name}.flow", self._couplings, update_module_params=True)
        loc = pyro.param(f"{self.name}.loc", lambda: self.initial_loc(*args, **kwargs))
        scale = pyro.param(f"{self.name}.scale",
                           lambda: self.init_scale * getattr(self, "_prior_std", None)
                           if getattr(self, "_prior_std", None) is not None
                           else torch.full((self.d,), self.init_scale, dtype=self.dtype, device=self.device),
                           constraint=dist.constraints.positive)
        base = dist.Normal(torch.zeros(self.d, dtype=self.dtype, device=self.device),
                           torch.ones(self.d, dtype=self.dtype, device=self.device)).to_event(1)
        transforms = list(self._layers) + [T.AffineTransform(loc, scale, event_dim=1)]
        if tuple(self.event_shape) != (self.d,):
            transforms.append(T.ReshapeTransform(torch.Size([self.d]), self.event_shape))
        return dist.TransformedDistribution(base, transforms)

    def guide(self, *args, **kwargs):
        """Pyro guide: the flow at the prior site (works with ``Predictive(..., parallel=True)`` too)."""
        return pyro.sample(self.site, self.distribution(*args, **kwargs))

    # ------------------------------------------------------------------------------------
    def _denoiser(self):
        return Problem.from_model(self.model, prior_site=self.prior_site, allow_unobserved=True).denoiser

    def run(self, *args, steps: int = 1000, lr: float | None = None, num_particles: int | None = None,
            **kwargs) -> torch.Tensor:
        """Train the flow for ``steps`` SVI steps (continuing from the param store); returns the
        loss trace (negative ELBO estimates). A non-finite loss stops training with a warning and
        leaves the parameters at their last finite values."""
        if int(steps) < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if lr is not None and lr != self.lr:
            self.lr, self._optim = float(lr), None
        if num_particles is not None:
            self.num_particles = int(num_particles)
        if self._optim is None:
            self._optim = pyro.optim.ClippedAdam({"lr": self.lr, "clip_norm": self.clip_norm, "lrd": self.lr_decay})
        elbo = pyro.infer.Trace_ELBO(num_particles=self.num_particles, vectorize_particles=True,
                                     max_plate_nesting=getattr(self, "max_plate_nesting", 0))

        def loss_and_grads(model, guide, *a, **k):
            val = elbo.loss_and_grads(model, guide, *a, **k)
            if not math.isfinite(val):
                for p in self._couplings.parameters():
                    p.grad = None
                store = pyro.get_param_store()
                for n in (f"{self.name}.loc", f"{self.name}.scale"):
                    if n in store:
                        store.get_param(n).unconstrained().grad = None
                raise NonFiniteLossError(f"{self.method}: the negative ELBO became {val} at step "
                                         f"{self.steps_done + 1}; the parameters keep their last finite values")
            return val

        svi = pyro.infer.SVI(self.training_model, self.guide, self._optim, loss=elbo.loss,
                             loss_and_grads=loss_and_grads)
        den = self._denoiser()
        start = den.nfe
        def count(val):  # completed steps (the loss message above names the failing one)
            self.steps_done += 1

        trace, self.stopped_reason = svi_steps(svi, steps, args, kwargs, self.method, self.progress, check=count)
        self.train_nfe += den.nfe - start
        return trace

    # ------------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, num_samples: int, *args, **kwargs) -> torch.Tensor:
        """``num_samples`` draws from the trained flow, shape ``(num_samples, *event_shape)``."""
        return self.distribution(*args, **kwargs).sample((int(num_samples),))

    def importance_sample(self, num_samples: int, *args, ode_steps: int | None = None,
                          generator: torch.Generator | None = None, **kwargs):
        """``(x, log_w)`` with ``log_w = log p(y|x) + log p(x) - log q(x)`` in float64, where
        ``log p(x)`` is the exact PF-ODE density (``ode_steps`` RK4 steps, default the training ones)."""
        problem = Problem.from_model(self.model, *args, prior_site=self.prior_site, **kwargs)
        with torch.no_grad():
            q = self.distribution(*args, **kwargs)
            x = q.sample((int(num_samples),))
            log_q = q.log_prob(x)
        opts = dict(self.ode_options)
        if ode_steps is not None:
            opts["ode_steps"] = int(ode_steps)
        prior = problem.prior.with_options(**opts)
        with torch.no_grad():
            log_prior = prior.log_prob(x)
            ll = problem.log_likelihood(x)
        log_w = ll.to(torch.float64) + log_prior.to(torch.float64) - log_q.to(torch.float64)
        return x, log_w

    @staticmethod
    def ess(log_weights: torch.Tensor) -> float:
        """Effective sample size of importance log-weights."""
        return ess(log_weights)

    @staticmethod
    def resample(x: torch.Tensor, log_weights: torch.Tensor, num_samples: int | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Self-normalised importance resampling (multinomial) of the flow draws."""
        lw = log_weights.to(torch.float64)
        lw = torch.where(torch.isfinite(lw), lw, torch.full_like(lw, -math.inf))
        w = torch.softmax(lw, 0)
        idx = torch.multinomial(w, int(num_samples or x.shape[0]), replacement=True, generator=generator)
        return x[idx]

    @staticmethod
    def weighted_mean(x: torch.Tensor, log_weights: torch.Tensor) -> torch.Tensor:
        """Self-normalised importance estimate of the posterior mean."""
        w = torch.softmax(log_weights.to(torch.float64), 0)
        return (w.reshape((-1,) + (1,) * (x.dim() - 1)) * x.to(torch.float64)).sum(0).to(x.dtype)

    # ------------------------------------------------------------------------------------
    def save(self, path: str) -> None:
        """Save the param store (``path``) and the optimiser state (``path + '.optim'``)."""
        pyro.get_param_store().save(path)
        if self._optim is not None:
            self._optim.save(path + ".optim")

    def load(self, path: str) -> None:
        """Load parameters (and the optimiser state when saved) so that :meth:`run` resumes."""
        import os

        pyro.get_param_store().load(path, map_location=self.device)
        if os.path.exists(path + ".optim"):
            self._optim = pyro.optim.ClippedAdam({"lr": self.lr, "clip_norm": self.clip_norm, "lrd": self.lr_decay})
            self._optim.load(path + ".optim", map_location=self.device)
        pyro.module(f"{self.name}.flow", self._couplings, update_module_params=True)


class EfficientScorePrior(ScorePrior):
    """Efficient Score Prior: the :class:`ScorePrior` flow with the denoising ELBO
    :meth:`DiffusionPrior.elbo` as the prior term (``elbo_samples`` network calls per flow draw)."""

    method = "Efficient Score Prior"
    default_name = "efficient_score_prior"

    def __init__(self, model, elbo_samples: int = 1, **options):
        if int(elbo_samples) < 1:
            raise ValueError(f"elbo_samples must be >= 1, got {elbo_samples}")
        self.elbo_samples = int(elbo_samples)
        super().__init__(model, **options)

    def prior_term(self, prior: DiffusionPrior) -> DiffusionPrior:
        return _ELBOPrior(prior, self.elbo_samples)
