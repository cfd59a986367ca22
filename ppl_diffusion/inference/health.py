"""Run health shared by every family: the divergence guard, MCMC and SMC health, interrupts.

* **Divergence guard.** :class:`Guard` bounds a run's state relative to the prior's data scale
  ``R`` (:func:`data_scale`: ``denoiser.data_scale`` if set, ``1`` for image networks trained on
  ``[-1, 1]``, the means and spreads of a Gaussian mixture): at noise level ``(alpha, sigma)`` a
  state beyond ``GUARD_FACTOR * (alpha * R + sigma)`` in any entry, or a non-finite one, raises
  :class:`DivergenceError` naming the step, the quantity, the options most likely responsible
  (:func:`likely_options`: the running solver's step sizes, guidance weights and learning rates)
  and carrying the last good state. One ``abs().amax()`` per step; the reverse-diffusion loop
  (every guide and ``DiffusionPrior.sample``), the SMC engine, the kernels (a proposal beyond the
  bound is rejected as a divergence) and RED-Diff use it. A new solver that runs its own loop calls
  ``guard.check(x, step=i, n_steps=K, alpha=a, sigma=s, last=x_prev)`` once per step, inside
  ``with running(self):`` so that the message names its options.
* **MCMC health.** :func:`chain_health` turns per-iteration acceptance (the state moved) and
  divergence flags into per-chain rates; a chain that accepts nothing or diverges on most steps is
  *frozen*: a ``RuntimeWarning`` and a ``chain_frozen`` flag in ``sample_stats``; every chain frozen
  raises :class:`FrozenChainsError` (with the result attached).
* **SMC health.** :class:`SMCMonitor` keeps the ESS and log-evidence of every step, raises
  :class:`WeightCollapseError` when every log-weight of a run is ``-inf`` (naming the step and the
  likely cause) and warns when the ESS stays at about one particle for many steps.
* **Interrupts.** Ctrl-C (``KeyboardInterrupt``) inside a run raises :class:`RunInterrupted`, still
  a ``KeyboardInterrupt``, whose ``.partial`` holds what was computed (a ``ChainResult`` of the
  draws so far, an ``SMCResult`` of the current particles, the RED-Diff loss trace and parameters,
  the reverse diffusion's current state) with ``interrupted = True``.
"""
from __future__ import annotations

import contextlib
import contextvars
import math
import warnings

import torch

__all__ = ["DivergenceError", "FrozenChainsError", "WeightCollapseError", "RunInterrupted", "Guard",
           "GUARD_FACTOR", "guard_factor", "data_scale", "likely_options", "running", "current_solver",
           "chain_health", "SMCMonitor", "partial_samples"]

#: how far beyond the prior's scale (``alpha * R + sigma``) a state may go before it is a divergence
GUARD_FACTOR = 1000.0

_SOLVER: contextvars.ContextVar = contextvars.ContextVar("ppl_diffusion_solver", default=None)
_FACTOR: contextvars.ContextVar = contextvars.ContextVar("ppl_diffusion_guard_factor", default=None)

#: option names (or suffixes) that set a step size, a guidance weight or a learning rate
_RISKY = ("zeta", "lr", "step_size", "langevin_step", "guidance_scale", "gamma", "snr", "epsilon", "c_step",
          "tau", "eta_prox", "w", "alpha", "omega", "scale")
_SAFE = ("steps", "init_scale", "theta_steps", "theta_final_steps", "ess_threshold", "eta")


class DivergenceError(RuntimeError, FloatingPointError):
    """A run left the prior's range or produced NaN/Inf. ``.step`` (0-based), ``.t``, ``.quantity``
    (what was checked), ``.value`` and ``.bound``, ``.options`` (the likely responsible options),
    ``.last_x`` / ``.last_x0`` (the last good state and its clean estimate) and ``.partial`` (family
    results computed so far) keep what had been computed. Also a ``FloatingPointError``."""

    def __init__(self, message: str, step: int | None = None, t: float | None = None, last_x=None, last_x0=None,
                 quantity: str | None = None, value: float | None = None, bound: float | None = None,
                 options: str | None = None, partial=None):
        super().__init__(message)
        self.step, self.t, self.last_x, self.last_x0 = step, t, last_x, last_x0
        self.quantity, self.value, self.bound, self.options = quantity, value, bound, options
        self.partial = partial


