"""Base class of the diffusion MCMC kernels: a ``pyro.infer.mcmc`` kernel AND a vectorised-chains runner.

Two ways to run the same transition ``step(x, k)`` (``x`` of shape ``(C, *event)``, ``k`` the
iteration index that drives annealing):

* through Pyro::

      mcmc = MCMC(PnPDM(model), num_samples=200, warmup_steps=100, num_chains=2)
      mcmc.run(y=y)
      idata = arviz.from_pyro(mcmc)

  Pyro's contract: ``setup(warmup_steps, *args, **kwargs)`` reads the problem from the model,
  ``initial_params`` / ``sample(params)`` move one chain, ``transforms`` is ``{}`` (the image lives
  on R^n), ``model`` is the user's model with the diffusion-prior site stubbed (so that
  ``arviz.from_pyro``'s observation trace does not run a reverse diffusion), ``diagnostics()``
  returns ``"divergences"`` (draw indices of non-finite proposals, which are rejected) and
  ``logging()`` is a JSON-able dict. Pyro never calls ``end_warmup``: annealing is driven by the
  iteration counter instead. With ``num_chains > 1`` Pyro starts one process per chain when
  ``num_chains < cpu_count`` (otherwise it runs them one after another in this process); both work.

* vectorised: :meth:`DiffusionKernel.run_chains` moves C chains as ONE batch (one network call per
  denoiser evaluation for all chains) and returns a :class:`ChainResult` with samples
  ``(chain, draw, *event)``; ``.to_inference_data()`` gives an ``InferenceData`` with chain/draw dims.
  :meth:`DiffusionKernel.draw` (the solver contract) runs them and returns a :class:`Draws`.

A plate of ``B`` measurements (``with pyro.plate("images", B)`` around the prior and the likelihood,
``y`` of shape ``(B, *out)``): ``C`` chains per measurement run as ONE batch of ``C * B`` chains on
:meth:`Problem.expand_measurements` (chain ``i`` of measurement ``b`` at batch index ``i * B + b``,
each conditioned on its own ``y_b``; one network call per denoiser evaluation for the whole plate),
and the samples come back ``(chain, draw, *plate_shape, *event)``. Under ``pyro.infer.MCMC`` the
state of one Pyro chain is ``(*plate_shape, *event)``: the ``B`` measurements' posteriors are
independent, so one transition moves ``B`` chains, one per measurement, as one batch.
"""
from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field

import torch
from pyro.infer.mcmc.mcmc_kernel import MCMCKernel

from ...memory import check_fits
from ..health import Guard, RunInterrupted, chain_health, running
from ..problem import Problem, _StubPrior
from ..solver import ChainDraws, Draws, OptionError, Solver, check_int, check_number, measure
from .auto_warmup import AutoWarmup, WindowRecorder, resolve_warmup, warn_unsettled

__all__ = ["DiffusionKernel", "ChainResult", "stub_model", "require_differentiable"]


def require_differentiable(problem: Problem, method: str) -> None:
    """Raise ValueError unless ``log p(y | x)`` has a finite autograd gradient at ``x = 0`` (for a
    plate, at ``x = 0`` for every measurement)."""
    if problem.is_gaussian and problem._gaussian.noise_std == 0:
        raise ValueError(f"{method}: the log-likelihood of a noiseless measurement (noise_std=0) is not "
                         "defined; use a linear operator with an SVD or a positive noise_std")
    n = problem.num_measurements
    if problem.plates:
        problem = problem.expand_measurements(1)
    x = torch.zeros((n,) + tuple(problem.event_shape), dtype=problem.dtype, device=problem.device)
    try:
        ll, g = problem.grad_log_likelihood(x)
    except (RuntimeError, NotImplementedError, TypeError) as exc:
        raise ValueError(f"{method} needs a likelihood differentiable in x (autograd failed: {exc})") from exc
    if g is None or not torch.isfinite(g).all() or not torch.isfinite(ll).all():
        raise ValueError(f"{method}: the log-likelihood or its gradient is not finite at x = 0")


def _log_likelihood(problem: Problem, x: torch.Tensor) -> torch.Tensor | None:
    """``log p(y | x)`` of the chains' states, or ``None`` where the likelihood has no closed value
    (the automatic warm-up then tests the regions only)."""
    try:
        ll = problem.log_likelihood(x)
    except (ValueError, RuntimeError, NotImplementedError, TypeError):
        return None
    return ll.detach().reshape(-1) if ll.numel() == x.shape[0] else None


