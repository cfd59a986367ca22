"""The one reverse-diffusion loop of the library (DDPM / DDIM(eta) over any time grid) with hooks.

Step ``t -> s`` (``s < t``) in the continuous convention ``x_t = alpha_t x0 + sigma_t eps``::

    x0_hat, eps_hat = D(x_t, t), (x_t - alpha_t x0_hat) / sigma_t
    c   = eta * sigma_s * sqrt(1 - (rho_s / rho_t)^2)          # DDIM-eta noise (eta = 1: DDPM)
    x_s = alpha_s x0_hat + sqrt(sigma_s^2 - c^2) eps_hat + c z

With ``eta = 1`` the step is exactly DDPM's ancestral step (``c^2`` = the posterior variance
``beta~``). A grid entry ``s > t`` is a *time-travel* jump (RePaint / DDNM): the state is re-noised
along the forward process, ``x_s = (alpha_s/alpha_t) x_t + sqrt(sigma_s^2 - (alpha_s sigma_t/alpha_t)^2) z``.

Solvers differ only in their :class:`Hook`:

* ``correct_x0(state)`` (Proj / Opt-type methods: DDRM, DDNM, DiffPIR, DDS, ...) returns ``None`` or a
  :class:`Correction`: a corrected ``x0_hat`` (and optionally ``eps_hat``) for the DDIM step, or the
  full next state ``x_next``;
* ``correct_step(state, x_next)`` (Grad-type methods: DPS, PiGDM, ...) corrects the next state,
  typically with a gradient taken through the denoiser (set ``needs_grad = True`` and the loop
  evaluates the network under autograd with ``state.x`` requiring grad: one network call per step).

The divergence guard of :mod:`.health` checks every step: a non-finite state, or one beyond
``GUARD_FACTOR`` times the prior's scale at that noise level (``alpha_s * R + sigma_s``), stops the
loop with :class:`DivergenceError`, naming the step, the quantity and the running solver's likely
responsible option and carrying the last good state. Ctrl-C raises
:class:`~ppl_diffusion.inference.health.RunInterrupted` with the current state in ``.partial``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from ..denoisers import Denoiser, broadcast_time
from .health import DivergenceError, Guard, RunInterrupted, current_solver

__all__ = ["StepState", "Hook", "Correction", "DivergenceError", "reverse_diffusion", "ddim_coefficients"]


@dataclass
class StepState:
    """Everything a hook may need at step ``i`` from ``t`` to ``s``."""

    i: int
    n_steps: int
    t: torch.Tensor
    s: torch.Tensor
    x: torch.Tensor
    x0: torch.Tensor
    eps: torch.Tensor
    alpha_t: torch.Tensor
    sigma_t: torch.Tensor
    alpha_s: torch.Tensor
    sigma_s: torch.Tensor
    eta: float
    generator: torch.Generator | None = None
    extra: dict = field(default_factory=dict)

    @property
    def is_last(self) -> bool:
        return float(self.s) == 0.0

    def noise(self, like: torch.Tensor | None = None) -> torch.Tensor:
        like = self.x if like is None else like
        return torch.randn(like.shape, generator=self.generator, dtype=like.dtype, device=like.device)


@dataclass
class Correction:
    """What :meth:`Hook.correct_x0` changes in a step (every field optional).

    * ``x0`` / ``eps``: corrected ``E[x0 | x_t]`` / noise estimate used by the DDIM step;
    * ``x_next``: the next state itself (the hook takes over the step; ``x0``, if given, is kept
      as the step's estimate of the clean image)."""

    x0: torch.Tensor | None = None
    eps: torch.Tensor | None = None
    x_next: torch.Tensor | None = None


class Hook:
    """Base hook: does nothing. Override ``correct_x0`` and/or ``correct_step``."""

    needs_grad: bool = False

    def start(self, x_T: torch.Tensor, times: torch.Tensor) -> None:
        """Called once before the loop."""

    def correct_x0(self, state: StepState) -> Correction | None:
        """Return ``None`` (no change) or a :class:`Correction`."""
        return None

    def correct_step(self, state: StepState, x_next: torch.Tensor) -> torch.Tensor:
        return x_next


def ddim_coefficients(alpha_t, sigma_t, alpha_s, sigma_s, eta: float):
    """``(c_eps, c_noise)`` of ``x_s = alpha_s x0 + c_eps eps + c_noise z`` (DDIM-eta convention)."""
    rho_t = sigma_t / alpha_t
    rho_s = sigma_s / alpha_s
    ratio = torch.where(rho_t > 0, rho_s / rho_t, torch.zeros_like(rho_t)).clamp(max=1.0)
    c = eta * sigma_s * torch.sqrt((1.0 - ratio**2).clamp(min=0.0))
    c_eps = torch.sqrt((sigma_s**2 - c**2).clamp(min=0.0))
    return c_eps, c


def reverse_diffusion(
    denoiser: Denoiser,
    x_T: torch.Tensor,
    times: torch.Tensor,
    eta: float = 1.0,
    hook: Hook | None = None,
    generator: torch.Generator | None = None,
    progress: bool = False,
    desc: str = "reverse diffusion",
) -> torch.Tensor:
    """Run the reverse diffusion from ``x_T`` over ``times`` (``times[0]`` is ``x_T``'s time).

    ``times`` is a 1-D tensor; it normally decreases to 0 but may jump up (time travel).
    Returns the final state (``x0`` when the grid ends at 0)."""
    hook = hook or Hook()
    times = torch.as_tensor(times, dtype=torch.float64)
    n_steps = times.numel() - 1
    if n_steps < 1:
        raise ValueError("times must hold at least two entries")
    sched = denoiser.schedule
    x = x_T.detach()
    hook.start(x, times)
    last_x0 = None
    # schedule coefficients of the whole grid, once (on the state's device and dtype)
    alphas = sched.alpha(times).to(dtype=x.dtype, device=x.device)
    sigmas = sched.sigma(times).to(dtype=x.dtype, device=x.device)
    times_x = times.to(dtype=x.dtype, device=x.device)
    guard = Guard(denoiser, method=getattr(current_solver(), "name", None) or desc, quantity="x_t")
    bar = tqdm(range(n_steps), desc=desc, disable=not progress, leave=False)
    i = 0
    try:
        for i in bar:
            x, last_x0 = _step(denoiser, hook, x, i, n_steps, times, times_x, alphas, sigmas, eta, generator,
                               guard, last_x0, bar)
    except KeyboardInterrupt as exc:
        bar.close()
        if isinstance(exc, RunInterrupted):
            raise
        raise RunInterrupted(f"{guard.method}: reverse diffusion interrupted at step {i + 1}/{n_steps} "
                             f"(t={float(times[i]):.4f}); .partial holds the current state",
                             partial={"x": x, "x0": last_x0, "t": float(times[i]), "interrupted": True},
                             step=i) from None
    return x


def _step(denoiser, hook, x, i, n_steps, times, times_x, alphas, sigmas, eta, generator, guard, last_x0, bar):
    """One step of :func:`reverse_diffusion`: ``(x_next, x0_hat)``."""
    t, s = times[i], times[i + 1]
    a_t, s_t, a_s, s_s = alphas[i], sigmas[i], alphas[i + 1], sigmas[i + 1]
    if s > t:  # time travel: forward-noise from t to s
        r = a_s / a_t
        std = torch.sqrt((s_s**2 - (r * s_t) ** 2).clamp(min=0.0))
        return r * x + std * torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device), last_x0
    with torch.set_grad_enabled(hook.needs_grad):
        if hook.needs_grad:
            x = x.detach().requires_grad_(True)
        x0 = denoiser(x, times_x[i])
        eps = (x - a_t * x0) / s_t
        state = StepState(i, n_steps, t, s, x, x0, eps, a_t, s_t, a_s, s_s, eta, generator)
        out = hook.correct_x0(state)
        x_next = None
        if out is not None:
            if not isinstance(out, Correction):
                raise TypeError(f"{type(hook).__name__}.correct_x0 must return None or a Correction, "
                                f"got {type(out).__name__}")
            if out.x0 is not None:
                state.x0 = out.x0
            if out.eps is not None:
                state.eps = out.eps
            x_next = out.x_next
        if x_next is None:
            c_eps, c = ddim_coefficients(a_t, s_t, a_s, s_s, eta)
            x_next = a_s * state.x0 + c_eps * state.eps
            if float(c) > 0:
                x_next = x_next + c * state.noise()
        x_next = hook.correct_step(state, x_next)
    x_next = x_next.detach()
    bound = guard.bound(float(a_s), float(s_s))
    bad, m = guard.exceeded(x_next, bound)
    if bad:
        bar.close()
        err = guard.error(i, n_steps, m, bound, t=float(t), last=x.detach(), last_x0=last_x0)
        if not math.isfinite(m):
            err.args = (str(err) + " Other causes of NaN: a measurement with NaN/Inf, or a denoiser "
                        "producing NaN.",)
        raise err
    return x_next, state.x0.detach()


