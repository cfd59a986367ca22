"""SNIPS — Solving Noisy Inverse Problems Stochastically (Kawar, Vaksman, Elad, NeurIPS 2021).

Annealed Langevin dynamics in the spectral coordinates of ``A = U diag(s) V^T`` (Algorithm 1 of the
paper, as in the official ``general_anneal_Langevin_dynamics``). In the VE view ``x~ = x0 + rho eps``,
with ``xb = V^T x~``, ``yh = U^T y`` and the prior score ``sb = V^T (D(x~, rho) - x~) / rho^2``, for
each level ``rho`` and each spectral coordinate ``j`` (``c = step_size``), gradient and step ``a_j``:

* ``s_j = 0``: ``sb_j``, ``a_j = c rho^2``;
* ``s_j rho > sigma_y``: ``s_j (yh_j - s_j xb_j) / (s_j^2 rho^2 - sigma_y^2)``,
  ``a_j = c (rho^2 - sigma_y^2 / s_j^2)``;
* ``s_j rho <= sigma_y``: ``sb_j + s_j (yh_j - s_j xb_j) / (sigma_y^2 - s_j^2 rho^2)``,
  ``a_j = c rho^2 (1 - s_j^2 rho^2 / sigma_y^2)``;

then ``xb <- xb + a * grad + sqrt(2 a) z`` and ``x~ = V xb``. The products ``a_j * grad_j`` are
computed in their cancelled form, so nothing divides by ``s_j rho - sigma_y``. One network call per
Langevin step, no backprop. Needs a linear operator with an SVD. Defaults (set on the GMM
benchmark; the paper's per-dataset step sizes belong to NCSNv2 noise levels): 100 levels,
``steps_each = 1``, ``step_size = 0.5``; the last step adds no noise.
"""
from __future__ import annotations

import torch

from ...models.operators import nonzero_singular
from ..problem import Problem
from ..sampler import Correction, Hook, StepState
from .score_ald import LangevinGuide

__all__ = ["SNIPS"]


class _SNIPSHook(Hook):
    def __init__(self, problem: Problem, step_size: float):
        lg = problem.require_svd("SNIPS")
        self.op, self.sigma0 = lg.operator, float(lg.noise_std)
        self.c = step_size
        self.ne = len(problem.event_shape)
        y = lg.y
        yh = self.op.Ut(y)
        s = torch.as_tensor(self.op.singular_values, dtype=y.dtype, device=y.device).flatten()
        D = int(torch.Size(problem.event_shape).numel())
        r = s.numel()
        self.s = torch.zeros(D, dtype=y.dtype, device=y.device)
        self.s[:r] = s
        self.yh = torch.zeros(yh.shape[:-1] + (D,), dtype=y.dtype, device=y.device)
        k = min(r, yh.shape[-1])
        self.yh[..., :k] = yh[..., :k]
        self.obs = nonzero_singular(self.s)

    def correct_x0(self, state: StepState) -> Correction:
        rho = state.sigma_t / state.alpha_t
        r2 = rho**2
        xt = state.x / state.alpha_t
        xb = self.op.Vt(xt)
        sb = self.op.Vt((state.x0 - xt) / r2)
        s, yh, s0 = self.s, self.yh, self.sigma0
        safe_s = torch.where(self.obs, s, torch.ones_like(s))
        c = self.c
        # case A: unobserved coordinates (s_j = 0)
        a_A = c * r2 * torch.ones_like(s)
        step_A = a_A * sb
        # case B: s_j rho > sigma_0 (likelihood only)
        caseB = self.obs & (s * rho > s0)
        a_B = c * (r2 - s0**2 / safe_s**2)
        step_B = c * (yh / safe_s - xb)
        # case C: s_j rho <= sigma_0
        caseC = self.obs & ~caseB
        s0sq = s0**2 if s0 > 0 else 1.0
        a_C = c * r2 * (1 - s**2 * r2 / s0sq)
        step_C = a_C * sb + c * r2 * s * (yh - s * xb) / s0sq
        a = torch.where(caseB, a_B, torch.where(caseC, a_C, a_A)).clamp(min=0.0)
        step = torch.where(caseB, step_B, torch.where(caseC, step_C, step_A))
        xb = xb + step
        if not state.is_last:
            xb = xb + torch.sqrt(2 * a) * torch.randn(xb.shape, generator=state.generator, dtype=xb.dtype,
                                                      device=xb.device)
        return Correction(x_next=state.alpha_s * self.op.V(xb))


class SNIPS(LangevinGuide):
    """SNIPS (Kawar et al., NeurIPS 2021; module docstring).

    Args:
        model: Pyro model with a diffusion-prior site and a ``GaussianMeasurement`` whose linear
            operator has an SVD.
        step_size: the step factor ``c`` of the table (``> 0``; default 0.5).
        steps_each: Langevin steps per noise level (default 1).
        steps: number of noise levels (default 100).
        eta: unused (each Langevin step sets the next state itself; default 1).
        grid: time grid of the noise levels (see ``ppl_diffusion.schedules.time_grid``).
        prior_site: name of the diffusion-prior site when the model has several.
        progress: show a progress bar.

    Cost: 1 network call per Langevin step, no backpropagation.
    """

    name = "SNIPS"
    requires = ("svd",)

    def __init__(self, model, *, step_size: float = 0.5, steps_each: int = 1, steps: int = 100, eta: float = 1.0,
                 grid: str = "uniform", prior_site: str | None = None, progress: bool = False):
        self._langevin_options(step_size, steps_each)
        super().__init__(model, steps=steps, eta=eta, grid=grid, prior_site=prior_site, progress=progress)

    def make_hook(self, problem: Problem, n: int) -> Hook:
        return _SNIPSHook(problem, self.step_size)