def _kept_log_likelihoods(problem: Problem, states) -> torch.Tensor | None:
    """``(S, N)`` values of ``log p(y | x)`` of ``S`` kept batches of ``N`` chain states (one batched
    likelihood call each, as the chains were run), or ``None`` where the likelihood has no closed value."""
    lls = [_log_likelihood(problem, x) for x in states]
    return torch.stack(lls) if lls and all(v is not None for v in lls) else None


def stub_model(model):
    """The model with every DiffusionPrior site replaced by zeros unless conditioned (no reverse diffusion)."""

    def stubbed(*args, **kwargs):
        with _StubPrior():
            return model(*args, **kwargs)

    stubbed.__name__ = getattr(model, "__name__", "model")
    stubbed.__wrapped__ = model
    return stubbed


@dataclass
class ChainResult(ChainDraws):
    """Output of :meth:`DiffusionKernel.run_chains`."""

    samples: torch.Tensor          # (chain, draw, *event); with a plate (chain, draw, *plate_shape, *event)
    stats: dict = field(default_factory=dict)   # name -> (chain, draw[, *plate_shape]) or (draw,) tensors
    nfe_per_iteration: float = 0.0  # network evaluations per chain per iteration (averaged)
    seconds: float = 0.0
    site: str = "x"
    observation: torch.Tensor | None = None
    #: dim names of a plate of measurements between ``draw`` and the event (``("measurement",)``)
    plate_dims: tuple = ()
    #: True when the run was interrupted (Ctrl-C): the draws are those kept so far
    interrupted: bool = False
    #: per-chain ``acceptance`` / ``divergence`` rates and ``frozen`` flags (:func:`..health.chain_health`)
    health: dict = field(default_factory=dict)
    #: the warm-up iterations run before the first kept draw (chosen by the chains with ``warmup="auto"``)
    warmup: int = 0
    #: ``warmup="auto"``: each checkpoint comparison (:func:`.auto_warmup.window_drift` plus ``from`` / ``to``)
    warmup_checks: list = field(default_factory=list)
    #: ParticleGibbs: whether the first kept draws still depend on the chains' start
    #: (:func:`.mode_check.start_dependence`; ``None`` where not tested)
    start_check: dict | None = None
    #: ParticleGibbs: how often the chains changed mode-like region (``ParticleGibbs.run_chains``)
    region_changes: dict | None = None
    #: ParticleGibbs(pimh=True): ``acceptance`` (fraction of the independent moves taken, warm-up included)
    #: and ``proposed`` (moves proposed, chains x sweeps); ``None`` without them
    pimh: dict | None = None
    #: mode-sensitive between-chain diagnostics of the kept draws (:func:`.mode_check.mixing_check`: a
    #: dict, one per measurement with a plate; ``None`` with fewer than 2 chains or 4 draws per chain)
    convergence: dict | list | None = None

    def stats_per_draw(self) -> dict:
        """The stats as ``(chain, draw)`` tensors (per-draw ``(draw,)`` stats broadcast over the chains)."""
        C, S = self.samples.shape[:2]
        stats = {}
        for k, v in self.stats.items():
            v = torch.as_tensor(v)
            if v.shape[:2] == (C, S):
                stats[k] = v
            elif v.shape[:1] == (S,):
                stats[k] = v.expand((C,) + tuple(v.shape))
        return stats

    def to_inference_data(self, **kwargs):
        from ...diagnostics import to_inference_data

        C, S = self.samples.shape[:2]
        stats = self.stats_per_draw()
        stats.setdefault("diverging", torch.zeros(C, S, dtype=torch.bool))
        obs = None if self.observation is None else {"y": self.observation}
        if self.plate_dims and "dims" not in kwargs:
            kwargs["dims"] = _plate_dims(self.site, self.samples, self.observation, self.plate_dims, stats)
        return to_inference_data({self.site: self.samples}, sample_stats=stats, observed_data=obs,
                                 var_name=self.site, **kwargs)


