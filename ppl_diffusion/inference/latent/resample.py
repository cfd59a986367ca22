"""ReSample: hard data consistency with stochastic resampling (Song, Kwon, Zhang, Hu, Qu, Shen,
ICLR 2024), Algorithm 1 of the paper with the constants of the official code.

Base loop: DDIM (``eta = 0``) on the latent; after every step a Latent DPS step with
``zeta_t = 0.5 * scale * alpha_t^2`` (the code's override of its configured scale). Every
``interval`` steps in the last two thirds of the run (``0 < index <= N - N // 3``, ``index``
counting down from ``N - 1``), hard data consistency:

1. look ahead: ``lookahead_steps`` unconditional DDIM steps from ``z'_s`` to time 0 give ``z0_hat``;
2. solve for ``z*``:

   * middle third (``index >= N // 3``): *pixel-space* solver, ``x* = argmin ||y - A x||^2`` by AdamW
     (lr ``pixel_lr``, at most ``pixel_iters``, stop below ``tol``) from ``Dec(z0_hat)``, then ``z* = Enc(x*)``;
   * last third: *latent-space* solver, ``z* = argmin ||y - A Dec(z)||^2`` by AdamW (lr ``latent_lr``,
     at most ``latent_iters``; stop below ``tol`` or once, after 200 iterations, the loss exceeds its
     value 200 iterations earlier) from ``z0_hat``;

3. stochastic resampling back to level ``s`` (Proposition 4.2 of the paper):
   ``z_s ~ N((g^2 alpha_s z* + sigma_s^2 z'_s) / (g^2 + sigma_s^2), g^2 sigma_s^2 / (g^2 + sigma_s^2) I)``
   with ``g^2 = gamma (1 - abar_s) / (1 - abar_t) (1 - abar_t / abar_s)`` (code: ``gamma = 40``).

After the loop one latent-space solve on ``z_0``. The official code's "Tweedie" estimate used for
the DPS step and the look-ahead is ``(z_t - sigma_t^2 eps_hat) / alpha_t`` instead of
``(z_t - sigma_t eps_hat) / alpha_t``; ``legacy_pseudo_x0=True`` reproduces it (default: the correct
estimate). Losses are per sample (sum over the measurement) so that a batch of draws stays
independent.

Cost: 1 latent-denoiser call per step plus ``lookahead_steps`` per consistency step; the inner
solvers cost ``A`` evaluations (pixel) or decoder forward + backward passes (latent, up to
``latent_iters`` per consistency step): ``extra["decoder_evals_per_sample"]`` counts them.
"""
from __future__ import annotations

import torch

from ..likelihood import per_sample_sq_norm
from ..problem import Problem
from ..sampler import Hook, StepState, ddim_coefficients
from ..solver import check_int, check_number
from .base import LatentSolver, data_fit

__all__ = ["ReSample", "stochastic_resample", "pixel_optimization", "latent_optimization"]


def stochastic_resample(z_star, z_prime, alpha_s, sigma_s, gamma2, generator=None) -> torch.Tensor:
    """A draw of ``N((g^2 alpha_s z* + sigma_s^2 z') / (g^2 + sigma_s^2), g^2 sigma_s^2 / (g^2 + sigma_s^2) I)``."""
    s2 = sigma_s**2
    mean = (gamma2 * alpha_s * z_star + s2 * z_prime) / (gamma2 + s2)
    std = torch.sqrt(torch.as_tensor(gamma2 * s2 / (gamma2 + s2), dtype=z_star.dtype))
    return mean + std * torch.randn(z_star.shape, generator=generator, dtype=z_star.dtype, device=z_star.device)


