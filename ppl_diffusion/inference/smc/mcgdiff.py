"""MCGDiff — Monte Carlo guided diffusion (Cardoso, Janati, Le Corff, Moulines, "Monte Carlo guided
diffusion for Bayesian linear inverse problems", ICLR 2024).

Fully-adapted auxiliary particle filter in the SVD basis ``x_bar = V^T x`` of a linear-Gaussian
problem ``y = A x + sigma_y n`` (the paper's noisy-case construction). Each observed coordinate ``i`` (``s_i > 0``)
has a matching time ``tau_i`` with ``rho(tau_i) = sigma_y / s_i`` (inserted into the time grid;
``tau_i = 0`` when noiseless) and a rescaled observation ``y~_i = alpha(tau_i) (U^T y)_i / s_i``.
For ``t >= tau_i`` the coordinate is *active* with potential
``g_{t,i}(x) = N(x; (alpha_t/alpha_tau) y~_i, 1 - (1 - kappa) alpha_t^2/alpha_tau^2)``.
A step ``t -> t'`` predicts ``m = alpha_t' x0_hat + c_eps eps_hat`` (DDIM-eta, one network call per
particle), weights each particle by ``prod_{i active at t'} N(m_i; mean_{t',i}, c^2 + v_{t',i}) /
g_{t,i}(x_i)`` (a function of ``x_t`` only), resamples (engine default: systematic when ESS < N/2), and draws the active
coordinates from the Kalman update of ``N(m, c^2) g_{t'}`` (:func:`.kalman.gaussian_condition`) and
the free ones from ``N(m, c^2)``. After the last matching time plain DDIM steps run to 0 without weights.

Target: ``p(x_0 | x_bar_{tau_i, i} = y~_i for all i)`` smoothed by ``kappa`` — the exact posterior
as ``kappa -> 0`` (the forward marginal of ``x_bar_{tau_i,i} / alpha_tau`` given ``x0`` is exactly
the law of ``(U^T y)_i / s_i``). Its log-evidence is converted to ``log p(y)`` by the Jacobian
``sum_i log(alpha_{tau_i} / s_i)``. Note (our reading of the paper): a coordinate's own potential is
*not* divided out on the step where it becomes inactive, otherwise its constraint would cancel.
``final_correction=True`` applies the paper's final weight ``log N(U^T y; s x_bar_0, sigma_y^2) -
sum_i log g_{tau_i,i}(x_bar_{tau_i,i})`` (noisy problems), which retargets the exact posterior of the
discretised prior but has heavy-tailed weights (see benchmarks/results/smc_*.md).

Capped matching times (``max_match_times=K``; ``None``, the default, inserts every ``tau_i``).
At most ``K`` matching times are inserted (:func:`.mcgdiff_grid.mcgdiff_grid`: greedy, each pick the one that
most reduces ``sum_i 1 - rho(tau'_i)^2 / rho_i^2``), so a run has at most ``steps + K`` network steps;
every other ``tau_i`` snaps down to the largest grid time ``tau'_i <= tau_i`` and the remainder of its
noise becomes extra observation noise, which keeps the target exact. Derivation: with
``rho_i = sigma_y / s_i`` and ``delta_i^2 = rho_i^2 - rho(tau'_i)^2 >= 0``, the rescaled observation
``ybar_i = x0_i + rho_i n`` has, given ``x0``, the law of ``x_bar_{tau'_i,i} / alpha(tau'_i) + delta_i n'``
(``rho^2`` splits into the forward noise up to ``tau'_i`` plus an independent ``delta_i^2``). So
``y~_i = alpha(tau'_i) ybar_i`` is a noisy observation ``x_bar_{tau'_i,i} + alpha(tau'_i) delta_i n'``
and the target is the posterior given it: ``g_{tau'_i,i}`` gets variance ``kappa + alpha(tau'_i)^2
delta_i^2``, and pushing that through the forward kernel to ``t >= tau'_i`` gives
``v_{t,i} = 1 - (1 - kappa) alpha_t^2/alpha_tau'^2 + alpha_t^2 delta_i^2`` (x_t scale, the scale of
``y~``), used by every potential, look-ahead weight and Kalman move. Evidence: integrating ``x_bar_{tau'}``
out, ``E[g_{tau'_i,i} | x0] = N(y~_i; alpha' x0_i, 1 - alpha'^2 + alpha'^2 delta_i^2 + kappa)
= N(ybar_i; x0_i, rho_i^2 + kappa/alpha'^2) / alpha'`` (as ``sigma'^2 = alpha'^2 rho(tau')^2``, with
``sigma'^2 = 1 - alpha'^2`` on the VP schedules this sampler's potentials assume), and
``N(ybar_i; x0_i, rho_i^2) / s_i = N((U^T y)_i; s_i x0_i, sigma_y^2)``: the same Jacobian
``sum_i log(alpha(tau'_i) / s_i)`` at the snapped times gives ``log p(y)``. The same correction also
applies uncapped to coordinates with ``rho_i > rho(1)`` (``tau_i`` clamped to 1), which the uncapped
sampler used to treat as observed with noise ``rho(1)``. ``K = 0`` snaps every ``tau_i`` onto the base
grid (exactly ``steps`` network steps).

Discretisation (measured, benchmarks/results/smc_calibration*.md): a coordinate matched at a small
``tau_i`` reaches t = 0 through few DDPM steps, and a plug-in DDPM step from ``rho_t`` to ``q rho_t``
restores only a fraction ~``q^2`` of the conditional variance ``Var(x0 | x_t)`` (flat-prior limit), so
well-observed coordinates come out too narrow at coarse grids: 90 % coverage 0.919 at 50 steps (over
-covering), 0.904 at 200 steps with sliced W at the noise floor (GMM d = 8, d_y = 2, N = 256). The
default step noise ``c`` is therefore Analytic-DPM's (``reverse_variance="analytic"``,
:mod:`..analytic_variance`): the plug-in one plus the prior's mean denoising error that the step drops.

A plate of measurements (:mod:`.engine`): the grid, matching times and potentials' variances depend
only on the operator and ``sigma_y``, shared by every measurement; the rescaled observations
``y~`` (and ``U^T y`` of the final correction) are per run, ``(R * B, 1, n_obs)``, so run ``i * B + b``
targets the posterior of measurement ``b`` and its log-evidence estimates ``log p(y_b)``.

Needs: a linear operator with an SVD (``has_svd``), ``sigma_y >= 0``. Cost: N network calls per
step per run, no backprop; uncapped, every distinct matching time adds a step, so operators with many
distinct singular values (a 32x32 Gaussian blur: ~330 distinct matching times) run many more steps
than ``steps``; ``max_match_times`` bounds them.
"""
from __future__ import annotations