class FrozenChainsError(DivergenceError):
    """Every MCMC chain accepted nothing (or diverged on most steps); ``.partial`` is the result."""


class WeightCollapseError(DivergenceError):
    """Every log-weight of an SMC run is ``-inf`` (or NaN) at a step; ``.partial`` holds the
    particles before that step."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during a run. ``.partial`` holds what had been computed (marked ``interrupted``),
    ``.step`` the step reached."""

    def __init__(self, message: str, partial=None, step: int | None = None):
        super().__init__(message)
        self.partial, self.step = partial, step


def partial_samples(partial):
    """The samples held by a ``.partial`` (``ChainResult`` / ``Draws`` samples, ``SMCResult``
    particles, the reverse diffusion's ``x``, RED-Diff's ``mu``) as a tensor, or ``None``."""
    if partial is None:
        return None
    for attr in ("samples", "particles"):
        v = getattr(partial, attr, None)
        if isinstance(v, torch.Tensor):
            return v.detach()
    if isinstance(partial, dict):
        for key in ("samples", "particles", "x", "mu"):
            v = partial.get(key)
            if isinstance(v, torch.Tensor):
                return v.detach()
    return None


# -- which solver is running ------------------------------------------------------------------
@contextlib.contextmanager
def running(solver):
    """Mark ``solver`` as the one running (its options name the likely cause of a divergence)."""
    tok = _SOLVER.set(solver)
    try:
        yield solver
    finally:
        _SOLVER.reset(tok)


def current_solver():
    return _SOLVER.get()


def likely_options(solver=None) -> str:
    """``"zeta=1e+06"``-style list of the running solver's step-size / guidance / learning-rate
    options (``solver.divergence_options`` when it declares them), or ``""``."""
    solver = solver if solver is not None else current_solver()
    if solver is None:
        return ""
    names = getattr(solver, "divergence_options", None)
    if names is None:
        try:
            opts = list(type(solver).options())
        except Exception:  # noqa: BLE001 - a solver without the options() contract
            opts = []
        names = [o for o in opts if o not in _SAFE and not o.startswith("theta_") and (o in _RISKY or o.endswith(
            ("_lr", "_step", "_step_size", "zeta")))]
    out = []
    for n in names:
        v = getattr(solver, n, None)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out.append(f"{n}={v:g}")
    return ", ".join(out)


# -- the guard --------------------------------------------------------------------------------
@contextlib.contextmanager
def guard_factor(factor: float | None):
    """Temporarily change :data:`GUARD_FACTOR` (``None`` or ``inf``: only NaN/Inf are caught)."""
    tok = _FACTOR.set(math.inf if factor is None else float(factor))
    try:
        yield
    finally:
        _FACTOR.reset(tok)


def _factor() -> float:
    f = _FACTOR.get()
    return GUARD_FACTOR if f is None else f


def data_scale(denoiser) -> float:
    """The prior's data scale ``R`` (largest plausible ``|x0|`` entry): ``denoiser.data_scale`` if
    set; for a Gaussian-mixture denoiser the largest ``|mean| + 4 std``; else 1 (image networks
    trained on ``[-1, 1]``)."""
    own = getattr(denoiser, "data_scale", None)
    if own is not None:
        return float(own)
    gmm = getattr(denoiser, "gmm", None)
    if gmm is not None:
        cached = denoiser.__dict__.get("_data_scale")
        if cached is None:
            var = gmm.variances if getattr(gmm, "isotropic", False) else getattr(gmm, "evals", None)
            spread = float(torch.as_tensor(var).max().sqrt()) if var is not None else 1.0
            cached = denoiser.__dict__["_data_scale"] = float(gmm.means.abs().max()) + 4 * spread
        return cached
    return 1.0


