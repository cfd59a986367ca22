"""FPS and FPS-SMC — filtering posterior sampling (Dou & Song, "Diffusion posterior sampling for linear
inverse problem solving: a filtering perspective", ICLR 2024).

Step 1: a backward DDIM trajectory of the measurement (no network), in the spectral coordinates
``u = (U^T y)_obs``: ``u_T = s * eps``, ``u_{t'} = alpha_{t'} u + sqrt((1-c)(1-ab_{t'})/(1-ab_t)) (u_t -
alpha_t u) + sqrt(c (1-ab_{t'})) s eps'`` (one trajectory per run, shared by its particles).
Step 2: a Bayesian filter on x in the SVD basis: prior kernel ``N(mu, c(1-ab_{t'}))`` with
``mu = alpha_{t'} x0_hat + sqrt((1-c)(1-ab_{t'})) eps_hat`` (one network call), conditioned per
coordinate on the pseudo-observation ``u_{t'} ~ N(s x_{t'}, ab_{t'} sigma_y^2)`` (the scalar Kalman update
:func:`.kalman.gaussian_condition`). FPS-SMC weights each
particle by ``N(u_{t'}; s x, ab' sigma_y^2) N(x; mu, var) / N(x; m, Sigma)`` (the predictive
``p(u_{t'} | x_t)``) and resamples with the engine default (systematic when ESS < N/2; the official code:
multinomial every step, ``resampling="multinomial", ess_threshold=1.0``). FPS is one particle without
weights. ``sigma_y`` is floored at 1e-4. A plate of measurements (:mod:`.engine`): each run's
y-trajectory starts from its own measurement (``u`` per run, ``(R * B, n_obs)``). Needs an SVD
operator. Cost: M network calls per step, no backprop.

Checked against the official code (ZehaoDou-official/FPS-SMC-2023, ``gaussian_diffusion.py`` and the
``epsilon`` mean processor): same y-recursion coefficients, kernel mean/variance and weight. Differences
(conventions, not errors): we condition the step producing ``x_{t'}`` on ``u_{t'}`` with variance
``ab_{t'} sigma_y^2`` (the official code and InverseBench use the y of the input step, and the official
weight uses ``ab_{t-1}`` where its proposal uses ``ab_t``); the last step (``ab = 1``, kernel variance 0)
is ``x0_hat`` weighted by ``N(y; A x, sigma_y^2)`` (official: unweighted, returns particle 0).

What it targets. The Feynman-Kac model is the kernel chain with potentials ``prod_k N(u_k; s x_k,
ab_k sigma_y^2)``; more particles converge to its filter law, not to ``p(x | y)``. In the forward
construction ``y_t - A x_t = sqrt(ab_t) sigma_y n`` with ONE ``n`` for all t, and given ``y`` the
y-trajectory carries no further information on ``x_0`` (``y_t - sqrt(ab_t) y = A(x_t - sqrt(ab_t) x_0)``).
So the filter is the posterior only if (i) the kernels are the exact ``p(x_{t'} | x_t)`` and (ii)
``sigma_y = 0``; at ``sigma_y > 0`` it counts the measurement once per step, as if independent. Neither
holds in practice: (i) the c-rate kernel with the plug-in ``x0_hat`` puts O(1) fresh noise in every
step and is not consistent as steps -> infinity (Kalman closed form, prior N(0, 1), c = 0.95: output
variance 0.55 at 50 steps, 0.60 at 1000), and at ``sigma_y -> 0`` the deterministic last step
``x0_hat(x_{t_1})`` does not satisfy ``A x = y``. tests/test_fps.py pins the closed-form filter law
on a Gaussian prior (what IS exact: the sampler matches its Feynman-Kac model; the y-trajectory has
the marginals ``N(sqrt(ab_t) u, (1 - ab_t) s^2)``).

Measured (benchmarks/results/smc_calibration.md, GMM d = 8, d_y = 2, 50 steps, problems 0-2):
coverage of exact 90 % marginal intervals 0.976 at 256 particles (samples too concentrated; MCGDiff /
TDS 0.919), the same at 1024 (0.990 / 0.972 on problems 0 / 1, SW unchanged: 1.02 / 0.21 vs floor
0.08 / 0.06), and no better at 0.1x / 0.01x sigma_y (coverage 0.65-0.97, SW 0.18-3.2 vs floor <= 0.15).
Its ``log_evidence`` is ``log p(u_{0:T})`` of that model, not ``log p(y)``.
"""
from __future__ import annotations

