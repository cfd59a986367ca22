"""PnP-DM: split-Gibbs posterior sampling with a diffusion prior (Wu, Sun, Chen, Zhang, Yue, Bouman,
"Principled Probabilistic Imaging using Diffusion Models as Plug-and-Play Priors", NeurIPS 2024).

Target (at a fixed coupling ``rho``): ``pi(x, z) ∝ p(x) exp(-f(z; y) - ||x - z||^2 / (2 rho^2))``.
Its x-marginal is the posterior of a relaxed model: for ``y = A x + sigma_y n`` it is exactly the
posterior under ``y ~ N(A x, sigma_y^2 I + rho^2 A A^T)`` (-> the true posterior as rho -> 0).
One Gibbs sweep at iteration k, with ``rho_k = max(rho_0 decay^k, rho_min)`` (the paper's annealed
split-Gibbs sampler):

1. likelihood step ``z ~ pi(z | x, y) ∝ exp(-f(z) - ||z - x||^2 / (2 rho^2))``:
   - linear Gaussian with an SVD: closed form in the V basis, eigenvalues ``1 / (s^2/sigma_y^2 + 1/rho^2)``
     (noiseless: the observed spectral coordinates are pinned to ``Ut(y)/s``);
   - linear Gaussian with a proximal map only: exact perturb-and-MAP,
     ``z = prox(x + rho xi1, y + sigma_y xi2, sigma_y^2/rho^2)``;
   - anything else (nonlinear operators, any differentiable Pyro likelihood): ``langevin_steps``
     unadjusted Langevin steps of size ``langevin_step`` from ``z = x``
     (``z <- z + gamma grad log p(y|z) - gamma/rho^2 (z - x) + sqrt(2 gamma) xi``);
2. prior step ``x ~ p(x | z)`` with ``z = x + rho eps``: the EDM reverse process from rho to 0 with
   ``denoiser.denoise_ve`` on the EDM grid of ``num_grid`` points (sigma_max 80, sigma_min 0.002, exponent
   7; default 200, the official code's fixed grid has 100) restricted below rho, Euler-Maruyama steps of
   the reverse SDE (``prior_solver="sde"``, official), or DDPM ancestral bridge steps (``"ddpm"``), the
   same with Analytic-DPM's step variance (``"analytic"``, below) or the PF-ODE (``"ode"``); the last step
   returns the denoiser output.
   Unlike the official code, the process starts exactly at rho (not at the next grid point below),
   which is what the Gibbs conditional asks for.

The prior step's variance (``prior_solver="analytic"``, the default; our addition): the bridge step from ``s`` to
``s' < s``, ``x' = D + r (x - D) + s' sqrt(1 - r) n``, ``r = s'^2 / s^2``, is the exponential integrator of the
reverse SDE with the denoiser frozen over the step; it puts ``D = E[x_0 | x_s]`` where the exact kernel
integrates over ``x_0`` and so drops ``(1 - r)^2 Var(x_0 | x_s)`` of variance per step. Analytic-DPM (Bao et
al., ICLR 2022, Theorem 1; :mod:`~ppl_diffusion.inference.analytic_variance`) adds back the mean of that
variance over the data, ``(1 - r)^2 E||x_0 - D(x_s)||^2 / d``, estimated once per prior. For a Gaussian
coordinate of variance v the Gibbs chain's stationary variance is then exact for isotropic data at any grid;
on the 100-point grid at rho = 0.1 (21 steps) it keeps 99.6-100.9 % of every variance of a spectrum
spread over [0.05, 2], where the Euler-Maruyama steps keep 96.5-97.4 % and the plain bridge 87 %, at the same
network calls per sweep (closed form for one Gaussian coordinate, benchmarks/results/pnpdm_prior_step_variance.md).

The grid (``num_grid=200`` by default, twice the official 100 points, twice the prior step's network calls):
what Analytic-DPM does not restore is the mean's error of a denoiser frozen over each step, which shrinks
with the step. Measured against exact draws on Gaussian-mixture posteriors (12 replicas, automatic warm-up;
benchmarks/results/exactness_summary.md), 200 points are inside the exact spread on all three statistics on
16 / 16 / 16 of 20 problems (d = 8, d_y = 1 and 2 holdouts at 16 chains x 20 draws every 40 iterations;
d = 80, d_y = 2 at 100 chains) where 100 points read 15 / 12 / 15, with sliced W inside on 18 / 20 / 18
against 19 / 14 / 16, and on d = 80, d_y = 8 (measured after the change) 18 of 20 where 100 points read 16;
``num_grid=100`` halves the cost where that accuracy is not needed.

Replica exchange (``replicas=K``, ``rho_max``; our addition, not in the paper; :mod:`.replica_exchange`):
K chains at the couplings ``rho_min = r_0 < ... < r_{K-1} = rho_max`` (geometric), each a PnP-DM chain of
its own relaxed target ``pi_j(x, z)``, all advanced in one batch; after each sweep adjacent pairs (even
pairs on even iterations, odd on odd: the non-reversible DEO scheme) swap their states with probability
``min(1, r)``. With ``swap="joint"`` r is the ratio of the joint targets of ``(x, z)``,
``exp((D_j - D_{j+1}) (1/r_j^2 - 1/r_{j+1}^2) / 2)``, ``D = ||x - z||^2``, in which the prior and the
likelihood cancel, so no density of the network is needed; with ``swap="marginal"`` (the default
wherever the likelihood step is the SVD closed form) it is the ratio of the x-marginals, whose
relaxed likelihoods ``N(y; A x, sigma_y^2 I + r_j^2 A A^T)`` are closed-form in the spectral
coordinates (the prior cancels again). Both are valid because only x is kept (the next sweep redraws
z from ``z | x``); the marginal ratio drops the d-dimensional noise of ``D`` and accepts more swaps
(measured: benchmarks/results/kernels_mode_diagnostics.md). The coldest chain (the one returned)
keeps the rho_min target; hot chains cross between modes and hand the crossings down. Its hot states
live on the kernel between calls (reset by ``setup`` / ``run_chains``).

A plate of ``B`` measurements (see :mod:`.base`): the chains run on the
:meth:`~ppl_diffusion.inference.problem.Problem.expand_measurements` view, whose ``y`` has one row per
chain; the closed-form likelihood steps use each chain's own row (``U^T y`` per chain in the SVD step,
``y`` per chain in the proximal step) and replicas share their chain's row.

Correction (``correction=True``; our addition, benchmarks/results/pnpdm_relaxation.md): the relaxed target
inflates the noise variance along the measured directions by ``1 + rho^2 s_i^2 / sigma_y^2``; with an SVD
likelihood step the coldest chain can target the posterior itself, taking its sweep as a
Metropolis-Hastings proposal accepted with ``min(1, w(x') / w(x))``, ``w = L / L_rho`` (closed form).

Needs: any likelihood (closed forms for GaussianMeasurement with a linear operator). Cost per
iteration: the grid points below rho_k network calls (about 60 at rho = 0.3 on the 200-point grid), no backprop through
the network; with replicas, the sum over the couplings (batched: one call per grid point).

Limit (measured, benchmarks/results/kernels_*.md): a single chain is local; it does not move between
well-separated posterior modes once rho is small (GMM setting B, d_y = 2: 90 % coverage 0.37-0.60 on
multimodal posteriors, 0.88-0.89 on unimodal ones). With 12 replicas up to rho = 20 (1,000 burn-in
iterations) the multimodal coverage is 0.90-0.92, max-SW 0.7-2.3x the noise floor, and 16 chains of
2,400 draws reach R-hat 1.006 / bulk ESS 2,598 (without replicas: R-hat 2.7, ESS 19) at ~25x the
network calls per iteration (kernels_replicas.md).
"""
from __future__ import annotations

