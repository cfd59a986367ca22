"""Result of an SMC run: weighted particles of R independent runs, with their diagnostics."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

__all__ = ["SMCResult"]


@dataclass
class SMCResult:
    """Weighted particles from ``R`` independent SMC runs of ``N`` particles each.

    * ``particles``: ``(R, N, *event_shape)``; ``log_weights``: ``(R, N)`` float64 (unnormalised);
    * ``log_evidence``: ``(R,)`` float64, each run's estimate of ``log Z`` (``log p(y)`` for the
      exact Feynman–Kac models, see each sampler's docstring);
    * ``ess_history``: ``(R, n_steps)`` ESS before each resampling decision;
    * ``resampled``: ``(R, n_steps)`` bool, whether that step resampled;
    * ``nfe``: network evaluations of the whole call (all runs, all particles).

    A plate of ``B`` measurements (``SMCSampler.run(y=Y, runs=R)`` on a plated model): ``R * B``
    runs, run ``i * B + b`` conditioned on measurement ``b``, so ``log_evidence.reshape(R, B)[:, b]``
    are measurement ``b``'s estimates of ``log p(y_b)``; ``extra["measurements"]`` is ``B``.
    """

    particles: torch.Tensor
    log_weights: torch.Tensor
    log_evidence: torch.Tensor
    ess_history: torch.Tensor
    resampled: torch.Tensor
    nfe: int = 0
    method: str = "smc"
    extra: dict = field(default_factory=dict)

    @property
    def num_runs(self) -> int:
        return self.particles.shape[0]

    @property
    def num_particles(self) -> int:
        return self.particles.shape[1]

    @property
    def weights(self) -> torch.Tensor:
        """Normalised weights ``(R, N)`` (float64)."""
        return torch.softmax(self.log_weights, dim=-1)

    @property
    def ess(self) -> torch.Tensor:
        """Final ESS ``(R,)``."""
        return 1.0 / (self.weights ** 2).sum(-1)

    @property
    def resampling_steps(self) -> list:
        """Indices of the steps that resampled (of run 0)."""
        return torch.nonzero(self.resampled[0]).flatten().tolist()

    def resample(self, n: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Plain samples ``(n, *event_shape)``: sample ``i`` is drawn from run ``i mod R`` by its weights.

        With ``n = R`` (the default when ``R > 1``) every sample comes from its own independent run
        (the published MCGDiff protocol); with one run, ``n`` (default ``N``) multinomial draws."""
        R, N = self.log_weights.shape
        if n is None:
            n = R if R > 1 else N
        n = int(n)
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        per_run = -(-n // R)
        w = self.weights
        idx = torch.multinomial(w.cpu(), per_run, replacement=True, generator=generator).to(w.device)  # (R, per_run)
        runs = torch.arange(R, device=w.device)[:, None].expand(R, per_run)
        # interleave so that the first R samples come from R different runs
        out = self.particles[runs.T.reshape(-1), idx.T.reshape(-1)]
        return out[:n]

    def select_runs(self, idx) -> SMCResult:
        """The runs ``idx`` (indices or a bool mask over ``R``) as a result of their own, e.g. to see what a
        smaller number of runs would have given. Without a plate only: on a plate, run ``i * B + b``
        belongs to measurement ``b`` and a selection would mix them."""
        if int(self.extra.get("measurements", 1)) > 1:
            raise ValueError("select_runs: a plate's runs interleave its measurements (run i * B + b); "
                             "select per measurement from a run without a plate")
        return SMCResult(self.particles[idx], self.log_weights[idx], self.log_evidence[idx],
                         self.ess_history[idx], self.resampled[idx], method=self.method)

    def pooled_resample(self, n: int, generator: torch.Generator | None = None,
                        smoothing: str | None = None) -> torch.Tensor:
        """``n`` draws (per measurement) from all runs' particles weighted by each run's evidence
        (:func:`~ppl_diffusion.inference.smc.evidence.pooled_resample`: no independent-run bias;
        ``smoothing``: run weights truncated or Pareto-smoothed,
        :func:`~ppl_diffusion.inference.smc.evidence.run_log_weights`)."""
        from .evidence import pooled_resample

        return pooled_resample(self, n, generator, smoothing)

    def reliability(self) -> dict:
        """Runs' evidence ESS, the measured bias of one draw per run, flags
        (:func:`~ppl_diffusion.inference.smc.evidence.reliability`)."""
        from .evidence import reliability

        return reliability(self)

    def to_inference_data(self, model=None, *args, n: int | None = None, generator: torch.Generator | None = None,
                          **kwargs):
        """``arviz.InferenceData`` with the library's one convention (``ppl_diffusion.idata``): each
        run is a chain of ``n`` (default ``N``) draws resampled by its weights, dims ``(chain, draw,
        channel, row, col)``; ``sample_stats`` keep the normalised ``log_weight`` ``(chain, particle)``,
        the ``particle_index`` of each draw and per run ``log_evidence``, ``final_ess``,
        ``ess_history`` / ``resampled`` ``(chain, step)``. With ``model`` and its arguments
        (``res.to_inference_data(model, y=y)``): pointwise ``log_likelihood``,
        ``posterior_predictive`` and ``observed_data`` too."""
        from ...idata import smc_inference_data

        if isinstance(model, int) and not isinstance(model, bool):  # the former to_inference_data(n, generator)
            n, model = model, None
            if args and (args[0] is None or isinstance(args[0], torch.Generator)):
                generator, args = args[0], args[1:]
        return smc_inference_data(self, model, *args, n=n, generator=generator, **kwargs)

    def __repr__(self) -> str:
        ess = self.ess
        return (f"SMCResult(method={self.method!r}, runs={self.num_runs}, particles={self.num_particles}, "
                f"event_shape={tuple(self.particles.shape[2:])}, nfe={int(self.nfe)}, "
                f"log_evidence={_brief(self.log_evidence)}, final_ess={_brief(ess)}, "
                f"resampling_steps={int(self.resampled[0].sum()) if self.resampled.numel() else 0}"
                f"/{self.resampled.shape[-1]}, extra={sorted(self.extra)})")


def _brief(v: torch.Tensor) -> str:
    """One number, or ``mean [min, max]`` of several."""
    v = v.detach().double().flatten()
    if v.numel() == 1:
        return f"{float(v):.4g}"
    return f"{float(v.mean()):.4g} [{float(v.min()):.4g}, {float(v.max()):.4g}]"
