"""Denoisers: one protocol ``(x_t, t) -> E[x0 | x_t]`` and everything derived from it.

With ``x_t = alpha x0 + sigma eps`` (see :mod:`ppl_diffusion.schedules`), Tweedie's formula links the
three usual parameterisations:

* ``eps_hat = (x_t - alpha x0_hat) / sigma``
* ``score = (alpha x0_hat - x_t) / sigma^2 = -eps_hat / sigma``
* the VE/EDM view ``D(x~, rho) = x0_hat`` with ``x~ = x_t / alpha`` and ``rho = sigma / alpha``.

Adapters: a diffusers ``UNet2DModel`` with its scheduler config (epsilon / v / sample prediction,
learned-variance channels dropped), plain callables, and (in :mod:`ppl_diffusion.models.gmm`) the
exact Gaussian-mixture denoiser. All are batched over any leading dimensions and run in float64.
"""
from __future__ import annotations

import contextlib

from collections.abc import Callable, Sequence

import torch

from .memory import batch_cap, chunked_denoise
from .schedules import Schedule, VPSchedule

__all__ = ["Denoiser", "UNetDenoiser", "CallableDenoiser", "broadcast_time"]


def broadcast_time(t, x: torch.Tensor, n_event: int) -> torch.Tensor:
    """Return ``t`` as a tensor of shape ``batch_shape + (1,) * n_event`` (or 0-d) on ``x``'s device/dtype.

    ``t`` may be a float, a 0-d tensor, or a tensor of the batch shape ``x.shape[:-n_event]``
    (or any shape broadcastable to it)."""
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    if t.dim() == 0:
        return t
    return t.reshape(t.shape + (1,) * n_event)