def _adamw(fn, init: torch.Tensor, lr: float, iters: int, tol: float, patience: int | None):
    """Minimise the per-sample loss ``fn(v)`` (shape ``(n,)``) over ``v`` from ``init`` with AdamW."""
    v = init.detach().clone().requires_grad_(True)
    opt = torch.optim.AdamW([v], lr=lr)
    history = []
    with torch.enable_grad():
        for it in range(iters):
            loss = fn(v)
            worst = float(loss.detach().max())
            if worst < tol:
                break
            history.append(worst)
            if patience is not None and it >= patience and worst > history[it - patience]:
                break
            opt.zero_grad(set_to_none=True)
            loss.sum().backward()
            opt.step()
    return v.detach()


def pixel_optimization(problem: Problem, x_init: torch.Tensor, lr: float = 1e-2, iters: int = 2000,
                       tol: float = 1e-6) -> torch.Tensor:
    """``argmin_x ||y - A x||^2 / m`` (per sample) by AdamW from ``x_init`` (ReSample's pixel-space solver)."""
    g = problem.gaussian("ReSample")
    m = int(torch.Size(g.operator.out_shape).numel())
    return _adamw(lambda x: per_sample_sq_norm(g.y - g.operator(x)) / m, x_init, lr, iters, tol, None)


def latent_optimization(problem: Problem, z_init: torch.Tensor, lr: float = 5e-3, iters: int = 500,
                        tol: float = 1e-6, patience: int = 200) -> torch.Tensor:
    """``argmin_z ||y - A Dec(z)||^2 / m`` (per sample) by AdamW from ``z_init`` with the official
    stopping rules (ReSample's latent-space solver)."""
    g = problem.gaussian("ReSample")
    m = int(torch.Size(g.operator.out_shape).numel())
    dec = problem.prior.autoencoder.decode
    return _adamw(lambda z: per_sample_sq_norm(g.y - g.operator(dec(z))) / m, z_init, lr, iters, tol, patience)


