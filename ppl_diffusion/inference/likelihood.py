"""Likelihood terms shared by the gradient-type solvers (DPS, MCG, Score-ALD, ...).

``likelihood_gradient`` differentiates a per-sample data-fit term through the denoiser: for DPS
(Chung et al., ICLR 2023, Algorithm 1) the unsquared residual norm ``||y - A(x0_hat)||``, for MCG
(Chung et al., NeurIPS 2022) its square, and for any other Pyro likelihood
``log p(y | x0_hat)``.
"""
from __future__ import annotations

import torch

from .problem import Problem
from .sampler import StepState

__all__ = ["per_sample_sq_norm", "residual", "likelihood_gradient"]


def per_sample_sq_norm(r: torch.Tensor, n_batch_dims: int = 1) -> torch.Tensor:
    """``||r_i||^2`` for each sample ``i`` (sum over every non-batch dimension)."""
    return r.reshape(r.shape[:n_batch_dims] + (-1,)).pow(2).sum(-1)


def residual(problem: Problem, x0: torch.Tensor) -> torch.Tensor:
    """``y - A(x0)`` of a Gaussian problem, batched (any operator)."""
    g = problem.gaussian("residual")
    return g.y - g.operator(x0)


def likelihood_gradient(problem: Problem, state: StepState, form: str) -> tuple:
    """``(grad_{x_t} L, L)`` with ``L`` per sample: ``form="norm"`` -> ``L = ||y - A(x0_hat)||``,
    ``"sqnorm"`` -> ``||y - A(x0_hat)||^2``, ``"loglik"`` -> ``log p(y | x0_hat)``; the gradient is
    taken through the denoiser (``state.x`` requires grad). Samples stay uncoupled: the loss is a
    sum of per-sample terms, so each sample's gradient only sees its own term."""
    if form == "loglik":
        L = problem.log_likelihood(state.x0)
    else:
        sq = per_sample_sq_norm(residual(problem, state.x0))
        L = sq if form == "sqnorm" else torch.sqrt(sq.clamp(min=torch.finfo(sq.dtype).tiny))
    (grad,) = torch.autograd.grad(L.sum(), state.x)
    return grad, L.detach()
