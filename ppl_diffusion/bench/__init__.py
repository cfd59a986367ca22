"""The benchmarks of the library, one module per benchmark; ``benchmarks/*.py`` are thin scripts over them.

Each module exposes ``main(argv=None)``: it prints markdown tables and writes them, with command,
machine, versions and date (:mod:`.report`), under ``--out`` (default ``benchmarks/results`` under the
current directory).

* :mod:`.gmm`      — the harness on GMM problems with exact posteriors (every registered solver through
  its ``draw()``), the Gaussian closed-form check, mass per mixture component, the noise-floor spread.
* :mod:`.kernels`  — MCMC kernels: GMM, coverage, Pyro's chains against vectorised chains, replica exchange.
* :mod:`.smc`      — SMC samplers: particles, calibration, setting B, particle Gibbs, inpainting.
* :mod:`.variational` — score prior / efficient score prior / RED-Diff on GMM problems.
* :mod:`.images`   — every guide (and other families) on the shipped prior's held-out images.
* :mod:`.overhead` — our solvers through the Pyro model against a bare torch loop (same arithmetic).
* :mod:`.scaling`  — SMC wall time / peak memory per particle, guide throughput against batch size.
* :mod:`.peers`    — DeepInverse's DPS / DDRM / DiffPIR against ours on the same denoiser.
* :mod:`.diagnostics_speed` — vectorised R-hat / ESS against ArviZ.
* :mod:`.mcgdiff_match_times` — MCGDiff's capped matching times on Gaussian deblurring.
* :mod:`.latents`  — PMMH / Gibbs on GMM problems with an unknown noise level or gain, against exact
  posteriors by quadrature over theta.
* :mod:`.latents_joint` — joint DPS and RED-Diff's autoguide on theta, on the same problems.
* :mod:`.blind_e1` — BlindDPS, GibbsDDRM, Blind RED-Diff on the exact blind GMM problem (phi by quadrature).
* :mod:`.blind_images` — blind deblurring of held-out digits with the shipped kernel prior.
* :mod:`.plates`   — a plate of measurements against separate runs on the shipped digits prior.
* :mod:`.red_diff_defaults` — RED-Diff's prior weight (our units against the paper's balance) on the
  demo tasks and the exact GMM check.
* :mod:`.study_scaling` — study cells per minute in process against Ray with 1 and 2 workers, Ray's overhead.
* :mod:`.reliability` — every bad input or fault tried and what the user gets, chunked runs against
  one batch (bit-identical), peak memory of a 10,000-sample DDRM run.
* :mod:`.exactness` — the exact samplers against the spread of exact draws on new GMM families (full
  covariances, uneven weights, spread spectra): inside / outside on SW, component TV, 90 % coverage;
  the independent-run minor-mode weight (``mode_bias``).
* :mod:`.variance_loss` — the variance the plug-in DDPM step drops, in closed form for one Gaussian
  coordinate, per grid, step count and ``tail_steps`` (where the SMC samplers' narrow coverage comes from).
* :mod:`.latent_e2` — the latent solvers against the exact posterior of a linear "autoencoder" with a
  Gaussian-mixture latent prior (E2), with the noise floor, coverage and network calls.
* :mod:`.latent_images` — the latent solvers on held-out images of a shipped latent prior, beside
  pixel-space DPS / DDRM on the pixel prior.
* :mod:`.score_ilo_exact` — Score-ILO on E2 with a linear G2 and the exact GMM score on the layer: the
  MAP-mode fixed point against the stationary point of its closed-form objective, sampling mode by SW.
* :mod:`.score_ilo_images` — Score-ILO and its ablations on held-out digits with ``digits-latent``.
* :mod:`.text_e3` — P2L / TReg / DreamSampler on the exact text-conditioned problem E3 (posterior, P2L's
  prompt against the empirical-Bayes prompt, TReg's adaptive negation).
* :mod:`.text_images` — the same solvers on held-out digits with the shipped ``digits-text`` prior
  (right / wrong / null prompt).
"""
from __future__ import annotations

import os
import statistics
import time

import torch

from .report import RESULTS_DIR

__all__ = ["SCHEDULER_CONFIG", "PRIORS", "RESULTS_DIR", "image_denoiser", "heldout", "median_time", "set_threads"]

#: scheduler of the tiny random UNet (DDPM linear betas, epsilon prediction)
SCHEDULER_CONFIG = {"num_train_timesteps": 1000, "beta_schedule": "linear", "beta_start": 1e-4,
                    "beta_end": 0.02, "prediction_type": "epsilon"}


def tiny_unet(size: int = 16, channels: int = 1, seed: int = 0):
    """A tiny random diffusers ``UNet2DModel`` at a fixed seed (``--prior tiny``: smoke tests)."""
    from diffusers import UNet2DModel

    g = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        return UNet2DModel(sample_size=size, in_channels=channels, out_channels=channels,
                           block_out_channels=(16, 32), layers_per_block=1,
                           down_block_types=("DownBlock2D", "DownBlock2D"),
                           up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=8)
    finally:
        torch.random.set_rng_state(g)


#: ``--prior`` choices of the image benchmarks: the shipped prior, or the tiny random UNet (smoke tests)
PRIORS = ("digits", "tiny")


def image_denoiser(prior: str = "digits", seed: int = 0):
    """``(denoiser, label)`` for the image benchmarks.

    ``prior="digits"`` (default): the shipped ``digits`` prior (``zoo.load_unet('digits')``, its own
    scheduler config and ``clip_x0`` setting); a ``ValueError`` when its weights are missing (no silent
    fallback: the tables must say which network they measured). ``prior="tiny"``: a tiny random
    ``UNet2DModel`` (16x16, 1 channel) at ``seed``, for seconds-scale smoke tests."""
    from ..denoisers import UNetDenoiser

    if prior == "tiny":
        return UNetDenoiser(tiny_unet(16, 1, seed), SCHEDULER_CONFIG), f"tiny random UNet (seed {seed}; untrained)"
    if prior not in PRIORS:
        raise ValueError(f"prior must be one of {PRIORS}, got {prior!r}")
    from ..models.zoo import load_prior, prior_info

    den = load_prior(prior).denoiser  # ValueError naming the missing file when not shipped
    info = prior_info(prior)
    params = info.get("unet", {}).get("parameters")
    extra = f", {params} parameters, {info.get('steps')} training steps" if params else ""
    return den, f"shipped prior {prior!r} (`zoo.load_prior({prior!r})`{extra})"


def heldout(n: int, name: str = "digits"):
    """``(images (n, 1, 16, 16) in [-1, 1], label)``: the first ``n`` of ``zoo.heldout_images(name)``
    (never seen in training)."""
    from ..models.zoo import heldout_images

    x = heldout_images(name)
    if n > x.shape[0]:
        raise ValueError(f"n must be <= {x.shape[0]} (held-out images of {name!r}), got {n}")
    return x[:n], f"`zoo.heldout_images({name!r})[:{n}]` (held out from training)"


def median_time(fn, repeats: int = 3, warmup: int = 1):
    """``(median seconds, last result)`` of ``fn()`` over ``repeats`` runs after ``warmup`` runs."""
    out = None
    for _ in range(warmup):
        out = fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts), out


def set_threads():
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
