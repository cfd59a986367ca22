"""Score-SDE conditional sampling (Song, Sohl-Dickstein, Kingma, Kumar, Ermon, Poole, ICLR 2021).

Predictor-corrector sampling with replacement of the known coordinates (METHODS_SPEC §4.10;
official ``get_pc_inpainter``). At each step from ``t`` to ``s``:

1. corrector: ``n_corrector`` Langevin steps at ``t``, ``x <- x + e score + sqrt(2 e) z`` with the
   step ``e = 2 a (snr ||z|| / ||score||)^2`` (``a = alpha_t^2 / alpha_s^2``, norms **per sample**),
   each followed by replacing the known coordinates with ``alpha_t ybar + sigma_t z'``;
2. predictor: ancestral (DDPM) step to ``s``, then the known coordinates are set to
   ``alpha_s ybar + sigma_s z''``.

The known coordinates are the pixels of a mask, or in general the spectral coordinates ``V^T x``
with a non-zero singular value (``ybar = U^T y / s``): the paper's "mask in an orthogonal basis"
(used there for colorization). Measurement noise is ignored. Defaults: 100 steps, snr = 0.16,
1 corrector step (2 network calls per step). Needs a linear operator with an SVD (masks have one).
"""
from __future__ import annotations

import torch

from ..sampler import StepState
from .base import DiffusionGuide
from .ddrm import SpectralView
from .repaint import ReplaceHook

__all__ = ["ScoreSDE"]


class _PCHook(ReplaceHook):
    def __init__(self, view, denoiser, snr, n_corrector):
        super().__init__(view)
        self.den, self.snr, self.n_corr = denoiser, snr, n_corrector

    def correct_x0(self, st: StepState):
        if self.n_corr == 0:
            return None
        x, x0 = st.x, st.x0
        a = (st.alpha_t / st.alpha_s) ** 2
        dims = tuple(range(1, x.dim()))
        for k in range(self.n_corr):
            score = (st.alpha_t * x0 - x) / st.sigma_t**2
            z = st.noise(x)
            zn = z.flatten(1).norm(dim=1)
            gn = score.flatten(1).norm(dim=1).clamp(min=1e-30)
            e = (2.0 * a * (self.snr * zn / gn) ** 2).reshape((-1,) + (1,) * len(dims))
            x = x + e * score + torch.sqrt(2.0 * e) * z
            x = self.replace(x, st.alpha_t, st.sigma_t, st.generator)
            x0 = self.den(x, st.t.to(x.dtype))
        eps = (x - st.alpha_t * x0) / st.sigma_t
        return x0, eps


class ScoreSDE(DiffusionGuide):
    """Score-SDE conditional PC sampler (module docstring). ``ScoreSDE(model, steps=100, snr=0.16,
    n_corrector=1)``. Needs a linear operator with an SVD (a mask or any SVD operator)."""

    name = "ScoreSDE"
    default_steps = 100
    default_eta = 1.0
    requires = ("linear", "svd")

    def configure(self, snr: float = 0.16, n_corrector: int = 1, **options):
        super().configure(**options)
        self.snr, self.n_corrector = float(snr), int(n_corrector)
        if not self.snr > 0 or self.n_corrector < 0:
            raise ValueError(f"{self.name}: need snr > 0 and n_corrector >= 0, got {snr}, {n_corrector}")

    def make_hook(self, problem, n):
        lg = problem.require_svd(self.name)
        view = SpectralView(lg.operator, lg.y, lg.noise_std, problem.dtype, problem.device)
        return _PCHook(view, problem.denoiser, self.snr, self.n_corrector)

    def run(self, problem, n, generator=None):
        with torch.no_grad():
            return super().run(problem, n, generator)
