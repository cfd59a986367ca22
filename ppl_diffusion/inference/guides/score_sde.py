"""Score-SDE conditional sampling (Song, Sohl-Dickstein, Kingma, Kumar, Ermon, Poole, ICLR 2021).

Predictor-corrector sampling with replacement of the known coordinates (the paper's PC sampler
applied to imputation, as in the official ``get_pc_inpainter``). At each step from ``t`` to ``s``:

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

from ..problem import Problem
from ..sampler import Correction, Hook, StepState
from ..solver import check_int, check_number
from ..spectral import SpectralView
from .base import DiffusionGuide
from .repaint import ReplaceHook

__all__ = ["ScoreSDE"]


class _PCHook(ReplaceHook):
    def __init__(self, view, denoiser, snr, n_corrector):
        super().__init__(view)
        self.den, self.snr, self.n_corr = denoiser, snr, n_corrector

    def correct_x0(self, st: StepState) -> Correction | None:
        if self.n_corr == 0:
            return None
        x, x0 = st.x, st.x0
        a = (st.alpha_t / st.alpha_s) ** 2
        for _ in range(self.n_corr):
            score = (st.alpha_t * x0 - x) / st.sigma_t**2
            z = st.noise(x)
            zn = z.flatten(1).norm(dim=1)
            gn = score.flatten(1).norm(dim=1).clamp(min=1e-30)
            e = (2.0 * a * (self.snr * zn / gn) ** 2).reshape((-1,) + (1,) * (x.dim() - 1))
            x = x + e * score + torch.sqrt(2.0 * e) * z
            x = self.view.replace_known(x, st.alpha_t, st.sigma_t, st.generator)
            x0 = self.den(x, st.t.to(x.dtype))
        return Correction(x0=x0, eps=(x - st.alpha_t * x0) / st.sigma_t)


class ScoreSDE(DiffusionGuide):
    """Score-SDE conditional predictor-corrector sampler (Song et al., ICLR 2021; module docstring).

    Args:
        model: Pyro model with a diffusion-prior site and a ``GaussianMeasurement`` whose linear
            operator has an SVD (a mask or any SVD operator).
        snr: signal-to-noise ratio of the Langevin corrector (``> 0``; default 0.16).
        n_corrector: corrector steps per step (``>= 0``; default 1; 0 = predictor only).
        steps: reverse-diffusion steps (default 100).
        eta: DDIM noise of the predictor (1 = ancestral sampling, the paper's predictor).
        grid: time grid (see ``ppl_diffusion.schedules.time_grid``).
        prior_site: name of the diffusion-prior site when the model has several.
        progress: show a progress bar.

    Cost: ``1 + n_corrector`` network calls per step.
    """

    name = "ScoreSDE"
    requires = ("linear", "svd")

    def __init__(self, model, *, snr: float = 0.16, n_corrector: int = 1, steps: int = 100, eta: float = 1.0,
                 grid: str = "uniform", prior_site: str | None = None, progress: bool = False):
        self.snr = check_number("snr", snr, self.name, low=0.0, low_open=True)
        self.n_corrector = check_int("n_corrector", n_corrector, self.name, minimum=0)
        super().__init__(model, steps=steps, eta=eta, grid=grid, prior_site=prior_site, progress=progress)

    def make_hook(self, problem: Problem, n: int) -> Hook:
        return _PCHook(SpectralView.of(problem, self.name), problem.denoiser, self.snr, self.n_corrector)
