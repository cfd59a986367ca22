"""Combining independent SMC runs by their evidence, and saying when a run's draws are unreliable.

Why (benchmarks/results/smc_mode_bias.md): one draw from each of ``R`` independent runs of
``N`` particles follows, per run, the law ``E[sum_i W_i delta_{x_i}]``, which is not the SMC target:
with ``Z_hat`` the run's evidence estimate (unbiased for ``Z``) and ``pi_hat(f) = sum_i W_i f(x_i)``,
``E[Z_hat pi_hat(f)] = Z pi(f)``, so

    E[pi_hat(f)] - pi(f) = -Cov(Z_hat / Z, pi_hat(f))                               (1)

(``Z_hat`` is unbiased: Del Moral, "Feynman-Kac Formulae", Springer 2004; see also Naesseth,
Lindsten & Schön, "Elements of Sequential Monte Carlo", Foundations and Trends in ML 2019).
On a multimodal posterior a run that has lost a mode in an early
resampling cannot re-weight it later: its ``Z_hat`` knows, its particles do not. That covariance is
the independent-run mode-weight bias; it does not vanish with more runs, only with ``N``.

Weighting run ``r`` by ``Z_hat_r`` removes it: the pooled particle weights
``Z_hat_r W_{r,i} / sum_s Z_hat_s`` give, by (1), a ratio estimator of ``pi(f)`` that is consistent
as ``R -> infinity`` at fixed ``N`` (the combination of independent SMC samplers by their
normalising-constant estimates, as in Whiteley, Lee & Heine, "On the role of interaction in
sequential Monte Carlo algorithms", Bernoulli 2016). :func:`pooled_resample` draws from it.

The same identity bounds the bias of the independent-run draws (Cauchy-Schwarz, ``sd(pi_hat(f)) <= 1/2``
for the probability of any set, e.g. of a mode):

    |bias of a probability| <= cv(Z_hat) / 2,    cv^2 = Var(Z_hat) / Z^2,

and the ESS of the run weights, ``(sum Z_hat)^2 / sum Z_hat^2 = R / (1 + cv_hat^2)``, is how many runs
the pooled estimate effectively rests on. :func:`reliability` reports both per measurement.

Measured (benchmarks/results/exactness_d8_dy*.md, exactness_d80_dy2.md): with 100-200 runs the pooled
draws trade the bias for variance and are worse than one draw per run on more problems than they
help (a few runs carry most of the evidence), so they are opt-in (``draw(pooled=True)``).
"""
from __future__ import annotations

import math

import torch

__all__ = ["run_log_weights", "pooled_log_weights", "pooled_resample", "reliability", "RELIABLE_RUNS_ESS",
           "RELIABLE_BIAS"]

#: the pooled estimate is flagged when fewer runs than this effectively carry it
RELIABLE_RUNS_ESS = 20.0
#: independent-run draws are flagged when the bias bound on a probability exceeds this
RELIABLE_BIAS = 0.05


def _groups(result) -> int:
    """The number of measurements ``B`` (runs ``i * B + b`` belong to measurement ``b``)."""
    return int(result.extra.get("measurements", 1))


def run_log_weights(result) -> torch.Tensor:
    """Normalised log-weights of the runs, ``(R,)`` float64: ``log Z_hat_r`` normalised over the runs
    of the same measurement (a plate: run ``i * B + b`` with the other runs of measurement ``b``)."""
    B = _groups(result)
    lz = result.log_evidence.to(torch.float64)
    lz = torch.where(torch.isnan(lz), torch.full_like(lz, -math.inf), lz)
    lz = lz.reshape(-1, B)
    return (lz - torch.logsumexp(lz, 0, keepdim=True)).reshape(-1)


