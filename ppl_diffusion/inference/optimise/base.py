"""Shared machinery of the optimise-the-input family (CSGM-type solvers).

These solvers treat a fast deterministic sampler as a generator ``x = G(z)`` and fit its input to
the measurement: ``z* = argmin_z L(A G(z), y)`` (Bora, Jalal, Price, Dimakis, "Compressed sensing
using generative models", ICML 2017, Eq. 2, with a diffusion sampler as G). They return POINT
ESTIMATES: each draw is one random restart (a different initial ``z``), and the objective value each
restart reached is in ``Draws.stats["objective"]`` (``sample_stats`` of the InferenceData). The
spread of restarts is not a posterior spread.

Here: :func:`ddim_times` / :func:`ddim_map` (the few-step deterministic DDIM map of DMPlug and
SHRED), the objective, the optimiser loop with optional sphere projection and early stopping by the
windowed moving variance of the iterates (ES-WMV: Wang et al., "Early stopping for deep image prior",
TMLR 2023; used by DMPlug, Wang et al. NeurIPS 2024, Sec. 3.3), which never looks at the ground truth.
"""
from __future__ import annotations

import math

import torch

from ..problem import Problem
from ..solver import Draws, OptionError, Solver, check_choice, check_int, check_number

__all__ = ["ddim_times", "ddim_map", "InputOptimiser", "OPTIMIZERS", "LOSSES", "EARLY_STOPPING"]

OPTIMIZERS = ("adam", "sgd")
LOSSES = ("mse", "nll")
EARLY_STOPPING = ("none", "wmv")


