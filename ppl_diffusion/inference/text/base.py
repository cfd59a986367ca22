"""Shared pieces of the text-conditioned latent solvers (P2L, TReg, DreamSampler).

They run on a :class:`~ppl_diffusion.models.latent.LatentDiffusionPrior` whose latent denoiser is a
:class:`~ppl_diffusion.models.text.PromptedDenoiser` (``prior.condition(prompt, guidance)``): the
prompt embedding ``c``, the null embedding and the classifier-free guidance weight ``w`` come from
the model. Their loops are written out (they change the prompt / null embeddings during the run),
and every network pass goes through the text denoiser, whose evaluations are what ``Draws`` counts.

The data-consistency solve shared by P2L's projection, TReg and DreamSampler is
``x* = argmin_x ||y - A x||^2 + lam ||x - x0||^2``, i.e. ``(A^T A + lam I) x = A^T y + lam x0``, by
``cg_iters`` conjugate-gradient iterations started at ``x0`` (TReg / DreamSampler code: 5 / 10
iterations, ``lam = 1e-4``).
"""
from __future__ import annotations

import dataclasses

import torch

from ...models.operators.cg import conjugate_gradient
from ...models.text import PromptedDenoiser
from ..latent.base import LatentSolver
from ..likelihood import per_sample_sq_norm
from ..problem import Problem

__all__ = ["TextSolver", "data_consistency", "residual_norm", "guided"]


def data_consistency(problem: Problem, x0: torch.Tensor, lam: float, iters: int) -> torch.Tensor:
    """``(A^T A + lam I)^{-1} (A^T y + lam x0)`` by ``iters`` CG iterations from ``x0``."""
    g = problem.gaussian("the data-consistency solve")
    op = g.operator
    b = op.adjoint(g.y.to(x0.dtype)) + lam * x0
    ne = len(problem.event_shape)
    return conjugate_gradient(lambda v: op.normal(v) + lam * v, b, x0=x0, max_iter=iters, tol=0.0, event_dim=ne)


def residual_norm(problem: Problem, x: torch.Tensor) -> torch.Tensor:
    """Per-sample ``||y - A x||``."""
    g = problem.gaussian("the residual norm")
    sq = per_sample_sq_norm(g.y - g.operator(x))
    return torch.sqrt(sq.clamp(min=torch.finfo(sq.dtype).tiny))


def guided(text, z, t, c, null, w: float) -> torch.Tensor:
    """Classifier-free guided ``x0``: ``D(null) + w (D(c) - D(null))`` (one pass for w in {0, 1})."""
    if w == 1.0:
        return text.forward_embedded(z, t, c)
    d0 = text.forward_embedded(z, t, null)
    return d0 if w == 0.0 else d0 + w * (text.forward_embedded(z, t, c) - d0)


class TextSolver(LatentSolver):
    """Base class: a latent solver that needs a text-conditioned prior (see the module docstring)."""

    family = "text"
    requires = ("linear",)

    def check(self, problem: Problem) -> None:
        super().check(problem)
        self.prompted(problem)

    def prompted(self, problem: Problem) -> PromptedDenoiser:
        den = problem.prior.latent_denoiser
        if not isinstance(den, PromptedDenoiser):
            raise ValueError(
                f"{self.name}: the prior site {problem.prior_site!r} is not a text-conditioned LatentDiffusionPrior; "
                f"{self.name} needs a prompt: write x = pyro.sample({problem.prior_site!r}, prior.condition('a "
                "handwritten digit seven', guidance=...)) with a text prior such as load_latent_prior('digits-text')")
        return den

    def coefficients(self, problem: Problem):
        """``(times, alphas, sigmas)`` of the run's grid in the problem's dtype."""
        times = self.times(problem)
        sched = problem.prior.schedule
        return times, sched.alpha(times).to(problem.dtype), sched.sigma(times).to(problem.dtype)

    def draw(self, num_samples: int, *args, generator: torch.Generator | None = None, **kwargs):
        """As :meth:`LatentSolver.draw`, with network evaluations counted on the text denoiser."""
        text = self.prompted(self.problem(*args, **kwargs)).text
        e0 = text.sample_evals
        self._stats = {}
        out = super().draw(num_samples, *args, generator=generator, **kwargs)
        nfe = (text.sample_evals - e0) / num_samples
        extra = dict(out.extra)
        extra["network_calls_per_sample"] = nfe + extra["decoder_evals_per_sample"] + extra["encoder_evals_per_sample"]
        extra.update(self._stats)
        return dataclasses.replace(out, nfe_per_sample=float(nfe), extra=extra)
