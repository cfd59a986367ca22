"""Noise schedules in one continuous convention: ``x_t = alpha(t) x0 + sigma(t) eps``, ``t`` in [0, 1].

Every solver in the library sees only continuous ``t``; discrete DDPM checkpoints are mapped onto
this convention by :class:`VPSchedule` (knots at the discrete steps, ``log alpha_bar`` interpolated
linearly in between) and the denoiser adapters translate ``t`` back to the network's own timestep.

The VE noise level is ``rho(t) = sigma(t) / alpha(t)`` (``x~ = x_t / alpha = x0 + rho eps``).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = [
    "Schedule",
    "VPSchedule",
    "VESchedule",
    "EDMSchedule",
    "time_grid",
    "edm_sigmas",
    "resolve_grid",
    "GRID_KINDS",
]


def _as_tensor(t, like: torch.Tensor | None = None) -> torch.Tensor:
    if isinstance(t, torch.Tensor):
        return t
    dtype = like.dtype if like is not None else torch.get_default_dtype()
    device = like.device if like is not None else None
    return torch.as_tensor(t, dtype=dtype, device=device)


def _ones_like(t) -> torch.Tensor:
    t = _as_tensor(t)
    return torch.ones_like(t if t.is_floating_point() else t.to(torch.get_default_dtype()))


class Schedule:
    """Base class: ``alpha(t)``, ``sigma(t)``, ``rho(t) = sigma/alpha`` and its inverse ``t_of_rho``."""

    kind = "abstract"

    def alpha(self, t) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def sigma(self, t) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def alpha_bar(self, t) -> torch.Tensor:
        return self.alpha(t) ** 2

    def rho(self, t) -> torch.Tensor:
        """VE noise level ``sigma(t) / alpha(t)``."""
        return self.sigma(t) / self.alpha(t)

    def log_snr(self, t) -> torch.Tensor:
        """``log(alpha^2 / sigma^2) = -2 log rho``."""
        return -2.0 * torch.log(self.rho(t))

    def t_of_rho(self, rho) -> torch.Tensor:
        """Inverse of ``rho(t)`` by bisection (monotone schedules); subclasses override with closed forms."""
        rho = _as_tensor(rho)
        lo = torch.zeros_like(rho, dtype=torch.float64)
        hi = torch.ones_like(rho, dtype=torch.float64)
        target = rho.to(torch.float64)
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            too_noisy = self.rho(mid) > target
            hi = torch.where(too_noisy, mid, hi)
            lo = torch.where(too_noisy, lo, mid)
        return (0.5 * (lo + hi)).to(rho.dtype)

    @property
    def rho_max(self) -> float:
        return float(self.rho(torch.tensor(1.0, dtype=torch.float64)))

    def dlog_alpha_dt(self, t) -> torch.Tensor:
        """``d log alpha / dt`` (central finite difference unless overridden)."""
        t = _as_tensor(t).to(torch.float64)
        h = 1e-5
        a = torch.log(self.alpha((t + h).clamp(max=1.0)))
        b = torch.log(self.alpha((t - h).clamp(min=0.0)))
        return (a - b) / ((t + h).clamp(max=1.0) - (t - h).clamp(min=0.0))

    def dsigma2_dt(self, t) -> torch.Tensor:
        t = _as_tensor(t).to(torch.float64)
        h = 1e-5
        hi, lo = (t + h).clamp(max=1.0), (t - h).clamp(min=0.0)
        return (self.sigma(hi) ** 2 - self.sigma(lo) ** 2) / (hi - lo)

    def pf_ode_coefficients(self, t):
        """``(f, g2)`` with the PF-ODE ``dx/dt = f x - g2/2 * score``: ``f = dlog alpha/dt``,
        ``g2 = d sigma^2/dt - 2 f sigma^2``."""
        f = self.dlog_alpha_dt(t)
        g2 = self.dsigma2_dt(t) - 2.0 * f * self.sigma(_as_tensor(t).to(torch.float64)) ** 2
        return f, g2

    def prior_std(self) -> float:
        """Standard deviation of the reference distribution at ``t = 1`` (``x_1 ~ N(0, s^2 I)``)."""
        return float(self.sigma(torch.tensor(1.0, dtype=torch.float64)))


class VPSchedule(Schedule):
    """Variance-preserving schedule from a discrete ``alphas_cumprod`` (DDPM).

    ``alphas_cumprod[k]`` is placed at ``t = (k + 1) / T`` and ``t = 0`` has ``alpha_bar = 1``;
    if the given array already starts at 1 (the GMM benchmark's ``cumprod([1] + (1 - betas))``)
    its entries sit at ``t = k / (T - 1)``. Between knots ``log alpha_bar`` is linear in ``t``.
    ``sigma = sqrt(1 - alpha_bar)``.
    """

    kind = "vp"

    def __init__(self, alphas_cumprod: Sequence[float] | torch.Tensor):
        ac = torch.as_tensor(alphas_cumprod, dtype=torch.float64).flatten()
        if ac.numel() < 2:
            raise ValueError("alphas_cumprod needs at least two entries")
        if not torch.all((ac > 0) & (ac <= 1)):
            raise ValueError("alphas_cumprod must lie in (0, 1]")
        if torch.any(ac[1:] > ac[:-1] + 1e-12):
            raise ValueError("alphas_cumprod must be non-increasing")
        self.alphas_cumprod = ac
        self.num_train_timesteps = ac.numel()
        if abs(float(ac[0]) - 1.0) < 1e-12:
            self._knots_t = torch.linspace(0.0, 1.0, ac.numel(), dtype=torch.float64)
            self._knots_logab = torch.log(ac)
            self._offset = 0  # model timestep k sits at t = k / (T - 1)
        else:
            T = ac.numel()
            self._knots_t = torch.cat([torch.zeros(1, dtype=torch.float64),
                                       torch.arange(1, T + 1, dtype=torch.float64) / T])
            self._knots_logab = torch.cat([torch.zeros(1, dtype=torch.float64), torch.log(ac)])
            self._offset = 1  # model timestep k sits at t = (k + 1) / T

    # constructors -------------------------------------------------------------------------
    @classmethod
    def linear(cls, T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> VPSchedule:
        betas = torch.linspace(beta_start, beta_end, T, dtype=torch.float64)
        return cls(torch.cumprod(1 - betas, 0))

    @classmethod
    def cosine(cls, T: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> VPSchedule:
        """Nichol & Dhariwal (2021) cosine schedule."""
        steps = torch.arange(T + 1, dtype=torch.float64) / T
        f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
        betas = (1 - f[1:] / f[:-1]).clamp(max=max_beta)
        return cls(torch.cumprod(1 - betas, 0))

    @classmethod
    def from_betas(cls, betas) -> VPSchedule:
        betas = torch.as_tensor(betas, dtype=torch.float64)
        return cls(torch.cumprod(1 - betas, 0))

    @classmethod
    def gmm_benchmark(cls, variant: str = "mcgdiff") -> VPSchedule:
        """Schedules of the Gaussian-mixture benchmark of MCGDiff (Cardoso, Janati, Le Corff, Moulines,
        ICLR 2024).

        ``"mcgdiff"``: the published code's decreasing betas ``linspace(0.02, 1e-4, 999)`` with
        ``alphas_cumprod = cumprod([1] + (1 - betas))``. ``"increasing"``: later papers'
        ``cumprod(linspace(0.9999, 0.98, 1000))``.
        """
        if variant == "mcgdiff":
            betas = torch.linspace(0.02, 1e-4, 999, dtype=torch.float64)
            return cls(torch.cumprod(torch.cat([torch.ones(1, dtype=torch.float64), 1 - betas]), 0))
        if variant == "increasing":
            return cls(torch.cumprod(torch.linspace(0.9999, 0.98, 1000, dtype=torch.float64), 0))
        raise ValueError(f"unknown GMM benchmark schedule {variant!r}; use 'mcgdiff' or 'increasing'")

    @classmethod
    def from_scheduler_config(cls, config: dict) -> VPSchedule:
        """Build from a diffusers ``DDPMScheduler``/``DDIMScheduler`` config dict."""
        T = int(config.get("num_train_timesteps", 1000))
        kind = config.get("beta_schedule", "linear")
        b0, b1 = float(config.get("beta_start", 1e-4)), float(config.get("beta_end", 0.02))
        if config.get("trained_betas") is not None:
            return cls.from_betas(config["trained_betas"])
        if kind == "linear":
            return cls.linear(T, b0, b1)
        if kind == "scaled_linear":
            betas = torch.linspace(b0**0.5, b1**0.5, T, dtype=torch.float64) ** 2
            return cls.from_betas(betas)
        if kind == "squaredcos_cap_v2":
            return cls.cosine(T)
        raise ValueError(f"unsupported beta_schedule {kind!r} in scheduler config")

    # continuous convention ----------------------------------------------------------------
    def _log_alpha_bar(self, t) -> torch.Tensor:
        t = _as_tensor(t)
        tt = t.to(torch.float64).clamp(0.0, 1.0)
        knots_t = self._knots_t.to(tt.device)
        knots_v = self._knots_logab.to(tt.device)
        idx = torch.searchsorted(knots_t, tt.contiguous(), right=True).clamp(1, knots_t.numel() - 1)
        t0, t1 = knots_t[idx - 1], knots_t[idx]
        v0, v1 = knots_v[idx - 1], knots_v[idx]
        w = (tt - t0) / (t1 - t0)
        return (v0 + w * (v1 - v0)).to(t.dtype if t.is_floating_point() else torch.get_default_dtype())

    def alpha(self, t) -> torch.Tensor:
        return torch.exp(0.5 * self._log_alpha_bar(t))

    def alpha_bar(self, t) -> torch.Tensor:
        return torch.exp(self._log_alpha_bar(t))

    def sigma(self, t) -> torch.Tensor:
        return torch.sqrt(-torch.expm1(self._log_alpha_bar(t)))

    def rho(self, t) -> torch.Tensor:
        lab = self._log_alpha_bar(t)
        return torch.sqrt(torch.expm1(-lab))

    def t_of_rho(self, rho) -> torch.Tensor:
        """Exact inverse on the piecewise-linear ``log alpha_bar``."""
        rho = _as_tensor(rho)
        target = -torch.log1p(rho.to(torch.float64) ** 2)  # log alpha_bar
        kv = self._knots_logab.to(target.device)
        kt = self._knots_t.to(target.device)
        # kv decreasing: search on the negated values
        idx = torch.searchsorted(-kv, -target.contiguous(), right=True).clamp(1, kv.numel() - 1)
        v0, v1 = kv[idx - 1], kv[idx]
        t0, t1 = kt[idx - 1], kt[idx]
        denom = torch.where((v1 - v0).abs() > 0, v1 - v0, torch.ones_like(v1))
        w = ((target - v0) / denom).clamp(0.0, 1.0)
        out = t0 + w * (t1 - t0)
        out = torch.where(target >= 0, torch.zeros_like(out), out)
        return out.to(rho.dtype if rho.is_floating_point() else torch.get_default_dtype())

    def model_timestep(self, t) -> torch.Tensor:
        """Continuous ``t`` -> the network's (fractional) discrete timestep index."""
        t = _as_tensor(t)
        T = self.num_train_timesteps
        if self._offset == 0:
            return t * (T - 1)
        return t * T - 1.0

    def timestep_to_t(self, k) -> torch.Tensor:
        k = _as_tensor(k).to(torch.float64)
        T = self.num_train_timesteps
        return k / (T - 1) if self._offset == 0 else (k + 1.0) / T

    def dlog_alpha_dt(self, t) -> torch.Tensor:
        t = _as_tensor(t).to(torch.float64).clamp(0.0, 1.0)
        kt, kv = self._knots_t.to(t.device), self._knots_logab.to(t.device)
        idx = torch.searchsorted(kt, t.contiguous(), right=True).clamp(1, kt.numel() - 1)
        return 0.5 * (kv[idx] - kv[idx - 1]) / (kt[idx] - kt[idx - 1])

    def dsigma2_dt(self, t) -> torch.Tensor:
        t = _as_tensor(t).to(torch.float64)
        return -2.0 * self.dlog_alpha_dt(t) * self.alpha_bar(t)

    def __repr__(self) -> str:
        return f"VPSchedule(T={self.num_train_timesteps}, alpha_bar[-1]={float(self.alphas_cumprod[-1]):.3g})"


class VESchedule(Schedule):
    """Variance-exploding: ``alpha = 1``, ``sigma(t) = sigma_min (sigma_max / sigma_min)^t`` for t > 0
    and ``sigma(0) = 0`` (the geometric NCSN/SMLD schedule)."""

    kind = "ve"

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0):
        if not 0 < sigma_min < sigma_max:
            raise ValueError("need 0 < sigma_min < sigma_max")
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)

    def alpha(self, t) -> torch.Tensor:
        return _ones_like(t)

    def sigma(self, t) -> torch.Tensor:
        t = _as_tensor(t)
        s = self.sigma_min * (self.sigma_max / self.sigma_min) ** t
        return torch.where(t > 0, s, torch.zeros_like(s))

    def t_of_rho(self, rho) -> torch.Tensor:
        rho = _as_tensor(rho)
        t = torch.log(rho.clamp(min=self.sigma_min) / self.sigma_min) / math.log(self.sigma_max / self.sigma_min)
        return torch.where(rho > 0, t.clamp(0, 1), torch.zeros_like(t))


