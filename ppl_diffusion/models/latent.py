"""``LatentDiffusionPrior``: a latent diffusion model (Rombach et al., CVPR 2022) as a Pyro
distribution on the image ``x``.

It bundles an :class:`~ppl_diffusion.models.autoencoder.Autoencoder` (encoder, decoder and the latent
scale factor ``s_f``) and a diffusion prior on the scaled latent ``z = s_f Enc_mean(x)`` (a
:class:`~ppl_diffusion.models.prior.DiffusionPrior` over ``z`` whose denoiser is the latent
denoiser). ``sample()`` runs the latent reverse diffusion and decodes, so a user's model still reads
``x = pyro.sample("x", prior)``. The density of ``x`` is not defined (the decoder maps a
low-dimensional latent onto a subset of image space), so ``log_prob`` raises.

Solvers for this prior live in :mod:`ppl_diffusion.inference.latent` (Latent DPS, PSLD, ReSample,
MPGD, STSL); the pixel-space solvers refuse it at construction (``Problem.check_prior``).

:func:`load_latent_prior` reads a diffusers latent-diffusion folder, safetensors only::

    folder/vae/config.json, folder/vae/diffusion_pytorch_model.safetensors   (AutoencoderKL)
    folder/unet/config.json, folder/unet/diffusion_pytorch_model.safetensors (UNet2DModel on z)
    folder/scheduler/scheduler_config.json                                   (DDPM-type)

which is the layout of the shipped ``digits-latent`` / ``patches-latent`` priors and of an
unconditional latent diffusion pipeline (``LDMPipeline``-style, with an ``AutoencoderKL``).
:func:`~ppl_diffusion.models.zoo.load_prior` dispatches here when the folder has ``vae/``.
"""
from __future__ import annotations

from pathlib import Path

import torch
from pyro.distributions import TorchDistribution
from torch.distributions import constraints

from ..denoisers import Denoiser
from .autoencoder import Autoencoder, KLAutoencoder
from .prior import DiffusionPrior

__all__ = ["LatentDiffusionPrior", "load_latent_prior", "load_autoencoder", "save_latent_prior",
           "LATENT_SOLVERS_HINT"]

#: the solvers that accept a LatentDiffusionPrior (named in refusals)
LATENT_SOLVERS_HINT = ("latent_dps, psld, resample, mpgd, stsl (ppl_diffusion.inference.latent) or score_ilo "
                       "(point estimates through the split decoder)")


