"""Where the SMC samplers' 1-2 points of 90 % coverage went: the variance the plug-in DDPM step drops.

The reverse step every sampler of the library takes (DDIM with ``eta``; ``eta = 1`` is the DDPM
ancestral step, Ho et al. 2020, Eq. 7) puts the denoiser's mean ``E[x_0 | x_t]`` where the exact
reverse kernel ``p(x_s | x_t) = int q(x_s | x_t, x_0) p(x_0 | x_t) dx_0`` integrates over ``x_0``: it
drops ``alpha_s^2 (1 - c_eps alpha_t / (alpha_s sigma_t))^2 Var(x_0 | x_t)`` of variance at every
step (the term Bao et al., ICLR 2022, "Analytic-DPM", Eq. 7 restore with their optimal variance).
The chain is then exact only as the grid gets fine. The SMC samplers (MCGDiff, TDS, ParticleGibbs)
are exact for the *discretised* prior, so their posteriors inherit the loss.

For one Gaussian coordinate ``x_0 ~ N(0, c)`` with its exact denoiser the loss has a closed form
(:func:`plugin_variance`): the state stays Gaussian, ``x_0_hat = k_t x_t`` with
``k_t = alpha_t c / (alpha_t^2 c + sigma_t^2)``, and the step maps the variance ``v_t`` to
``m_t^2 v_t + c_noise^2``. The table gives the final variance over ``c`` (1 = exact) per grid, step
count and ``tail_steps``, and the 90 % coverage it implies, ``2 Phi(1.645 sqrt(ratio)) - 1`` (the
fraction of exact draws inside the sampler's 90 % interval, the statistic of ``exactness.py``).

    python benchmarks/variance_loss.py
"""
from __future__ import annotations

import argparse
import math
import shlex
import sys

import torch

from ..inference.analytic_variance import analytic_noise_std
from ..inference.sampler import ddim_coefficients
from ..inference.smc.tail import refine_tail
from ..schedules import VPSchedule, time_grid
from .report import MarkdownTable, add_out_argument, write_result

__all__ = ["plugin_variance", "implied_coverage", "pnpdm_prior_step", "main"]

Z90 = 1.6448536269514722


def plugin_variance(schedule, times: torch.Tensor, c: float, eta: float = 1.0,
                    analytic_over: tuple | None = None) -> float:
    """Variance of ``x_0`` after the plug-in reverse chain over ``times`` (decreasing to 0) for
    ``x_0 ~ N(0, c)``, started from the exact marginal ``N(0, alpha^2 c + sigma^2)`` at ``times[0]``.
    ``analytic_over``: the chain takes Analytic-DPM's variance
    (:mod:`~ppl_diffusion.inference.analytic_variance`) for data whose coordinates have these variances
    (its exact denoising error, the mean of ``v s^2 / (a^2 v + s^2)`` over them)."""
    times = torch.as_tensor(times, dtype=torch.float64)
    a, s = schedule.alpha(times).double(), schedule.sigma(times).double()
    if analytic_over is None:
        noise = ddim_coefficients(a[:-1], s[:-1], a[1:], s[1:], eta)[1]
    else:
        vs = torch.as_tensor(analytic_over, dtype=torch.float64)[:, None]
        err = (vs * s**2 / (a**2 * vs + s**2)).mean(0)
        noise = analytic_noise_std(schedule, times, eta, err)
    v = a[0] ** 2 * c + s[0] ** 2
    for i in range(times.numel() - 1):
        k = a[i] * c / (a[i] ** 2 * c + s[i] ** 2)
        c_eps, _ = ddim_coefficients(a[i], s[i], a[i + 1], s[i + 1], eta)
        m = a[i + 1] * k + c_eps * (1.0 - a[i] * k) / s[i]
        v = m**2 * v + noise[i] ** 2
    return float(v)


