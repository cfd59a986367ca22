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
on the range of ``A^T`` and with ``x`` elsewhere. Other operators are refused at construction
(the identity would not hold). The official code also adds fresh measurement noise to
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


def check_projection(operator, shape, method: str, dtype=torch.float64, tol: float = 1e-6) -> None:
    """Raise a ValueError unless ``A^T A`` is an orthogonal projection (idempotent), tested on random
    vectors of ``shape``."""
    g = torch.Generator().manual_seed(0)
    v = torch.randn((4,) + tuple(shape), generator=g, dtype=dtype)
    op = operator.to(dtype=dtype) if hasattr(operator, "to") else operator
    p = op.adjoint(op(v))
    pp = op.adjoint(op(p))
    err = float((pp - p).norm() / p.norm().clamp(min=1e-30))
    if not err <= tol:
        raise ValueError(f"{method} needs an operator whose A^T A is a projection (an inpainting mask, pooling-type "
                         f"super-resolution with orthonormal rows); {type(operator).__name__} gives "
                         f"||(A^T A)^2 v - A^T A v|| / ||A^T A v|| = {err:.3g}. Use latent_dps, resample, mpgd or "
                         "stsl for this operator")


class _PSLDHook(Hook):
    needs_grad = True

    def __init__(self, problem: Problem, omega: float, gamma: float, measurement_noise: bool):
        lg = problem.linear_gaussian("PSLD")
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
                self.Aty = self.op.adjoint(self.y)
            glued = self.Aty + x0 - self.op.adjoint(Ax)
            sq = per_sample_sq_norm(self.ae.encode(glued) - state.x0)
            glue = torch.sqrt(sq.clamp(min=torch.finfo(x0.dtype).tiny))
            loss = loss + self.gamma * glue
        (grad,) = torch.autograd.grad(loss.sum(), state.x)
        return z_next.detach() - grad


class PSLD(LatentSolver):
    """PSLD (see the module docstring).

    Args:
        model: Pyro model with a LatentDiffusionPrior site and a GaussianMeasurement whose linear
            operator has ``A^T A`` a projection.
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
        check_projection(op, op.in_shape, self.name)

    def make_hook(self, problem: Problem, n: int) -> Hook:
        return _PSLDHook(problem, self.omega, self.gamma, self.measurement_noise)
