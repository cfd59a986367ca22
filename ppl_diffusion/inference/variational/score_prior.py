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

Latent sites besides x (theta: an unknown noise level, an operator parameter): a
``pyro.infer.autoguide`` on the free theta sites (``theta_guide="normal"``: AutoNormal;
``"delta"``: AutoDelta) joins the flow in the guide, so that the same ``Trace_ELBO`` fits
``q_phi(x) q(theta)`` (mean field: x and theta are drawn independently) against the model's own
``log p(y | x, theta) + log p(theta)``; :meth:`ScorePrior.draw` returns theta draws in
``extra["theta"]`` and :meth:`ScorePrior.importance_sample` weighs joint draws. The particles are
vectorised when the model broadcasts a batch of theta values (checked once), else run one by one.
"""
from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pyro.distributions.transforms as T
import torch
from pyro.poutine.messenger import Messenger

from ...models.prior import DiffusionPrior
from ..problem import Problem, unwrap_distribution
from ..solver import Draws, OptionError, Solver, check_choice, check_int, check_number, measure
from ..theta import THETA_GUIDES, ThetaLikelihood, autoguide_draws, prior_draws, theta_autoguide, theta_transforms
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


class ScorePrior(Solver):
    """Score Prior: flow guide + exact PF-ODE prior, trained by ``Trace_ELBO`` (see module docstring).

    Args:
        model: Pyro model with a DiffusionPrior site and a differentiable likelihood.
        flow: "realnvp" (affine couplings, the paper's choice) or "spline" (rational-quadratic couplings).
        n_layers: coupling layers (each followed by a fixed random permutation; paper: 32).
        hidden: hidden widths of the coupling networks.
        count_bins: bins of the spline couplings.
        bound: tail bound of the spline couplings.
        num_particles: flow draws per ELBO estimate (paper batch 64).
        lr: Adam (pyro ClippedAdam) learning rate; paper 1e-5 for images, larger is fine for small problems.
        clip_norm: gradient-norm clip.
        lr_decay: factor applied to the learning rate after every step.
        steps: SVI steps of :meth:`run` / :meth:`draw` when ``run`` is not given ``steps``.
        ode_steps: RK4 steps of the PF-ODE prior term (``None`` keeps the model's prior settings).
        hutchinson_probes: Hutchinson probes of the PF-ODE divergence (``None``: the prior's).
        exact_divergence_max_dim: largest dimension with an exact divergence (``None``: the prior's).
        init: "pinv" (flow location at the regularised pseudo-inverse ``(A^T A + sigma_y^2 I)^{-1} A^T y``
            for a linear-Gaussian likelihood, else zeros), "zeros",
            "prior" (mean / std of prior draws: a broad start over the whole prior), or a tensor.
        init_scale: initial flow scale (a factor of the prior std with ``init="prior"``).
        theta_guide: autoguide on the model's free latent sites besides x (theta): ``"normal"``
            (AutoNormal) or ``"delta"`` (AutoDelta, a point estimate); unused without such sites.
        theta_init_scale: initial scale of the AutoNormal guide (unconstrained space).
        prior_site: name of the diffusion-prior site when the model has several.
        name: param-store prefix (the same name reloads saved parameters; default the solver's name).
        seed: seed of the permutations (fixed so that a saved flow can be rebuilt).
        progress: show a progress bar.
        dtype: dtype of the flow (default the problem's).
    """

    name = "score_prior"
    family = "variational"
    requires = ("likelihood",)
    method = "Score Prior"
    infers_latents = True

    def __init__(self, model, *, flow: str = "realnvp", n_layers: int = 8, hidden=(64, 64), count_bins: int = 8,
                 bound: float = 4.0, num_particles: int = 16, lr: float = 1e-3, clip_norm: float = 10.0,
                 lr_decay: float = 1.0, steps: int = 1000, ode_steps: int | None = 12,
                 hutchinson_probes: int | None = None, exact_divergence_max_dim: int | None = None, init="pinv",
                 init_scale: float = 1.0, theta_guide: str = "normal", theta_init_scale: float = 0.1,
                 prior_site: str | None = None, name: str | None = None, seed: int = 0, progress: bool = True,
                 dtype=None):
        m = type(self).name
        self.theta_guide = check_choice("theta_guide", theta_guide, THETA_GUIDES, m)
        self.theta_init_scale = check_number("theta_init_scale", theta_init_scale, m, low=0.0, low_open=True)
        self.flow = check_choice("flow", flow, ("realnvp", "spline"), m)
        self.n_layers = check_int("n_layers", n_layers, m)
        self.num_particles = check_int("num_particles", num_particles, m)
        self.lr = check_number("lr", lr, m, low=0.0, low_open=True)
        self.init_scale = check_number("init_scale", init_scale, m, low=0.0, low_open=True)
        self.clip_norm = check_number("clip_norm", clip_norm, m, low=0.0, low_open=True)
        self.lr_decay = check_number("lr_decay", lr_decay, m, low=0.0, low_open=True)
        self.steps = check_int("steps", steps, m)
        if not (isinstance(init, torch.Tensor) or init in ("pinv", "zeros", "prior")):
            raise OptionError(f"{m}: init must be 'pinv', 'zeros', 'prior' or a tensor, got {init!r}")
        self.init = init
        self.count_bins, self.bound, self.seed = check_int("count_bins", count_bins, m), float(bound), int(seed)
        self.hidden = tuple(hidden)
        ode = dict(ode_steps=ode_steps, hutchinson_probes=hutchinson_probes,
                   exact_divergence_max_dim=exact_divergence_max_dim)
        self.ode_options = {k: check_int(k, v, m, minimum=0 if k == "exact_divergence_max_dim" else 1)
                            for k, v in ode.items() if v is not None}
        structure = self.setup_solver(model, prior_site, progress)
        self.site = structure.prior_site
        self.event_shape = structure.event_shape
        self.d = int(torch.Size(self.event_shape).numel())
        if self.d < 2:
            raise ValueError(f"{self.method} needs at least 2 dimensions for coupling layers, got {self.d}")
        self.dtype = dtype or structure.dtype
        self.device = structure.device
        self.name = name or type(self).name
        #: the free latent sites besides x, fitted by :attr:`theta_autoguide`
        self.theta_names = list(structure.free_latents)
        theta_transforms(structure, method=m)  # continuous theta only
        self._theta_autoguide = None
        self._plate_nesting = len(structure.plates)
        self._vectorize: bool | None = None if self.theta_names else True
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
        self._couplings = torch.nn.ModuleList([lay for lay in layers if isinstance(lay, torch.nn.Module)
                                               and len(list(lay.parameters())) > 0])
        self._layers = layers
        self._couplings.to(dtype=self.dtype, device=self.device)
        for lay in layers:
            if isinstance(lay, T.Permute):
                lay.permutation = lay.permutation.to(self.device)
        self._optim = None

    # ------------------------------------------------------------------------------------
    def prior_term(self, prior: DiffusionPrior) -> DiffusionPrior:
        """The prior density used in training (exact PF-ODE with this solver's ODE options)."""
        return prior.with_options(**self.ode_options, trace_log_prob="ode")  # Trace_ELBO runs the exact ODE

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
                with poutine.block():  # AutoDelta.median runs the guide: keep it out of an enclosing trace
                    values = self.theta_autoguide.median(*args, **kwargs) if self.theta_names else None
                problem = Problem.from_model(self.model, *args, prior_site=self.prior_site, latent_values=values,
                                             **kwargs)
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

    @property
    def theta_autoguide(self):
        """The autoguide on :attr:`theta_names` (``None`` without free latent sites); its parameters
        are ``{name}.theta.*`` in Pyro's param store."""
        if self.theta_names and self._theta_autoguide is None:
            self._theta_autoguide = theta_autoguide(self.model, self.theta_names, self.theta_guide,
                                                    prefix=f"{self.name}.theta", init_scale=self.theta_init_scale)
        return self._theta_autoguide

    def guide(self, *args, **kwargs):
        """Pyro guide: the theta autoguide (if the model has free latent sites), then the flow at the
        prior site (works with ``Predictive(..., parallel=True)`` too)."""
        if self.theta_autoguide is not None:
            self.theta_autoguide(*args, **kwargs)
        return pyro.sample(self.site, self.distribution(*args, **kwargs))

    def _vectorizes(self, *args, **kwargs) -> bool:
        """Whether the model broadcasts a batch of theta values (the particles can be vectorised)."""
        if self._vectorize is None:
            problem = Problem.from_model(self.model, *args, prior_site=self.prior_site, **kwargs)
            gen = torch.Generator().manual_seed(0)
            x = torch.randn((3,) + tuple(self.event_shape), generator=gen, dtype=problem.dtype)
            theta = prior_draws(problem, 3, gen)
            self._vectorize = ThetaLikelihood(problem)._check(x.to(problem.device), theta, "loglik")
        return self._vectorize

    # ------------------------------------------------------------------------------------
    def _denoiser(self):
        return Problem.from_model(self.model, prior_site=self.prior_site, allow_unobserved=True).denoiser

    def run(self, *args, steps: int | None = None, lr: float | None = None, num_particles: int | None = None,
            **kwargs) -> torch.Tensor:
        """Train the flow for ``steps`` SVI steps (default: the constructor's ``steps``), continuing
        from the param store; returns the loss trace (negative ELBO estimates). A non-finite loss stops
        training with a warning and leaves the parameters at their last finite values."""
        m = type(self).name
        steps = self.steps if steps is None else check_int("steps", steps, m)
        if lr is not None and lr != self.lr:
            self.lr, self._optim = check_number("lr", lr, m, low=0.0, low_open=True), None
        if num_particles is not None:
            self.num_particles = check_int("num_particles", num_particles, m)
        if self._optim is None:
            self._optim = pyro.optim.ClippedAdam({"lr": self.lr, "clip_norm": self.clip_norm, "lrd": self.lr_decay})
        elbo = pyro.infer.Trace_ELBO(num_particles=self.num_particles,
                                     vectorize_particles=self._vectorizes(*args, **kwargs),
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

    def draw(self, num_samples: int, *args, generator: torch.Generator | None = None, **kwargs) -> Draws:
        """Train the flow (:meth:`run` with the constructor's ``steps``, continuing from the param
        store) and return ``num_samples`` flow draws as :class:`Draws` (one chain).

        The flow samples with torch's global random state; a given ``generator`` seeds it first
        (``pyro.set_rng_seed`` with a seed drawn from the generator), so the training noise and the
        draws are reproducible. ``nfe_per_sample`` is ``train_nfe``, the batched network calls of all
        training so far (draws from the flow are free); ``extra``: ``train_nfe``, ``train_evals``
        (single-sample network evaluations of this fit), ``train_s`` (seconds of this fit),
        ``train_steps``, ``loss_trace``, ``stopped_reason``."""
        n = check_int("num_samples", num_samples, type(self).name)
        problem = self.problem(*args, **kwargs)
        if generator is not None:
            pyro.set_rng_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
        with measure(problem.denoiser) as meter:
            trace = self.run(*args, **kwargs)
        x = self.sample(n, *args, **kwargs)
        extra = {"train_nfe": self.train_nfe, "train_evals": meter.evals, "train_s": meter.seconds,
                 "train_steps": len(trace), "loss_trace": trace, "stopped_reason": self.stopped_reason}
        if self.theta_names:
            extra["theta"] = {k: v[None] for k, v in self.theta_draws(n, *args, **kwargs).items()}
        return self._draws(x[None], meter, problem, n, extra=extra, nfe_per_sample=self.train_nfe)

    def theta_draws(self, num_samples: int, *args, generator: torch.Generator | None = None, **kwargs) -> dict:
        """``name -> (num_samples, *site_shape)`` draws of the free latent sites from the fitted
        autoguide (independent of the flow's x)."""
        if not self.theta_names:
            return {}
        return autoguide_draws(self.theta_autoguide, self.theta_names, int(num_samples), *args,
                               nest=self._plate_nesting, generator=generator, **kwargs)[0]

    def importance_sample(self, num_samples: int, *args, ode_steps: int | None = None,
                          generator: torch.Generator | None = None, return_theta: bool = False, **kwargs):
        """``(x, log_w)`` with ``log_w = log p(y|x) + log p(x) - log q(x)`` in float64, where
        ``log p(x)`` is the exact PF-ODE density (``ode_steps`` RK4 steps, default the training ones).

        With free latent sites theta the draws are joint, ``(x, theta) ~ q(x) q(theta)``, and
        ``log_w = log p(y | x, theta) + log p(x) + log p(theta) - log q(x) - log q(theta)``;
        ``return_theta=True`` returns ``(x, theta, log_w)``."""
        problem = Problem.from_model(self.model, *args, prior_site=self.prior_site, **kwargs)
        with torch.no_grad():
            q = self.distribution(*args, **kwargs)
            x = q.sample((int(num_samples),))
            log_q = q.log_prob(x)
        theta, log_p_theta = {}, 0.0
        if self.theta_names:
            theta, log_q_theta = autoguide_draws(self.theta_autoguide, self.theta_names, int(num_samples), *args,
                                                 nest=self._plate_nesting, generator=generator, **kwargs)
            with torch.no_grad():
                ll, lp = ThetaLikelihood(problem, None if self._vectorize is None else self._vectorize)(x, theta)
            log_p_theta = lp.to(torch.float64) - log_q_theta
        opts = dict(self.ode_options)
        if ode_steps is not None:
            opts["ode_steps"] = int(ode_steps)
        prior = problem.prior.with_options(**opts)
        with torch.no_grad():
            log_prior = prior.log_prob(x)
            if not self.theta_names:
                ll = problem.log_likelihood(x)
        log_w = ll.to(torch.float64) + log_prior.to(torch.float64) - log_q.to(torch.float64) + log_p_theta
        return (x, theta, log_w) if return_theta else (x, log_w)

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
    :meth:`DiffusionPrior.elbo` as the prior term (``elbo_samples`` network calls per flow draw).

    Args:
        model: Pyro model with a DiffusionPrior site and a differentiable likelihood.
        elbo_samples: noise draws of the denoising ELBO per flow draw (network calls per flow draw).
        flow: "realnvp" (affine couplings, the paper's choice) or "spline" (rational-quadratic couplings).
        n_layers: coupling layers (each followed by a fixed random permutation; paper: 32).
        hidden: hidden widths of the coupling networks.
        count_bins: bins of the spline couplings.
        bound: tail bound of the spline couplings.
        num_particles: flow draws per ELBO estimate (paper batch 64).
        lr: Adam (pyro ClippedAdam) learning rate; paper 1e-5 for images, larger is fine for small problems.
        clip_norm: gradient-norm clip.
        lr_decay: factor applied to the learning rate after every step.
        steps: SVI steps of :meth:`run` / :meth:`draw` when ``run`` is not given ``steps``.
        ode_steps: RK4 steps of the exact PF-ODE density, used by :meth:`importance_sample` only here
            (``None`` keeps the model's prior settings).
        hutchinson_probes: Hutchinson probes of the PF-ODE divergence (``None``: the prior's).
        exact_divergence_max_dim: largest dimension with an exact divergence (``None``: the prior's).
        init: "pinv" (flow location at the regularised pseudo-inverse ``(A^T A + sigma_y^2 I)^{-1} A^T y``
            for a linear-Gaussian likelihood, else zeros), "zeros",
            "prior" (mean / std of prior draws: a broad start over the whole prior), or a tensor.
        init_scale: initial flow scale (a factor of the prior std with ``init="prior"``).
        theta_guide: autoguide on the model's free latent sites besides x (theta): ``"normal"``
            (AutoNormal) or ``"delta"`` (AutoDelta, a point estimate); unused without such sites.
        theta_init_scale: initial scale of the AutoNormal guide (unconstrained space).
        prior_site: name of the diffusion-prior site when the model has several.
        name: param-store prefix (the same name reloads saved parameters; default the solver's name).
        seed: seed of the permutations (fixed so that a saved flow can be rebuilt).
        progress: show a progress bar.
        dtype: dtype of the flow (default the problem's).
    """

    name = "efficient_score_prior"
    method = "Efficient Score Prior"

    def __init__(self, model, *, elbo_samples: int = 1, flow: str = "realnvp", n_layers: int = 8,
                 hidden=(64, 64), count_bins: int = 8, bound: float = 4.0, num_particles: int = 16, lr: float = 1e-3,
                 clip_norm: float = 10.0, lr_decay: float = 1.0, steps: int = 1000, ode_steps: int | None = 12,
                 hutchinson_probes: int | None = None, exact_divergence_max_dim: int | None = None, init="pinv",
                 init_scale: float = 1.0, theta_guide: str = "normal", theta_init_scale: float = 0.1,
                 prior_site: str | None = None, name: str | None = None, seed: int = 0, progress: bool = True,
                 dtype=None):
        self.elbo_samples = check_int("elbo_samples", elbo_samples, type(self).name)
        super().__init__(model, flow=flow, n_layers=n_layers, hidden=hidden, count_bins=count_bins, bound=bound,
                         num_particles=num_particles, lr=lr, clip_norm=clip_norm, lr_decay=lr_decay, steps=steps,
                         ode_steps=ode_steps, hutchinson_probes=hutchinson_probes,
                         exact_divergence_max_dim=exact_divergence_max_dim, init=init, init_scale=init_scale,
                         theta_guide=theta_guide, theta_init_scale=theta_init_scale, prior_site=prior_site,
                         name=name, seed=seed, progress=progress, dtype=dtype)

    def prior_term(self, prior: DiffusionPrior) -> DiffusionPrior:
        return _ELBOPrior(prior, self.elbo_samples)