def pnpdm_prior_step(sigmas, rho: float, c: float, solver: str = "sde",
                     analytic_over: tuple | None = None) -> tuple[float, float]:
    """PnP-DM's prior step ``x ~ p(x | z)``, ``z = x + rho eps``, for one coordinate ``x ~ N(0, c)`` with
    its exact denoiser ``D(x, s) = c x / (c + s^2)``, in closed form: the steps of ``solver`` (``"sde"``
    Euler-Maruyama, ``"ddpm"`` the bridge, ``"analytic"`` the bridge with Analytic-DPM's variance for data
    whose coordinates have the variances ``analytic_over``, default ``(c,)``) from ``rho`` down the grid
    points of ``sigmas`` below it, then the denoiser output, map ``z`` to ``m z + N(0, q)``. Returns ``(q /
    exact conditional variance, stationary variance of the prior-only Gibbs chain / c)``; the chain
    ``x -> z = x + rho eps -> x'`` has stationary variance ``(m^2 rho^2 + q) / (1 - m^2)`` (``c`` when exact)."""
    levels = [rho] + [float(v) for v in sigmas if v < rho]
    over = (c,) if analytic_over is None else tuple(analytic_over)
    m, q = 1.0, 0.0
    for s, sn in zip(levels[:-1], levels[1:]):
        k = c / (c + s * s)  # D = k x
        if solver == "sde":
            a = 1 + (sn - s) * 2 * (1 - k) / s
            m, q = a * m, a * a * q + 2 * s * (s - sn)
        else:
            r = (sn / s) ** 2
            a = k + r * (1 - k)
            extra = (1 - r) ** 2 * sum(v * s * s / (v + s * s) for v in over) / len(over) if solver == "analytic" \
                else 0.0
            m, q = a * m, a * a * q + sn * sn * (1 - r) + extra
    k = c / (c + levels[-1] ** 2)
    m, q = k * m, k * k * q
    return q / (c * rho**2 / (c + rho**2)), (m * m * rho * rho + q) / (1 - m * m) / c


def pnpdm_table(num_grids=(100, 400), rhos=(0.1, 0.3), variances=(0.05, 0.2, 1.0, 2.0)) -> MarkdownTable:
    """One row per ``(num_grid, rho, prior_solver)``: the stationary variance of the prior-only PnP-DM chain
    over ``c`` for each coordinate variance (``analytic``: the error averaged over those variances)."""
    from ..schedules import edm_sigmas

    t = MarkdownTable("num_grid", "rho", "prior_solver", "steps", *[f"c = {c:g}: ratio (coverage)" for c in variances])
    for n in num_grids:
        g = edm_sigmas(n).tolist()
        for rho in rhos:
            for solver in ("sde", "ddpm", "analytic"):
                cells = []
                for c in variances:
                    r = pnpdm_prior_step(g, rho, c, solver, tuple(variances))[1]
                    cells.append(f"{r:.3f} ({implied_coverage(r):.3f})")
                t.add(n, rho, solver, sum(v < rho for v in g), *cells)
    return t


def implied_coverage(ratio: float) -> float:
    """Fraction of ``N(0, c)`` inside the central 90 % interval of ``N(0, ratio c)``."""
    return math.erf(Z90 * math.sqrt(ratio) / math.sqrt(2.0))


