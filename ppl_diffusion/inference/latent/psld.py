"""PSLD: Posterior Sampling with Latent Diffusion (Rout, Raoof, Daras, Caramanis, Dimakis,
Shakkottai, NeurIPS 2023), Algorithm 2 of the paper ("goodness" / gluing objective), with the
constants of the official code.

Step ``t -> s`` (one latent-denoiser call under autograd)::

    z0_hat = D^z(z_t, t),  x0_hat = Dec(z0_hat),  z'_s = DDIM_eta(z_t, z0_hat)
    L_meas = ||y - A x0_hat||
    L_glue = ||Enc(A^T y + (I - A^T A) x0_hat) - z0_hat||
    z_s = z'_s - grad_{z_t} (omega L_meas + gamma L_glue)

The gluing term asks the decoded estimate, with its measured part replaced by the measurement, to
be a fixed point of ``Enc``: with ``A^T A`` a projection (inpainting masks; pooling-type
super-resolution with orthonormal rows) ``A^T y + (I - A^T A) x`` is the image that agrees with ``y``
on the range of ``A^T`` and with ``x`` elsewhere. An operator with ``A A^T = c I`` (average pooling,
``c = 1 / f^2``) is used as ``A / sqrt(c)``: the glued image is ``A^T y / c + (I - A^T A / c) x``, the
paper's formula for the rescaled operator. Other operators are refused at construction (the
identity would not hold). The official code also adds fresh measurement noise to
``A x0_hat`` before the norm (``measurement_noise=True``; off by default).

Defaults (official code's argparse): ``omega = 1``, ``gamma = 0.1``, 1000 DDIM steps, ``eta = 0``;
the published run scripts use ``gamma = 0.01 - 0.1`` and ``omega = 0.1 - 0.9`` per task.

Cost per step: 1 latent-denoiser call, 1 decoder and 1 encoder call, one backward pass through all three.
"""
from __future__ import annotations

import torch

from ..likelihood import per_sample_sq_norm
from ..problem import Problem
from ..sampler import Hook, StepState
from ..solver import check_number
from .base import LatentSolver

__all__ = ["PSLD", "check_projection"]


def check_projection(operator, shape, method: str, dtype=torch.float64, tol: float = 1e-6) -> float:
    """``c`` such that ``A^T A / c`` is an orthogonal projection (``A A^T = c I``: ``c = 1`` for masks,
    ``1 / f^2`` for f x f average pooling), tested on random vectors of ``shape``; a ValueError otherwise."""
    g = torch.Generator().manual_seed(0)
    v = torch.randn((4,) + tuple(shape), generator=g, dtype=dtype)
    op = operator.to(dtype=dtype) if hasattr(operator, "to") else operator
    p = op.adjoint(op(v))
    pp = op.adjoint(op(p))
    c = float((pp * p).sum() / (p * p).sum().clamp(min=1e-300))
    err = float((pp - c * p).norm() / (c * p).norm().clamp(min=1e-30)) if c > 0 else float("inf")
    if not err <= tol:
        raise ValueError(f"{method} needs an operator whose A^T A is a projection up to a constant, A A^T = c I (an "
                         f"inpainting mask, average-pooling super-resolution); {type(operator).__name__} gives "
                         f"||(A^T A)^2 v - c A^T A v|| / ||c A^T A v|| = {err:.3g}. Use latent_dps, resample, mpgd or "
                         "stsl for this operator")
    return c


class _PSLDHook(Hook):
    needs_grad = True

    def __init__(self, problem: Problem, omega: float, gamma: float, measurement_noise: bool, c: float):
        lg = problem.linear_gaussian("PSLD")
        self.c = c
        self.op, self.y, self.sigma_y = lg.operator, lg.y, lg.noise_std
        self.ae = problem.prior.autoencoder
        self.omega, self.gamma, self.noise = omega, gamma, measurement_noise
        self.Aty = None

    def correct_step(self, state: StepState, z_next: torch.Tensor) -> torch.Tensor:
        x0 = self.ae.decode(state.x0)
        Ax = self.op(x0)
        pred = Ax + self.sigma_y * state.noise(Ax) if self.noise and self.sigma_y > 0 else Ax
        meas = torch.sqrt(per_sample_sq_norm(self.y - pred).clamp(min=torch.finfo(x0.dtype).tiny))
        loss = self.omega * meas
        if self.gamma > 0:
            if self.Aty is None:
                self.Aty = self.op.adjoint(self.y) / self.c
            glued = self.Aty + x0 - self.op.adjoint(Ax) / self.c
            sq = per_sample_sq_norm(self.ae.encode(glued) - state.x0)
            glue = torch.sqrt(sq.clamp(min=torch.finfo(x0.dtype).tiny))
            loss = loss + self.gamma * glue
        (grad,) = torch.autograd.grad(loss.sum(), state.x)
        return z_next.detach() - grad


class PSLD(LatentSolver):
    """PSLD (see the module docstring).

    Args:
        model: Pyro model with a LatentDiffusionPrior site and a GaussianMeasurement whose linear
            operator has ``A^T A`` proportional to a projection (``A A^T = c I``).
        omega: weight of the measurement term (official default 1).
        gamma: weight of the gluing term (official default 0.1; 0 gives Latent DPS with a constant step).
        measurement_noise: add fresh measurement noise to ``A x0_hat`` before the norm (official code).
        steps: DDIM steps (official default 1000).
        eta: DDIM noise (official default 0).
        grid: time grid.
        form: only ``"auto"`` / ``"norm"`` (PSLD is defined for the Gaussian residual norm).
        prior_site: name of the prior site when the model has several.
        progress: show a progress bar.
    """

    name = "PSLD"
    requires = ("linear",)

    def __init__(self, model, *, omega: float = 1.0, gamma: float = 0.1, measurement_noise: bool = False,
                 steps: int = 1000, eta: float = 0.0, grid: str = "uniform", form: str = "auto",
                 prior_site: str | None = None, progress: bool = False):
        self.omega = check_number("omega", omega, self.name, low=0.0)
        self.gamma = check_number("gamma", gamma, self.name, low=0.0)
        self.measurement_noise = bool(measurement_noise)
        if form == "loglik":
            from ..solver import OptionError

            raise OptionError("PSLD: form must be 'auto' or 'norm' (PSLD uses the residual norm), got 'loglik'")
        super().__init__(model, steps=steps, eta=eta, grid=grid, form=form, prior_site=prior_site, progress=progress)

    def check(self, problem: Problem) -> None:
        super().check(problem)
        op = problem.linear_gaussian(self.name).operator
        self._c = check_projection(op, op.in_shape, self.name)

    def make_hook(self, problem: Problem, n: int) -> Hook:
        return _PSLDHook(problem, self.omega, self.gamma, self.measurement_noise, self._c)
