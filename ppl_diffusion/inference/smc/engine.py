"""A batched Feynman–Kac SMC engine (float64 log-weights, adaptive resampling, log-evidence).

A method is a :class:`FeynmanKac` model with three functions on a *state* (a dict of tensors whose
two leading dims are ``(R, N)``: R independent runs of N particles; key ``"x"`` is the particle)::

    x_T          = model.sample_initial(R, N, generator)
    state, logw0 = model.start(x_T)                   # caches at x_T and the initial log-potential
    x_new        = model.move(k, state, generator)    # draw from the proposal M_k(x_{k} -> .)
    state, log_g = model.weigh(k, state, x_new)       # caches at x_new and the incremental log-weight

The engine runs ``init -> weigh-free start -> [resample? -> move -> weigh] * n_steps`` with
log-weights in float64, resampling (multinomial or systematic) whenever ``ESS < ess_threshold * N``
(1.0 = every step), and the running log-evidence
``log Z = sum_resampling (logsumexp(logw) - log N) + logsumexp(logw_current) - log N``.
With ``reference`` (conditional SMC, used by particle Gibbs) particle 0 of each run is pinned to a
given trajectory: its ancestor is always 0 and its moves are replaced by the reference's states.
With ``ancestor_sampling=True`` (PGAS, Lindsten, Jordan & Schön 2014) the ancestor of the pinned
particle is instead redrawn at each resampling step with probability proportional to
``w_k^i * gamma_T(x^i_{0:k}, x'_{k+1:T}) / gamma_k(x^i_{0:k})``, which the model supplies as
``model.ancestor_log_weight(k, state, x_ref_next)`` (added to the current log-weights; ``None`` on
deterministic steps, where the ancestor stays 0).

Network calls on ``R * N`` particles are split into chunks of ``max_batch`` (:func:`chunked`) so that
large particle counts fit a memory budget.

A plate of ``B`` measurements (``with pyro.plate("images", B)`` around the prior and the likelihood,
``y`` of shape ``(B, *out)``): :class:`SMCSampler` builds the Feynman–Kac model on the problem's
:meth:`~ppl_diffusion.inference.problem.Problem.expand_measurements` view for ``R`` runs per
measurement, whose observation has one row per run (``(R * B, *out)``, run ``i * B + b`` conditioned
on measurement ``b``); the model uses that row wherever it uses ``y`` (broadcast over the run's
particles as ``(R * B, 1, ...)``) and the engine runs the ``R * B`` runs as one batch (one network
call per step for the whole plate). :meth:`FeynmanKac.observation_rows` gives the layout.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ...schedules import GRID_KINDS
from ...memory import check_fits
from ..health import Guard, RunInterrupted, SMCMonitor, running
from ..sampler import terminal_noise
from ..solver import Draws, Solver, check_choice, check_int, check_number, measure
from .evidence import POOLINGS, draw_from_runs, reliability, warn_unreliable_independent
from .result import SMCResult

__all__ = ["FeynmanKac", "run_smc", "multinomial_resample", "systematic_resample", "ess", "chunked",
           "normalise_log_weights", "gather_state", "RESAMPLERS"]


def normalise_log_weights(logw: torch.Tensor) -> torch.Tensor:
    logw = logw.to(torch.float64)
    return logw - torch.logsumexp(logw, dim=-1, keepdim=True)


def ess(logw: torch.Tensor) -> torch.Tensor:
    """Effective sample size ``1 / sum w^2`` of the last dimension (float64)."""
    w = torch.softmax(logw.to(torch.float64), dim=-1)
    return 1.0 / (w ** 2).sum(-1)


def multinomial_resample(logw: torch.Tensor, n: int | None = None,
                         generator: torch.Generator | None = None) -> torch.Tensor:
    """Ancestor indices ``(R, n)``: i.i.d. categorical draws from the normalised weights of each row."""
    R, N = logw.shape
    n = N if n is None else int(n)
    w = torch.softmax(logw.to(torch.float64), -1)
    gen_dev = generator.device if generator is not None else w.device
    idx = torch.multinomial(w.to(gen_dev), n, replacement=True, generator=generator)
    return idx.to(logw.device)


def systematic_resample(logw: torch.Tensor, n: int | None = None,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """Systematic resampling: one ``u ~ U[0, 1/n)`` per row; the ancestor of offspring ``k`` is the
    smallest ``j`` with ``cumsum(w)_j > u + k/n``. Unbiased offspring counts, lower variance."""
    R, N = logw.shape
    n = N if n is None else int(n)
    w = torch.softmax(logw.to(torch.float64), -1)
    gen_dev = generator.device if generator is not None else w.device
    u = torch.rand(R, 1, generator=generator, dtype=torch.float64, device=gen_dev).to(w.device)
    pos = (u + torch.arange(n, dtype=torch.float64, device=w.device)) / n
    cdf = torch.cumsum(w, -1)
    cdf[:, -1] = 1.0 + 1e-12  # guard round-off
    return torch.searchsorted(cdf, pos, right=True).clamp(max=N - 1)


RESAMPLERS = {"multinomial": multinomial_resample, "systematic": systematic_resample}


def gather_state(state: dict, idx: torch.Tensor) -> dict:
    """Index every ``(R, N, ...)`` tensor of ``state`` by ancestors ``idx`` (R, N)."""
    out = {}
    R = idx.shape[0]
    rows = torch.arange(R, device=idx.device)[:, None]
    for k, v in state.items():
        if isinstance(v, torch.Tensor) and v.dim() >= 2 and v.shape[0] == R and v.shape[1] == idx.shape[1]:
            out[k] = v[rows, idx]
        else:
            out[k] = v
    return out


def chunked(fn: Callable, x: torch.Tensor, *args, max_batch: int | None = None):
    """Apply ``fn(x_chunk, *args_chunk)`` over chunks of the leading dim of ``x`` (``args`` tensors
    with the same leading size are chunked alike); returns the concatenation (tuples too)."""
    n = x.shape[0]
    if max_batch is None or n <= max_batch:
        return fn(x, *args)
    outs = []
    for s in range(0, n, max_batch):
        a = [v[s:s + max_batch] if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == n else v for v in args]
        outs.append(fn(x[s:s + max_batch], *a))
    if isinstance(outs[0], tuple):
        return tuple(torch.cat([o[i] for o in outs]) for i in range(len(outs[0])))
    return torch.cat(outs)


class FeynmanKac:
    """Interface of a Feynman–Kac model (see module docstring)."""

    n_steps: int = 0
    event_shape: torch.Size = torch.Size()

    def bind(self, problem, max_batch) -> None:
        """The attributes every sampler reads from the problem: ``den``, ``prior``, ``sched``, ``event_shape``,
        ``D``, ``dtype``, ``device`` and the network batch cap ``max_batch``."""
        self.den = problem.denoiser
        self.prior = problem.prior
        self.sched = self.den.schedule
        self.event_shape = tuple(problem.event_shape)
        self.D = int(math.prod(self.event_shape))
        self.dtype, self.device = problem.dtype, problem.device
        self.max_batch = max_batch

    c_noise: torch.Tensor | None = None  # per-step noise std replacing the plug-in one (None: plug-in)
    variance_evals: int = 0  # evaluations of the estimate behind c_noise made for this model

    def set_step_noise(self, reverse_variance, times: torch.Tensor, eta: float) -> None:
        """The step noise of the prior transitions on ``times``: the plug-in DDPM / DDIM one
        (``reverse_variance=None``), or Analytic-DPM's (:mod:`..analytic_variance`); after :meth:`bind`."""
        if reverse_variance is not None:
            self.c_noise, self.variance_evals = reverse_variance.noise_std(self, times, eta)

    def step_noise(self, j: int, c_plugin: torch.Tensor) -> torch.Tensor:
        """Noise std of the step from grid index ``j``: ``c_plugin`` unless :meth:`set_step_noise` set one."""
        return c_plugin if self.c_noise is None else self.c_noise[j].to(self.dtype)

    def observation_rows(self, y: torch.Tensor, out_shape) -> tuple:
        """``(rows, y)``: a plate's per-run observation ``(R * B, *out)`` as ``(R * B, 1, *out)`` (it
        broadcasts over each run's particles) with ``rows = R * B``; a single observation ``(*out)``
        unchanged with ``rows = None``. Stores ``rows`` as ``self.obs_rows`` (checked by
        :meth:`check_runs`)."""
        batch = tuple(y.shape[: y.dim() - len(tuple(out_shape))])
        if len(batch) > 1:
            raise ValueError(f"{getattr(self, 'name', 'smc')}: expected y of shape (runs, *out) or out, "
                             f"got {tuple(y.shape)}")
        self.obs_rows = batch[0] if batch else None
        return self.obs_rows, (y if not batch else y[:, None])

    def check_runs(self, R: int) -> None:
        """A model built for a plate's per-run observation runs exactly one run per row."""
        rows = getattr(self, "obs_rows", None)
        if rows is not None and int(R) != rows:
            raise ValueError(f"{getattr(self, 'name', 'smc')}: this Feynman-Kac model holds one observation per "
                             f"run ({rows} runs: a plate's measurements x runs per measurement); got R = {R}")

    def sample_initial(self, R: int, N: int, generator) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def terminal(self, R: int, N: int, generator) -> torch.Tensor:
        """``(R, N, *event)`` draws of ``x_1`` where the prior starts (``sampler.terminal_noise``)."""
        return terminal_noise(self.prior, (R, N) + self.event_shape, generator, self.dtype, self.device)

    def start(self, x: torch.Tensor):  # pragma: no cover - abstract
        raise NotImplementedError

    def move(self, k: int, state: dict, generator) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def weigh(self, k: int, state: dict, x_new: torch.Tensor):  # pragma: no cover
        raise NotImplementedError

    def resample_allowed(self, k: int) -> bool:
        """Whether the engine may resample before move ``k`` (False e.g. in plain-prior tail steps)."""
        return True

    def output(self, state: dict) -> torch.Tensor:
        """Particles in the user's space ``(R, N, *event_shape)``."""
        return state["x"]

    # optional, for ancestor sampling in conditional SMC:
    # def ancestor_log_weight(self, k, state, x_next) -> (R, N) float64 tensor or None


