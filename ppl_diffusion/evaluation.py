"""Image-posterior metrics of a set of draws against the ground truth (demo, ``solve``, examples)."""
from __future__ import annotations

import torch

__all__ = ["evaluate"]


def evaluate(samples: torch.Tensor, truth: torch.Tensor, level: float = 0.9) -> dict:
    """PSNR / SSIM of the posterior mean (images in [-1, 1]), coverage of the ``level`` equal-tailed
    pixel intervals, and correlation of the pixel std with ``|mean - truth|``."""
    from .metrics import coverage, psnr, ssim, std_error_correlation

    s = samples.reshape((-1,) + tuple(truth.shape)).to(torch.float64)
    t = truth.to(torch.float64)
    mean = s.mean(0)
    out = {"psnr": float(psnr(mean, t)), "ssim": float(ssim(mean, t))}
    if s.shape[0] >= 2:
        out["coverage90"] = float(coverage(s, t, level=level))
        c = std_error_correlation(s, t)
        out["std_err_corr"] = float(c) if torch.isfinite(c) else float("nan")
    else:
        out["coverage90"] = out["std_err_corr"] = float("nan")
    return out