def initial_noise(denoiser: Denoiser, shape, generator=None, dtype=None, device=None) -> torch.Tensor:
    """Draw ``x_1`` from the reference ``N(0, sigma(1)^2 I)`` of the schedule."""
    std = denoiser.schedule.prior_std()
    return std * torch.randn(tuple(shape), generator=generator, dtype=dtype, device=device)


def terminal_noise(prior, shape, generator=None, dtype=None, device=None) -> torch.Tensor:
    """Draw ``x_1`` where ``prior`` (a DiffusionPrior) starts its own reverse diffusion: the
    denoiser's exact noised marginal when it has one and ``prior.terminal == "auto"`` (Gaussian
    mixtures), else the reference ``N(0, sigma(1)^2 I)``. Solvers start here, so they and
    ``DiffusionPrior.sample`` share one prior model (at d = 800 the reference start alone moves 30 %
    of a GMM prior's mass between components); the exceptions are methods whose start is part of
    their definition: DDRM / DDNM+ (spectral start conditioned on y), FPS (x_T conditioned on the
    y-trajectory) and Kadkhodaie-Simoncelli (adaptive noise level)."""
    exact = exact_terminal(prior)
    if exact is not None:
        return exact(tuple(shape), generator, dtype, device)
    return initial_noise(prior.denoiser, shape, generator, dtype, device)


def exact_terminal(prior):
    """The denoiser's exact sampler of ``x_1`` when ``prior`` starts from it, else ``None`` (the
    prior starts from the rotation-invariant reference ``N(0, sigma(1)^2 I)``)."""
    exact = getattr(prior.denoiser, "sample_terminal", None)
    return exact if getattr(prior, "terminal", "reference") == "auto" else None


__all__ += ["initial_noise", "terminal_noise", "exact_terminal"]
_ = broadcast_time  # re-exported helper for hooks