def run_smc(model: FeynmanKac, R: int, N: int, resampling: str = "multinomial", ess_threshold: float = 1.0,
            generator: torch.Generator | None = None, reference: list | None = None,
            keep_history: bool = False, ancestor_sampling: bool = False) -> SMCResult:
    """Run the SMC engine; see the module docstring. ``reference``: list of ``n_steps + 1`` tensors
    ``(R, *x_shape)`` (conditional SMC). ``keep_history``: store every step's ``x`` and ancestors
    (needed to trace back a trajectory, as particle Gibbs does)."""
    if int(N) < 1:
        raise ValueError(f"particles must be >= 1, got {N}")
    if int(R) < 1:
        raise ValueError(f"runs must be >= 1, got {R}")
    if resampling not in RESAMPLERS:
        raise ValueError(f"resampling must be one of {sorted(RESAMPLERS)}, got {resampling!r}")
    if not 0.0 <= ess_threshold <= 1.0:
        raise ValueError(f"ess_threshold must lie in [0, 1], got {ess_threshold}")
    resampler = RESAMPLERS[resampling]
    if ancestor_sampling and not hasattr(model, "ancestor_log_weight"):
        raise ValueError(f"{getattr(model, 'name', 'this model')}: ancestor sampling is not available")
    K = model.n_steps
    if hasattr(model, "check_runs"):
        model.check_runs(R)
    name = getattr(model, "name", "smc")
    den = getattr(model, "den", None)
    guard = Guard(den, method=name, quantity="particles", cause=(
        "a measurement far outside the prior's range (check y, the operator's scaling and noise_std), or "
        "an unstable proposal")) if den is not None else None
    monitor = SMCMonitor(R, K, N, name)
    x0 = model.sample_initial(R, N, generator)
    if reference is not None:
        x0 = x0.clone()
        x0[:, 0] = reference[0]
    state, logw = model.start(x0)
    logw = logw.to(torch.float64)
    dev = logw.device
    logZ = torch.zeros(R, dtype=torch.float64, device=dev)
    ess_hist = torch.zeros(R, K, dtype=torch.float64, device=dev)
    resampled = torch.zeros(R, K, dtype=torch.bool, device=dev)
    logN = math.log(N)
    hist_x = [state["x"]] if keep_history else None
    hist_a = [] if keep_history else None
    arangeN = torch.arange(N, device=dev).expand(R, N)
    cur = {"state": state, "logw": logw, "logZ": logZ, "k": 0}  # the last completed step (for Ctrl-C)
    try:
        state, logw, logZ = _steps(model, K, N, R, cur, ess_hist, resampled, hist_x, hist_a, arangeN,
                                   resampler, ess_threshold, generator, reference, ancestor_sampling, keep_history,
                                   guard, monitor)
    except KeyboardInterrupt:
        k, lw = cur["k"], cur["logw"]
        lw = torch.where(torch.isnan(lw), torch.full_like(lw, -math.inf), lw)
        part = SMCResult(model.output(cur["state"]), lw, cur["logZ"] + torch.logsumexp(lw, -1) - logN, ess_hist,
                         resampled, method=name)
        part.extra.update(log_evidence_history=monitor.log_evidence, ess_steps=monitor.ess, interrupted=True,
                          steps_done=k)
        raise RunInterrupted(f"{name}: SMC interrupted after {k}/{K} steps; .partial holds the weighted "
                             "particles reached (an SMCResult, extra['interrupted'] = True)",
                             partial=part, step=k) from None
    logw = torch.where(torch.isnan(logw), torch.full_like(logw, -math.inf), logw)
    logZ = logZ + torch.logsumexp(logw, -1) - logN
    res = SMCResult(model.output(state), logw, logZ, ess_hist, resampled, method=name)
    res.extra.update(monitor.finish())
    if keep_history:
        res.extra["history_x"] = hist_x
        res.extra["history_ancestors"] = hist_a
    return res