import torch

from ...models.operators import nonzero_singular
from ..analytic_variance import resolve_reverse_variance
from ..sampler import ddim_coefficients, exact_terminal
from ..solver import check_int, check_number
from ._common import denoise_flat, normal_logpdf
from .engine import FeynmanKac, SMCSampler
from .kalman import gaussian_condition
from .mcgdiff_grid import check_max_match_times, mcgdiff_grid
from .tail import refine_tail, smc_grid

__all__ = ["MCGDiff"]


class _MCGDiffFK(FeynmanKac):
    name = "mcgdiff"

    def __init__(self, problem, steps, eta, kappa, max_batch, final_correction, grid="auto", max_match_times=None,
                 tail_steps=0, reverse_variance=None):
        lg = problem.require_svd("MCGDiff")
        self.op, self.noise = lg.operator, float(lg.noise_std)
        self.bind(problem, max_batch)
        self.eta, self.kappa = eta, kappa
        s = torch.as_tensor(self.op.singular_values, dtype=torch.float64).flatten().to(self.device)
        r = s.numel()
        y = lg.y.to(self.dtype)
        rows, _ = self.observation_rows(y, self.op.out_shape)
        uty = self.op.Ut(y).to(torch.float64)
        uty = uty.reshape(-1)[:r] if rows is None else uty.reshape(rows, -1)[:, :r]
        obs = nonzero_singular(s)
        self.obs_idx = torch.nonzero(obs).flatten()
        self.s_obs = s[self.obs_idx]
        # (U^T y)_obs: (n_obs,), or per run (R * B, 1, n_obs) on a plate's view (broadcast over particles)
        self.uty = uty[..., self.obs_idx] if rows is None else uty[:, None, self.obs_idx]
        self.ybar = self.uty / self.s_obs
        times = mcgdiff_grid(self.sched, steps, self.s_obs.cpu(), self.noise, kind=smc_grid(self.sched, grid, steps),
                             max_match_times=max_match_times).to(torch.float64)
        times = refine_tail(self.sched, times, tail_steps)
        self.times = times
        self.n_steps = times.numel() - 1
        self.set_step_noise(reverse_variance, times, eta)
        ab = self.sched.alpha_bar(times).to(torch.float64)
        self.ab = ab.to(self.device)
        extra = torch.zeros(self.obs_idx.numel(), dtype=torch.float64)
        if self.noise > 0:
            rho_obs = self.noise / self.s_obs.cpu()
            tau = self.sched.t_of_rho(rho_obs).to(torch.float64)
            # snapped time tau'_i: the largest grid time <= tau_i (tau_i itself when it was inserted)
            k_tau = (times > tau[:, None] + 1e-12).sum(1)
            # delta_i^2 = (sigma_y / s_i)^2 - rho(tau'_i)^2 >= 0; exact matches give 0 (rounding below 1e-9 dropped)
            extra = (rho_obs ** 2 - self.sched.rho(times[k_tau]).to(torch.float64) ** 2).clamp(min=0.0)
            extra = torch.where(extra > 1e-9 * rho_obs ** 2, extra, torch.zeros_like(extra))
        else:
            k_tau = torch.full((self.obs_idx.numel(),), self.n_steps, dtype=torch.long)
        self.k_tau = k_tau.to(self.device)
        self.ab_tau = self.ab[self.k_tau]
        self.extra = extra.to(self.device)  # delta_i^2, extra observation variance in the x0 scale
        self.ytil = torch.sqrt(self.ab_tau) * self.ybar
        self.J = int(self.k_tau.max()) if self.k_tau.numel() else 0  # last filtering grid index
        self.final_correction = bool(final_correction) and self.noise > 0
        # Jacobian: log p(y) = log Z + sum_i (0.5 log ab_tau_i - log s_i)
        self.log_jac = float((0.5 * torch.log(self.ab_tau) - torch.log(self.s_obs)).sum())
        self.particle_nfe = self.n_steps

    # potentials -------------------------------------------------------------------------
    def active(self, j):
        return self.k_tau >= j  # (n_obs,) bool: active at grid index j

    def g_params(self, j):
        ratio = self.ab[j] / self.ab_tau
        mean = torch.sqrt(ratio) * self.ytil
        var = (1.0 - (1.0 - self.kappa) * ratio).clamp(min=self.kappa)  # inactive coords: any positive value
        return mean, var + self.ab[j] * self.extra  # snapped coordinates: + alpha_t^2 delta_i^2

    def log_g(self, j, xo, which):
        mean, var = self.g_params(j)
        lp = normal_logpdf(xo, mean, var)
        return torch.where(which, lp, torch.zeros_like(lp)).sum(-1)

    # network + predictive ---------------------------------------------------------------
    def predict(self, j, xb):
        """m (prior predictive mean to index j+1) and c (its std)."""
        t, s = self.times[j], self.times[j + 1]
        a_t, s_t = self.sched.alpha(t).to(self.dtype), self.sched.sigma(t).to(self.dtype)
        a_s, s_s = self.sched.alpha(s).to(self.dtype), self.sched.sigma(s).to(self.dtype)
        x = self.op.V(xb)
        x0 = denoise_flat(self.den, x, t, self.event_shape, self.max_batch)
        x0b = self.op.Vt(x0)
        eps = (xb - a_t * x0b) / s_t
        c_eps, c = ddim_coefficients(a_t, s_t, a_s, s_s, self.eta)
        return a_s * x0b + c_eps * eps, self.step_noise(j, c)

    def weight_terms(self, j, state):
        """Log-weight depending on x at index j: predictive to j+1 over g_j (restricted to act(j+1))."""
        xb = state["x"]
        m, c = state["m"], state["c"]
        if j >= self.J:
            return torch.zeros(xb.shape[:2], dtype=torch.float64, device=xb.device)
        nxt = self.active(j + 1)
        mean1, var1 = self.g_params(j + 1)
        pred = normal_logpdf(m[..., self.obs_idx], mean1, c.to(torch.float64)[..., None] ** 2 + var1)
        cur = self.log_g(j, xb[..., self.obs_idx], nxt)
        return torch.where(nxt, pred, torch.zeros_like(pred)).sum(-1) - cur

    def caches(self, j, xb):
        st = {"x": xb}
        if j < self.n_steps:
            m, c = self.predict(j, xb)
            st["m"], st["c"] = m, c.expand(xb.shape[:2]).clone() if torch.as_tensor(c).dim() == 0 else c
        else:
            st["m"], st["c"] = xb, torch.zeros(xb.shape[:2], dtype=xb.dtype, device=xb.device)
        return st

    # FK interface -----------------------------------------------------------------------
    def sample_initial(self, R, N, generator):
        exact = exact_terminal(self.prior)  # where the prior starts, in the V basis
        if exact is None:  # N(0, s^2 I) is the same in every orthonormal basis
            std = self.sched.prior_std()
            return std * torch.randn((R, N, self.D), generator=generator, dtype=self.dtype, device=self.device)
        x = exact((R * N,) + self.event_shape, generator, self.dtype, self.device)
        return self.op.Vt(x).reshape(R, N, self.D).to(self.dtype)

    def start(self, xb):
        st = self.caches(0, xb)
        if self.final_correction:
            st["logg_tau"] = torch.zeros(xb.shape[:2], dtype=torch.float64, device=xb.device)
        logw = self.weight_terms(0, st) + self.log_g(0, xb[..., self.obs_idx], self.active(0))
        return st, logw

    def resample_allowed(self, k):
        return k <= self.J

    def move(self, k, state, generator):
        m, c = state["m"], state["c"][..., None]
        z = torch.randn(m.shape, generator=generator, dtype=m.dtype, device=m.device)
        x = m + c * z
        if k + 1 <= self.J:
            act = self.active(k + 1)
            mean1, var1 = self.g_params(k + 1)
            mo, vo = gaussian_condition(m[..., self.obs_idx].to(torch.float64), (c ** 2).to(torch.float64), mean1, var1)
            xo = mo + torch.sqrt(vo) * z[..., self.obs_idx].to(torch.float64)
            x_obs = torch.where(act, xo.to(m.dtype), x[..., self.obs_idx])
            x = x.clone()
            x[..., self.obs_idx] = x_obs
        return x

    def ancestor_log_weight(self, k, state, x_next):
        """log M_{k+1}(x_k^i, x_next) of the fully adapted proposal (the look-ahead weight G_k(x_k^i)
        is already the engine's log-weight): ancestor sampling for conditional SMC."""
        if self.final_correction:
            raise ValueError("mcgdiff: ancestor sampling needs final_correction=False (path-dependent weight)")
        m = state["m"].to(torch.float64)
        c = state["c"].to(torch.float64)[..., None]
        if float(c.min()) <= 0:
            return None
        xn = x_next.to(torch.float64)[:, None]  # (R, 1, D)
        lp = normal_logpdf(xn.expand_as(m), m, c ** 2)  # (R, N, D)
        if k + 1 <= self.J:
            act = self.active(k + 1)
            mean1, var1 = self.g_params(k + 1)
            mo, vo = gaussian_condition(m[..., self.obs_idx], c ** 2, mean1, var1)
            lo = normal_logpdf(xn[..., self.obs_idx].expand_as(mo), mo, vo)
            lp = lp.clone()
            lp[..., self.obs_idx] = torch.where(act, lo, lp[..., self.obs_idx])
        return lp.sum(-1)

    def weigh(self, k, state, x_new):
        j = k + 1
        st = self.caches(j, x_new)
        inc = torch.zeros(x_new.shape[:2], dtype=torch.float64, device=x_new.device)
        if self.final_correction:
            hit = (self.k_tau == j)
            lg = state["logg_tau"] + self.log_g(j, x_new[..., self.obs_idx], hit)
            st["logg_tau"] = lg
        if j <= self.J:
            inc = self.weight_terms(j, st)
        if j == self.n_steps:
            if self.final_correction:
                xo = x_new[..., self.obs_idx].to(torch.float64)
                ll = normal_logpdf(self.uty, self.s_obs * xo, self.noise ** 2).sum(-1)
                inc = inc + ll - st["logg_tau"]
            else:
                inc = inc + self.log_jac
        return st, inc

    def output(self, state):
        return self.op.V(state["x"])