import torch

from ...models.operators import nonzero_singular
from ...schedules import time_grid
from ._common import denoise_flat, normal_logpdf
from ..solver import OptionError, check_int, check_number
from .engine import FeynmanKac, SMCSampler
from .kalman import gaussian_condition

__all__ = ["FPS", "FPSSMC"]


class _FPSFK(FeynmanKac):
    name = "fps_smc"

    def __init__(self, problem, steps, c_rate, weighted, max_batch, grid="auto"):
        lg = problem.require_svd("FPS")
        self.op, self.noise = lg.operator, max(float(lg.noise_std), 1e-4)
        self.bind(problem, max_batch)
        self.c, self.weighted = c_rate, weighted
        s = torch.as_tensor(self.op.singular_values, dtype=torch.float64).flatten().to(self.device)
        obs = nonzero_singular(s)
        self.obs_idx = torch.nonzero(obs).flatten()
        self.s = s[self.obs_idx].to(self.dtype)
        rows, _ = self.observation_rows(lg.y, self.op.out_shape)
        uty = self.op.Ut(lg.y.to(self.dtype))
        uty = uty.reshape(-1)[: s.numel()] if rows is None else uty.reshape(rows, -1)[:, : s.numel()]
        self.u_obs = uty[..., self.obs_idx]  # (n_obs,), or per run (R * B, n_obs) on a plate's view
        self.times = time_grid(self.sched, steps, grid)
        self.n_steps = steps
        self.ab = self.sched.alpha_bar(self.times).to(self.dtype).to(self.device)
        self.particle_nfe = steps

    def sample_initial(self, R, N, generator):
        # y-trajectory (one per run)
        ab, c, s, u = self.ab, self.c, self.s, self.u_obs
        eps = torch.randn((R, self.D), generator=generator, dtype=self.dtype, device=self.device)
        traj = [s * eps[:, self.obs_idx]]
        for k in range(self.n_steps):
            a, a1 = ab[k], ab[k + 1]
            z = torch.randn((R, self.obs_idx.numel()), generator=generator, dtype=self.dtype, device=self.device)
            un = (torch.sqrt(a1) * u + torch.sqrt((1 - c) * (1 - a1) / (1 - a)) * (traj[-1] - torch.sqrt(a) * u)
                  + torch.sqrt(c * (1 - a1)) * s * z)
            traj.append(un)
        self.u_traj = torch.stack(traj, 1)  # (R, K+1, n_obs)
        # x_T ~ N(0, I) conditioned on u_T ~ N(s x, ab_T sigma_y^2) (observed coords)
        x = torch.randn((R, N, self.D), generator=generator, dtype=self.dtype, device=self.device)
        m, v = self._condition(torch.zeros_like(x), torch.ones((), dtype=self.dtype), 0)
        x = x.clone()
        x[..., self.obs_idx] = m + torch.sqrt(v) * x[..., self.obs_idx]
        return x

    def _condition(self, mu, var, j):
        """Posterior mean/var of the observed coords given u_j."""
        u = self.u_traj[:, j][:, None, :]
        return gaussian_condition(mu[..., self.obs_idx], var, u, self.ab[j] * self.noise ** 2, gain=self.s)

    def _mu(self, k, x):
        t = self.times[k]
        a_t, s_t = self.sched.alpha(t).to(self.dtype), self.sched.sigma(t).to(self.dtype)
        x0b = self.op.Vt(denoise_flat(self.den, self.op.V(x), t, self.event_shape, self.max_batch))
        eps = (x - a_t * x0b) / s_t
        a1 = self.ab[k + 1]
        return torch.sqrt(a1) * x0b + torch.sqrt((1 - self.c) * (1 - a1)) * eps, self.c * (1 - a1)

    def start(self, x):
        mu, var = self._mu(0, x)
        return {"x": x, "mu": mu}, torch.zeros(x.shape[:2], dtype=torch.float64, device=x.device)

    def move(self, k, state, generator):
        mu, var = state["mu"], self.c * (1 - self.ab[k + 1])
        z = torch.randn(mu.shape, generator=generator, dtype=mu.dtype, device=mu.device)
        if float(var) <= 0:
            return mu
        x = mu + torch.sqrt(var) * z
        m, v = self._condition(mu, var, k + 1)
        x = x.clone()
        x[..., self.obs_idx] = m + torch.sqrt(v) * z[..., self.obs_idx]
        return x

    def weigh(self, k, state, x_new):
        j = k + 1
        inc = torch.zeros(x_new.shape[:2], dtype=torch.float64, device=x_new.device)
        if self.weighted:
            xo = x_new[..., self.obs_idx]
            lv = self.ab[j] * self.noise ** 2
            inc = normal_logpdf(self.u_traj[:, j][:, None, :], self.s * xo, lv).sum(-1)
            var = self.c * (1 - self.ab[j])
            if float(var) > 0:
                m, v = self._condition(state["mu"], var, j)
                inc = inc + (normal_logpdf(xo, state["mu"][..., self.obs_idx], var)
                             - normal_logpdf(xo, m, v)).sum(-1)
        st = {"x": x_new}
        st["mu"] = self._mu(j, x_new)[0] if j < self.n_steps else x_new
        return st, inc

    def output(self, state):
        return self.op.V(state["x"])


