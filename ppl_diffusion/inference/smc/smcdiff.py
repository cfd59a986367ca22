"""SMCDiff (Trippe, Yim, Tischer, Baker, Broderick, Barzilay, Jaakkola, "Diffusion probabilistic modeling
of protein backbones in 3D for the motif-scaffolding problem", ICLR 2023): inpainting (mask operators) only.

One forward-noised trajectory of the observed entries ``y_t`` (shared by all particles of a run);
each step is an ancestral (DDIM eta=1) step from ``p(.|x_t)`` with mean ``mu`` and std ``c``; the free
entries are sampled, the observed ones replaced by ``y_{t'}``; log-weight
``sum_obs log N(y_{t'}; mu_obs, c^2)``; resampling with the engine default (systematic when ESS < N/2;
the paper resamples multinomially at every step: ``resampling="multinomial", ess_threshold=1.0``);
final observed entries = y. A plate of measurements (:mod:`.engine`): each run's trajectory starts
from its own measurement's observed entries.
Cost: N network calls per step. Exact only asymptotically and under the idealised assumption that
the model's forward/backward marginals match.
"""
from __future__ import annotations

import torch

from ...schedules import time_grid
from ..sampler import ddim_coefficients
from ._common import denoise_flat, normal_logpdf
from .engine import FeynmanKac, SMCSampler

__all__ = ["SMCDiff"]


class _SMCDiffFK(FeynmanKac):
    name = "smcdiff"

    def __init__(self, problem, steps, max_batch, grid="auto"):
        lg = problem.linear_gaussian("SMCDiff")
        self.op = lg.operator
        self.bind(problem, max_batch)
        self.mask = self.op.mask.reshape(-1).to(self.device)
        rows, _ = self.observation_rows(lg.y, self.op.out_shape)
        y = lg.y.to(self.dtype)
        # observed entries: (n_mask,), or per run (R * B, n_mask) on a plate's view
        self.y = y.reshape(-1)[self.mask] if rows is None else y.reshape(rows, -1)[:, self.mask]
        self.times = time_grid(self.sched, steps, grid)
        self.n_steps = steps
        self.particle_nfe = steps

    def _ac(self, k):
        t = self.times[k]
        return self.sched.alpha(t).to(self.dtype), self.sched.sigma(t).to(self.dtype)

    def sample_initial(self, R, N, generator):
        K = self.n_steps
        traj = [None] * (K + 1)
        traj[K] = self.y.expand(R, -1)
        for k in range(K - 1, -1, -1):  # forward noising from t_{k+1} up to t_k
            a1, s1 = self._ac(k + 1)
            a0, s0 = self._ac(k)
            r = a0 / a1
            std = torch.sqrt((s0 ** 2 - (r * s1) ** 2).clamp(min=0))
            z = torch.randn(traj[k + 1].shape, generator=generator, dtype=self.dtype, device=self.device)
            traj[k] = r * traj[k + 1] + std * z
        self.y_traj = traj
        x = self.terminal(R, N, generator).reshape(R, N, -1)
        x[..., self.mask] = traj[0][:, None, :]
        return x

    def _pred(self, k, x):
        a_t, s_t = self._ac(k)
        a_s, s_s = self._ac(k + 1)
        x0 = denoise_flat(self.den, x.reshape(x.shape[:2] + self.event_shape), self.times[k], self.event_shape,
                          self.max_batch).reshape(x.shape)
        c_eps, c = ddim_coefficients(a_t, s_t, a_s, s_s, 1.0)
        return a_s * x0 + c_eps * (x - a_t * x0) / s_t, c

    def start(self, x):
        mu, c = self._pred(0, x)
        return {"x": x, "mu": mu}, torch.zeros(x.shape[:2], dtype=torch.float64, device=x.device)

    def move(self, k, state, generator):
        mu = state["mu"]
        _, c = self._pred_c(k)
        x = mu + c * torch.randn(mu.shape, generator=generator, dtype=mu.dtype, device=mu.device)
        x = x.clone()
        x[..., self.mask] = self.y_traj[k + 1][:, None, :]
        return x

    def _pred_c(self, k):
        a_t, s_t = self._ac(k)
        a_s, s_s = self._ac(k + 1)
        return ddim_coefficients(a_t, s_t, a_s, s_s, 1.0)

    def weigh(self, k, state, x_new):
        _, c = self._pred_c(k)
        inc = torch.zeros(x_new.shape[:2], dtype=torch.float64, device=x_new.device)
        if float(c) > 0:
            inc = normal_logpdf(self.y_traj[k + 1][:, None, :], state["mu"][..., self.mask], c ** 2).sum(-1)
        st = {"x": x_new}
        st["mu"] = self._pred(k + 1, x_new)[0] if k + 1 < self.n_steps else x_new
        return st, inc

    def output(self, state):
        return state["x"].reshape(state["x"].shape[:2] + self.event_shape)


class SMCDiff(SMCSampler):
    """SMCDiff (Trippe et al., ICLR 2023): see the module docstring. Needs an inpainting (mask) operator.

    Args:
        model: Pyro model with a diffusion-prior site and a GaussianMeasurement with an inpainting operator.
        particles: particles per run (64).
        steps: time steps (100); one network call per particle and step.
        eta: kept for the shared contract; the proposal is the DDPM (``eta = 1``) step.
        resampling, ess_threshold: ``"systematic"`` when ``ESS < 0.5 N``.
        max_batch, grid, prior_site, progress: see :class:`~ppl_diffusion.inference.smc.engine.SMCSampler`.
    """

    name = "smcdiff"
    requires = ("mask",)

    def __init__(self, model, *, particles: int = 64, steps: int = 100, eta: float = 1.0,
                 resampling: str = "systematic", ess_threshold: float = 0.5, max_batch: int | None = None,
                 grid: str = "auto", prior_site: str | None = None, progress: bool = False):
        super().__init__(model, particles=particles, steps=steps, eta=eta, resampling=resampling,
                         ess_threshold=ess_threshold, max_batch=max_batch, grid=grid, prior_site=prior_site,
                         progress=progress)

    def fk_model(self, problem):
        return _SMCDiffFK(problem, self.steps, self.max_batch, self.grid)
