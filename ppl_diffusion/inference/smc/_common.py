"""Helpers shared by the SMC samplers (spectral views, batched network calls)."""
from __future__ import annotations

import math

import torch

from .engine import chunked

LOG2PI = math.log(2 * math.pi)


def normal_logpdf(x, mean, var):
    """Elementwise log N(x; mean, var) in float64."""
    x, mean = x.to(torch.float64), torch.as_tensor(mean).to(torch.float64)
    var = torch.as_tensor(var, dtype=torch.float64, device=x.device)
    return -0.5 * ((x - mean) ** 2 / var + torch.log(var) + LOG2PI)


def denoise_flat(denoiser, x: torch.Tensor, t, event_shape, max_batch=None) -> torch.Tensor:
    """``E[x0 | x_t]`` for ``x`` of shape ``(R, N, *event)``, chunked over ``R * N``."""
    R, N = x.shape[:2]
    flat = x.reshape((R * N,) + tuple(event_shape))
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    out = chunked(lambda xx: denoiser(xx, t), flat, max_batch=max_batch)
    return out.reshape(x.shape)


def sched_scalars(schedule, t, dtype, device):
    """(alpha, sigma) at scalar time t as 0-d tensors."""
    tt = torch.as_tensor(t, dtype=torch.float64)
    a = schedule.alpha(tt).to(dtype=dtype, device=device)
    s = schedule.sigma(tt).to(dtype=dtype, device=device)
    return a, s