def _steps(model, K, N, R, cur, ess_hist, resampled, hist_x, hist_a, arangeN, resampler,
           ess_threshold, generator, reference, ancestor_sampling, keep_history, guard, monitor):
    """The ``K`` moves of :func:`run_smc` from ``cur`` (``state``, ``logw``, ``logZ``, updated after
    every step); returns ``(state, logw, logZ)``. Each step is checked by the divergence guard and
    recorded by the :class:`~ppl_diffusion.inference.health.SMCMonitor`."""
    logN = math.log(N)
    state, logw, logZ = cur["state"], cur["logw"], cur["logZ"]
    dev = logw.device
    for k in range(K):
        e = ess(logw)
        ess_hist[:, k] = e
        if model.resample_allowed(k):
            do = e < ess_threshold * N - 1e-9 if ess_threshold < 1.0 else torch.ones(R, dtype=torch.bool, device=dev)
            if bool(do.any()):
                idx = resampler(logw, N, generator)
                if reference is not None:
                    idx[:, 0] = 0
                    if ancestor_sampling:
                        extra = model.ancestor_log_weight(k, state, reference[k + 1])
                        if extra is not None:
                            la = logw + extra.to(torch.float64)
                            la = torch.where(torch.isnan(la), torch.full_like(la, -math.inf), la)
                            idx[:, 0] = multinomial_resample(la, 1, generator)[:, 0]
                idx = torch.where(do[:, None], idx, arangeN)
                state = gather_state(state, idx)
                lse = torch.logsumexp(logw, -1) - logN
                logZ = torch.where(do, logZ + lse, logZ)
                logw = torch.where(do[:, None], torch.zeros_like(logw), logw)
                resampled[:, k] = do
                if keep_history:
                    hist_a.append(idx)
            elif keep_history:
                hist_a.append(arangeN)
        elif keep_history:
            hist_a.append(arangeN)
        x_new = model.move(k, state, generator)
        if reference is not None:
            x_new = x_new.clone()
            x_new[:, 0] = reference[k + 1]
        new_state, inc = model.weigh(k, state, x_new)
        if guard is not None:
            bound = guard.loose_bound()
            bad, m = guard.exceeded(new_state["x"], bound)
            if bad:
                raise guard.error(k, K, m, bound, last=model.output(state),
                                  partial={"particles": model.output(state), "log_weights": logw})
        state = new_state
        new_logw = logw + inc.to(torch.float64)
        monitor.record(k, torch.where(torch.isnan(new_logw), -math.inf, new_logw), logZ,
                       partial={"particles": model.output(state), "log_weights": logw})
        logw = new_logw
        if keep_history:
            hist_x.append(state["x"])
        cur.update(state=state, logw=logw, logZ=logZ, k=k + 1)
    return state, logw, logZ