def pooled_log_weights(result) -> torch.Tensor:
    """``(R, N)`` log-weights of every particle in the evidence-weighted pool: ``log Z_hat_r +
    log W_{r,i}`` normalised over all particles of the runs of the same measurement."""
    lw = result.log_weights.to(torch.float64)
    lw = torch.where(torch.isnan(lw), torch.full_like(lw, -math.inf), lw)
    lw = lw - torch.logsumexp(lw, -1, keepdim=True)
    return run_log_weights(result)[:, None] + lw


def pooled_resample(result, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` draws per measurement ``(n * B, *event)`` from the evidence-weighted pool of all runs'
    particles (systematic resampling over the pool; draw ``j * B + b`` is of measurement ``b``, the
    layout of :meth:`~ppl_diffusion.inference.smc.result.SMCResult.resample`). Consistent as the
    number of runs grows at fixed particles (see the module docstring)."""
    from .engine import systematic_resample

    n = int(n)
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    B = _groups(result)
    R, N = result.log_weights.shape
    lw = pooled_log_weights(result).reshape(R // B, B, N).transpose(0, 1).reshape(B, (R // B) * N)  # (B, R/B * N)
    idx = systematic_resample(lw, n, generator)  # (B, n) indices into the pool of each measurement
    perm = torch.randperm(n, generator=generator, device="cpu" if generator is None else generator.device)
    idx = idx[:, perm.to(idx.device)]  # systematic picks come sorted by run: shuffle the order
    run, part = idx // N, idx % N
    run = run * B + torch.arange(B, device=idx.device)[:, None]  # back to the i * B + b layout
    out = result.particles[run.T.reshape(-1), part.T.reshape(-1)]
    return out


def reliability(result) -> dict:
    """How far the run's draws can be trusted, per measurement (see the module docstring).

    Returns a dict of ``(B,)`` float64 tensors (``B = 1`` without a plate) and a rule:

    * ``runs``: independent runs per measurement;
    * ``runs_ess``: ESS of the run weights ``Z_hat_r`` (how many runs the pooled draws rest on);
    * ``cv2``: the estimated relative variance of ``Z_hat`` (``runs / runs_ess - 1``);
    * ``bias_bound``: ``sqrt(cv2) / 2``, the bound on the bias of any probability (a mode weight)
      estimated by one draw per independent run;
    * ``min_final_ess``: the smallest final particle ESS among the measurement's runs;
    * ``log_evidence``: the pooled estimate ``log mean_r Z_hat_r`` of ``log p(y)``;
    * ``unreliable_independent``: ``bias_bound > RELIABLE_BIAS`` (one draw per run is biased beyond
      that); ``unreliable_pooled``: ``runs_ess < RELIABLE_RUNS_ESS`` (the pooled draws rest on too few
      runs: add runs or particles).

    With one run the between-run statistics are undefined (NaN, and both flags False); the
    log-evidence and final ESS are still reported.
    """
    B = _groups(result)
    lz = result.log_evidence.to(torch.float64).reshape(-1, B)
    R = lz.shape[0]
    lrw = run_log_weights(result).reshape(R, B)
    runs_ess = 1.0 / torch.exp(2 * lrw).sum(0)
    nan = torch.full((B,), float("nan"), dtype=torch.float64)
    cv2 = (R / runs_ess - 1.0).clamp(min=0.0) if R > 1 else nan
    bound = 0.5 * torch.sqrt(cv2)
    ess = result.ess.to(torch.float64).reshape(R, B)
    return {
        "runs": torch.full((B,), float(R), dtype=torch.float64),
        "runs_ess": runs_ess if R > 1 else nan,
        "cv2": cv2,
        "bias_bound": bound,
        "min_final_ess": ess.min(0).values,
        "log_evidence": torch.logsumexp(lz, 0) - math.log(R),
        "unreliable_independent": (bound > RELIABLE_BIAS) if R > 1 else torch.zeros(B, dtype=torch.bool),
        "unreliable_pooled": (runs_ess < RELIABLE_RUNS_ESS) if R > 1 else torch.zeros(B, dtype=torch.bool),
    }