class _ReSampleHook(Hook):
    needs_grad = True

    def __init__(self, solver: ReSample, problem: Problem):
        self.s, self.problem = solver, problem
        self.ae = problem.prior.autoencoder
        self.den = problem.prior.latent_denoiser
        self.form = solver.fit_form(problem)

    def start(self, x_T, times):
        self.times = times

    def _lookahead(self, z: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """``lookahead_steps`` unconditional DDIM (eta = 0) steps from level ``s`` to 0."""
        sched = self.den.schedule
        grid = torch.linspace(float(s), 0.0, self.s.lookahead_steps + 1, dtype=torch.float64)
        with torch.no_grad():
            for a, b in zip(grid[:-1], grid[1:]):
                at, st = sched.alpha(a).to(z.dtype), sched.sigma(a).to(z.dtype)
                ab, sb = sched.alpha(b).to(z.dtype), sched.sigma(b).to(z.dtype)
                z0, eps = self.den.to_x0_eps(z, a.to(z.dtype))
                if self.s.legacy_pseudo_x0:
                    z0 = (z - st**2 * eps) / at
                c_eps, _ = ddim_coefficients(at, st, ab, sb, 0.0)
                z = ab * z0 + c_eps * eps
        return z

    def correct_step(self, state: StepState, z_next: torch.Tensor) -> torch.Tensor:
        s = self.s
        z0 = state.x0 if not s.legacy_pseudo_x0 else (state.x - state.sigma_t**2 * state.eps) / state.alpha_t
        L = data_fit(self.problem, self.ae.decode(z0), self.form)
        (grad,) = torch.autograd.grad(L.sum(), state.x)
        z_prime = (z_next - 0.5 * s.scale * state.alpha_t**2 * grad).detach()
        N, index = state.n_steps, state.n_steps - 1 - state.i
        if not (index % s.interval == 0 and 0 < index <= N - N // 3):
            return z_prime
        z0_hat = self._lookahead(z_prime, state.s)
        if index >= N // 3:  # middle third: pixel-space solver, then encode
            with torch.no_grad():
                x_init = self.ae.decode(z0_hat)
            x_star = pixel_optimization(self.problem, x_init, s.pixel_lr, s.pixel_iters, s.tol)
            with torch.no_grad():
                z_star = self.ae.encode(x_star)
        else:  # last third: latent-space solver
            z_star = latent_optimization(self.problem, z0_hat, s.latent_lr, s.latent_iters, s.tol)
        abar_t, abar_s = state.alpha_t**2, state.alpha_s**2
        gamma2 = s.gamma * (1 - abar_s) / (1 - abar_t) * (1 - abar_t / abar_s)
        return stochastic_resample(z_star, z_prime, state.alpha_s, state.sigma_s, gamma2, state.generator)


class ReSample(LatentSolver):
    """ReSample (see the module docstring).

    Args:
        model: Pyro model with a LatentDiffusionPrior site and a GaussianMeasurement (any
            differentiable operator).
        scale: factor on the inner DPS step ``0.5 alpha_t^2`` (official code: 1).
        gamma: stochastic-resampling variance factor (official code: 40, "change for each task").
        interval: steps between hard data-consistency steps (official: 10).
        lookahead_steps: unconditional DDIM steps of the look-ahead (official: 5).
        pixel_lr: AdamW learning rate of the pixel-space solver (official: 1e-2).
        pixel_iters: its maximum iterations (official: 2000).
        latent_lr: AdamW learning rate of the latent-space solver (official: 5e-3).
        latent_iters: its maximum iterations (official: 500).
        tol: stopping loss of both solvers (official: 1e-6).
        final_optimization: one latent-space solve on ``z_0`` after the loop (official: yes).
        legacy_pseudo_x0: use the official code's ``(z_t - sigma_t^2 eps) / alpha_t`` estimate.
        steps: DDIM steps (official: 500).
        eta: DDIM noise (official: 0).
        grid: time grid.
        form: data-fit form of the inner DPS step (``"auto"``, ``"norm"``, ``"loglik"``).
        prior_site: name of the prior site when the model has several.
        progress: show a progress bar.
    """

    name = "ReSample"
    requires = ("gaussian",)

    def __init__(self, model, *, scale: float = 1.0, gamma: float = 40.0, interval: int = 10,
                 lookahead_steps: int = 5, pixel_lr: float = 1e-2, pixel_iters: int = 2000, latent_lr: float = 5e-3,
                 latent_iters: int = 500, tol: float = 1e-6, final_optimization: bool = True,
                 legacy_pseudo_x0: bool = False, steps: int = 500, eta: float = 0.0, grid: str = "uniform",
                 form: str = "auto", prior_site: str | None = None, progress: bool = False):
        n = self.name
        self.scale = check_number("scale", scale, n, low=0.0)
        self.gamma = check_number("gamma", gamma, n, low=0.0, low_open=True)
        self.interval = check_int("interval", interval, n)
        self.lookahead_steps = check_int("lookahead_steps", lookahead_steps, n)
        self.pixel_lr = check_number("pixel_lr", pixel_lr, n, low=0.0, low_open=True)
        self.pixel_iters = check_int("pixel_iters", pixel_iters, n, minimum=0)
        self.latent_lr = check_number("latent_lr", latent_lr, n, low=0.0, low_open=True)
        self.latent_iters = check_int("latent_iters", latent_iters, n, minimum=0)
        self.tol = check_number("tol", tol, n, low=0.0)
        self.final_optimization = bool(final_optimization)
        self.legacy_pseudo_x0 = bool(legacy_pseudo_x0)
        super().__init__(model, steps=steps, eta=eta, grid=grid, form=form, prior_site=prior_site, progress=progress)

    def make_hook(self, problem: Problem, n: int) -> Hook:
        return _ReSampleHook(self, problem)

    def run(self, problem: Problem, n: int, generator=None) -> torch.Tensor:
        z = super().run(problem, n, generator)
        if self.final_optimization and self.latent_iters > 0:
            z = latent_optimization(problem, z, self.latent_lr, self.latent_iters, self.tol)
        return z
