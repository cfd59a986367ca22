"""Analytic-DPM reverse variance (Bao, Li, Zhu, Zhang, "Analytic-DPM: an Analytic Estimate of the Optimal
Reverse Variance in Diffusion Probabilistic Models", ICLR 2022).

The reverse step of every sampler of the library, ``x_s = alpha_s x0_hat + c_eps eps_hat + c z``
(DDIM-eta; ``eta = 1`` is DDPM's ancestral step), puts the denoiser's mean ``E[x_0 | x_t]`` where the
exact reverse kernel ``p(x_s | x_t) = int q(x_s | x_t, x_0) p(x_0 | x_t) dx_0`` integrates over ``x_0``:
it drops ``k_t^2 Var(x_0 | x_t)`` of variance at every step, ``k_t = alpha_s - c_eps alpha_t / sigma_t``
the coefficient of ``x_0`` in the step's mean. The chain is then exact only as the grid gets fine,
and samplers that are exact for the *discretised* prior (MCGDiff, TDS, particle Gibbs) return
posteriors about one point of 90 % coverage too narrow at 200 steps
(benchmarks/results/smc_variance_loss.md).

Bao et al.'s Theorem 1 gives the isotropic Gaussian kernel closest in KL to the exact one: the same
mean and the variance ``c^2 + k_t^2 E[tr Cov(x_0 | x_t)] / d``, the expectation over ``x_t ~ q_t``
(their Eq. 7 writes ``E tr Cov(x_0 | x_t) / d = (sigma_t / alpha_t)^2 (1 - E||eps_hat(x_t)||^2 / d)``).
For the optimal denoiser that expectation equals the denoising error ``E||x_0 - D(x_t, t)||^2 / d``
(``x_0`` from the data, ``x_t = alpha_t x_0 + sigma_t z``), which :func:`denoising_error` estimates by
Monte Carlo on a table of 128 noise levels log-uniform in ``rho = sigma / alpha`` (one denoiser call per
sample and level, once per prior; any grid's times are interpolated in ``log rho`` as a fraction of
``rho_t^2``, so grids that differ by inserted times, e.g. MCGDiff's matching times under PMMH, share it).
The error form is used
rather than the eps-norm form because its relative Monte Carlo error does not grow as
``sigma_t -> 0`` (the eps form subtracts two numbers near 1). Estimates are clipped to
``[0, (sigma_t / alpha_t)^2]``, the paper's Theorem 2 upper bound.

The correction is exact for an isotropic Gaussian prior at any step count (the exact kernel is then
Gaussian with exactly that variance); for coordinates of unequal variance it averages their losses
(one number per step), so it overshoots small-variance coordinates and undershoots large ones at
coarse grids (``benchmarks/variance_loss.py``: 200 ``alpha_log`` steps keep 98.5-107 % of every
variance, where the plug-in step keeps 89-97 %).

Data for the expectation: ``data=`` (e.g. training images), else the denoiser's exact sampler when it
has one (Gaussian mixtures), else draws of the prior itself (its own reverse diffusion; these are
themselves slightly narrow, a second-order effect on the estimate).
"""
from __future__ import annotations

import math
import weakref

import torch

from ..schedules import Schedule
from .sampler import ddim_coefficients
from .solver import OptionError, check_int

__all__ = ["AnalyticVariance", "analytic_noise_std", "denoising_error", "error_at", "resolve_reverse_variance"]


def denoising_error(denoiser, schedule: Schedule, times: torch.Tensor, x0: torch.Tensor,
                    generator: torch.Generator | None = None, max_batch: int | None = None) -> torch.Tensor:
    """``E||x_0 - D(alpha_t x_0 + sigma_t z, t)||^2 / d`` for every ``t`` of ``times`` (float64, one
    value per time; ``t = 0`` gives 0), averaged over the rows of ``x0`` ``(M, *event)`` and one fresh
    ``z`` per row and time."""
    times = torch.as_tensor(times, dtype=torch.float64).flatten()
    M = x0.shape[0]
    d = x0[0].numel()
    mb = max_batch or M
    out = torch.zeros(times.numel(), dtype=torch.float64)
    for i, t in enumerate(times.tolist()):
        if t <= 0.0:
            continue
        tt = torch.tensor(t, dtype=torch.float64)
        a, s = float(schedule.alpha(tt)), float(schedule.sigma(tt))
        z = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
        xt = a * x0 + s * z
        tx = torch.as_tensor(t, dtype=x0.dtype, device=x0.device)
        err = 0.0
        for j in range(0, M, mb):
            with torch.no_grad():
                r = x0[j:j + mb] - denoiser(xt[j:j + mb], tx)
            err += float((r.to(torch.float64) ** 2).sum())
        out[i] = err / (M * d)
    return out