class EDMSchedule(Schedule):
    """EDM (Karras et al. 2022): ``alpha = 1``, ``sigma(t) = sigma_max * t`` (so ``t`` is the noise
    level rescaled to [0, 1]); use :func:`time_grid` with ``kind="edm"`` for the rho=7 grid."""

    kind = "edm"

    def __init__(self, sigma_max: float = 80.0, sigma_min: float = 0.002, rho: float = 7.0):
        self.sigma_max, self.sigma_min, self.grid_rho = float(sigma_max), float(sigma_min), float(rho)

    def alpha(self, t) -> torch.Tensor:
        return _ones_like(t)

    def sigma(self, t) -> torch.Tensor:
        return self.sigma_max * _as_tensor(t)

    def t_of_rho(self, rho) -> torch.Tensor:
        return (_as_tensor(rho) / self.sigma_max).clamp(0, 1)


GRID_KINDS = ("auto", "uniform", "quadratic", "edm", "alpha", "alpha_log")


def resolve_grid(schedule: Schedule, kind: str) -> str:
    """``"auto"`` -> ``"alpha"`` on schedules whose ``alpha(t)`` decreases (VP), ``"uniform"`` otherwise."""
    if kind != "auto":
        return kind
    a0 = float(schedule.alpha(torch.tensor(0.0, dtype=torch.float64)))
    a1 = float(schedule.alpha(torch.tensor(1.0, dtype=torch.float64)))
    return "alpha" if a0 > a1 else "uniform"