class LatentDiffusionPrior(TorchDistribution):
    """A latent diffusion prior on images of shape ``autoencoder.image_shape``.

    Args:
        autoencoder: an :class:`~ppl_diffusion.models.autoencoder.Autoencoder` (``encode`` returns the
            scaled latent, ``decode`` takes it).
        latent_denoiser: a :class:`~ppl_diffusion.denoisers.Denoiser` on latents of shape
            ``autoencoder.latent_shape``.
        steps, eta, grid, terminal: options of the latent reverse diffusion of :meth:`sample` (see
            :class:`~ppl_diffusion.models.prior.DiffusionPrior`).
        progress: show a progress bar in :meth:`sample`.
    """

    arg_constraints: dict = {}
    has_rsample = False

    def __init__(self, autoencoder: Autoencoder, latent_denoiser: Denoiser, steps: int = 100, eta: float = 1.0,
                 grid: str = "uniform", terminal: str = "auto", progress: bool = False, batch_shape=torch.Size(),
                 validate_args=None):
        if not isinstance(autoencoder, Autoencoder):
            raise ValueError(f"autoencoder must be a ppl_diffusion Autoencoder, got {type(autoencoder).__name__}")
        if not isinstance(latent_denoiser, Denoiser):
            raise ValueError(f"latent_denoiser must be a ppl_diffusion Denoiser, got {type(latent_denoiser).__name__}")
        if tuple(latent_denoiser.event_shape) != tuple(autoencoder.latent_shape):
            raise ValueError(f"the latent denoiser works on shape {tuple(latent_denoiser.event_shape)} but the "
                             f"autoencoder's latents have shape {tuple(autoencoder.latent_shape)}")
        self.autoencoder = autoencoder
        #: the diffusion prior on the scaled latent z (its denoiser is the latent denoiser)
        self.latent = DiffusionPrior(latent_denoiser, steps=steps, eta=eta, grid=grid, terminal=terminal,
                                     progress=progress)
        super().__init__(torch.Size(batch_shape), autoencoder.image_shape, validate_args=False)

    @property
    def support(self):
        return constraints.independent(constraints.real, len(self.event_shape))

    @property
    def latent_denoiser(self) -> Denoiser:
        return self.latent.denoiser

    @property
    def latent_shape(self) -> torch.Size:
        return self.autoencoder.latent_shape

    @property
    def scale_factor(self) -> float:
        return float(getattr(self.autoencoder, "scale_factor", 1.0))

    @property
    def schedule(self):
        return self.latent.schedule

    @property
    def denoiser(self):
        """Not available: a pixel-space solver reached for the pixel denoiser of a latent prior."""
        raise ValueError("this is a LatentDiffusionPrior (diffusion on the latents of an autoencoder); it has no "
                         "pixel-space denoiser. Use a latent solver: " + LATENT_SOLVERS_HINT +
                         ", or a pixel prior such as load_prior('digits')")

    @property
    def prompt(self) -> str | None:
        """The prompt of a text-conditioned prior (``None`` for an unconditional one)."""
        return getattr(self.latent_denoiser, "prompt", None)

    def condition(self, prompt: str = "", guidance: float = 1.0, embedding=None) -> LatentDiffusionPrior:
        """This text-conditioned prior at ``prompt`` with classifier-free guidance weight ``guidance``
        (``embedding``: an ``(L, d)`` prompt embedding to use instead of encoding ``prompt``); see
        :mod:`ppl_diffusion.models.text`."""
        from .text import PromptedDenoiser, text_denoiser_of

        text = text_denoiser_of(self.latent_denoiser)
        if text is None:
            raise ValueError("this latent prior is not text-conditioned (its latent denoiser takes no prompt); "
                             "load one that is, e.g. load_latent_prior('digits-text')")
        den = PromptedDenoiser(text, prompt, guidance, embedding=embedding)
        return LatentDiffusionPrior(self.autoencoder, den, batch_shape=self.batch_shape, **self._options())

    def _options(self) -> dict:
        lp = self.latent
        return dict(steps=lp.steps, eta=lp.eta, grid=lp.grid, terminal=lp.terminal, progress=lp.progress)

    def with_options(self, **kwargs) -> LatentDiffusionPrior:
        opts = self._options()
        opts.update(kwargs)
        return LatentDiffusionPrior(self.autoencoder, self.latent_denoiser, batch_shape=self.batch_shape, **opts)

    def expand(self, batch_shape, _instance=None):
        return LatentDiffusionPrior(self.autoencoder, self.latent_denoiser, batch_shape=torch.Size(batch_shape),
                                    **self._options())

    def _reference(self):
        return self.latent._reference()

    def sample_latent(self, sample_shape=torch.Size(), generator: torch.Generator | None = None) -> torch.Tensor:
        """Latent draws ``(*sample_shape, *batch_shape, *latent_shape)`` (the latent reverse diffusion)."""
        return self.latent.sample(torch.Size(sample_shape) + self.batch_shape, generator=generator)

    def sample(self, sample_shape=torch.Size(), generator: torch.Generator | None = None) -> torch.Tensor:
        """Latent reverse diffusion, then the decoder: ``(*sample_shape, *batch_shape, *image_shape)``."""
        with torch.no_grad():
            return self.autoencoder.decode(self.sample_latent(sample_shape, generator))

    def log_prob(self, x):
        raise NotImplementedError(
            "LatentDiffusionPrior has no density on x (the decoder maps a low-dimensional latent onto a subset of "
            "image space); use a latent solver (" + LATENT_SOLVERS_HINT + ") to infer x")