import math
import warnings

import torch

from ...models.operators import nonzero_singular
from ...schedules import edm_sigmas
from ..analytic_variance import _SHARED as _SHARED_VARIANCE
from ..analytic_variance import error_at
from ..problem import Problem
from ..solver import OptionError, check_choice, check_int, check_number
from .auto_warmup import AutoWarmup
from .base import DiffusionKernel, require_differentiable
from .replica_exchange import ReplicaExchange, geometric_ladder, marginal_swap_log_ratio, swap_log_ratio

__all__ = ["PnPDM", "edm_sigmas", "AnnealingWarning", "PRIOR_SOLVERS"]

#: the prior step's reverse processes (see the module docstring)
PRIOR_SOLVERS = ("sde", "ddpm", "analytic", "ode")


class AnnealingWarning(UserWarning):
    """PnP-DM's annealing of rho runs past the warm-up (kept draws from a relaxed target)."""


class PnPDM(DiffusionKernel):
    """PnP-DM split-Gibbs kernel (see module docstring).

    Args:
        model: Pyro model with a DiffusionPrior site and an observed likelihood.
        rho0: initial coupling (official linear default 10).
        decay: annealing ``rho_k = max(rho0 decay^k, rho_min)``, in (0, 1] (official 0.9).
        rho_min: final coupling (official 0.3; ``rho0 = rho_min`` gives a fixed-rho Gibbs chain).
        prior_solver: ``"analytic"`` (default: the DDPM bridge with Analytic-DPM's step variance,
            measured closest to exact draws), ``"sde"`` (official), ``"ddpm"`` or ``"ode"``.
        num_grid: points of the EDM grid of the prior step (>= 2; default 200, official 100: see above).
        sigma_max, sigma_min: ends of the EDM grid (80, 0.002).
        likelihood_step: ``"auto"`` (SVD > prox > Langevin), ``"svd"``, ``"prox"``, ``"langevin"``.
        langevin_steps: steps of the Langevin likelihood step (official 100).
        langevin_step: its step size (official 1e-4).
        replicas: replica exchange over ``replicas`` couplings from rho_min to rho_max; ``1`` is plain
            PnP-DM. ``swap_acceptance`` gives the rates.
        rho_max: hottest coupling of the replicas (default ``rho0``).
        swap: the replicas' swap ratio: ``"marginal"`` (x-marginals, closed form; needs the SVD
            likelihood step), ``"joint"`` (the ``(x, z)`` targets; any likelihood), ``"auto"``
            (marginal where it applies).
        correction: make the coldest chain target the posterior itself, not the relaxed one (needs the
            SVD likelihood step and noise_std > 0): its sweep at rho_k becomes a Metropolis-Hastings
            proposal, accepted with ``min(1, w(x') / w(x))``, ``w = L / L_rho`` (the sweep is reversible
            for the relaxed target ``p(x) L_rho(x)`` when the prior step is exact, so this ratio is the whole
            MH ratio; the reverse SDE's discretisation is not corrected), and the swaps read the coldest
            chain at rho = 0. ``correction_acceptance`` gives its rate: the relaxation's
            residuals must be comparable to the noise (``rho_min s_max`` not far above ``sigma_y``) or the cold
            chain rarely moves.
        prior_site, init, init_scale, progress: see :class:`~ppl_diffusion.inference.kernels.base.DiffusionKernel`.
    """

    name = "PnP-DM"
    mixing_advice = ("Run longer (warmup_steps='auto', more draws or thin), use replicas (replicas=12 or more) "
                     "and start the chains dispersed.")

    def __init__(self, model, *, rho0: float = 10.0, decay: float = 0.9, rho_min: float = 0.3,
                 prior_solver: str = "analytic", num_grid: int = 200, sigma_max: float = 80.0,
                 sigma_min: float = 0.002, likelihood_step: str = "auto", langevin_steps: int = 100,
                 langevin_step: float = 1e-4, replicas: int = 1, rho_max: float | None = None,
                 swap: str = "auto", correction: bool = False, prior_site: str | None = None, init="randn",
                 init_scale: float = 1.0, progress: bool = False):
        n = self.name
        self.rho0 = check_number("rho0", rho0, n, low=0.0, low_open=True)
        self.rho_min = check_number("rho_min", rho_min, n, low=0.0, low_open=True)
        self.decay = check_number("decay", decay, n, low=0.0, low_open=True)
        if self.decay > 1:
            raise OptionError(f"{n}: decay must lie in (0, 1], got {decay}")
        if self.rho_min > self.rho0:
            raise OptionError(f"{n}: rho_min ({rho_min}) must not exceed rho0 ({rho0})")
        self.prior_solver = check_choice("prior_solver", prior_solver, PRIOR_SOLVERS, n)
        num_grid = check_int("num_grid", num_grid, n, minimum=2)
        self.sigma_max = check_number("sigma_max", sigma_max, n, low=0.0, low_open=True)
        self.sigma_min = check_number("sigma_min", sigma_min, n, low=0.0, low_open=True)
        if self.sigma_min >= self.sigma_max:
            raise OptionError(f"{n}: sigma_min must be < sigma_max")
        self.num_grid = num_grid
        self.grid = edm_sigmas(num_grid, self.sigma_max, self.sigma_min)
        self.likelihood_step = check_choice("likelihood_step", likelihood_step, ("auto", "svd", "prox", "langevin"), n)
        self.langevin_steps = check_int("langevin_steps", langevin_steps, n)
        self.langevin_step = check_number("langevin_step", langevin_step, n, low=0.0, low_open=True)
        self.replicas = check_int("replicas", replicas, n)
        self.rho_max = self.rho0 if rho_max is None else check_number("rho_max", rho_max, n, low=0.0, low_open=True)
        if self.replicas > 1 and self.rho_max <= self.rho_min:
            raise OptionError(f"{n}: rho_max ({self.rho_max}) must exceed rho_min ({self.rho_min}) for replicas > 1")
        self.swap = check_choice("swap", swap, ("auto", "marginal", "joint"), n)
        if not isinstance(correction, bool):
            raise OptionError(f"{n}: correction must be True or False, got {correction!r}")
        self.correction = correction
        if correction and self.swap == "joint":
            raise OptionError(f"{n}: correction=True reads the coldest chain at rho = 0, which only the marginal swap "
                              "ratio can; use swap='marginal' or 'auto'")
        self._mh = torch.zeros(2, dtype=torch.float64)  # correction: (tried, accepted) moves of the cold chain
        self.exchange = ReplicaExchange(geometric_ladder(self.rho_min, self.rho_max, self.replicas))
        self._hot = None  # hot replicas (C, replicas - 1, *event), created by the first step
        self._err_table = None  # prior_solver="analytic": the denoising-error table, set by prepare
        super().__init__(model, prior_site=prior_site, init=init, init_scale=init_scale, progress=progress)

    @property
    def ladder(self) -> list:
        """The replicas' couplings, coldest (rho_min) first."""
        return self.exchange.ladder

    # ------------------------------------------------------------------------------------
    def rho(self, k: int) -> float:
        return max(self.rho0 * self.decay**k, self.rho_min)

    @property
    def annealing_steps(self) -> int:
        """Iterations until ``rho_k`` reaches ``rho_min`` (0 for a fixed coupling): draws kept before
        that come from relaxed targets (``rho > rho_min``), so warm-up must be at least this long."""
        if self.rho0 <= self.rho_min or self.decay >= 1.0:
            return 0
        k = math.ceil(math.log(self.rho_min / self.rho0) / math.log(self.decay) - 1e-12)
        while self.rho(k) > self.rho_min:  # rounding of the logarithms
            k += 1
        return k

    @property
    def min_warmup(self) -> int:
        return self.annealing_steps

    def check_warmup(self, warmup_steps) -> None:
        """Warn when warm-up ends before the annealing does (the first kept draws would come from
        the wrong target); an automatic warm-up starts its checks after the annealing."""
        if not isinstance(warmup_steps, (int, float)):
            return
        k = self.annealing_steps
        if int(warmup_steps) < k:
            warnings.warn(
                f"PnP-DM: rho anneals from rho0={self.rho0:g} to rho_min={self.rho_min:g} over {k} iterations "
                f"(rho0 * decay^k with decay={self.decay:g}), but the warm-up is {int(warmup_steps)}: the first "
                f"{k - int(warmup_steps)} kept draws per chain come from relaxed targets (rho > rho_min). Use "
                f"warmup_steps (MCMC) / warmup (draw) >= {k}, or rho0=rho_min for a fixed coupling.",
                AnnealingWarning, stacklevel=3)

    def setup(self, warmup_steps, *args, **kwargs):
        self.check_warmup(warmup_steps)
        return super().setup(warmup_steps, *args, **kwargs)

    def _chains(self, problem, C, S, warmup_steps, thin, generator, init, progress):
        self.check_warmup(warmup_steps)
        return super()._chains(problem, C, S, warmup_steps, thin, generator, init, progress)

    def draw(self, num_samples: int, *args, chains: int | None = None, warmup: int | str | None = None,
             thin: int = 1, generator: torch.Generator | None = None, init=None, **kwargs):
        """:meth:`DiffusionKernel.draw` with PnP-DM's defaults: ``chains`` = ``max(1, num_samples // 4)``
        (at least 4 draws per chain, so that split R-hat and ESS are defined) and ``warmup``:

        * with replicas and >= 16 chains, ``"auto"`` (:mod:`.auto_warmup`: checkpoints from
          ``max(100,`` :attr:`annealing_steps` ``)`` doubling until the chains stop drifting between
          mode-like regions, up to 3,200). Its first comparison is at 200, the fixed default it replaces
          (measured on d = 800 mixtures with 100 chains: 200 iterations leave up to 28 % of the draws in
          components without posterior mass, the automatic warm-up ran 400-3,200 and left none;
          benchmarks/results/exactness_d800_dy8_pnpdm_exact_prior_step_auto_warmup.md);
        * with replicas and fewer chains, ``max(200, annealing_steps)`` (measured at d = 8: component
          weights inside the exact sampler's spread on 36 of 40 problems, all three statistics on 26;
          benchmarks/results/exactness_d8_pnpdm.md);
        * without replicas, ``max(20, annealing_steps)`` (a single chain is local: more warm-up does
          not move it between modes)."""
        n = check_int("num_samples", num_samples, self.name)
        chains = max(1, n // 4) if chains is None else chains
        if warmup is None:
            if self.replicas > 1 and isinstance(chains, int) and chains >= AutoWarmup.min_chains:
                warmup = "auto"  # its first checkpoint is raised to the annealing by resolve_warmup
            else:
                warmup = max(200 if self.replicas > 1 else 20, self.annealing_steps)
        return super().draw(n, *args, chains=chains, warmup=warmup, thin=thin, generator=generator, init=init,
                            **kwargs)

    def levels(self, k: int) -> list:
        """The couplings of the ``replicas`` chains at iteration ``k``, coldest (the target) first:
        ``max(ladder_j, rho_k)`` on the geometric ladder from rho_min to rho_max."""
        rho = self.rho(k)
        return [max(level, rho) for level in self.ladder]

    def schedule_info(self, k: int) -> dict:
        info = {"rho": self.rho(k)}
        if self.replicas > 1:
            info["swap_rate"] = float(self.swap_acceptance.mean())
        if self.correction:
            info["correction_rate"] = self.correction_acceptance
        return info

    def _mode(self, problem: Problem) -> str:
        lg = None
        try:
            lg = problem.linear_gaussian(self.name)
        except ValueError:
            pass
        op = None if lg is None else lg.operator
        has_svd = op is not None and getattr(op, "has_svd", False)
        has_prox = op is not None and getattr(op, "has_prox", False)
        if self.likelihood_step == "auto":
            return "svd" if has_svd else ("prox" if has_prox else "langevin")
        if self.likelihood_step == "svd" and not has_svd:
            problem.require_svd(f"{self.name} (likelihood_step='svd')")
        if self.likelihood_step == "prox" and not has_prox:
            raise ValueError(f"{self.name} (likelihood_step='prox') needs a linear Gaussian operator with prox")
        return self.likelihood_step

    def check(self, problem: Problem) -> None:
        mode = self._mode(problem)
        if mode == "langevin" and problem.is_gaussian and problem._gaussian.noise_std == 0:
            raise ValueError(f"{self.name}: a noiseless measurement (noise_std=0) needs a linear operator "
                             "with an SVD (the Langevin likelihood step needs a finite log-likelihood)")
        if mode == "prox" and problem._gaussian.noise_std == 0:
            raise ValueError(f"{self.name}: a noiseless measurement needs an operator with an SVD, not only prox")
        if mode == "langevin":
            require_differentiable(problem, self.name)
        if self.correction and (mode != "svd" or problem._gaussian.noise_std == 0):
            raise ValueError(f"{self.name}: correction=True needs the closed-form likelihood ratio L / L_rho of a "
                             f"linear Gaussian measurement with an SVD and noise_std > 0 (this model's likelihood step "
                             f"is {mode!r}); use correction=False, whose target is the relaxed posterior")
        if self.swap == "marginal" and mode != "svd":
            raise ValueError(f"{self.name}: swap='marginal' needs the closed-form relaxed likelihood of the SVD "
                             f"likelihood step (this model's likelihood step is {mode!r}); use swap='joint' or 'auto'")

    def prepare(self, problem: Problem) -> None:
        self.mode = self._mode(problem)
        self.swap_ratio = "marginal" if self.swap == "marginal" or (self.swap == "auto" and self.mode == "svd") \
            else "joint"
        self._y_batch = ()
        self._replica_views = {}
        # chains of a plate's view (its y has one row per chain)
        self._chains_total = len(next(iter(problem.observed.values()))["value"]) if self.plate_problem else None
        self._hot = None
        self.exchange.reset()
        self._mh = torch.zeros(2, dtype=torch.float64)
        self._ne = len(problem.event_shape)
        self._err_table = None
        if self.prior_solver == "analytic":  # the denoising error per noise level, once per prior (cached)
            self._err_table = _SHARED_VARIANCE.table(problem.denoiser, problem.prior, problem.event_shape,
                                                     problem.dtype, problem.device)
        if self.mode in ("svd", "prox"):
            lg = problem.linear_gaussian(self.name)
            self.op, self.y, self.noise_std = lg.operator, lg.y.to(problem.dtype), float(lg.noise_std)
            # a plate's view: one row of y per chain, (chains, *out); else y itself, (*out)
            self._y_batch = tuple(self.y.shape[: self.y.dim() - len(self.op.out_shape)])
        if self.mode == "svd":
            s = self.op.singular_values.to(problem.dtype).to(problem.device).reshape(-1)
            self.s = s
            uty = self.op.Ut(self.y)
            # spectral observation coordinates: (r,), or (chains, r) for a plate's view
            self.ybar = uty.reshape(self._y_batch + (-1,))[..., : s.numel()]

    # ------------------------------------------------------------------------------------
    def _likelihood_svd(self, x, rho, generator):
        op, s, sy = self.op, self.s, self.noise_std
        r = s.numel()
        xb = op.Vt(x)                                    # (B, D)
        rho = rho.to(xb.dtype).reshape(-1, 1)            # (B, 1): one coupling per sample
        noise = torch.randn(xb.shape, generator=generator, dtype=x.dtype, device=x.device)
        zb = xb + rho * noise                            # unobserved coordinates: N(x, rho^2)
        xo, no = xb[:, :r], noise[:, :r]
        nz = nonzero_singular(s)
        ybar = self._rows(self.ybar, xb.shape[0])
        if sy > 0:
            prec = s**2 / sy**2 + 1.0 / rho**2
            lam = 1.0 / prec
            mean = lam * (s * ybar / sy**2 + xo / rho**2)
            zo = mean + lam.sqrt() * no
        else:
            zo = torch.where(nz, ybar / torch.where(nz, s, torch.ones_like(s)), xo + rho * no)
        zb = torch.cat([zo, zb[:, r:]], -1)
        return op.V(zb).reshape(x.shape)

    def _likelihood_prox(self, x, rho, generator):
        sy = self.noise_std
        rho = rho.to(x.dtype)
        xp = x + _per_sample(rho, x) * torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        y = self._rows(self.y, x.shape[0])
        y = y.expand((x.shape[0],) + tuple(y.shape[len(self._y_batch):]))
        yp = y + sy * torch.randn(y.shape, generator=generator, dtype=x.dtype, device=x.device)
        return self.op.prox(xp, yp, sy**2 / rho**2)

    def _likelihood_langevin(self, x, rho, generator):
        gamma = self.langevin_step
        c = gamma / _per_sample(rho.to(x.dtype), x) ** 2
        z = x.clone()
        for _ in range(self.langevin_steps):
            g = self._grad_log_likelihood(z)
            z = z + gamma * g - c * (z - x) + math.sqrt(2 * gamma) * torch.randn(
                z.shape, generator=generator, dtype=z.dtype, device=z.device)
        return z

    def _rows(self, v: torch.Tensor, n: int) -> torch.Tensor:
        """The per-chain observation ``v`` (``(chains, ...)`` on a plate's view) for a batch of ``n``
        samples: the chains themselves, or their replicas (chain-major, ``c * K + k``) sharing the
        chain's row; ``v`` unchanged without a plate (it broadcasts)."""
        if not self._y_batch:
            return v
        m = v.shape[0]
        if n == m:
            return v
        if n % m:
            raise ValueError(f"{self.name}: a batch of {n} is not a whole number of {m} chains")
        return v.repeat_interleave(n // m, 0)

    def _grad_log_likelihood(self, z: torch.Tensor) -> torch.Tensor:
        """``grad log p(y | z)`` for the batch ``z``: the chains, or their replicas (chain-major). On a
        plate's view the likelihood conditions element ``i * B + b`` on measurement ``b``, so the
        replicas (``(chain, replica)`` order) are put replica-major first, on the view for
        ``replicas x chains`` samples per measurement."""
        p = self.current_problem
        plated = self.plate_problem
        M = self._chains_total if plated is not None else None
        if plated is None or z.shape[0] == M:
            return p.grad_log_likelihood(z)[1]
        K = z.shape[0] // M
        rest = tuple(z.shape[1:])
        view = self._replica_views.get(K)
        if view is None:
            view = self._replica_views[K] = plated.expand_measurements(K * M // plated.num_measurements)
        zt = z.reshape((M, K) + rest).transpose(0, 1).reshape(z.shape)
        g = view.grad_log_likelihood(zt)[1]
        return g.reshape((K, M) + rest).transpose(0, 1).reshape(z.shape)

    def _sigma_table(self, rho: torch.Tensor) -> torch.Tensor:
        """Noise levels of the prior step for each coupling in ``rho`` (R,): row i is ``rho_i``
        followed by the EDM grid points below it, front-padded with ``rho_i`` (idle steps) so that
        every row has the same length and ends at the same step (on the smallest grid point, or at
        ``rho_i`` itself when it lies below the grid)."""
        g = self.grid.to(rho.device)
        rows = [torch.cat([r.reshape(1), g[g < r]]) for r in rho]
        L = max(len(row) for row in rows)
        return torch.stack([torch.cat([row[:1].expand(L - len(row)), row]) for row in rows])

    def _reverse_step(self, x, D, s, s_next, generator):
        """One step of the prior-step reverse process from level ``s`` to ``s_next`` (floats or
        per-sample tensors broadcastable to ``x``) given the denoiser output ``D``."""
        if self.prior_solver == "ode":
            return x + (s_next - s) * (x - D) / s
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        if self.prior_solver == "sde":
            return x + (s_next - s) * 2.0 * (x - D) / s + (2 * s * (s - s_next)) ** 0.5 * noise
        r = (s_next / s) ** 2  # DDPM bridge: x_s | x_t, x0 = D
        var = s_next**2 * (1 - r)
        if self._err_table is not None:  # Analytic-DPM: the mean Var(x_0 | x_s) the plug-in D drops
            err = error_at(self._err_table, torch.as_tensor(s, dtype=torch.float64, device=x.device))
            var = var + (1 - r) ** 2 * err.to(x.dtype)
        return D + r * (x - D) + var**0.5 * noise

    def _prior(self, z, rho, level, generator):
        """``x ~ p(x | z)`` for ``z = x + rho eps``: the reverse process from each sample's own
        coupling ``rho[level[b]]`` to 0. One network call per grid point, on the samples that are
        not idle at that point."""
        den = self.current_problem.denoiser
        if bool((rho == rho[0]).all()):  # every coupling equal (e.g. during annealing): one row
            rho = rho[:1]
        S = self._sigma_table(rho)
        x, L = z, S.shape[1]
        if S.shape[0] == 1:  # one coupling: plain float levels
            sig = S[0].tolist()
            for j in range(L - 1):
                x = self._reverse_step(x, den.denoise_ve(x, sig[j]), sig[j], sig[j + 1], generator)
            return den.denoise_ve(x, sig[-1])
        S = S[level]                                    # (B, L) per-sample levels
        for j in range(L - 1):
            s, s_next = S[:, j], S[:, j + 1]
            act = torch.nonzero(s_next < s).flatten()
            if act.numel() == 0:
                continue
            xa = x[act]
            sa, sn = _per_sample(s[act], xa), _per_sample(s_next[act], xa)
            D = den.denoise_ve(xa, s[act].to(x.dtype))
            x = x.index_copy(0, act, self._reverse_step(xa, D, sa.to(x.dtype), sn.to(x.dtype), generator))
        return den.denoise_ve(x, S[:, -1].to(x.dtype))

    def _sweep(self, x, rho, level, generator):
        """One Gibbs sweep (likelihood step, then prior step); returns ``(x', z)``."""
        r = rho[level]
        if self.mode == "svd":
            z = self._likelihood_svd(x, r, generator)
        elif self.mode == "prox":
            z = self._likelihood_prox(x, r, generator)
        else:
            z = self._likelihood_langevin(x, r, generator)
        return self._prior(z, rho, level, generator), z

    def _metropolis(self, x, new, rho, generator):
        """The correction's accept step for the coldest chain: ``x -> new`` (both ``(C, *event)``, ``new``
        from one sweep at ``rho`` (a 0-dim tensor), reversible for ``p L_rho``) with probability
        ``min(1, w(new) / w(x))``, ``w = L / L_rho``. Non-finite proposals pass through (the caller counts
        the divergence)."""
        lev = torch.stack([rho.new_zeros(()), rho])
        log_w = [ll[:, 0] - ll[:, 1] for ll in (self._relaxed_loglik(v, lev) for v in (x, new))]  # log L - log L_rho
        log_r = log_w[1] - log_w[0]
        u = torch.rand(log_r.shape, generator=generator, dtype=torch.float64, device=log_r.device)
        finite = torch.isfinite(new.reshape(new.shape[0], -1)).all(-1)
        acc = (u.log() < log_r) | ~finite
        self._mh += torch.tensor([float(finite.sum()), float((acc & finite).sum())], dtype=torch.float64)
        return torch.where(acc.reshape((-1,) + (1,) * (x.dim() - 1)), new, x)

    @property
    def correction_acceptance(self) -> float:
        """Acceptance rate of the correction's Metropolis step on the coldest chain (``nan`` before a
        run or without ``correction``)."""
        return float(self._mh[1] / self._mh[0]) if self._mh[0] > 0 else float("nan")

    def step(self, x, k, generator=None):
        rho = torch.tensor(self.levels(k), dtype=torch.float64, device=x.device)
        K, C = self.replicas, x.shape[0]
        if K == 1:
            new = self._sweep(x, rho, torch.zeros(C, dtype=torch.long, device=x.device), generator)[0]
            return self._metropolis(x, new, rho[0], generator) if self.correction else new
        if self._hot is None or self._hot.shape[0] != C:
            self._hot = x[:, None].expand((C, K - 1) + tuple(x.shape[1:])).clone()
        X = torch.cat([x[:, None], self._hot], 1)                     # (C, K, *event), coldest first
        level = torch.arange(K, device=x.device).repeat(C)
        new, z = self._sweep(X.reshape((C * K,) + tuple(x.shape[1:])), rho, level, generator)
        ok = torch.isfinite(new.reshape(C * K, -1)).all(-1).reshape(C, K)  # only finite replicas swap
        keep = ok.clone()
        keep[:, 0] = True  # a non-finite cold draw goes back to the caller, which counts a divergence
        new = torch.where(keep.reshape((C, K) + (1,) * (x.dim() - 1)), new.reshape(X.shape), X)  # hot: old state
        if self.correction:  # the coldest chain targets the posterior: accept its sweep by w = L / L_rho
            new[:, 0] = self._metropolis(x, new[:, 0], rho[0], generator)
        j = self.exchange.pairs(k, x.device)
        if self.swap_ratio == "marginal":
            lev = torch.cat([rho.new_zeros(1), rho[1:]]) if self.correction else rho  # cold chain at rho = 0
            ll = self._relaxed_loglik(new.reshape((C * K,) + tuple(x.shape[1:])), lev).reshape(C, K, K)
            log_r = marginal_swap_log_ratio(torch.where(ok[..., None], ll, torch.nan), j)
        else:
            delta = (new.reshape(C, K, -1) - z.reshape(C, K, -1)).to(torch.float64).pow(2).sum(-1)
            log_r = swap_log_ratio(torch.where(ok, delta, torch.nan), rho, j)
        self.exchange.swap(new, log_r, rho, k, generator)
        self._hot = new[:, 1:].clone()
        return new[:, 0]

    def _relaxed_loglik(self, x: torch.Tensor, rho: torch.Tensor) -> torch.Tensor:
        """``log L_l(x_b)`` up to a constant, ``(B, len(rho))``: the x-marginal likelihood of the split
        target at each coupling ``rho_l``, ``N(y; A x, sigma_y^2 I + rho_l^2 A A^T)``, in the spectral
        coordinates (variance ``sigma_y^2 + rho_l^2 s_i^2`` on observed coordinate i)."""
        s = self.s.to(torch.float64)
        xo = self.op.Vt(x).to(torch.float64)[:, : s.numel()]
        ybar = self._rows(self.ybar, x.shape[0]).to(torch.float64)
        nz = nonzero_singular(s)                                      # zero singular values carry no x
        res2 = torch.where(nz, ybar - s * xo, 0.0).pow(2)             # (B, r)
        var = self.noise_std**2 + rho.to(torch.float64)[:, None] ** 2 * s**2   # (L, r)
        var = torch.where(nz, var, 1.0)
        return -0.5 * (res2[:, None, :] / var + var.log()).sum(-1)

    @property
    def swap_acceptance(self) -> torch.Tensor:
        """Acceptance rate of swaps between couplings j and j+1, cumulative since the run started and
        counting only iterations where the two couplings differ, shape (replicas - 1,)."""
        return self.exchange.acceptance

    def nfe_per_iteration(self, k: int) -> int:
        """Network evaluations per chain and iteration (all replicas)."""
        return sum(1 + int((self.grid < r).sum()) for r in self.levels(k))


def _per_sample(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A per-sample vector ``v`` (B,) shaped to broadcast against ``x`` (B, *event)."""
    return v.reshape((-1,) + (1,) * (x.dim() - 1))