def trace_lineage(result: SMCResult, j: torch.Tensor, rows: torch.Tensor | None = None) -> list:
    """The trajectory (list of ``(R, *x_shape)``, one per step) of particle ``j`` (R,) of the final
    population, following the stored ancestors back (``rows``: particle ``j[i]`` of run ``rows[i]``;
    default run ``i``)."""
    hx, ha = result.extra["history_x"], result.extra["history_ancestors"]
    if rows is None:
        rows = torch.arange(j.shape[0], device=j.device)
    traj = [None] * len(hx)
    cur = j
    for k in range(len(hx) - 1, -1, -1):
        traj[k] = hx[k][rows, cur]
        if k > 0:
            cur = ha[k - 1][rows, cur]
    return traj


__all__.append("trace_lineage")


# --------------------------------------------------------------------------------------------
class SMCSampler(Solver):
    """Base class of the SMC posterior samplers (MCGDiff, TDS, FPS, FPS-SMC, SMCDiff).

    ``Sampler(model, particles=N, steps=K, ...)`` checks the model's requirements at construction
    (``ValueError`` naming what is missing). ``run(y=y, runs=R)`` performs ``R`` independent SMC
    runs of ``N`` particles batched on the leading dim and returns an :class:`SMCResult`;
    :meth:`draw` / :meth:`sample` return ``n`` plain draws, each from its own independent run (the
    published MCGDiff protocol), unless ``independent=False`` (one run, resampled ``n`` times).

    A plate of ``B`` measurements: ``run(y=Y, runs=R)`` performs ``R`` runs PER measurement as one
    batch of ``R * B`` runs, run ``i * B + b`` conditioned on measurement ``b`` (the
    :meth:`~ppl_diffusion.inference.problem.Problem.expand_measurements` layout); the
    :class:`SMCResult` holds ``(R * B, N, *event)`` particles and ``(R * B,)`` log-evidences in that
    layout (``log_evidence.reshape(R, *plate_shape)`` puts the measurements last), and its ``extra``
    holds ``measurements`` (``B``) and ``plate_shape``. :meth:`draw` returns ``(1, n, *plate_shape,
    *event)`` samples.

    Args (shared by every sampler; each subclass lists its own defaults):
        model: Pyro model with a diffusion-prior site and an observed likelihood.
        particles: particles per run (``N``).
        steps: base time steps (MCGDiff inserts its matching times on top).
        eta: DDIM noise of the proposals that use it (1 = DDPM ancestral steps).
        resampling: ``"systematic"`` (default) or ``"multinomial"``.
        ess_threshold: resample when ``ESS < ess_threshold * N`` (1.0: every step). The default
            (systematic when the ESS falls below N/2) halves MCGDiff's max-sliced W at equal cost
            against multinomial resampling at every step, the official code's choice
            (benchmarks/results/gmm_b_mcgdiff.md).
        max_batch: cap on the particles of one network call (chunks; ``None``: all at once).
        grid: time grid (``"auto"``: uniform in ``alpha(t)`` on VP schedules, see
            :func:`ppl_diffusion.schedules.time_grid`).
        prior_site: name of the diffusion-prior site when the model has several.
        progress: accepted for the shared contract (the SMC loop shows no bar).
    """

    name = "smc"
    family = "smc"
    requires: tuple = ("linear",)
    supports_plates = True
    #: what ``draw(pooled=None)`` does: one draw per run (``False``) unless a sampler's measurements say
    #: otherwise (TDS: ``"truncated"``)
    default_pooled: bool | str = False
    #: whether the runs' evidence pool targets the posterior (MCGDiff, TDS), so that one draw per run that
    #: disagrees with it warns (:class:`.evidence.UnreliableDrawsWarning`); FPS-SMC's and SMCDiff's evidence is
    #: that of their own Feynman-Kac models
    evidence_targets_posterior: bool = False

    def __init__(self, model, *, particles: int = 64, steps: int = 100, eta: float = 1.0,
                 resampling: str = "systematic", ess_threshold: float = 0.5, max_batch: int | None = None,
                 grid: str = "auto", prior_site: str | None = None, progress: bool = False):
        self.particles = check_int("particles", particles, self.name)
        self.steps = check_int("steps", steps, self.name)
        self.eta = check_number("eta", eta, self.name, 0.0, 1.0)
        self.resampling = check_choice("resampling", resampling, RESAMPLERS, self.name)
        self.ess_threshold = check_number("ess_threshold", ess_threshold, self.name, 0.0, 1.0)
        self.max_batch = None if max_batch is None else check_int("max_batch", max_batch, self.name)
        self.grid = check_choice("grid", grid, GRID_KINDS, self.name)
        self.setup_solver(model, prior_site, progress)
        self.last_nfe = 0

    # subclass API ------------------------------------------------------------------------
    def fk_model(self, problem) -> FeynmanKac:  # pragma: no cover - abstract
        raise NotImplementedError

    # user API ----------------------------------------------------------------------------
    def run(self, *args, runs: int = 1, generator: torch.Generator | None = None,
            reference: list | None = None, keep_history: bool = False, **kwargs) -> SMCResult:
        """``runs`` independent SMC runs of ``self.particles`` particles, batched (a plate of ``B``
        measurements: ``runs`` per measurement, ``runs * B`` in all, run ``i * B + b`` on measurement
        ``b``)."""
        runs = check_int("runs", runs, self.name)
        return self._run(self.problem(*args, **kwargs), runs, generator, reference, keep_history)

    def _run(self, problem, runs: int, generator, reference=None, keep_history: bool = False) -> SMCResult:
        B = problem.num_measurements
        den = problem.denoiser
        check_fits(self.name, runs * B * self.particles, problem.event_shape, problem.dtype, problem.device,
                   den=den, unit="particles (runs x particles)")
        if problem.plates:
            if reference is not None:
                raise ValueError(f"{self.name}: conditional SMC (reference=) does not take a plate of measurements")
            fk = self.fk_model(problem.expand_measurements(runs))
        else:
            fk = self.fk_model(problem)
        start = den.nfe
        with torch.no_grad(), running(self):
            res = run_smc(fk, runs * B, self.particles, self.resampling, self.ess_threshold, generator,
                          reference=reference, keep_history=keep_history)
        res.nfe = den.nfe - start  # batched calls of R*N particles (chunks count once each)
        res.extra["particle_nfe"] = getattr(fk, "particle_nfe", fk.n_steps)
        # single-sample evaluations of a step-variance estimate made for this run (Analytic-DPM; 0 if cached)
        res.extra["variance_evals"] = fk.variance_evals
        res.method = self.name
        if problem.plates:
            res.extra["measurements"], res.extra["plate_shape"] = B, tuple(problem.plate_shape)
        self.last_nfe = res.nfe
        self.last_fk = fk
        return res

    def draw(self, num_samples: int, *args, generator: torch.Generator | None = None, independent: bool = True,
             pooled: bool | str | None = None, **kwargs) -> Draws:
        """``num_samples`` posterior draws as :class:`Draws` (one chain): one per independent run of
        ``particles`` particles (default), or all resampled from a single run (``independent=False``).
        ``pooled=True`` (with ``independent``): the draws are resampled from all runs' particles weighted
        by each run's evidence (:func:`.evidence.pooled_resample`), which removes the bias of one draw
        per run on multimodal posteriors (a run that lost a mode early cannot re-weight it; its
        evidence does); ``pooled="truncated"``: the same with each run's weight capped at
        ``1 / sqrt(runs)`` of the total (truncated importance sampling), so that a few heavy runs cannot
        carry all the draws; ``extra["reliability"]`` (:func:`.evidence.reliability`) says when either set
        of draws is unreliable, and one draw per run warns (:class:`.evidence.UnreliableDrawsWarning`, with the
        estimated bias and the options) when its ``unreliable_independent`` flag fires. ``pooled=None`` (default):
        the sampler's ``default_pooled`` (one draw per run, ``"truncated"`` for TDS).

        ``nfe_per_sample = particles x network steps per particle x runs / num_samples`` (the
        single-sample network evaluations of the runs divided by the draws); ``extra`` holds each
        run's ``log_evidence`` and final ``ess`` (``(runs,)``), ``independent`` and ``pooled`` as used (whether
        the draws are independent: one per run), the :class:`SMCResult` as ``result`` and
        ``variance_evals``, the evaluations of a one-off step-variance estimate made by this call
        (Analytic-DPM, cached per prior: 0 when an earlier solver made it; a setup cost like
        Score Prior's training, kept out of ``nfe_per_sample`` so that it does not depend on the order of
        the calls).

        A plate of ``B`` measurements: ``num_samples`` draws PER measurement from ``num_samples * B``
        runs (one batch; ``B`` runs with ``independent=False``), samples ``(1, n, *plate_shape,
        *event)``; ``log_evidence`` / ``ess`` are per run, ``(runs * B,)`` with run ``i * B + b`` on
        measurement ``b``; ``nfe_per_sample`` per draw of one measurement."""
        n = check_int("num_samples", num_samples, self.name)
        pooled = self.default_pooled if pooled is None else pooled
        check_choice("pooled", pooled, POOLINGS, self.name)  # before the runs, not after
        problem = self.problem(*args, **kwargs)
        B = problem.num_measurements
        with measure(problem.denoiser) as meter:
            res = self._run(problem, n if independent else 1, generator)
            # sample j from run j mod (runs * B): j = i * B + b is measurement b
            x = draw_from_runs(res, n, generator, pooled if independent else False)
        if problem.plates:
            x = x.reshape((n,) + tuple(problem.plate_shape) + tuple(problem.event_shape))
        nfe = self.particles * res.extra["particle_nfe"] * res.num_runs / (n * B)
        rel = reliability(res)
        if independent and not pooled and self.evidence_targets_posterior:
            warn_unreliable_independent(self.name, rel)
        return self._draws(x[None], meter, problem, n, extra={"log_evidence": res.log_evidence, "ess": res.ess,
                                                             "result": res, "reliability": rel,
                                                             "independent": independent,
                                                             "pooled": pooled if independent else False,
                                                             "variance_evals": res.extra["variance_evals"]},
                           nfe_per_sample=nfe)

    def sample(self, num_samples: int, *args, generator: torch.Generator | None = None,
               independent: bool = True, pooled: bool | str | None = None, **kwargs) -> torch.Tensor:
        """``num_samples`` draws ``(num_samples, *event_shape)`` (see :meth:`draw`)."""
        return self.draw(num_samples, *args, generator=generator, independent=independent, pooled=pooled,
                         **kwargs).samples[0]


__all__.append("SMCSampler")
