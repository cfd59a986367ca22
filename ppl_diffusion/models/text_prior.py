"""Save and load a text-conditioned latent diffusion prior (safetensors only)::

    folder/vae/          AutoencoderKL (as in the unconditional latent priors)
    folder/unet/         UNet2DConditionModel on the scaled latents (epsilon prediction)
    folder/scheduler/    scheduler_config.json (DDPM-type)
    folder/text_encoder/ config.json + model.safetensors  (:class:`~ppl_diffusion.models.text.TextEncoder`)
    folder/tokenizer/    vocab.json (the caption vocabulary and the token length)
    folder/clip/         config.json + model.safetensors  (optional :class:`~ppl_diffusion.models.clip.CaptionCLIP`)

:func:`~ppl_diffusion.models.latent.load_latent_prior` dispatches here when the folder has
``text_encoder/``; the prior comes back unconditional (null prompt) and ``prior.condition(prompt)``
sets the prompt.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from .text import CaptionTokenizer, TextEncoder, UNetTextDenoiser

__all__ = ["save_text_latent_prior", "load_text_latent_prior", "load_clip", "save_module"]


def save_module(module: torch.nn.Module, config: dict, folder) -> None:
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_file({k: v.detach().float().contiguous() for k, v in module.state_dict().items()},
              str(folder / "model.safetensors"))


def _load_module(module: torch.nn.Module, folder: Path) -> torch.nn.Module:
    from .zoo import _load_state_dict

    state = _load_state_dict(folder / "model.safetensors")
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(f"{folder / 'model.safetensors'} does not match {folder / 'config.json'}: "
                         f"{str(e).splitlines()[0]}") from e
    return module.requires_grad_(False).eval()


def _tokenizer(folder: Path) -> CaptionTokenizer:
    from .zoo import _read_json

    v = _read_json(folder / "tokenizer" / "vocab.json", "tokenizer vocabulary")
    return CaptionTokenizer(v["vocabulary"], v["length"])


def save_text_latent_prior(vae, unet, text_encoder: TextEncoder, tokenizer: CaptionTokenizer, scheduler_config: dict,
                           folder, clip=None) -> Path:
    from .zoo import save_unet

    folder = Path(folder)
    save_unet(unet, scheduler_config, folder)
    vae.save_pretrained(folder / "vae", safe_serialization=True)
    save_module(text_encoder, text_encoder.config, folder / "text_encoder")
    (folder / "tokenizer").mkdir(exist_ok=True)
    (folder / "tokenizer" / "vocab.json").write_text(
        json.dumps({"vocabulary": list(tokenizer.vocabulary), "length": tokenizer.length}) + "\n")
    if clip is not None:
        save_module(clip, clip.config, folder / "clip")
    return folder


def load_clip(name_or_path="digits-text"):
    """The CLIP-like model of a text prior folder (``folder/clip``) or of a ``clip`` folder itself."""
    from .clip import CaptionCLIP
    from .zoo import _read_json, prior_folder

    folder = prior_folder(name_or_path) if not Path(str(name_or_path)).is_dir() else Path(name_or_path)
    cdir = folder / "clip" if (folder / "clip").is_dir() else folder
    cfg = _read_json(cdir / "config.json", "CLIP-like model config")
    tok = CaptionTokenizer(cfg["vocabulary"], cfg["length"])
    return _load_module(CaptionCLIP(tok, cfg["width"], cfg["channels"], cfg["hidden"]), cdir)


def load_text_latent_prior(folder, device=None, dtype=None, **prior_kwargs):
    """A :class:`~ppl_diffusion.models.latent.LatentDiffusionPrior` whose latent denoiser is a
    :class:`~ppl_diffusion.models.text.UNetTextDenoiser` (null prompt until ``.condition(prompt)``)."""
    from diffusers import UNet2DConditionModel

    from .latent import LatentDiffusionPrior, load_autoencoder
    from .zoo import _load_state_dict, _read_json, _weights_file

    folder = Path(folder)
    ae = load_autoencoder(folder, device=device, dtype=dtype)
    ucfg = _read_json(folder / "unet" / "config.json", "UNet config")
    if ucfg.get("_class_name") != "UNet2DConditionModel":
        raise ValueError(f"{folder / 'unet' / 'config.json'}: a text prior needs a UNet2DConditionModel, got "
                         f"{ucfg.get('_class_name')!r}")
    unet = UNet2DConditionModel.from_config(ucfg)
    unet.load_state_dict(_load_state_dict(_weights_file(folder / "unet")), strict=True)
    sched = _read_json(folder / "scheduler" / "scheduler_config.json", "scheduler config")
    tcfg = _read_json(folder / "text_encoder" / "config.json", "text encoder config")
    enc = _load_module(TextEncoder(**tcfg), folder / "text_encoder")
    clip = load_clip(folder) if (folder / "clip").is_dir() else None
    for m in (unet, enc, clip):
        if m is not None and (device is not None or dtype is not None):
            m.to(device=device, dtype=dtype)
    den = UNetTextDenoiser(unet.requires_grad_(False).eval(), enc, _tokenizer(folder), sched, clip=clip)
    C, h, w = ae.latent_shape
    if tuple(den.event_shape) != (C, h, w):
        raise ValueError(f"{folder / 'unet' / 'config.json'}: the UNet works on {tuple(den.event_shape)} but the "
                         f"autoencoder's latents have shape {(C, h, w)}")
    return LatentDiffusionPrior(ae, den, **prior_kwargs)