class FPSSMC(SMCSampler):
    """FPS-SMC (Dou & Song, ICLR 2024): see the module docstring. Needs a linear operator with an SVD.

    Args:
        model: Pyro model with a diffusion-prior site and a linear Gaussian likelihood whose operator
            has an SVD.
        c_rate: the kernel's fresh-noise fraction ``c`` in ``(0, 1]`` (0.95).
        particles: particles per run (20).
        steps: time steps (100); one network call per particle and step, no backprop.
        eta: kept for the shared contract; the kernel's noise is set by ``c_rate``.
        resampling, ess_threshold: ``"systematic"`` when ``ESS < 0.5 N`` (the official code:
            ``"multinomial"``, ``1.0``).
        max_batch, grid, prior_site, progress: see :class:`~ppl_diffusion.inference.smc.engine.SMCSampler`.
    """

    name = "fps_smc"
    requires = ("svd",)
    weighted = True

    def __init__(self, model, *, c_rate: float = 0.95, particles: int = 20, steps: int = 100, eta: float = 1.0,
                 resampling: str = "systematic", ess_threshold: float = 0.5, max_batch: int | None = None,
                 grid: str = "auto", prior_site: str | None = None, progress: bool = False):
        self.c_rate = check_number("c_rate", c_rate, self.name, 0.0, 1.0, low_open=True)
        super().__init__(model, particles=particles, steps=steps, eta=eta, resampling=resampling,
                         ess_threshold=ess_threshold, max_batch=max_batch, grid=grid, prior_site=prior_site,
                         progress=progress)

    def fk_model(self, problem):
        fk = _FPSFK(problem, self.steps, self.c_rate, self.weighted, self.max_batch, self.grid)
        fk.name = self.name
        return fk


class FPS(FPSSMC):
    """FPS (Dou & Song, ICLR 2024): the filter of FPS-SMC with one particle and no weights.

    Args:
        model: as :class:`FPSSMC`.
        c_rate: the kernel's fresh-noise fraction ``c`` in ``(0, 1]`` (0.95).
        particles: must be 1 (use :class:`FPSSMC` for more).
        steps, eta, resampling, ess_threshold, max_batch, grid, prior_site, progress: as :class:`FPSSMC`
            (resampling never happens with one particle).
    """

    name = "fps"
    weighted = False

    def __init__(self, model, *, c_rate: float = 0.95, particles: int = 1, steps: int = 100, eta: float = 1.0,
                 resampling: str = "systematic", ess_threshold: float = 0.5, max_batch: int | None = None,
                 grid: str = "auto", prior_site: str | None = None, progress: bool = False):
        if check_int("particles", particles, self.name) != 1:
            raise OptionError(f"fps: particles must be 1 (use FPSSMC for M > 1), got {particles}")
        super().__init__(model, c_rate=c_rate, particles=particles, steps=steps, eta=eta, resampling=resampling,
                         ess_threshold=ess_threshold, max_batch=max_batch, grid=grid, prior_site=prior_site,
                         progress=progress)