class Guard:
    """The divergence check of one run (see the module docstring).

    Args:
        denoiser: the prior's denoiser (its data scale and schedule).
        method: name used in messages (default: the running solver's name).
        quantity: what is checked, e.g. ``"the state x_t"``.
    """

    def __init__(self, denoiser, method: str | None = None, quantity: str = "the state", solver=None,
                 cause: str | None = None):
        solver = solver if solver is not None else current_solver()
        self.method = method or getattr(solver, "name", None) or "run"
        self.quantity, self.cause = quantity, cause
        self.scale = data_scale(denoiser)
        self.factor = _factor()
        self.options = likely_options(solver)
        sched = getattr(denoiser, "schedule", None)
        try:  # the largest noise scale of the schedule, in VP (sigma) and VE (sigma / alpha) coordinates
            one = torch.tensor(1.0, dtype=torch.float64)
            s1, a1 = float(sched.sigma(one)), float(sched.alpha(one))
            self.sigma_max = max(s1, s1 / a1 if a1 > 0 else s1, 1.0)
        except Exception:  # noqa: BLE001 - no schedule, or one without alpha / sigma at t = 1
            self.sigma_max = 1.0

    def bound(self, alpha: float = 1.0, sigma: float = 0.0) -> float:
        return self.factor * (float(alpha) * self.scale + float(sigma))

    def loose_bound(self) -> float:
        """A bound valid at every noise level of the schedule and in VP or VE coordinates (SMC
        particles, kernel states): ``GUARD_FACTOR * (R + max(sigma_1, sigma_1 / alpha_1))``."""
        return self.factor * (self.scale + self.sigma_max)

    def exceeded(self, x: torch.Tensor, bound: float) -> tuple:
        """``(breached, max |x|)``; NaN/Inf always breach."""
        m = float(x.detach().abs().amax()) if x.numel() else 0.0
        return (not m <= bound), m

    def check(self, x: torch.Tensor, step: int, n_steps: int, alpha: float = 1.0, sigma: float = 0.0,
              t: float | None = None, last=None, last_x0=None, partial=None, bound: float | None = None,
              quantity: str | None = None) -> None:
        """Raise :class:`DivergenceError` if ``x`` is non-finite or beyond the bound at this noise level."""
        b = self.bound(alpha, sigma) if bound is None else bound
        bad, m = self.exceeded(x, b)
        if bad:
            raise self.error(step, n_steps, m, b, t=t, last=last, last_x0=last_x0, partial=partial,
                             quantity=quantity)

    def error(self, step: int, n_steps: int, value: float, bound: float, t: float | None = None, last=None,
              last_x0=None, partial=None, quantity: str | None = None, cls=DivergenceError) -> DivergenceError:
        q = quantity or self.quantity
        when = f" (t={t:.4f})" if t is not None else ""
        if math.isfinite(value):
            what = (f"max |{q}| = {value:.3g} exceeds {bound:.3g} ({self.factor:g} x the prior's scale "
                    f"{self.scale:.3g} at this noise level)")
        else:
            what = f"non-finite values (NaN/Inf) in {q}"
        opt = (f"most likely responsible: {self.options} (try a smaller value)" if self.options else
               "likely cause: a step size, guidance weight or learning rate too large for this problem")
        if self.cause:
            opt = f"likely cause: {self.cause}" + (f"; or one of {self.options}" if self.options else "")
        msg = (f"{self.method} diverged at step {step + 1}/{n_steps}{when}: {what}; {opt}. The last good "
               "state is attached to this error (.last_x).")
        return cls(msg, step=step, t=t, last_x=last, last_x0=last_x0, quantity=q, value=value, bound=bound,
                   options=self.options, partial=partial)

    def rows_beyond(self, x: torch.Tensor, bound: float | None = None) -> torch.Tensor:
        """``(batch,)`` bool: rows of ``x`` (leading dim) non-finite or beyond ``bound`` (default
        :meth:`loose_bound`): the kernels' per-chain divergence."""
        b = self.loose_bound() if bound is None else bound
        m = x.detach().reshape(x.shape[0], -1).abs().amax(-1)
        return ~(m <= b)