class AnalyticVariance:
    """The Analytic-DPM reverse variance of the SMC samplers' steps (``reverse_variance=`` of
    :class:`~ppl_diffusion.inference.smc.MCGDiff` and :class:`~ppl_diffusion.inference.smc.TDS`).

    Args:
        samples: data draws ``M`` for the Monte Carlo estimate of the denoising error; its relative
            standard error is about ``sqrt(2 / (M d))`` per noise level. ``"auto"``: ``4096 / d`` clamped to
            ``[16, 256]`` (256 at d = 8, 16 for 28x28 images), about 2-3 % of a correction that is itself
            a few % of the variance.
        data: ``(M, *event)`` draws of the data distribution to use instead (e.g. training images).
        seed: seed of the estimate's own generator, so that the variances do not depend on the run's.

    The estimate costs ``M`` denoiser calls at each of 128 noise levels, once per denoiser, dtype and
    device (cached while the denoiser lives). ``reverse_variance="analytic"`` is one instance shared by every
    solver of the process, so solvers built afresh per image or per problem on the same prior and grid
    pay for it once.
    """

    #: noise levels of the error table (log-uniform in rho from 1e-4 to rho_max)
    TABLE_POINTS = 128

    def __init__(self, samples: int | str = "auto", data: torch.Tensor | None = None, seed: int = 0):
        self.samples = samples if samples == "auto" else check_int("samples", samples, "AnalyticVariance")
        self.data = data
        self.seed = int(seed)
        self._cache = weakref.WeakKeyDictionary()  # denoiser -> {(dtype, device): (log rho, ratio)}
        self.nfe = 0  # network calls of every table so far
        self.last_evals = 0  # single-sample evaluations of the last call of :meth:`table` (0: cached)

    def __repr__(self) -> str:
        src = "data" if self.data is not None else f"samples={self.samples!r}"
        return f"AnalyticVariance({src})"

    def num_samples(self, d: int) -> int:
        """``M`` for data of dimension ``d``."""
        return min(256, max(16, -(-4096 // int(d)))) if self.samples == "auto" else self.samples

    def _x0(self, den, prior, event_shape, dtype, device, generator) -> torch.Tensor:
        M = self.num_samples(math.prod(event_shape))
        if self.data is not None:
            x0 = torch.as_tensor(self.data)
            if tuple(x0.shape[1:]) != tuple(event_shape):
                raise ValueError(f"AnalyticVariance: data must be (M, *{tuple(event_shape)}), got {tuple(x0.shape)}")
            return x0.to(dtype=dtype, device=device)
        gmm = getattr(den, "gmm", None)
        if gmm is not None and hasattr(gmm, "sample"):  # exact draws
            gmm = gmm if gmm.means.device == torch.device(device) else gmm.to(device=device)
            return gmm.sample(M, generator=generator).reshape((M,) + tuple(event_shape)).to(dtype=dtype)
        # a plate's prior has a batch shape: draw enough of its batches for M images
        per = max(1, int(torch.Size(getattr(prior, "batch_shape", ())).numel()))
        x0 = prior.sample((-(-M // per),), generator=generator, dtype=dtype, device=device)
        return x0.reshape((-1,) + tuple(event_shape))[:M]

    def table(self, den, prior, event_shape, dtype, device, max_batch=None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(log rho, ratio)``: the denoising error over ``rho_t^2`` (in [0, 1]) at :attr:`TABLE_POINTS`
        noise levels log-uniform in ``rho`` from 1e-4 to the schedule's ``rho_max``, once per denoiser,
        dtype and device (cached while the denoiser lives; the evaluations of a new table are in
        :attr:`last_evals`)."""
        key = (str(dtype), str(device))
        cache = self._cache.setdefault(den, {})
        self.last_evals = 0
        if key not in cache:
            sched = den.schedule
            rho = torch.logspace(-4.0, math.log10(sched.rho_max), self.TABLE_POINTS, dtype=torch.float64)
            times = sched.t_of_rho(rho).to(torch.float64)
            evals = getattr(den, "sample_evals", 0)
            g = torch.Generator(device=device).manual_seed(self.seed)
            x0 = self._x0(den, prior, event_shape, dtype, device, g)
            start = getattr(den, "nfe", 0)
            err = denoising_error(den, sched, times, x0, g, max_batch)
            self.nfe += getattr(den, "nfe", 0) - start
            self.last_evals = getattr(den, "sample_evals", 0) - evals  # the data draws' included
            rho_t = sched.rho(times).to(torch.float64)  # the times' own rho (the inverse is approximate)
            # kept on the device it is keyed by: a kernel reads it at every step there
            cache[key] = (torch.log(rho_t).to(device), (err / rho_t**2).clamp(0.0, 1.0).to(device))
        return cache[key]

    def error(self, den, prior, times: torch.Tensor, event_shape, dtype, device, max_batch=None) -> torch.Tensor:
        """The denoising error ``E tr Cov(x_0 | x_t) / d`` per time of ``times``, interpolated in
        ``log rho`` from :meth:`table` as a fraction of ``rho_t^2`` (the paper's Theorem 2 bound), the end
        fractions held beyond the table; 0 at ``t = 0``."""
        table = self.table(den, prior, event_shape, dtype, device, max_batch)
        times = torch.as_tensor(times, dtype=torch.float64).cpu()
        rho = den.schedule.rho(times.clamp(min=1e-12)).to(torch.float64)
        return torch.where(times > 0, error_at(table, rho), torch.zeros_like(rho))

    def noise_std(self, fk, times: torch.Tensor, eta: float = 1.0) -> tuple[torch.Tensor, int]:
        """Per step ``times[i] -> times[i + 1]`` the std ``sqrt(c^2 + k^2 E tr Cov(x_0 | x_t) / d)`` of the
        step's noise, float64 ``(len(times) - 1,)``, for the Feynman-Kac model ``fk`` (its ``den``,
        ``prior``, ``event_shape``, ``dtype``, ``device`` and ``max_batch``), and the single-sample
        network evaluations this call spent on the estimate (0 when cached)."""
        err = self.error(fk.den, fk.prior, times, fk.event_shape, fk.dtype, fk.device, fk.max_batch)
        return analytic_noise_std(fk.sched, times, eta, err), self.last_evals


def error_at(table: tuple[torch.Tensor, torch.Tensor], rho: torch.Tensor) -> torch.Tensor:
    """The denoising error at noise levels ``rho = sigma / alpha`` (any shape, > 0; the VE sigma) from a
    :meth:`AnalyticVariance.table` ``(log rho, ratio)``: the ratio interpolated in ``log rho`` (its end
    values held beyond the table) times ``rho^2``; float64 on ``rho``'s device."""
    log_rho, ratio = (t.to(rho.device) for t in table)
    rho = rho.to(torch.float64)
    lr = torch.log(rho).clamp(float(log_rho[0]), float(log_rho[-1]))
    i = torch.searchsorted(log_rho, lr.contiguous()).clamp(1, log_rho.numel() - 1)
    w = (lr - log_rho[i - 1]) / (log_rho[i] - log_rho[i - 1])
    return (ratio[i - 1] + w * (ratio[i] - ratio[i - 1])) * rho**2


def analytic_noise_std(schedule, times: torch.Tensor, eta: float, err: torch.Tensor) -> torch.Tensor:
    """``sqrt(c^2 + k^2 err_t)`` per step of ``times`` given the per-time error ``err`` (see module)."""
    times = torch.as_tensor(times, dtype=torch.float64)
    a, s = schedule.alpha(times).double(), schedule.sigma(times).double()
    c_eps, c = ddim_coefficients(a[:-1], s[:-1], a[1:], s[1:], eta)
    k = a[1:] - c_eps * a[:-1] / s[:-1]
    return torch.sqrt(c ** 2 + k ** 2 * err[:-1].to(torch.float64))


_SHARED = AnalyticVariance()


def resolve_reverse_variance(value, method: str) -> AnalyticVariance | None:
    """``"ddpm"`` -> ``None`` (the plug-in step's variance), ``"analytic"`` -> the process-wide
    :class:`AnalyticVariance` with its defaults (its cache shared by every solver), an
    :class:`AnalyticVariance` as given."""
    if isinstance(value, AnalyticVariance):
        return value
    if value == "ddpm":
        return None
    if value == "analytic":
        return _SHARED
    raise OptionError(f"{method}: reverse_variance must be 'analytic', 'ddpm' or an AnalyticVariance, got {value!r}")
