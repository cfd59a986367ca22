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

Latent sites besides x (theta: an unknown noise level, an operator parameter): a
``pyro.infer.autoguide`` on the free theta sites (``theta_guide="normal"``: AutoNormal, a mean-field
Gaussian in each site's unconstrained space; ``"delta"``: AutoDelta, a point estimate) sits beside the
guide of x, and the loss gains theta's ELBO terms,

    loss = -obs_weight * log p(y | x, theta) + reg(x) - log p(theta) + log q(theta),   theta ~ q

so ``pyro.infer.SVI(model, red.guide, optim, loss=red.loss)`` fits both (``q(x) q(theta)``, a
mean-field family: x and theta are drawn independently). With a point mass on x
(``learn_scale=False``, the default) theta sees the residual of ONE estimate of x: measured on the
d = 8 GMM problems (``benchmarks/results/latents_joint.md``) the noise level comes out low in 7 of
10 problems (down to 0.105, where x fits y and only sigma's prior holds it) and high in the 3 where x
misses, a gain high in 10 of 10, and the theta intervals hold the true theta in 0-3 of 10 problems
(the exact posterior's in 7-8); ``learn_scale=True`` moves sigma the other way (overestimated on three
problems checked: 1.8-3.5x the exact mean). An approximation, not a posterior over theta.

Defaults, measured (issue 16). ``lam`` is in THIS module's units (sums, ``1 / sigma_y^2`` on the
data term), so the paper's ``lam = 0.25`` without ``paper_balance`` weighs the prior ``d sigma_y^2 / m``
times less than the paper does: 400x at sigma_y = 0.05, ``m = d``. The regulariser then barely acts
and the fit is a regularised least-squares estimate. On two held-out digits of the shipped prior
(sigma_y = 0.05, 200 steps; PSNR of the posterior mean, dB;
``benchmarks/results/red_diff_defaults.md``), the former demo setting (lr 0.02, ``learn_scale=True``,
no balance) -> the paper's balance (lr 0.1, point estimate) / the new default of ``run_method``
(lr 0.1, ``learn_scale``, ``paper_balance="auto"``): Gaussian deblur 14.4 -> 29.0 / 27.8, phase
retrieval 7.5-11.1 (two runs) -> 28.4 / 27.4 (the sign of the image, which the Fourier magnitude
does not see, is then set by the prior: the former setting returned inverted digits), random
inpainting 18.5 -> 20.4 / 20.0, 2x super-resolution 22.4 -> 27.7 / 25.6 (30.2 with lr 0.02, no
balance, point estimate: there the data alone nearly suffice), box inpainting 21.0 -> 19.8 / 19.7
(slightly worse). ``learn_scale=True`` adds the entropy of ``q`` against a
regulariser that is LINEAR in ``x`` (no curvature): the scale is held only by the data and by the
noise of the probes, so it grows where the operator does not see ``x`` (a user reported a learned
scale of 2.5 on a [-1, 1] image after 100 SVI steps at the unbalanced ``lam``); its intervals are not
posterior intervals (90 % coverage 0.59-0.92 across the demo tasks at 16 draws, where exact draws
would give 0.79). On the exact GMM check (d = 8, d_y = 2, 6 problems, 1,000 steps) the point
estimate lies 1.6-1.8 from the nearest component mean with or without the balance (1.3 with the
``"score"`` weighting, a MAP sweep) and sits in a component of mean posterior weight 0.18-0.35 where
the heaviest has 0.93: RED-Diff finds A mode, not the dominant one, and says nothing about the
others.

Plates of measurements (``with pyro.plate("images", B)``): ``mu`` has shape
``(*plate_shape, *event)``, each measurement's data and regulariser terms enter the (summed) loss, and
a global theta is shared by them.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch

from ..health import Guard, RunInterrupted, running
from ..problem import LinearGaussian, Problem
from ..solver import Draws, OptionError, Solver, check_choice, check_int, check_number, measure
from ..theta import THETA_GUIDES, autoguide_draws, theta_autoguide, theta_transforms
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
            ev = tuple(problem.event_shape)
            x0 = den(x_t.reshape((-1,) + ev), torch.tensor(t, dtype=x.dtype, device=x.device)).reshape(x_t.shape)
            eps_hat = (x_t - alpha * x0) / sigma
            g = (eps_hat - eps).mean(0)
        self.nfe += n_probe
        flat = x.reshape((-1,) + tuple(problem.event_shape))
        theta_names = problem.free_latents
        if theta_names:  # theta ~ q(theta) from the autoguide: its ELBO terms join the loss
            theta = {k: gtr.nodes[k]["value"] for k in theta_names}
            ll, log_p_theta = problem.log_likelihood_theta(flat, theta, batched=False)
            ll = ll.sum()
            log_q_theta = sum(s["fn"].log_prob(s["value"]).sum() for n, s in gtr.nodes.items()
                              if s["type"] == "sample" and n != problem.prior_site)
        else:
            ll = problem.log_likelihood(flat).sum()
            log_p_theta = log_q_theta = 0.0
        reg = w * (g * x).sum()
        loss = -o.obs_weight * ll + reg - log_p_theta + log_q_theta
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
        paper_balance: rescale ``lam`` by ``m / (d sigma_y^2 obs_weight)`` (paper's mean-normalised loss);
            ``"auto"``: where the likelihood is a GaussianMeasurement with a known scalar noise level, else
            ``lam`` as given (``run_method``, the CLI and the demo use "auto"; see "Defaults" above).
        betas: Adam's ``(beta1, beta2)`` (pyro ClippedAdam).
        lr_decay: factor applied to the learning rate after every step.
        clip_norm: gradient-norm clip.
        theta_guide: autoguide on the model's free latent sites besides x (theta): ``"normal"``
            (AutoNormal) or ``"delta"`` (AutoDelta, a point estimate); unused without such sites.
        theta_lr: Adam learning rate of theta's guide parameters (``None``: ``lr``).
        theta_init_scale: initial scale of the AutoNormal guide (unconstrained space).
        prior_site: name of the diffusion-prior site when the model has several.
        name: prefix of the parameters in Pyro's param store.
        generator: random generator of the probe noise ``eps`` (``None``: torch's global one).
        progress: show a progress bar.
    """

    name = "red_diff"
    family = "variational"
    requires = ("likelihood",)
    infers_latents = True
    supports_plates = True

    def __init__(self, model, *, steps: int = 1000, lr: float = 0.1, lam: float = 0.25, obs_weight: float = 1.0,
                 weighting: str = "linear", t_start: float = 1.0, t_end: float = 0.0, learn_scale: bool = False,
                 init_scale: float = 1e-2, init="pinv", antithetic: bool = False, paper_balance: bool = False,
                 betas=(0.9, 0.99), lr_decay: float = 1.0, clip_norm: float = 1e12, theta_guide: str = "normal",
                 theta_lr: float | None = None, theta_init_scale: float = 0.1, prior_site: str | None = None,
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
        if paper_balance not in (True, False, "auto"):
            raise OptionError(f"{m}: paper_balance must be True, False or 'auto', got {paper_balance!r}")
        self.antithetic, self.paper_balance = bool(antithetic), paper_balance
        self.betas = tuple(check_number("betas", b, m, 0.0, 1.0) for b in betas)
        self.lr_decay = check_number("lr_decay", lr_decay, m, low=0.0, low_open=True)
        self.clip_norm = check_number("clip_norm", clip_norm, m, low=0.0, low_open=True)
        self.theta_guide = check_choice("theta_guide", theta_guide, THETA_GUIDES, m)
        self.theta_lr = None if theta_lr is None else check_number("theta_lr", theta_lr, m, low=0.0, low_open=True)
        self.theta_init_scale = check_number("theta_init_scale", theta_init_scale, m, low=0.0, low_open=True)
        self.generator = generator
        # the sweep starts at t_start but a VP schedule's sigma/alpha is finite there; t = 0 is kept
        # off sigma = 0 by the discrete schedule (sigma(0) > 0)
        self.t_start, self.t_end = float(t_start), float(t_end)
        structure = self.setup_solver(model, prior_site, progress)
        self.name = name
        self.site, self.event_shape = structure.prior_site, structure.event_shape
        self._denoiser = structure.prior.denoiser  # the divergence guard's scale
        #: the free latent sites besides x, fitted by :attr:`theta_autoguide`
        self.theta_names = list(structure.free_latents)
        theta_transforms(structure, method=m)  # continuous theta only
        if self.paper_balance is True and self.theta_names:
            raise OptionError(f"{m}: paper_balance needs a known noise level, but the model has free latent "
                              f"site(s) {self.theta_names}")
        self._theta_autoguide = None
        self._plate_nesting = len(structure.plates)
        # sigma(t) = 0 at t = 0 on a continuous schedule: the sweep stops at rho = rho_min / 10 of the prior
        self.t_floor = float(structure.prior.schedule.t_of_rho(
            torch.tensor(structure.prior.rho_min / 10, dtype=torch.float64)))
        self.loss = _REDDiffLoss(self)
        self.stopped_reason: str | None = None

    # ------------------------------------------------------------------------------------
    def lam_effective(self, problem: Problem) -> float:
        if not self.paper_balance:
            return self.lam
        if self.paper_balance == "auto":  # the paper's balance where it is defined, else lam as given
            g = problem._gaussian
            if problem.free_latents or g is None or not isinstance(g.noise_std, float) or g.noise_std <= 0:
                return self.lam
        lg = problem.gaussian("RED-Diff paper_balance")
        m = float(lg.y.numel()) / problem.num_measurements
        d = float(torch.Size(problem.event_shape).numel())
        return self.lam * m / (d * lg.noise_std**2 * max(self.obs_weight, 1e-300))

    def initial_mean(self, problem: Problem) -> torch.Tensor:
        """``mu``'s start: shape ``(*plate_shape, *event)`` (``init`` per measurement on a plate)."""
        dtype, device = problem.dtype, problem.device
        shape = tuple(problem.plate_shape) + tuple(problem.event_shape)
        if isinstance(self.init, torch.Tensor):
            x = self.init.to(dtype=dtype, device=device)
            if tuple(x.shape) == tuple(problem.event_shape):
                x = x.expand(shape)
            if tuple(x.shape) != shape:
                raise ValueError(f"init must have shape {tuple(problem.event_shape)} or {shape}, got {tuple(x.shape)}")
            return x.clone()
        if self.init == "pinv":
            try:
                lg = problem.linear_gaussian("RED-Diff init='pinv'")
            except ValueError:
                lg = None
            if lg is not None:
                ne = len(lg.operator.out_shape)
                ys = lg.y.reshape((-1,) + tuple(lg.y.shape[lg.y.dim() - ne:]))
                xs = [regularised_pinv(LinearGaussian(lg.operator, yb, lg.noise_std)).to(dtype) for yb in ys]
                return torch.stack(xs).reshape(shape).clone()
        return torch.zeros(shape, dtype=dtype, device=device)

    @property
    def theta_autoguide(self):
        """The autoguide on :attr:`theta_names` (``None`` without free latent sites; built on first use,
        rebuilt by ``run(reset=True)``); its parameters are ``{name}.theta.*`` in Pyro's param store."""
        if self.theta_names and self._theta_autoguide is None:
            self._theta_autoguide = theta_autoguide(self.model, self.theta_names, self.theta_guide,
                                                    prefix=self.theta_prefix, init_scale=self.theta_init_scale)
        return self._theta_autoguide

    @property
    def theta_prefix(self) -> str:
        return f"{self.name}.theta"

    @property
    def mean_name(self) -> str:
        return f"{self.name}.mu"

    @property
    def scale_name(self) -> str:
        return f"{self.name}.scale"

    def guide(self, *args, **kwargs):
        """Pyro guide: ``Delta(mu)`` (or ``Normal(mu, scale)`` with ``learn_scale``) at the prior site,
        after the theta autoguide's draw of the free latent sites (if any). ``mu`` starts from the
        problem with theta at the autoguide's median."""
        site = self.site
        tg = self.theta_autoguide
        if tg is not None:
            tg(*args, **kwargs)

        def init():
            with poutine.block():  # AutoDelta.median runs the guide: keep it out of an enclosing trace
                values = tg.median(*args, **kwargs) if tg is not None else None
            return self.initial_mean(Problem.from_model(self.model, *args, prior_site=self.prior_site,
                                                        latent_values=values, **kwargs))

        mu = pyro.param(self.mean_name, init)
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
            for n in [n for n in store.keys() if n in (self.mean_name, self.scale_name)
                      or n.startswith(self.theta_prefix + ".")]:
                del store[n]
            self._theta_autoguide = None
            self.loss.reset()
        base = {"lr": self.lr, "betas": self.betas, "lrd": self.lr_decay, "clip_norm": self.clip_norm}
        theta = dict(base, lr=self.lr if self.theta_lr is None else self.theta_lr)
        optim = pyro.optim.ClippedAdam(lambda name: theta if name.startswith(self.theta_prefix + ".") else base)
        svi = pyro.infer.SVI(self.model, self.guide, optim, loss=self.loss)
        self.guide(*args, **kwargs)  # create the parameters
        names = [n for n in store.keys() if n in (self.mean_name, self.scale_name)
                 or n.startswith(self.theta_prefix + ".")]
        good = {}

        def snapshot():
            good.update({n: store.get_param(n).detach().clone() for n in names})

        guard = Guard(self._denoiser, method="RED-Diff", quantity="mu", solver=self)

        def check(val):
            bad = [n for n in names if not torch.isfinite(store.get_param(n)).all()]
            if not bad and math.isfinite(val):
                mu = store.get_param(self.mean_name)
                over, m = guard.exceeded(mu, guard.bound())
                if over:  # finite but far outside the prior's range: the divergence guard
                    raise guard.error(self.loss.step - 1, self.steps, m, guard.bound(), last=good[self.mean_name],
                                      partial={"mu": good[self.mean_name]})
                return None
            for n in names:  # roll back to the last finite parameters
                with torch.no_grad():
                    store.get_param(n).unconstrained().copy_(_unconstrained(store, n, good[n]))
            return (f"RED-Diff stopped at step {self.loss.step}: non-finite "
                    f"{'parameters ' + str(bad) if bad else 'loss'}; kept the last finite parameters")

        try:
            with running(self):
                trace, self.stopped_reason = svi_steps(
                    svi, self.steps, args, kwargs, "RED-Diff", self.progress, before=snapshot, check=check,
                    every=50, postfix=lambda val: {"loss": f"{val:.4g}", "t": f"{self.loss.current_time():.3f}"})
        except RunInterrupted as exc:  # Ctrl-C: the parameters reached beside the loss trace
            exc.partial["mu"] = self.estimate()
            exc.partial["params"] = {n: store.get_param(n).detach().clone() for n in names}
            raise
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
        if self.theta_names:
            extra["theta"] = {k: v[None] for k, v in self.theta_draws(n, *args, generator=gen, **kwargs).items()}
        return self._draws(x[None], meter, problem, n, extra=extra, nfe_per_sample=meter.evals)

    def theta_draws(self, num_samples: int, *args, generator: torch.Generator | None = None, **kwargs) -> dict:
        """``name -> (num_samples, *site_shape)`` draws of the free latent sites from the fitted
        autoguide (independent of x: the family is ``q(x) q(theta)``)."""
        if not self.theta_names:
            return {}
        draws, _ = autoguide_draws(self.theta_autoguide, self.theta_names, int(num_samples), *args,
                                   nest=self._plate_nesting, generator=generator, **kwargs)
        return draws


def _unconstrained(store, name, constrained_value):
    c = store._constraints.get(name) if hasattr(store, "_constraints") else None
    if c is None:
        return constrained_value
    return torch.distributions.transform_to(c).inv(constrained_value)