def ddim_times(schedule, steps: int, method: str = "this solver") -> torch.Tensor:
    """Continuous times of a ``steps``-step DDIM with diffusers' "leading" spacing on a discrete VP
    schedule of ``T`` training steps: timesteps ``(steps - 1, ..., 0) * (T // steps)`` (3 steps of
    1000: 666, 333, 0; 10 steps: 900, ..., 0)."""
    T = getattr(schedule, "num_train_timesteps", None)
    if T is None or not hasattr(schedule, "timestep_to_t"):
        raise ValueError(f"{method} runs a DDIM over the discrete timesteps of a VP (DDPM) schedule; the prior's "
                         f"schedule is {type(schedule).__name__}. Use a DiffusionPrior with a VPSchedule")
    if steps > T:
        raise OptionError(f"{method}: steps must be <= {T} (the schedule's training steps), got {steps}")
    k = torch.arange(steps - 1, -1, -1, dtype=torch.float64) * (T // steps)
    return schedule.timestep_to_t(k)


def ddim_map(denoiser, z: torch.Tensor, times: torch.Tensor, clip: bool = False,
             grad: str = "full") -> torch.Tensor:
    """The deterministic DDIM (eta = 0) map from ``x_{times[0]} = z`` to ``x0``.

    Step ``t -> s``: ``x0_hat = D(x_t, t)`` (clipped to [-1, 1] with ``clip``; ``eps_hat`` is
    recomputed from the clipped ``x0_hat``), ``x_s = alpha_s x0_hat + sigma_s eps_hat``; the last step
    returns ``x0_hat`` (``alpha = 1``). ``grad="full"`` backpropagates through the network;
    ``grad="straight_through"`` evaluates the network without gradient and writes
    ``x0_hat = (x_t - sigma_t eps_net) / alpha_t`` with ``eps_net`` detached, so ``dx_s/dx_t`` is
    ``alpha_s / alpha_t`` (``sigma_s / sigma_t`` where clipped): the fast inversion of SHRED / BIRD
    (Chihaoui, Lemkhenter, Favaro 2024)."""
    sched = denoiser.schedule
    x = z
    n = len(times)
    for i in range(n):
        t = times[i]
        a_t, s_t = float(sched.alpha(t)), float(sched.sigma(t))
        tt = torch.as_tensor(float(t), dtype=z.dtype, device=z.device)
        if grad == "straight_through":
            with torch.no_grad():
                eps_net = (x - a_t * denoiser(x, tt)) / s_t
            x0 = (x - s_t * eps_net) / a_t
        else:
            x0 = denoiser(x, tt)
        if clip:
            x0 = x0.clamp(-1.0, 1.0)
        if i == n - 1:
            return x0
        eps = (x - a_t * x0) / s_t
        s = times[i + 1]
        x = float(sched.alpha(s)) * x0 + float(sched.sigma(s)) * eps
    return x


class _WMV:
    """Windowed moving variance of the iterates, one track per restart: remembers the output at the
    iterate where the variance over the last ``window`` iterates was smallest and says when every
    restart has gone ``patience`` iterations without a new minimum."""

    def __init__(self, window: int, patience: int):
        self.window, self.patience = window, patience
        self.buf = None
        self.k = 0

    def update(self, x: torch.Tensor, obj: torch.Tensor, k: int) -> bool:
        x = x.detach()
        n = x.shape[0]
        if self.buf is None:
            self.buf = torch.zeros((self.window,) + tuple(x.shape), dtype=torch.float64, device=x.device)
            self.best_var = torch.full((n,), math.inf, dtype=torch.float64)
            self.best_x, self.best_obj = x.clone(), obj.detach().clone()
            self.best_iter = torch.zeros(n, dtype=torch.long)
        self.buf[self.k % self.window] = x.to(torch.float64)
        self.k += 1
        if self.k < self.window:
            return False
        var = self.buf.var(0, unbiased=False).reshape(n, -1).mean(1).cpu()
        better = var < self.best_var
        self.best_var = torch.where(better, var, self.best_var)
        m = better.reshape((n,) + (1,) * (x.dim() - 1)).to(x.device)
        self.best_x = torch.where(m, x, self.best_x)
        self.best_obj = torch.where(better.to(obj.device), obj.detach(), self.best_obj)
        self.best_iter = torch.where(better, torch.full_like(self.best_iter, k), self.best_iter)
        return bool(((k - self.best_iter) > self.patience).all())


class _Step:
    """Elementwise Adam (Kingma & Ba 2015, Algorithm 1; betas 0.9 / 0.999, eps 1e-8, as torch's
    defaults) or plain gradient descent on one tensor, updated in place. Written out so that the
    solvers do not import ``torch.optim`` (whose first import costs seconds)."""

    def __init__(self, kind: str, lr: float, betas=(0.9, 0.999), eps: float = 1e-8):
        self.kind, self.lr, self.betas, self.eps = kind, lr, betas, eps
        self.k, self.m, self.v = 0, None, None

    @torch.no_grad()
    def __call__(self, z: torch.Tensor, g: torch.Tensor) -> None:
        if self.kind == "sgd":
            z.sub_(self.lr * g)
            return
        b1, b2 = self.betas
        if self.m is None:
            self.m, self.v = torch.zeros_like(z), torch.zeros_like(z)
        self.k += 1
        self.m.mul_(b1).add_(g, alpha=1 - b1)
        self.v.mul_(b2).addcmul_(g, g, value=1 - b2)
        mhat, vhat = self.m / (1 - b1**self.k), self.v / (1 - b2**self.k)
        z.sub_(self.lr * mhat / (vhat.sqrt() + self.eps))


class InputOptimiser(Solver):
    """Base of the optimise-the-input solvers: subclasses define the generator (:meth:`generate`),
    the shape of its input (:meth:`latent_shape`) and the network-evaluation counter, and call
    :meth:`_set_common` with their options."""

    family = "optimisation"
    requires = ("likelihood",)

    def _set_common(self, structure: Problem, *, iterations, optimizer, lr, loss, sphere, early_stopping,
                    es_window, es_patience, init, generator) -> None:
        m = type(self).name
        self.iterations = check_int("iterations", iterations, m)
        self.sphere = bool(sphere)
        self.early_stopping = check_choice("early_stopping", early_stopping, EARLY_STOPPING, m)
        self.es_window = check_int("es_window", es_window, m, minimum=2)
        self.es_patience = check_int("es_patience", es_patience, m)
        self._set_fit(structure, optimizer=optimizer, lr=lr, loss=loss, init=init, generator=generator)

    def _set_fit(self, structure: Problem, *, optimizer, lr, loss, init, generator) -> None:
        """Check and keep the options of the fit itself (optimizer, lr, loss, init, generator)."""
        m = type(self).name
        self.optimizer = check_choice("optimizer", optimizer, OPTIMIZERS, m)
        self.lr = check_number("lr", lr, m, low=0.0, low_open=True)
        self.loss = check_choice("loss", loss, LOSSES, m)
        if init is not None and not isinstance(init, torch.Tensor):
            raise OptionError(f"{m}: init must be None (z ~ N(0, I)) or a tensor of initial inputs, got {init!r}")
        self.init, self.generator = init, generator
        if self.loss == "mse" and not structure.is_gaussian:
            raise ValueError(f"{m}: loss='mse' (the paper's |A(x) - y|^2) needs one GaussianMeasurement likelihood "
                             f"site; the model's likelihood sites are {list(structure.observed)}. Pass loss='nll' "
                             "to minimise -log p(y | x) of any differentiable likelihood")

    # -- what a subclass provides -------------------------------------------------------------
    def latent_shape(self, problem: Problem) -> tuple:
        return tuple(problem.event_shape)

    def generate(self, problem: Problem, z: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def counter(self, problem: Problem):
        """The object whose ``sample_evals`` counts this solver's network evaluations."""
        return problem.denoiser

    # -- shared ---------------------------------------------------------------------------------
    def objective(self, problem: Problem, x: torch.Tensor) -> torch.Tensor:
        """Per-restart objective: ``mean |A(x) - y|^2`` (``loss="mse"``) or ``-log p(y | x)``."""
        if self.loss == "nll":
            return -problem.log_likelihood(x)
        lg = problem.gaussian(self.name)
        r = lg.operator(x) - lg.y
        return r.reshape(x.shape[0], -1).pow(2).mean(1)

    def _project(self, z: torch.Tensor) -> torch.Tensor:
        flat = z.reshape(z.shape[0], -1)
        return (flat * (math.sqrt(flat.shape[1]) / flat.norm(dim=1, keepdim=True))).reshape(z.shape)

    def _initial(self, problem: Problem, n: int, generator) -> torch.Tensor:
        shape = (n,) + self.latent_shape(problem)
        if self.init is not None:
            z = self.init.to(dtype=problem.dtype, device=problem.device)
            z = z.expand(shape) if tuple(z.shape) == shape[1:] else z
            if tuple(z.shape) != shape:
                raise ValueError(f"{self.name}: init must have shape {shape[1:]} or {shape}, got {tuple(z.shape)}")
            z = z.clone()
        else:
            z = torch.randn(shape, generator=generator, dtype=problem.dtype, device=problem.device)
        return self._project(z) if self.sphere else z

    def optimise(self, problem: Problem, n: int, generator=None) -> dict:
        """Run the optimiser on ``n`` restarts at once; returns ``x`` (the estimates), ``objective``,
        ``iteration`` (where each estimate was taken), ``z`` (final inputs), ``trace`` ``(iters, n)``
        and ``stopped_at``."""
        z = self._initial(problem, n, generator).requires_grad_(True)
        step = _Step(self.optimizer, self.lr)
        wmv = _WMV(self.es_window, self.es_patience) if self.early_stopping == "wmv" else None
        trace, stopped_at = [], self.iterations
        for k in range(self.iterations):
            x = self.generate(problem, z)
            obj = self.objective(problem, x)
            (grad,) = torch.autograd.grad(obj.sum(), z)
            step(z, grad)
            if self.sphere:
                with torch.no_grad():
                    z.copy_(self._project(z))
            trace.append(obj.detach())
            if not torch.isfinite(obj).all():
                raise FloatingPointError(f"{self.name}: the objective became non-finite at iteration {k}; "
                                         "lower lr or use optimizer='adam'")
            if wmv is not None and wmv.update(x, obj, k):
                stopped_at = k + 1
                break
        if wmv is not None and wmv.buf is not None and wmv.k >= self.es_window:
            x_out, obj_out, it = wmv.best_x, wmv.best_obj, wmv.best_iter.to(torch.float64)
        else:
            with torch.no_grad():
                x_out = self.generate(problem, z.detach())
                obj_out = self.objective(problem, x_out)
            it = torch.full((n,), float(stopped_at))
        return dict(x=x_out.detach(), objective=obj_out.detach(), iteration=it, z=z.detach(),
                    trace=torch.stack(trace) if trace else torch.zeros(0, n), stopped_at=stopped_at)

    def draw(self, num_samples: int, *args, generator: torch.Generator | None = None, **kwargs) -> Draws:
        """``num_samples`` random restarts, each optimised to a POINT ESTIMATE (not posterior draws).

        ``Draws.samples`` ``(1, restarts, *event)``; ``stats``: ``objective`` (each restart's final
        objective) and ``iteration`` (the iterate it was taken at); ``extra``: ``objective_trace``
        ``(iterations, restarts)``, ``z`` (the optimised inputs), ``stopped_at``, ``point_estimate``.
        ``nfe_per_sample``: network evaluations per restart (backward passes not counted)."""
        from ..solver import measure

        n = check_int("num_samples", num_samples, type(self).name)
        problem = self.problem(*args, **kwargs)
        gen = generator if generator is not None else self.generator
        with measure(self.counter(problem)) as meter:
            with torch.enable_grad():
                out = self.optimise(problem, n, gen)
        stats = {"objective": out["objective"][None], "iteration": out["iteration"][None]}
        extra = {"objective_trace": out["trace"], "z": out["z"], "stopped_at": out["stopped_at"],
                 "point_estimate": True}
        return self._draws(out["x"][None], meter, problem, n, stats=stats, extra=extra)