class Denoiser(torch.nn.Module):
    """Base class of the denoiser protocol.

    Subclasses implement :meth:`denoise` (``E[x0 | x_t]`` for ``x_t`` of shape ``(*batch, *event_shape)``
    and ``t`` broadcastable to ``batch``). :meth:`forward` counts network evaluations in ``.nfe``
    (one per batched call; per-sample NFE is what solvers report) and the samples it evaluated in
    ``.sample_evals`` (the batch size summed over calls).
    """

    def __init__(self, schedule: Schedule, event_shape: Sequence[int]):
        super().__init__()
        self.schedule = schedule
        self.event_shape = torch.Size(event_shape)
        self.nfe = 0
        self.sample_evals = 0

    # --- protocol ------------------------------------------------------------------------
    def denoise(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    #: rows per network call (``None``: automatic from the model size and free memory; 0: never
    #: chunk); see :mod:`ppl_diffusion.memory`. One counted evaluation either way.
    max_batch: int | None = None

    def forward(self, x_t: torch.Tensor, t) -> torch.Tensor:
        self._check(x_t)
        self.nfe += 1
        n = x_t.numel() // max(self.event_shape.numel(), 1)
        self.sample_evals += n
        t = torch.as_tensor(t, dtype=x_t.dtype, device=x_t.device)
        cap = batch_cap(self, x_t.device)
        if cap is None or n <= cap:
            return self.denoise(x_t, t)
        return chunked_denoise(self, x_t, t, cap)

    def reset_nfe(self) -> None:
        self.nfe = 0
        self.sample_evals = 0

    @property
    def n_event(self) -> int:
        return len(self.event_shape)

    def _check(self, x_t: torch.Tensor) -> None:
        if tuple(x_t.shape[x_t.dim() - self.n_event:]) != tuple(self.event_shape) or x_t.dim() < self.n_event:
            raise ValueError(
                f"denoiser expects inputs of shape (*batch, {tuple(self.event_shape)}), got {tuple(x_t.shape)}"
            )

    def coefficients(self, t, x: torch.Tensor):
        """``(alpha, sigma)`` at ``t`` broadcast against ``x`` (scalar times are cached: the grid of a
        run repeats the same few values, and schedule interpolation is not free)."""
        tb = broadcast_time(t, x, self.n_event)
        if tb.dim() == 0:
            key = (float(tb), x.dtype, x.device)
            cache = self.__dict__.setdefault("_coef_cache", {})
            hit = cache.get(key)
            if hit is None:
                if len(cache) > 4096:
                    cache.clear()
                hit = cache[key] = (self.schedule.alpha(tb).to(x.dtype), self.schedule.sigma(tb).to(x.dtype))
            return hit
        return self.schedule.alpha(tb).to(x.dtype), self.schedule.sigma(tb).to(x.dtype)

    # --- derived quantities --------------------------------------------------------------
    def epsilon(self, x_t: torch.Tensor, t) -> torch.Tensor:
        alpha, sigma = self.coefficients(t, x_t)
        return (x_t - alpha * self(x_t, t)) / sigma

    def score(self, x_t: torch.Tensor, t) -> torch.Tensor:
        alpha, sigma = self.coefficients(t, x_t)
        return (alpha * self(x_t, t) - x_t) / sigma**2

    def denoise_ve(self, x_tilde: torch.Tensor, rho) -> torch.Tensor:
        """EDM view ``D(x~, rho)``: the denoiser of ``x~ = x0 + rho * eps``.

        Finds ``t`` with ``sigma(t)/alpha(t) = rho`` and evaluates the network at ``alpha(t) x~``."""
        rho = torch.as_tensor(rho, dtype=x_tilde.dtype, device=x_tilde.device)
        t = self.schedule.t_of_rho(rho).to(x_tilde.dtype)
        alpha = self.schedule.alpha(broadcast_time(t, x_tilde, self.n_event)).to(x_tilde.dtype)
        return self(alpha * x_tilde, t)

    def to_x0_eps(self, x_t: torch.Tensor, t):
        """One network call returning ``(x0_hat, eps_hat)``."""
        alpha, sigma = self.coefficients(t, x_t)
        x0 = self(x_t, t)
        return x0, (x_t - alpha * x0) / sigma


class CallableDenoiser(Denoiser):
    """Wrap a plain callable ``fn(x_t, t)`` returning ``x0`` (``output="x0"``), ``eps`` or the score."""

    def __init__(self, fn: Callable, schedule: Schedule, event_shape: Sequence[int], output: str = "x0"):
        super().__init__(schedule, event_shape)
        if output not in ("x0", "epsilon", "score"):
            raise ValueError(f"output must be 'x0', 'epsilon' or 'score', got {output!r}")
        self.fn, self.output = fn, output

    def denoise(self, x_t, t):
        out = self.fn(x_t, t)
        if self.output == "x0":
            return out
        alpha, sigma = self.coefficients(t, x_t)
        if self.output == "epsilon":
            return (x_t - sigma * out) / alpha
        return (x_t + sigma**2 * out) / alpha


def _attention_backend(x: torch.Tensor):
    """The attention backend for a network call on ``x``: the math kernel whenever autograd
    tracks ``x`` (its backward is differentiable again, so the second derivatives that Score Prior
    and ``Trace_ELBO`` on ``log_prob`` need exist; the fused CPU kernels have no double backward),
    the default fused kernels otherwise."""
    if torch.is_grad_enabled() and x.requires_grad:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        return sdpa_kernel(SDPBackend.MATH)
    return contextlib.nullcontext()


class UNetDenoiser(Denoiser):
    """Adapter for a diffusers ``UNet2DModel`` trained with a DDPM-type scheduler.

    ``scheduler_config`` is the scheduler's config dict (``num_train_timesteps``, ``beta_schedule``,
    ``beta_start``, ``beta_end``, ``prediction_type``). The continuous ``t`` is mapped to the
    network's fractional timestep (the sinusoidal embedding accepts non-integers). Learned-variance
    checkpoints (twice the input channels) keep the first half as the prediction. The network runs
    in its own dtype; inputs and outputs keep the caller's dtype.
    """

    def __init__(self, unet: torch.nn.Module, scheduler_config: dict, schedule: Schedule | None = None,
                 clip_x0: bool = False):
        cfg = getattr(unet, "config", None)
        if cfg is None:
            raise ValueError("unet must be a diffusers model with a .config")
        C = int(cfg.in_channels)
        size = cfg.sample_size
        H, W = (size, size) if isinstance(size, int) else tuple(size)
        schedule = schedule or VPSchedule.from_scheduler_config(dict(scheduler_config))
        super().__init__(schedule, (C, H, W))
        self.unet = unet
        self.scheduler_config = dict(scheduler_config)
        self.prediction_type = self.scheduler_config.get("prediction_type", "epsilon")
        if self.prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise ValueError(f"unsupported prediction_type {self.prediction_type!r}")
        self.out_channels = int(getattr(cfg, "out_channels", C))
        if self.out_channels not in (C, 2 * C):
            raise ValueError(f"UNet out_channels={self.out_channels} is neither C={C} nor 2C (learned variance)")
        self.clip_x0 = clip_x0
        for p in self.unet.parameters():
            p.requires_grad_(False)
        self.unet.eval()

    @property
    def net_dtype(self) -> torch.dtype:
        """The network's dtype (read from its first parameter; cached until ``.to()`` changes it)."""
        p = self.__dict__.get("_first_param")
        if p is None:
            p = self.__dict__["_first_param"] = next(self.unet.parameters())
        return p.dtype

    def denoise(self, x_t, t):
        batch = x_t.shape[: x_t.dim() - 3]
        flat = x_t.reshape((-1,) + tuple(self.event_shape))
        n = flat.shape[0]
        net_dtype = self.net_dtype
        tt = torch.as_tensor(t, dtype=torch.float64, device=x_t.device)
        if tt.dim() > 0:
            steps = self.schedule.model_timestep(tt.expand(batch).reshape(-1)).to(torch.float32)
        else:
            steps = self.schedule.model_timestep(tt).to(torch.float32).expand(n)
        with _attention_backend(flat):
            out = self.unet(flat.to(net_dtype), steps).sample.to(x_t.dtype)
        out = out[:, : self.event_shape[0]]
        out = out.reshape(x_t.shape)
        alpha, sigma = self.coefficients(t, x_t)
        if self.prediction_type == "epsilon":
            x0 = (x_t - sigma * out) / alpha
        elif self.prediction_type == "v_prediction":
            x0 = alpha * x_t - sigma * out
        else:
            x0 = out
        return x0.clamp(-1, 1) if self.clip_x0 else x0
