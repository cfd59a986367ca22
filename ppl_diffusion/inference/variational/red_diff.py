"""RED-Diff (Mardani, Song, Kautz, Vahdat, "A variational perspective on solving inverse problems
with diffusion models", ICLR 2024) as a Pyro guide + an SVI loss.

Variational family ``q(x) = N(mu, diag(s)^2)`` (``s = 0`` by default: a point mass, as in the paper).
At step ``k`` of a DESCENDING time sweep ``t_k`` (one Adam step per ``t``)::

    x = mu + s * xi                                   (reparameterised draw from the guide)
    x_t = alpha_t x + sigma_t eps,  eps ~ N(0, I)
    eps_hat = eps_theta(x_t, t)                       (no gradient: one network call)
    loss = -obs_weight * log p(y | x) + w_t * sum(sg(eps_hat - eps) * x) [+ log q(x) if s is learned]

with ``w_t = lam * f(sigma_t / alpha_t)`` (``f`` = identity for the paper's "linear" weighting
``lam / sqrt(SNR)``; other choices below). The data term is the model's OWN likelihood (any
differentiable Pyro likelihood, nonlinear operators included, through
:meth:`Problem.log_likelihood`). Needs: a denoiser and a differentiable likelihood. Cost: 1 NFE per
step (2 in one batched call with ``antithetic=True``).

Units: the paper writes ``v * mean((y - A mu)^2) / 2 + w_t * mean(...)``; here both terms are sums
and the data term carries ``1 / sigma_y^2``, so the paper's balance is
``lam_here = lam_paper * m / (d * sigma_y^2 * v)`` (``paper_balance=True`` applies it).

With ``weighting="score"`` (``w_t = lam * sqrt(SNR)``, ``lam = 1``) the expected regulariser gradient
is ``-grad log p_rho(x)`` of the prior smoothed at ``rho = sigma/alpha``, so the descending sweep
ends at the MAP of the (slightly smoothed) posterior; ``antithetic=True`` removes the probe noise
exactly for Gaussian priors.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch

from ..problem import Problem
from ..solver import Draws, OptionError, Solver, check_choice, check_int, check_number, measure
from ._svi import NonFiniteLossError, svi_steps


def regularised_pinv(lg) -> torch.Tensor:
    """``(A^T A + sigma_y^2 I)^{-1} A^T y`` (the MAP under a unit Gaussian prior) of a linear-Gaussian
    likelihood ``lg``; ``A^+ y`` when noiseless or when the operator has no proximal step. Unlike the
    plain pseudo-inverse it does not amplify noise along tiny singular values (Gaussian deblurring:
    ``A^+ y`` is off by ~20 dB there)."""
    op, y, s = lg.operator, lg.y, float(lg.noise_std)
    if s > 0:
        try:
            return op.prox(torch.zeros(op.in_shape, dtype=y.dtype, device=y.device), y, s**2)
        except (NotImplementedError, AttributeError):
            pass
    return op.pinv(y)

__all__ = ["REDDiff", "NonFiniteLossError", "WEIGHTINGS"]


#: weighting functions of ``r = sigma/alpha = 1/sqrt(SNR)`` (RED-Diff code options + "score")
WEIGHTINGS: dict[str, Callable] = {
    "linear": lambda r: r,
    "sqrt": lambda r: r.sqrt(),
    "square": lambda r: r**2,
    "log": lambda r: torch.log1p(r),
    "trunc_linear": lambda r: r.clamp(max=1.0),
    "power2_3": lambda r: r ** (2.0 / 3.0),
    "const": lambda r: torch.ones_like(r),
    "score": lambda r: 1.0 / r,
}


class _REDDiffLoss:
    """``loss(model, guide, *args, **kwargs) -> scalar`` usable as ``SVI(..., loss=this)``.

    Keeps its own step counter: call ``k`` uses the ``k``-th time of the descending sweep (the last
    time is reused once the sweep is exhausted). :meth:`reset` restarts the sweep."""

    def __init__(self, owner: REDDiff):
        self.owner = owner
        self.step = 0
        self.nfe = 0
        self._problem_key = None
        self._problem = None

    def reset(self, steps: int | None = None) -> None:
        self.step = 0
        if steps is not None:
            self.owner.steps = int(steps)

    def times(self) -> torch.Tensor:
        o = self.owner
        return torch.linspace(o.t_start, o.t_end, o.steps, dtype=torch.float64).clamp(min=o.t_floor)

    def current_time(self) -> float:
        ts = self.times()
        return float(ts[min(self.step, len(ts) - 1)])

    def _get_problem(self, model, args, kwargs) -> Problem:
        key = (id(model), tuple(id(a) for a in args), tuple((k, id(v)) for k, v in sorted(kwargs.items())))
        if key != self._problem_key:
            self._problem = Problem.from_model(model, *args, prior_site=self.owner.prior_site, **kwargs)
            self._problem_key = key
        return self._problem

    def __call__(self, model, guide, *args, **kwargs) -> torch.Tensor:
        o = self.owner
        problem = self._get_problem(model, args, kwargs)
        gtr = poutine.trace(guide).get_trace(*args, **kwargs)
        site = gtr.nodes[problem.prior_site]
        x = site["value"]
        den = problem.denoiser
        sched = den.schedule
        t = self.current_time()
        tt = torch.tensor(t, dtype=torch.float64)
        alpha, sigma = float(sched.alpha(tt)), float(sched.sigma(tt))
        w = o.lam_effective(problem) * float(WEIGHTINGS[o.weighting](torch.tensor(sigma / alpha, dtype=torch.float64)))
        n_probe = 2 if o.antithetic else 1
        with torch.no_grad():
            eps = torch.randn(x.shape, dtype=x.dtype, device=x.device, generator=o.generator)
            eps = torch.stack([eps, -eps]) if o.antithetic else eps.unsqueeze(0)
            x_t = alpha * x.detach().unsqueeze(0) + sigma * eps
            x0 = den(x_t, torch.tensor(t, dtype=x.dtype, device=x.device))
            eps_hat = (x_t - alpha * x0) / sigma
            g = (eps_hat - eps).mean(0)
        self.nfe += n_probe
        ll = problem.log_likelihood(x.reshape((-1,) + tuple(problem.event_shape))).sum()
        reg = w * (g * x).sum()
        loss = -o.obs_weight * ll + reg
        if o.learn_scale:
            loss = loss + site["fn"].log_prob(x).sum()  # -entropy (reparameterised)
        self.step += 1
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"RED-Diff loss became {float(loss.detach())} at step {self.step} (t = {t:.4g}): "
                f"data term {float(-ll.detach()):.4g}, regulariser {float(reg.detach()):.4g}; "
                "the parameters keep their last finite values. "
                "Lower lr, check the likelihood / denoiser for NaN, or start from a better init.")
        return loss


class REDDiff(Solver):
    """RED-Diff solver: ``.guide`` (Pyro guide), ``.loss`` (SVI loss), ``.run(y=..., steps=...)``,
    :meth:`draw` (fit, then draws from the fitted ``q``).

    Args:
        model: Pyro model with a :class:`~ppl_diffusion.models.prior.DiffusionPrior` site and a
            differentiable likelihood.
        steps: length of the descending time sweep (one SVI step per time; paper: 1000).
        lr: Adam learning rate (paper configs 0.1-0.5 on [-1,1] images; InverseBench 0.02).
        lam: regulariser weight ``lambda`` (paper 0.25, in its own units: see ``paper_balance``).
        obs_weight: weight ``v`` of the data term.
        weighting: one of :data:`WEIGHTINGS` (paper default "linear": ``lam / sqrt(SNR)``).
        t_start: start of the descending sweep (paper 1).
        t_end: end of the sweep (paper 0; ``0 <= t_end <= t_start <= 1``).
        learn_scale: learn a diagonal scale (mean-field Gaussian guide, adds the entropy term).
        init_scale: initial scale when ``learn_scale``.
        init: "pinv" (the regularised pseudo-inverse ``(A^T A + sigma_y^2 I)^{-1} A^T y`` when the
            likelihood is linear-Gaussian, else zeros), "zeros", or a tensor.
        antithetic: evaluate ``eps`` and ``-eps`` in one batched call (2 NFE/step, lower variance).
        paper_balance: rescale ``lam`` by ``m / (d sigma_y^2 obs_weight)`` (paper's mean-normalised loss).
        betas: Adam's ``(beta1, beta2)`` (pyro ClippedAdam).
        lr_decay: factor applied to the learning rate after every step.
        clip_norm: gradient-norm clip.
        prior_site: name of the diffusion-prior site when the model has several.
        name: prefix of the parameters in Pyro's param store.
        generator: random generator of the probe noise ``eps`` (``None``: torch's global one).
        progress: show a progress bar.
    """

    name = "red_diff"
    family = "variational"
    requires = ("likelihood",)

    def __init__(self, model, *, steps: int = 1000, lr: float = 0.1, lam: float = 0.25, obs_weight: float = 1.0,
                 weighting: str = "linear", t_start: float = 1.0, t_end: float = 0.0, learn_scale: bool = False,
                 init_scale: float = 1e-2, init="pinv", antithetic: bool = False, paper_balance: bool = False,
                 betas=(0.9, 0.99), lr_decay: float = 1.0, clip_norm: float = 1e12, prior_site: str | None = None,
                 name: str = "red_diff", generator: torch.Generator | None = None, progress: bool = True):
        m = type(self).name
        self.weighting = check_choice("weighting", weighting, WEIGHTINGS, m)
        self.steps = check_int("steps", steps, m)
        if not (0.0 <= t_end <= t_start <= 1.0):
            raise OptionError(f"{m}: need 0 <= t_end <= t_start <= 1 (descending sweep), got t_start={t_start}, "
                              f"t_end={t_end}")
        self.lr = check_number("lr", lr, m, low=0.0, low_open=True)
        self.lam = check_number("lam", lam, m, low=0.0)
        self.obs_weight = check_number("obs_weight", obs_weight, m, low=0.0)
        self.init_scale = check_number("init_scale", init_scale, m, low=0.0, low_open=True)
        if not (isinstance(init, torch.Tensor) or init in ("pinv", "zeros")):
            raise OptionError(f"{m}: init must be 'pinv', 'zeros' or a tensor, got {init!r}")
        self.init, self.learn_scale = init, bool(learn_scale)
        self.antithetic, self.paper_balance = bool(antithetic), bool(paper_balance)
        self.betas = tuple(check_number("betas", b, m, 0.0, 1.0) for b in betas)
        self.lr_decay = check_number("lr_decay", lr_decay, m, low=0.0, low_open=True)
        self.clip_norm = check_number("clip_norm", clip_norm, m, low=0.0, low_open=True)
        self.generator = generator
        # the sweep starts at t_start but a VP schedule's sigma/alpha is finite there; t = 0 is kept
        # off sigma = 0 by the discrete schedule (sigma(0) > 0)
        self.t_start, self.t_end = float(t_start), float(t_end)
        structure = self.setup_solver(model, prior_site, progress)
        self.name = name
        self.site, self.event_shape = structure.prior_site, structure.event_shape
        # sigma(t) = 0 at t = 0 on a continuous schedule: the sweep stops at rho = rho_min / 10 of the prior
        self.t_floor = float(structure.prior.schedule.t_of_rho(
            torch.tensor(structure.prior.rho_min / 10, dtype=torch.float64)))
        self.loss = _REDDiffLoss(self)
        self.stopped_reason: str | None = None

    # ------------------------------------------------------------------------------------
    def lam_effective(self, problem: Problem) -> float:
        if not self.paper_balance:
            return self.lam
        lg = problem.gaussian("RED-Diff paper_balance")
        m = float(lg.y.numel())
        d = float(torch.Size(problem.event_shape).numel())
        return self.lam * m / (d * lg.noise_std**2 * max(self.obs_weight, 1e-300))

    def initial_mean(self, problem: Problem) -> torch.Tensor:
        dtype, device = problem.dtype, problem.device
        if isinstance(self.init, torch.Tensor):
            x = self.init.to(dtype=dtype, device=device)
            if tuple(x.shape) != tuple(problem.event_shape):
                raise ValueError(f"init must have shape {tuple(problem.event_shape)}, got {tuple(x.shape)}")
            return x.clone()
        if self.init == "pinv":
            try:
                lg = problem.linear_gaussian("RED-Diff init='pinv'")
                return regularised_pinv(lg).to(dtype).reshape(problem.event_shape).clone()
            except ValueError:
                pass
        return torch.zeros(problem.event_shape, dtype=dtype, device=device)

    @property
    def mean_name(self) -> str:
        return f"{self.name}.mu"

    @property
    def scale_name(self) -> str:
        return f"{self.name}.scale"

    def guide(self, *args, **kwargs):
        """Pyro guide: ``Delta(mu)`` (or ``Normal(mu, scale)`` with ``learn_scale``) at the prior site."""
        site = self.site
        mu = pyro.param(self.mean_name, lambda: self.initial_mean(
            Problem.from_model(self.model, *args, prior_site=self.prior_site, **kwargs)))
        ne = len(self.event_shape)
        if self.learn_scale:
            scale = pyro.param(self.scale_name, lambda: torch.full_like(mu, self.init_scale),
                               constraint=dist.constraints.positive)
            return pyro.sample(site, dist.Normal(mu, scale).to_event(ne))
        return pyro.sample(site, dist.Delta(mu, event_dim=ne))

    def estimate(self) -> torch.Tensor:
        """Current ``mu`` (detached)."""
        return pyro.param(self.mean_name).detach().clone()

    # ------------------------------------------------------------------------------------
    def run(self, *args, steps: int | None = None, lr: float | None = None, reset: bool = True,
            **kwargs):
        """Drive ``pyro.infer.SVI`` over the descending sweep; returns ``(mu, loss_trace)``.

        ``reset=True`` clears this solver's parameters and restarts the sweep. A non-finite loss or
        parameter stops training with a warning; the last finite parameters are kept
        (``self.stopped_reason`` says why)."""
        if steps is not None:
            self.steps = check_int("steps", steps, type(self).name)
        if lr is not None:
            self.lr = check_number("lr", lr, type(self).name, low=0.0, low_open=True)
        store = pyro.get_param_store()
        if reset:
            for n in (self.mean_name, self.scale_name):
                if n in store:
                    del store[n]
            self.loss.reset()
        optim = pyro.optim.ClippedAdam({"lr": self.lr, "betas": self.betas, "lrd": self.lr_decay,
                                        "clip_norm": self.clip_norm})
        svi = pyro.infer.SVI(self.model, self.guide, optim, loss=self.loss)
        self.guide(*args, **kwargs)  # create the parameters
        names = [n for n in (self.mean_name, self.scale_name) if n in store]
        good = {}

        def snapshot():
            good.update({n: store.get_param(n).detach().clone() for n in names})

        def check(val):
            bad = [n for n in names if not torch.isfinite(store.get_param(n)).all()]
            if not bad and math.isfinite(val):
                return None
            for n in names:  # roll back to the last finite parameters
                with torch.no_grad():
                    store.get_param(n).unconstrained().copy_(_unconstrained(store, n, good[n]))
            return (f"RED-Diff stopped at step {self.loss.step}: non-finite "
                    f"{'parameters ' + str(bad) if bad else 'loss'}; kept the last finite parameters")

        trace, self.stopped_reason = svi_steps(
            svi, self.steps, args, kwargs, "RED-Diff", self.progress, before=snapshot, check=check, every=50,
            postfix=lambda val: {"loss": f"{val:.4g}", "t": f"{self.loss.current_time():.3f}"})
        return self.estimate(), trace


    def draw(self, num_samples: int, *args, generator: torch.Generator | None = None, **kwargs) -> Draws:
        """Fit (:meth:`run`, from scratch) and return ``num_samples`` draws of the fitted ``q`` as
        :class:`Draws` (one chain): ``mu + scale * eps`` with ``learn_scale`` (``eps`` from
        ``generator``), else ``mu`` repeated (RED-Diff is then a point estimate, not a sampler).
        A given ``generator`` replaces ``self.generator`` for this fit.

        ``nfe_per_sample`` is the single-sample network evaluations of the whole fit: draws from
        ``q`` are free, so it does not shrink with ``num_samples``. ``extra``: ``loss_trace``,
        ``stopped_reason``."""
        n = check_int("num_samples", num_samples, type(self).name)
        problem = self.problem(*args, **kwargs)
        saved = self.generator
        if generator is not None:
            self.generator = generator
        try:
            with measure(problem.denoiser) as meter:
                mu, trace = self.run(*args, **kwargs)
        finally:
            self.generator = saved
        gen = generator if generator is not None else saved
        if self.learn_scale:
            scale = pyro.param(self.scale_name).detach()
            eps = torch.randn((n,) + tuple(mu.shape), generator=gen, dtype=mu.dtype, device=mu.device)
            x = mu + scale * eps
        else:
            x = mu.expand((n,) + tuple(mu.shape)).clone()
        extra = {"loss_trace": trace, "stopped_reason": self.stopped_reason}
        return self._draws(x[None], meter, problem, n, extra=extra, nfe_per_sample=meter.evals)


def _unconstrained(store, name, constrained_value):
    c = store._constraints.get(name) if hasattr(store, "_constraints") else None
    if c is None:
        return constrained_value
    return torch.distributions.transform_to(c).inv(constrained_value)