def table(schedule, configs, variances) -> MarkdownTable:
    """One row per ``(grid, steps, tail_steps, reverse variance)``; ``"analytic"`` averages the denoising
    error over the coordinates ``variances`` (data with these coordinate variances)."""
    t = MarkdownTable("grid", "steps", "tail_steps", "reverse variance", "sigma at the last positive time",
                      *[f"c = {c:g}: ratio (coverage)" for c in variances])
    for grid, steps, tail, rv in configs:
        times = refine_tail(schedule, time_grid(schedule, steps, grid), tail)
        cells = []
        for c in variances:
            r = plugin_variance(schedule, times, c, analytic_over=tuple(variances) if rv == "analytic" else None) / c
            cells.append(f"{r:.3f} ({implied_coverage(r):.3f})")
        t.add(grid, steps, tail, rv, f"{float(schedule.sigma(times[-2])):.4f}", *cells)
    return t


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variances", default="0.01,0.05,0.2,1,2")
    add_out_argument(p, "smc_variance_loss")
    p.add_argument("--pnpdm", action="store_true", help="PnP-DM's prior step instead (pnpdm_prior_step_variance)")
    a = p.parse_args(argv)
    variances = [float(v) for v in a.variances.split(",")]
    if a.pnpdm:
        return _pnpdm_main(a, argv)
    sched = VPSchedule.gmm_benchmark("mcgdiff")
    configs = [(g, n, tail, "ddpm") for g, n, tail in (
        ("alpha", 100, 0), ("alpha", 100, 10), ("alpha", 200, 0), ("alpha", 200, 10), ("alpha", 400, 0),
        ("alpha", 400, 10), ("alpha", 1000, 10), ("uniform", 100, 0), ("quadratic", 100, 0),
        ("quadratic", 100, 10), ("edm", 100, 0), ("edm", 200, 0), ("edm", 400, 0), ("alpha_log", 100, 0),
        ("alpha_log", 200, 0), ("alpha_log", 400, 0))]
    configs += [(g, n, 0, "analytic") for g, n in (("alpha", 20), ("alpha", 100), ("alpha_log", 20),
                                                   ("alpha_log", 100), ("alpha_log", 200))]
    body = ("Schedule: the GMM benchmark's (`VPSchedule.gmm_benchmark('mcgdiff')`); `alpha` is the official "
            "MCGDiff grid, `alpha_log` the default of MCGDiff / TDS (`grid='auto'` on VP schedules: `alpha` above "
            "sigma = 0.3, a quarter of the steps log-uniform in sigma below, to 1e-3).\n\n"
            + str(table(sched, configs, variances)))
    notes = ("Reading: on the `alpha` grid at 100 steps a coordinate of unit variance keeps 92 % of it (implied "
             "coverage 0.885), one of variance 0.2 keeps 81 % (0.858): the 1-2 points of narrow coverage of "
             "MCGDiff / TDS on the exactness families. `tail_steps` refines only the last step (the noiseless "
             "one, which drops all of `Var(x_0 | x_t1)`); more steps shrink every step's loss. The loss is "
             "largest where sigma_t^2 is comparable with the coordinate's variance, where `alpha` is sparse; "
             "`alpha_log` at 200 steps keeps 89-97 % of every variance (implied coverage 0.880-0.894) at the "
             "cost of `alpha` with 200 + 10 tail steps (0.829-0.895). A Gaussian coordinate is the worst case "
             "for the mixture problems only in so far as their posterior components are Gaussian; the measured "
             "coverages are in the exactness tables. `analytic` rows: Analytic-DPM's step variance (the default "
             "of MCGDiff / TDS since 2026-12-01) for data whose coordinates have the five variances above, its "
             "one number per step the mean of their losses: at 200 `alpha_log` steps every coordinate keeps "
             "98.5-107 % of its variance (implied coverage 0.897-0.912); at coarse grids the small coordinates "
             "are over-corrected (20 steps: 3.1x for variance 0.01) and the large ones under-corrected, and for "
             "isotropic data (one variance) it is exact at any step count (tests/test_analytic_variance.py).")
    print(write_result(a.out, "smc_variance_loss", "The variance the plug-in DDPM step drops (one Gaussian "
                       "coordinate, closed form)", shlex.join(["python", "benchmarks/variance_loss.py"] + argv),
                       body, notes))


def _pnpdm_main(a, argv) -> None:
    body = ("PnP-DM's prior step on its EDM grid (sigma_max 80, sigma_min 0.002, exponent 7), started at the coupling "
            "rho, for one Gaussian coordinate of variance c with its exact denoiser; `analytic` takes the denoising "
            "error averaged over the four variances (data with that spectrum). Each cell: the stationary variance "
            "of the prior-only Gibbs chain over c (1 = exact) and the 90 % coverage it implies.\n\n"
            + str(pnpdm_table()))
    notes = ("Reading: the official Euler-Maruyama steps (`sde`) keep 96.5-97.4 % of every variance at rho = 0.1 on "
             "the 100-point grid (implied coverage 0.892-0.894 where exact is 0.900), the plain bridge (`ddpm`) "
             "87 %; Analytic-DPM's variance (`prior_solver='analytic'`) keeps 99.6-100.9 % at the same network "
             "calls, as the 400-point grid does for `sde` at 4x the calls. The hot replicas' steps from rho = 0.3 "
             "are coarser (98.3-103.9 %). For isotropic data (one variance) `analytic` is exact at any grid, "
             "and each row's conditional variance matches the kernel's draws (tests/test_pnpdm_prior_step.py).")
    title = "PnP-DM's prior step: the variance each reverse process keeps (one Gaussian coordinate, closed form)"
    cmd = shlex.join(["python", "benchmarks/variance_loss.py"] + argv)
    print(write_result(a.out, "pnpdm_prior_step_variance", title, cmd, body, notes))


if __name__ == "__main__":
    main()