def edm_sigmas(n: int = 100, sigma_max: float = 80.0, sigma_min: float = 0.002, rho_exp: float = 7.0,
               dtype=torch.float64) -> torch.Tensor:
    """EDM noise levels (Karras, Aittala, Aila, Laine, NeurIPS 2022, Eq. 5), decreasing, length ``n``:
    ``sigma_i = (a + i / (n - 1) (b - a))^rho_exp`` with ``a = sigma_max^(1/rho_exp)`` and
    ``b = sigma_min^(1/rho_exp)``. The ``"edm"`` :func:`time_grid` maps these levels back to times."""
    i = torch.arange(n, dtype=dtype)
    a, b = sigma_max ** (1 / rho_exp), sigma_min ** (1 / rho_exp)
    return (a + i / max(n - 1, 1) * (b - a)) ** rho_exp


def time_grid(
    schedule: Schedule,
    n_steps: int,
    kind: str = "uniform",
    t_max: float = 1.0,
    t_min: float = 0.0,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """Decreasing grid of ``n_steps + 1`` times from ``t_max`` to ``t_min``.

    ``uniform``: evenly spaced in t. ``quadratic``: ``t = t_max * u^2`` (dense near 0, DiffPIR's
    "quad"). ``edm``: the :func:`edm_sigmas` spacing (Karras et al., rho=7) of the noise level
    ``rho(t)``, mapped back to t.
    ``alpha``: evenly spaced in ``alpha(t)`` down to ``alpha = 1e-2``, then one step to ``t_max``
    (the official MCGDiff grid; VP schedules only). ``alpha_log``: ``alpha`` down to ``sigma(t) = 0.3``
    with three quarters of the steps, then log-uniform in ``sigma`` down to ``1e-3`` (VP, ``t_min = 0``).
    ``auto``: ``alpha`` on VP schedules, else ``uniform``.
    """
    if n_steps < 1:
        raise ValueError(f"n_steps must be >= 1, got {n_steps}")
    if not 0 <= t_min < t_max <= 1:
        raise ValueError("need 0 <= t_min < t_max <= 1")
    u = torch.linspace(1.0, 0.0, n_steps + 1, dtype=torch.float64)
    kind = resolve_grid(schedule, kind)
    if kind == "uniform":
        t = t_min + (t_max - t_min) * u
    elif kind == "quadratic":
        t = t_min + (t_max - t_min) * u**2
    elif kind == "edm":
        p = getattr(schedule, "grid_rho", 7.0)
        r_max = float(schedule.rho(torch.tensor(t_max, dtype=torch.float64)))
        r_min = max(float(schedule.rho(torch.tensor(t_min, dtype=torch.float64))), 2e-3)
        r = edm_sigmas(n_steps + 1, r_max, r_min, p)
        t = schedule.t_of_rho(r)
        t[0], t[-1] = t_max, t_min
    elif kind == "alpha":
        # Uniform in the signal scale alpha(t) = sqrt(alpha_bar) down to alpha = 1e-2 (rho ~ 100), then
        # one step to t_max: the grid of the official MCGDiff code. On schedules whose alpha falls fast
        # (the decreasing-beta GMM benchmark schedule) it puts the steps where the posterior is decided.
        a_hi = float(schedule.alpha(torch.tensor(t_min, dtype=torch.float64)))
        a_lo = float(schedule.alpha(torch.tensor(t_max, dtype=torch.float64)))
        if not a_hi > a_lo:
            raise ValueError("grid kind 'alpha' needs a schedule whose alpha(t) decreases (VP); "
                             "use 'edm' or 'uniform' for VE / EDM schedules")
        a_end = max(a_lo, 1e-2)
        n_main = n_steps if a_end == a_lo or n_steps == 1 else n_steps - 1
        a = a_end + (a_hi - a_end) * torch.linspace(0.0, 1.0, n_main + 1, dtype=torch.float64)
        a = a.clamp(max=1.0)
        t = schedule.t_of_rho(torch.sqrt((1.0 / a**2 - 1.0).clamp(min=0.0))).to(torch.float64)
        if n_main < n_steps:
            t = torch.cat([torch.tensor([t_max], dtype=torch.float64), t])
        t[0], t[-1] = t_max, t_min
    elif kind == "alpha_log":
        # 'alpha' down to sigma(t) = 0.3, then a quarter of the steps log-uniform in sigma down to 1e-3, then
        # t_min: the plug-in reverse step drops a share of Var(x_0 | x_t) wherever sigma_t^2 is comparable
        # with it (Bao et al., ICLR 2022, Eq. 7), and 'alpha' is sparse below sigma ~ 0.3 (its last steps:
        # 0.31, 0.28, 0.24, 0.20, 0.14, 0)
        if t_min != 0.0:
            raise ValueError("grid kind 'alpha_log' needs t_min = 0")
        sig_cut, sig_end = 0.3, 1e-3
        n_lo = max(1, n_steps // 4)
        t_cut = float(schedule.t_of_rho(torch.tensor(sig_cut / math.sqrt(1 - sig_cut**2), dtype=torch.float64)))
        hi = time_grid(schedule, n_steps - n_lo, "alpha", t_max, t_cut)
        sig = torch.logspace(math.log10(sig_cut), math.log10(sig_end), n_lo, dtype=torch.float64)[1:]
        lo = schedule.t_of_rho(sig / torch.sqrt(1 - sig**2)).to(torch.float64)
        t = torch.cat([hi, lo, torch.zeros(1, dtype=torch.float64)])
    else:
        raise ValueError(f"unknown grid kind {kind!r}; use 'uniform', 'quadratic', 'edm', 'alpha' or 'alpha_log'")
    return t.to(dtype)