# ---------------------------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------------------------
def load_autoencoder(folder, device=None, dtype=None) -> KLAutoencoder:
    """The :class:`KLAutoencoder` of ``folder/vae`` (or of ``folder`` itself when it holds the VAE's
    ``config.json``): an ``AutoencoderKL`` config and safetensors weights, checked."""
    from .zoo import _load_state_dict, _read_json, _weights_file, build_diffusers_module

    folder = Path(folder)
    vae_dir = folder / "vae" if (folder / "vae").is_dir() else folder
    cfg_file = vae_dir / "config.json"
    cfg = _read_json(cfg_file, "autoencoder config")
    cls = cfg.get("_class_name")
    if cls is not None and cls != "AutoencoderKL":
        raise ValueError(f"{cfg_file}: _class_name {cls!r} is not supported; ppl_diffusion loads AutoencoderKL "
                         "autoencoders (Stable Diffusion's KL-f8 and the shipped latent priors)")
    missing = [k for k in ("in_channels", "latent_channels", "block_out_channels") if k not in cfg]
    if missing:
        raise ValueError(f"{cfg_file} is not an AutoencoderKL config: missing {', '.join(missing)}")
    weights = _weights_file(vae_dir)
    state = _load_state_dict(weights)
    from diffusers import AutoencoderKL

    return KLAutoencoder(build_diffusers_module(AutoencoderKL, cfg, cfg_file, state, weights, device, dtype))


def load_latent_prior(name_or_path, device=None, dtype=None, clip_x0: bool = False, **prior_kwargs):
    """A :class:`LatentDiffusionPrior` from a diffusers latent-diffusion folder (``vae/``, ``unet/``,
    ``scheduler/``; see the module docstring) or a shipped name (``"digits-latent"``, ``"patches-latent"``).

    The UNet must take ``latent_channels`` input channels at the autoencoder's latent resolution;
    a mismatch is a ``ValueError`` naming both config files. ``clip_x0`` clips the latent denoiser's
    output to [-1, 1] (off by default: scaled latents are not bounded). Other keyword arguments
    (``steps``, ``eta``, ...) go to :class:`LatentDiffusionPrior`."""
    from ..denoisers import UNetDenoiser
    from .zoo import load_unet, prior_folder

    folder = prior_folder(name_or_path)
    if (folder / "text_encoder").is_dir():  # a text-conditioned latent prior
        from .text_prior import load_text_latent_prior

        return load_text_latent_prior(folder, device=device, dtype=dtype, **prior_kwargs)
    if not (folder / "vae").is_dir():
        raise ValueError(f"{folder} has no vae/ folder: a latent diffusion prior needs vae/ (AutoencoderKL), unet/ "
                         "and scheduler/; for a pixel-space prior use load_prior")
    ae = load_autoencoder(folder, device=device, dtype=dtype)
    unet, sched_cfg = load_unet(folder, device=device, dtype=dtype)
    ucfg = unet.config
    size = ucfg.sample_size
    uhw = (size, size) if isinstance(size, int) else tuple(size)
    C, h, w = ae.latent_shape
    if int(ucfg.in_channels) != C:
        raise ValueError(f"{folder / 'unet' / 'config.json'}: the UNet takes in_channels={ucfg.in_channels} but the "
                         f"autoencoder in {folder / 'vae' / 'config.json'} has latent_channels={C}; the latent "
                         "diffusion model and the autoencoder must come from the same pipeline")
    if tuple(uhw) != (h, w):
        raise ValueError(f"{folder / 'unet' / 'config.json'}: sample_size {size} differs from the autoencoder's "
                         f"latent resolution {(h, w)} ({folder / 'vae' / 'config.json'})")
    return LatentDiffusionPrior(ae, UNetDenoiser(unet, sched_cfg, clip_x0=clip_x0), **prior_kwargs)


def save_latent_prior(vae, unet, scheduler_config: dict, folder) -> Path:
    """Save an ``AutoencoderKL``, a latent ``UNet2DModel`` and the scheduler config as a folder that
    :func:`load_latent_prior` reads back (float32 safetensors)."""
    from .zoo import save_unet

    folder = Path(folder)
    save_unet(unet, scheduler_config, folder)
    vae.save_pretrained(folder / "vae", safe_serialization=True)
    return folder
