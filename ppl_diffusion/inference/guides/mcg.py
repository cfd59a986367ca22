"""MCG — Manifold Constrained Gradients (Chung, Sim, Ryu, Ye, NeurIPS 2022).

Update: one network call with autograd per step,

    x0_hat = D(x_t, t),  x'_s = DDPM step,
    x''_s = x'_s - (alpha / ||y - A(x0_hat)||) * grad_{x_t} ||y - A(x0_hat)||^2      (per sample)
    x_s  = x''_s + A^+ (y_s - A x''_s),  y_s = alpha_s y + sigma_s A z               (projection)

The manifold-constrained gradient is DPS's step on the squared norm; the projection onto the noised
measurement is MCG's own step. It enforces ``A x = y`` exactly at ``s = 0``, which fits the noise
when the measurement is noisy (the reason DPS dropped it), so by default (``project="auto"``) it is
applied only to noiseless linear problems; ``project=True`` forces it for any linear Gaussian
problem. Needs: a differentiable likelihood (the gradient step); the projection needs a
GaussianMeasurement with a linear operator and its pseudo-inverse. Non-Gaussian likelihoods use
``grad log p(y | x0_hat)`` scaled by ``alpha``.
"""
from __future__ import annotations

import torch

from ..likelihood import likelihood_gradient
from ..problem import Problem
from ..sampler import Hook, StepState
from ..solver import OptionError, check_number
from .base import DiffusionGuide

__all__ = ["MCG"]


class _MCGHook(Hook):
    needs_grad = True

    def __init__(self, problem: Problem, alpha: float, project: bool):
        self.problem, self.alpha, self.project = problem, alpha, project
        self.gauss = problem.is_gaussian
        if project:
            lg = problem.linear_gaussian("MCG (projection)")
            self.op, self.y = lg.operator, lg.y

    def correct_step(self, state: StepState, x_next: torch.Tensor) -> torch.Tensor:
        x_next = x_next.detach()
        if self.gauss:
            grad, sq = likelihood_gradient(self.problem, state, "sqnorm")
            nb = x_next.dim() - len(self.problem.event_shape)
            scale = (self.alpha / torch.sqrt(sq.clamp(min=torch.finfo(sq.dtype).tiny)))
            x_next = x_next - scale.reshape(scale.shape + (1,) * (x_next.dim() - nb)) * grad
        else:
            grad, _ = likelihood_gradient(self.problem, state, "loglik")
            x_next = x_next + self.alpha * grad
        if self.project:
            y = self.y
            if float(state.sigma_s) > 0:
                z = torch.randn(x_next.shape, generator=state.generator, dtype=x_next.dtype, device=x_next.device)
                y_s = state.alpha_s * y + state.sigma_s * self.op(z)
            else:
                y_s = y.expand(self.op(x_next).shape)
            x_next = x_next + self.op.pinv(y_s - self.op(x_next))
        return x_next


class MCG(DiffusionGuide):
    """Manifold Constrained Gradients (Chung et al., NeurIPS 2022; module docstring).

    Args:
        model: Pyro model with a diffusion-prior site and a differentiable likelihood (the
            projection needs a ``GaussianMeasurement`` with a linear operator and its pseudo-inverse).
        alpha: gradient step (``>= 0``; default 1.0), normalised as the paper's
            ``alpha / ||y - A x0_hat||``.
        project: projection onto the noised measurement: ``"auto"`` (only when ``noise_std == 0`` and
            the operator is linear with a pseudo-inverse), ``True`` or ``False``.
        steps: reverse-diffusion steps (paper: 1000).
        eta: DDIM noise (1 = DDPM ancestral steps, the paper's sampler).
        grid: time grid (see ``ppl_diffusion.schedules.time_grid``).
        prior_site: name of the diffusion-prior site when the model has several.
        progress: show a progress bar.

    Cost: 1 network call + 1 vector-Jacobian product per step.
    """

    name = "MCG"
    requires = ("likelihood",)

    def __init__(self, model, *, alpha: float = 1.0, project="auto", steps: int = 1000, eta: float = 1.0,
                 grid: str = "uniform", prior_site: str | None = None, progress: bool = False):
        self.alpha = check_number("alpha", alpha, self.name, low=0.0)
        if project not in ("auto", True, False):
            raise OptionError(f"MCG: project must be 'auto', True or False, got {project!r}")
        self.project = project if project == "auto" else bool(project)
        super().__init__(model, steps=steps, eta=eta, grid=grid, prior_site=prior_site, progress=progress)

    def check(self, problem: Problem) -> None:
        super().check(problem)
        if self.project is True:
            lg = problem.linear_gaussian(self.name + " (project=True)")
            if not hasattr(lg.operator, "pinv"):
                raise ValueError(f"MCG (project=True) needs an operator with a pseudo-inverse; "
                                 f"{type(lg.operator).__name__} has none")

    def _project(self, problem: Problem) -> bool:
        if self.project != "auto":
            return bool(self.project)
        g = problem._gaussian
        return (g is not None and getattr(g.operator, "is_linear", False) and g.noise_std == 0
                and hasattr(g.operator, "pinv"))

    def make_hook(self, problem: Problem, n: int) -> Hook:
        return _MCGHook(problem, self.alpha, self._project(problem))