class MCGDiff(SMCSampler):
    """MCGDiff (Cardoso et al., ICLR 2024): see the module docstring. Needs an operator with an SVD.

    Args:
        model: Pyro model with a diffusion-prior site and a linear Gaussian likelihood whose operator
            has an SVD.
        kappa: smoothing of the matching potentials (> 0; exact posterior as ``kappa -> 0``).
        final_correction: reweight by ``p(y | x_0)`` over the matching potentials at the end (noisy
            problems; heavy-tailed weights, see the module docstring).
        max_match_times: insert at most this many matching times (``None``: all; ``0``: exactly
            ``steps`` network steps), snapping the others with the exact extra-variance correction.
        tail_steps: extra steps between the last positive grid time and 0, geometric in sigma down to
            1e-3 (:func:`.tail.refine_tail`: the noiseless last DDPM step then drops ~1e-6 of variance
            instead of ``Var(x_0 | x_{t_1})``); 0 keeps the grid. Default 0: the default grid already ends
            at 1e-3 (use 10 with ``grid="alpha"``).
        particles: particles per run (64).
        steps: base time steps (200); every inserted matching time adds one network step. With
            ``reverse_variance="ddpm"`` the plug-in step drops ``Var(x_0 | x_t)`` at every step, so fewer
            steps narrow the posterior: at 100 steps the 90 % coverage on exact Gaussian-mixture posteriors
            read 0.873-0.878 where exact draws read 0.891; 200 steps on the ``"alpha"`` grid with 10 tail
            steps 0.880-0.885, on the default grid 0.883-0.887 (``benchmarks/variance_loss.py``,
            ``benchmarks/exactness.py``).
        eta: DDIM noise of the proposal (1.0).
        reverse_variance: variance of the prior steps: ``"analytic"`` (default; Analytic-DPM's, Bao et al.
            ICLR 2022 Theorem 1: the plug-in variance plus the prior's mean denoising error that the step
            drops, estimated once per prior from data draws, :mod:`~ppl_diffusion.inference.analytic_variance`),
            ``"ddpm"`` (the plug-in step's, the official code's), or an
            :class:`~ppl_diffusion.inference.analytic_variance.AnalyticVariance` (own data or draws).
            Measured on 60 exact Gaussian-mixture posteriors (d = 8, d_y = 1 / 2 / 4, defaults): 90 %
            coverage 0.889 / 0.892 / 0.895 against exact sets' 0.892 / 0.891 / 0.891, where ``"ddpm"``
            read 0.887 / 0.886 / 0.883 (benchmarks/results/exactness_d8_mcgdiff_analytic_table.md).
        resampling, ess_threshold: ``"systematic"`` when ``ESS < 0.5 N`` (the official code:
            ``"multinomial"``, ``1.0``).
        max_batch: cap on the particles of one network call.
        grid: base time grid (``"auto"``: ``"alpha_log"`` on VP schedules, :func:`.tail.smc_grid`: the
            official grid, uniform in ``alpha(t)``, above ``sigma = 0.3``, log-uniform in ``sigma`` below;
            ``"alpha"``: the official grid throughout).
        prior_site, progress: see :class:`~ppl_diffusion.inference.smc.engine.SMCSampler`.
    """

    name = "mcgdiff"
    evidence_targets_posterior = True
    requires = ("svd",)

    def __init__(self, model, *, kappa: float = 1e-4, final_correction: bool = False,
                 max_match_times: int | None = None, tail_steps: int = 0, particles: int = 64, steps: int = 200,
                 eta: float = 1.0, reverse_variance="analytic",
                 resampling: str = "systematic", ess_threshold: float = 0.5, max_batch: int | None = None,
                 grid: str = "auto", prior_site: str | None = None, progress: bool = False):
        self.kappa = check_number("kappa", kappa, self.name, low=0.0, low_open=True)
        self.final_correction = bool(final_correction)
        self.max_match_times = check_max_match_times(max_match_times, self.name)
        self.tail_steps = check_int("tail_steps", tail_steps, self.name, minimum=0)
        self.reverse_variance = resolve_reverse_variance(reverse_variance, self.name)
        super().__init__(model, particles=particles, steps=steps, eta=eta, resampling=resampling,
                         ess_threshold=ess_threshold, max_batch=max_batch, grid=grid, prior_site=prior_site,
                         progress=progress)

    def fk_model(self, problem):
        return _MCGDiffFK(problem, self.steps, self.eta, self.kappa, self.max_batch, self.final_correction,
                          self.grid, self.max_match_times, self.tail_steps, self.reverse_variance)