# -- MCMC health --------------------------------------------------------------------------------
def chain_health(moved: torch.Tensor, diverged: torch.Tensor, method: str, frozen_rate: float = 0.5,
                 result=None, solver=None) -> dict:
    """Per-chain ``acceptance`` (share of iterations whose state moved) and ``divergence`` rates from
    ``(chain, iteration)`` bool tensors. A chain with no accepted move, or diverging on more than
    ``frozen_rate`` of its iterations, is frozen: a ``RuntimeWarning`` names it; every chain frozen
    raises :class:`FrozenChainsError` with ``result`` attached. Returns ``{"acceptance": (C,),
    "divergence": (C,), "frozen": (C,) bool}``."""
    acc = moved.double().mean(-1)
    div = diverged.double().mean(-1)
    frozen = (acc == 0) | (div > frozen_rate)
    health = {"acceptance": acc, "divergence": div, "frozen": frozen}
    if result is not None and hasattr(result, "health"):
        result.health = health
    opts = likely_options(solver)
    hint = f"; most likely responsible: {opts} (try a smaller value)" if opts else ""
    if bool(frozen.all()):
        raise FrozenChainsError(
            f"{method}: every chain is frozen (acceptance {_rates(acc)}, divergent proposals {_rates(div)} of "
            f"{moved.shape[-1]} iterations): the draws are the starting points{hint}. The result is attached "
            "(.partial).", quantity="acceptance", options=opts, partial=result)
    if bool(frozen.any()):
        idx = torch.nonzero(frozen).flatten().tolist()
        warnings.warn(f"{method}: chain(s) {idx} are frozen (acceptance {_rates(acc[frozen])}, divergent "
                      f"proposals {_rates(div[frozen])}){hint}; sample_stats['chain_frozen'] flags them",
                      RuntimeWarning, stacklevel=3)
    return health


def _rates(v: torch.Tensor) -> str:
    v = v.flatten()
    if v.numel() <= 4:
        return "[" + ", ".join(f"{float(a):.0%}" for a in v) + "]"
    return f"{float(v.min()):.0%}-{float(v.max()):.0%}"


# -- SMC health ---------------------------------------------------------------------------------
class SMCMonitor:
    """ESS and log-evidence after every step of ``R`` runs, the all-``-inf`` check and the ESS
    collapse warning (``collapse_steps`` steps, consecutive or not, with ESS < 1.5; default a fifth of
    the steps, at least 3: healthy MCGDiff / TDS runs of 16 particles on the GMM benchmark problems
    have none, runs with ``y`` 100 prior scales away have 4-8 of 20)."""

    def __init__(self, R: int, K: int, N: int, method: str, collapse_steps: int | None = None):
        self.method, self.K, self.N = method, K, N
        self.log_evidence = torch.full((R, K), math.nan, dtype=torch.float64)
        self.ess = torch.full((R, K), math.nan, dtype=torch.float64)
        self.collapse_steps = collapse_steps if collapse_steps is not None else max(3, K // 5)

    def record(self, k: int, logw: torch.Tensor, logZ: torch.Tensor, partial=None) -> None:
        lse = torch.logsumexp(logw, -1)
        dead = ~torch.isfinite(lse) | (lse == -math.inf)
        if bool(dead.any()):
            runs = torch.nonzero(dead).flatten().tolist()
            raise WeightCollapseError(
                f"{self.method}: every particle's log-weight is -inf or NaN at step {k + 1}/{self.K} "
                f"(run(s) {runs[:5]}{'...' if len(runs) > 5 else ''}): no particle explains the measurement. "
                "Likely cause: a measurement outside the prior's support (wrong operator, scaling or "
                "units), or a noise level too small for the model; check y and noise_std, or use more particles. "
                "The particles before this step are attached (.partial).",
                step=k, quantity="log-weights", partial=partial)
        self.log_evidence[:, k] = (logZ + lse - math.log(self.N)).detach().cpu()
        w = torch.softmax(logw.to(torch.float64), -1)
        self.ess[:, k] = (1.0 / (w ** 2).sum(-1)).detach().cpu()

    def finish(self) -> dict:
        """Warn on an ESS collapse; returns the per-step histories and the collapse counts."""
        collapsed = (self.ess < 1.5).sum(-1)
        if self.N > 4 and bool((collapsed >= self.collapse_steps).any()):
            worst = int(collapsed.max())
            warnings.warn(
                f"{self.method}: the ESS stayed at about one particle (< 1.5 of {self.N}) on {worst} of "
                f"{self.K} steps: the population is degenerate and the log-evidence and draws are unreliable. "
                "Likely cause: a measurement far outside the prior, a noise level too small, or too few "
                "particles.", RuntimeWarning, stacklevel=3)
        return {"log_evidence_history": self.log_evidence, "ess_steps": self.ess, "ess_collapsed_steps": collapsed}