def _plate_dims(site: str, samples, observation, plate_dims: tuple, stats: dict) -> dict:
    """ArviZ dim names of a plated run: ``(chain, draw, *plate_dims, *event)`` for the samples,
    ``(*plate_dims, *out)`` for ``y``, ``(chain, draw, *plate_dims)`` for per-measurement stats."""
    from ...diagnostics import _event_dim_names

    p = len(plate_dims)
    dims = {site: ["chain", "draw", *plate_dims] + _event_dim_names(site, samples.dim() - 2 - p, True, None)}
    if observation is not None:
        dims["y"] = [*plate_dims] + _event_dim_names("y", observation.dim() - p, False, None)
    for k, v in stats.items():
        if torch.as_tensor(v).dim() == 2 + p:
            dims[k] = ["chain", "draw", *plate_dims]
    return dims


def _plate_names(problem: Problem) -> tuple:
    names = tuple(f.name for f in problem.plates)
    return ("measurement",) if len(names) == 1 else names


class DiffusionKernel(MCMCKernel, Solver):
    """Base class of the diffusion MCMC kernels. Subclasses declare their options as explicit keyword
    arguments of ``__init__`` (with the shared ``prior_site``, ``init``, ``init_scale``, ``progress``),
    validate and store them, call ``super().__init__`` and implement :meth:`prepare` (per-problem
    constants), :meth:`step` (one batched transition) and optionally :meth:`check` (requirements)
    and :meth:`schedule_info`.

    Args:
        model: Pyro model with a diffusion-prior site and an observed likelihood.
        prior_site: name of the diffusion-prior site when the model has several.
        init: chains' starting point: ``"randn"`` (``init_scale`` x standard normal), ``"zeros"``,
            ``"pinv"`` (pseudo-inverse of a linear Gaussian measurement) or a tensor.
        init_scale: scale of the ``"randn"`` start (> 0).
        progress: show a progress bar in :meth:`run_chains` / :meth:`draw`.
    """

    name = "kernel"
    family = "kernel"
    #: what a :class:`~.mode_check.MixingWarning` of this kernel's runs suggests
    mixing_advice = "Run longer (warmup_steps='auto', more draws or thin) and start the chains dispersed."
    requires: tuple = ("likelihood",)
    supports_plates = True

    def __init__(self, model, *, prior_site: str | None = None, init="randn", init_scale: float = 1.0,
                 progress: bool = False):
        if not (isinstance(init, torch.Tensor) or init in ("randn", "zeros", "pinv")):
            raise OptionError(f"{self.name}: init must be 'randn', 'zeros', 'pinv' or a tensor, got {init!r}")
        self.init = init
        self.init_scale = check_number("init_scale", init_scale, self.name, low=0.0, low_open=True)
        self.transforms = {}
        self._user_init = None
        self._initial_params = None
        self._divergences: list = []
        self._t = 0
        self._warmup_steps = 0
        self._last = {}
        self.current_problem: Problem | None = None
        self.plate_problem: Problem | None = None  # the plated problem whose view is current (None: no plate)
        structure = self.setup_solver(model, prior_site, progress)
        self.user_model = model
        self.model = stub_model(model)       # arviz.from_pyro traces this; no reverse diffusion
        self.site = structure.prior_site

    # -- subclass API -----------------------------------------------------------------------
    def check(self, problem: Problem) -> None:
        """Raise ValueError if the problem lacks what the kernel needs."""

    def prepare(self, problem: Problem) -> None:
        """Per-problem constants (called once ``y`` is known)."""

    def step(self, x: torch.Tensor, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
        raise NotImplementedError

    def schedule_info(self, k: int) -> dict:
        """JSON-able numbers describing iteration ``k`` (e.g. the current rho)."""
        return {}

    @property
    def min_warmup(self) -> int:
        """The fewest warm-up iterations the kernel's schedule needs (the first checkpoint of
        ``warmup="auto"`` is at least this; PnP-DM: its annealing)."""
        return 0

    # -- shared pieces ----------------------------------------------------------------------
    def problem(self, *args, **kwargs) -> Problem:
        """The checked problem of the user's model (``self.model`` is its stubbed copy for Pyro)."""
        problem = Problem.from_model(self.user_model, *args, prior_site=self.prior_site, **kwargs)
        self.check(problem)
        return problem

    def _problem(self, *args, **kwargs) -> Problem:
        """Build the problem of ``model(*args, **kwargs)``, make it current and :meth:`prepare` it (a
        plated problem: its view for one chain per measurement, see :meth:`_bind`)."""
        problem = self.problem(*args, **kwargs)
        self._bind(problem, 1)
        return problem

    def _bind(self, problem: Problem, chains: int) -> Problem:
        """Make ``problem`` current and :meth:`prepare` it; for a plate of ``B`` measurements its
        :meth:`~ppl_diffusion.inference.problem.Problem.expand_measurements` view for ``chains``
        chains per measurement (a batch of ``chains * B`` chains, chain ``i`` of measurement ``b`` at
        index ``i * B + b``). Returns the problem the chains run on."""
        self.plate_problem = problem if problem.plates else None
        run = problem.expand_measurements(chains) if problem.plates else problem
        self.current_problem = run
        self._guard = Guard(run.denoiser, method=self.name, quantity="chain state")
        self.prepare(run)
        return run

    def initial_state(self, problem: Problem, n: int, generator=None) -> torch.Tensor:
        shape = (n,) + tuple(problem.event_shape)
        if isinstance(self.init, torch.Tensor):
            x = self.init.to(problem.dtype).to(problem.device)
            return x.expand(shape).clone() if x.shape != shape else x.clone()
        if self.init == "zeros":
            return torch.zeros(shape, dtype=problem.dtype, device=problem.device)
        if self.init == "pinv":
            lg = problem.linear_gaussian(f"{self.name} (init='pinv')")
            return lg.operator.pinv(lg.y).to(problem.dtype).expand(shape).clone()
        return self.init_scale * torch.randn(shape, generator=generator, dtype=problem.dtype, device=problem.device)

    def _safe_step(self, x, k, generator):
        """One transition; chains whose proposal is non-finite or beyond the divergence guard's bound
        (:mod:`..health`: ``GUARD_FACTOR`` times the prior's scale) keep their state (a 'divergence')."""
        new = self.step(x, k, generator)
        guard = getattr(self, "_guard", None)
        bad = guard.rows_beyond(new) if guard is not None else ~torch.isfinite(new.reshape(new.shape[0], -1)).all(-1)
        if bad.any():
            keep = bad.reshape((-1,) + (1,) * (new.dim() - 1))
            new = torch.where(keep, x, new)
        return new, bad

    # -- Pyro MCMCKernel contract -----------------------------------------------------------
    def setup(self, warmup_steps, *args, **kwargs):
        if isinstance(warmup_steps, (str, AutoWarmup)):
            raise OptionError(f"{self.name}: pyro.infer.MCMC needs an int warmup_steps, got {warmup_steps!r}; the "
                              "automatic warm-up (warmup='auto') runs through draw() / run_chains()")
        problem = self._problem(*args, **kwargs)
        self._warmup_steps = int(warmup_steps)
        self._t = 0
        self._divergences = []
        self._kept = []  # post-warm-up states, so that an interrupted pyro.infer.MCMC.run keeps them
        if self._user_init is not None:
            x0 = self._user_init.to(problem.dtype)
        else:
            x0 = self.initial_state(self.current_problem, problem.num_measurements)
            x0 = x0.reshape(self._state_shape)
        self._initial_params = {self.site: x0}

    @property
    def _state_shape(self) -> tuple:
        """Shape of one Pyro chain's state: ``(*plate_shape, *event)``."""
        p = self.current_problem
        plate = tuple(self.plate_problem.plate_shape) if self.plate_problem is not None else ()
        return plate + tuple(p.event_shape)

    @property
    def initial_params(self):
        return self._initial_params

    @initial_params.setter
    def initial_params(self, params):
        self._user_init = params[self.site] if params is not None else None
        self._initial_params = params

    def sample(self, params):
        if self.current_problem is None:
            raise ValueError(f"{self.name}: call setup() (MCMC.run does) before sample()")
        x = params[self.site]
        ev = tuple(self.current_problem.event_shape)
        if tuple(x.shape) != self._state_shape:
            raise ValueError(f"{self.name}: the state of site {self.site!r} must have shape {self._state_shape}, "
                             f"got {tuple(x.shape)}")
        with torch.no_grad():  # a plate: its B measurements move as B chains of one batch
            new, bad = self._safe_step(x.reshape((-1,) + ev), self._t, None)
        if bool(bad.any()) and self._t >= self._warmup_steps:
            self._divergences.append(self._t - self._warmup_steps)
        self._last = self.schedule_info(self._t)
        if self._t >= self._warmup_steps:
            self._kept.append(new.reshape(self._state_shape).detach().clone())
        self._t += 1
        return {self.site: new.reshape(self._state_shape)}

    def samples_so_far(self) -> torch.Tensor:
        """The post-warm-up states of the current (or last) ``pyro.infer.MCMC`` run, ``(draw, *state)``,
        every iteration (no thinning). Pyro's ``MCMC.run`` drops its samples when interrupted (Ctrl-C),
        so ``mcmc.get_samples()`` then fails; this keeps what the chain computed."""
        kept = getattr(self, "_kept", [])
        if not kept:
            return torch.empty((0, *self._state_shape)) if self.current_problem is not None else torch.empty(0)
        return torch.stack(kept)

    def diagnostics(self):
        rate = 1.0 - len(self._divergences) / max(self._t - self._warmup_steps, 1)
        return OrderedDict([("divergences", list(self._divergences)), ("acceptance rate", max(rate, 0.0))])

    def logging(self):
        out = OrderedDict(iteration=int(self._t))
        for k, v in self._last.items():
            out[k] = float(f"{float(v):.4g}")
        return out

    def cleanup(self):
        self._user_init = None

    def end_warmup(self):  # Pyro's MCMC never calls this; annealing follows the iteration counter
        pass

    # -- vectorised chains ------------------------------------------------------------------
    def run_chains(self, *args, num_chains: int = 4, num_samples: int = 100, warmup_steps: int | str = 0,
                   thin: int = 1, generator: torch.Generator | None = None, init=None,
                   progress: bool | None = None, **kwargs) -> ChainResult:
        """Run ``num_chains`` chains as ONE batch: ``warmup_steps`` discarded iterations (``"auto"``: chosen
        by the chains, :mod:`.auto_warmup`; the result's ``warmup`` says how many), then
        ``num_samples * thin`` iterations keeping every ``thin``-th. Returns samples
        ``(chain, draw, *event)``; the model's arguments (e.g. ``y=y``) go in ``*args, **kwargs``;
        ``progress=None`` follows the constructor's ``progress``.

        A plate of ``B`` measurements: ``num_chains`` chains PER measurement, run as one batch of
        ``num_chains * B`` chains (see the module docstring); samples ``(chain, draw, *plate_shape,
        *event)``, ``diverging`` ``(chain, draw, *plate_shape)``."""
        C = check_int("num_chains", num_chains, self.name)
        S = check_int("num_samples", num_samples, self.name)
        thin = check_int("thin", thin, self.name)
        warmup_steps = resolve_warmup(warmup_steps, self.name, self.min_warmup, C)
        problem = self.problem(*args, **kwargs)
        return self._chains(problem, C, S, warmup_steps, thin, generator, init,
                            self.progress if progress is None else progress)

    def _initial_chains(self, problem: Problem, run: Problem, C: int, init, generator) -> torch.Tensor:
        """The ``C * B`` starting states (``B = 1`` without a plate), chain ``i`` of measurement ``b``
        at ``i * B + b``. ``init``: ``(*event)`` (every chain), ``(*plate_shape, *event)`` (per
        measurement), ``(C, *plate_shape, *event)`` (per chain) or ``None`` (the kernel's ``init``)."""
        B = problem.num_measurements
        if init is None:
            return self.initial_state(run, C * B, generator)
        ev, plate = tuple(problem.event_shape), tuple(problem.plate_shape)
        x = torch.as_tensor(init).to(problem.dtype).to(problem.device)
        if tuple(x.shape) == ev:
            x = x.expand((C * B,) + ev)
        elif plate and tuple(x.shape) == plate + ev:
            x = x.reshape((1, B) + ev).expand((C, B) + ev)
        accepted = [(C,) + plate + ev] + ([plate + ev] if plate else [])
        if tuple(x.shape) not in accepted and tuple(x.shape) != (C * B,) + ev:
            raise ValueError(f"{self.name}: init must have shape {ev} or "
                             f"{' or '.join(str(a) for a in accepted)}, got {tuple(x.shape)}")
        return x.reshape((C * B,) + ev).clone()

    def _chains(self, problem: Problem, C: int, S: int, warmup_steps: int, thin: int, generator, init,
                progress: bool) -> ChainResult:
        run = self._bind(problem, C)
        B = problem.num_measurements
        check_fits(self.name, C * B, problem.event_shape, problem.dtype, problem.device, den=problem.denoiser,
                   copies=8 + S, unit="chains (with their draws)")
        x = self._initial_chains(problem, run, C, init, generator)
        den = problem.denoiser
        evals0 = den.sample_evals
        keep, div, moved, diverged = [], [], [], []
        info = {}
        rec = None
        if isinstance(warmup_steps, AutoWarmup):  # provisional: nothing is kept until a checkpoint settles
            rec = WindowRecorder(warmup_steps, x[0].numel(), x.device)
            warmup_steps = rec.settings.max_warmup
        checks = []
        total = warmup_steps + S * thin
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, desc=self.name)
        t0 = time.perf_counter()
        k = 0
        try:
            with torch.no_grad(), running(self):
                while k < total:
                    new, bad = self._safe_step(x, k, generator)
                    if k >= warmup_steps:  # health: did each chain move, did its proposal diverge
                        moved.append((new != x).reshape(new.shape[0], -1).any(-1))
                        diverged.append(bad)
                    x = new
                    if k >= warmup_steps and (k - warmup_steps) % thin == thin - 1:
                        keep.append(x.clone())
                        div.append(bad)
                        for key, v in self.schedule_info(k).items():
                            info.setdefault(key, []).append(float(v))
                    k += 1
                    if rec is not None and rec.wants(k):  # an automatic warm-up's record and checkpoints
                        rec.add(k, x, _log_likelihood(run, x))
                    if rec is not None and k == rec.checkpoints[0]:
                        rec.checkpoints.pop(0)
                        check = rec.check(k, B)
                        if check is not None:
                            checks.append(check)
                            settled = check["p"] >= rec.settings.alpha
                            if settled or not rec.checkpoints:
                                if not settled:
                                    warn_unsettled(self.name, k, check)
                                warmup_steps, rec = k, None
                                total = warmup_steps + S * thin
                                if bar is not None:
                                    bar.total = total
                                    bar.refresh()
                    if bar is not None:
                        bar.update(1)
        except KeyboardInterrupt:
            part = self._result(problem, C, keep, div, info, moved, diverged, time.perf_counter() - t0,
                                evals0, k, interrupted=True, check=False) if keep else None
            if part is not None:
                part.warmup, part.warmup_checks = warmup_steps, checks
            raise RunInterrupted(f"{self.name}: interrupted at iteration {k + 1}/{total} with {len(keep)} draws "
                                 "per chain kept; .partial holds them (a ChainResult, interrupted=True)",
                                 partial=part, step=k) from None
        finally:
            if bar is not None:
                bar.close()
        res = self._result(problem, C, keep, div, info, moved, diverged, time.perf_counter() - t0, evals0, total)
        res.warmup, res.warmup_checks = warmup_steps, checks
        res.convergence = self._mixing_check(run, problem, res, keep)
        return res

    def _mixing_check(self, run: Problem, problem: Problem, res: ChainResult, keep: list):
        """:func:`~.mode_check.mixing_check` of the kept draws (``keep``: per draw, the ``(C * B, *event)``
        states of the batch), with their log-likelihoods where the likelihood has a closed value."""
        from .mode_check import mixing_check

        C, S = res.samples.shape[:2]
        if C < 2 or S < 4:
            return None
        plate = tuple(problem.plate_shape) if problem.plates else ()
        ll = _kept_log_likelihoods(run, keep)  # (S, C * B), chain i of measurement b at i * B + b
        if ll is not None:
            ll = ll.reshape((S, C) + plate).transpose(0, 1)
        return mixing_check(self.name, res.samples, ll, kernel=self, plate_shape=plate, advice=self.mixing_advice)

    def _result(self, problem: Problem, C: int, keep, div, info, moved, diverged, secs, evals0, total,
                interrupted: bool = False, check: bool = True) -> ChainResult:
        """The :class:`ChainResult` of the kept draws, with the chains' health (:func:`chain_health`:
        per-chain acceptance / divergence rates in ``health``, ``chain_frozen`` in ``stats``)."""
        B = problem.num_measurements
        den = problem.denoiser
        S = len(keep)
        samples = torch.stack(keep, 1)
        diverging = torch.stack(div, 1)
        if problem.plates:  # (C * B, S, ...) with chain i of measurement b at i * B + b -> (C, S, *plate, ...)
            plate, ev = tuple(problem.plate_shape), tuple(problem.event_shape)
            samples = samples.reshape((C, B, S) + ev).transpose(1, 2).reshape((C, S) + plate + ev)
            diverging = diverging.reshape(C, B, S).transpose(1, 2).reshape((C, S) + plate)
        stats = {"diverging": diverging}
        for key, v in info.items():
            stats[key] = torch.tensor(v[:S], dtype=torch.float64)
        # per chain: evaluated samples / chains (a call may batch several replicas or skip idle ones)
        nfe = (den.sample_evals - evals0) / (C * B * max(total, 1))
        res = ChainResult(samples, stats, nfe, secs, self.site, problem.observation,
                          _plate_names(problem) if problem.plates else (), interrupted=interrupted)
        if moved:
            mv, dv = torch.stack(moved, -1), torch.stack(diverged, -1)  # (C * B, iterations)
            health = chain_health(mv, dv, self.name, result=res, solver=self) if check else \
                {"acceptance": mv.double().mean(-1), "divergence": dv.double().mean(-1)}
            frozen = health.get("frozen", torch.zeros(mv.shape[0], dtype=torch.bool))
            if problem.plates:
                plate = tuple(problem.plate_shape)
                health = {k: v.reshape((C,) + plate) for k, v in health.items()}
                frozen = frozen.reshape((C,) + plate)
                res.stats["chain_frozen"] = frozen[:, None].expand((C, S) + plate).clone()
            else:
                res.stats["chain_frozen"] = frozen[:, None].expand(C, S).clone()
            res.health = health
        return res

    # -- the solver contract ----------------------------------------------------------------
    def draw(self, num_samples: int, *args, chains: int | None = None, warmup: int | str = 20, thin: int = 1,
             generator: torch.Generator | None = None, init=None, **kwargs) -> Draws:
        """Posterior draws from ``chains`` vectorised chains (default ``max(1, num_samples // 2)``):
        ``warmup`` discarded iterations (annealing included; ``"auto"`` or an
        :class:`~.auto_warmup.AutoWarmup`: doubled from 100 until the chains stop drifting between
        mode-like regions and in log-likelihood, see :mod:`.auto_warmup`), then ``ceil(num_samples / chains)`` draws
        per chain every ``thin`` iterations, so ``chains x ceil(num_samples / chains) >= num_samples``
        draws with ``(chain, draw, *event)`` dims. A plate of ``B`` measurements: that many chains
        and draws PER measurement, all ``chains * B`` chains in one batch, samples ``(chain, draw,
        *plate_shape, *event)`` (``nfe_per_sample`` per draw of one measurement).

        ``nfe_per_sample`` = network evaluations per chain and iteration x iterations / draws per
        chain (every iteration's cost, burn-in and thinning included, charged to the kept draws);
        ``stats``: ``diverging`` and the kernel's schedule numbers, each ``(chain, draw)``;
        ``extra["result"]``: the :class:`ChainResult`, ``extra["warmup"]`` the warm-up run,
        ``extra["warmup_checks"]`` the automatic warm-up's comparisons and ``extra["convergence"]`` the
        chains' mode-sensitive diagnostics (with 4 or more draws per chain; a
        :class:`~.mode_check.MixingWarning` when they flag)."""
        check_int("num_samples", num_samples, self.name)
        n = int(num_samples)
        chains = max(1, n // 2) if chains is None else check_int("chains", chains, self.name)
        warmup = resolve_warmup(warmup, self.name, self.min_warmup, chains)
        thin = check_int("thin", thin, self.name)
        per_chain = -(-n // chains)
        problem = self.problem(*args, **kwargs)
        with measure(problem.denoiser) as meter:
            res = self._chains(problem, chains, per_chain, warmup, thin, generator, init, self.progress)
        iters = res.warmup + per_chain * thin
        nfe = res.nfe_per_iteration * iters / per_chain
        extra = {"result": res, "warmup": res.warmup, "warmup_checks": res.warmup_checks,
                 "convergence": res.convergence}
        return self._draws(res.samples, meter, problem, n, res.stats_per_draw(), extra, nfe_per_sample=nfe)
