"""Loading diffusion priors: the ones shipped with the package, local diffusers folders, hub ids.

``load_prior(name_or_path)`` accepts

* a shipped name: ``"digits"`` (the default; 16x16 handwritten digits) or ``"patches"`` (32x32
  grayscale natural-image patches), stored in ``ppl_diffusion/weights/<name>/``;
* a local folder in diffusers layout, either a pipeline folder with ``unet/config.json``,
  ``unet/diffusion_pytorch_model.safetensors`` and ``scheduler/scheduler_config.json``, or a bare
  model folder holding ``config.json``, ``diffusion_pytorch_model.safetensors`` and
  ``scheduler_config.json`` side by side (the layout of e.g. ``google/ddpm-cifar10-32``);
* a Hugging Face Hub id ``"owner/name"`` (only when no such local path exists): the JSON configs
  are fetched first and then only the UNet's safetensors file, never pickles.

Only ``UNet2DModel`` networks with a DDPM-type (variance-preserving, discrete-beta) scheduler are
accepted; weights are read with ``safetensors`` only. Every failure is a ``ValueError`` that names
the offending file and says what to do. Nothing here touches the network unless a hub id is given.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "DEFAULT_PRIOR",
    "SHIPPED_PRIORS",
    "list_priors",
    "prior_folder",
    "prior_info",
    "load_unet",
    "load_prior",
    "save_unet",
    "heldout_images",
]

DEFAULT_PRIOR = "digits"
SHIPPED_PRIORS = {
    "digits": "16x16 handwritten digits (scikit-learn's 8x8 digits, bilinearly upsampled), 1 channel, [-1, 1]",
    "patches": "32x32 grayscale patches of natural photographs (scikit-image / scikit-learn), 1 channel, [-1, 1]",
    "kernels": "7x7 blur kernels (motion and anisotropic Gaussian, our generator) on the simplex: a prior on "
               "the operator parameter of blind deblurring (a ParameterDiffusionPrior, not an image prior)",
    "digits-latent": "latent diffusion on the 16x16 digits: KL autoencoder to 4x4x4 latents + latent UNet",
    "patches-latent": "latent diffusion on the 32x32 patches: KL autoencoder to 8x8x4 latents + latent UNet",
    "digits-text": "caption-conditioned latent diffusion on the 16x16 digits (label + attribute captions, "
                   "classifier-free guidance) with a CLIP-like image-text model",
}
WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
UNET_CLASSES = ("UNet2DModel",)
#: diffusers schedulers that describe a discrete variance-preserving (DDPM-type) forward process
VP_SCHEDULERS = (
    "DDPMScheduler", "DDIMScheduler", "PNDMScheduler", "DPMSolverMultistepScheduler",
    "DPMSolverSinglestepScheduler", "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler",
    "HeunDiscreteScheduler", "LMSDiscreteScheduler", "UniPCMultistepScheduler", "DEISMultistepScheduler",
    "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler", "DDPMParallelScheduler",
    "DDIMParallelScheduler", "RePaintScheduler",
)
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


def list_priors() -> list[str]:
    """Names of the priors shipped with this installation (those whose weights are present)."""
    return [n for n in SHIPPED_PRIORS if (WEIGHTS_DIR / n / "unet" / WEIGHTS_NAME).is_file()]


def _shipped_message() -> str:
    return ", ".join(repr(n) for n in SHIPPED_PRIORS)


# ---------------------------------------------------------------------------------------------
# locating a prior
# ---------------------------------------------------------------------------------------------
def _layout(folder: Path):
    """``(unet_dir, scheduler_config_file)`` of a diffusers folder, or a ValueError saying what is missing."""
    if (folder / "unet").is_dir():
        unet_dir = folder / "unet"
        sched = folder / "scheduler" / "scheduler_config.json"
        if not sched.is_file() and (unet_dir / "scheduler_config.json").is_file():
            sched = unet_dir / "scheduler_config.json"
    elif (folder / "config.json").is_file() or any(folder.glob("*.safetensors")) or \
            any(any(folder.glob(f"*{s}")) for s in PICKLE_SUFFIXES):
        unet_dir = folder
        sched = folder / "scheduler_config.json"
        if not sched.is_file() and (folder.parent / "scheduler" / "scheduler_config.json").is_file():
            sched = folder.parent / "scheduler" / "scheduler_config.json"  # path given to .../unet
    else:
        raise ValueError(
            f"{folder} is not a diffusers model folder: expected unet/config.json, unet/{WEIGHTS_NAME} and "
            f"scheduler/scheduler_config.json (or config.json, {WEIGHTS_NAME} and scheduler_config.json "
            "side by side)")
    return unet_dir, sched


def _weights_file(unet_dir: Path) -> Path:
    st = unet_dir / WEIGHTS_NAME
    if st.is_file():
        return st
    others = sorted(unet_dir.glob("*.safetensors"))
    if len(others) == 1:
        return others[0]
    pickles = sorted(p.name for s in PICKLE_SUFFIXES for p in unet_dir.glob(f"*{s}"))
    if pickles:
        raise ValueError(
            f"{unet_dir} holds only pickle checkpoint(s) {', '.join(pickles)}; ppl_diffusion loads safetensors "
            "only, since unpickling can run arbitrary code. Convert it where you trust the file, e.g. "
            "`UNet2DModel.from_pretrained(folder).save_pretrained(folder, safe_serialization=True)`, and "
            f"pass the folder holding {WEIGHTS_NAME}")
    if len(others) > 1:
        raise ValueError(f"{unet_dir} holds several safetensors files ({', '.join(p.name for p in others)}) "
                         f"and no {WEIGHTS_NAME}; sharded or ambiguous checkpoints are not supported")
    raise ValueError(f"{unet_dir} has no {WEIGHTS_NAME}")


def _download_hub(repo_id: str) -> Path:
    """Fetch the configs, then only the UNet safetensors of ``repo_id``; a ValueError if that fails."""
    howto = (f"Download it on a machine with internet access, e.g. `huggingface-cli download {repo_id} "
             f"--include '*.json' '*.safetensors' --local-dir DIR`, copy DIR here and call load_prior(DIR)")
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:  # pragma: no cover - huggingface_hub comes with diffusers
        raise ValueError(f"loading the hub id {repo_id!r} needs huggingface_hub. {howto}") from e
    try:
        root = Path(snapshot_download(repo_id, allow_patterns=["*.json"]))
        unet_dir, _ = _layout(root)
        rel = unet_dir.relative_to(root).as_posix()
        pattern = f"{rel}/*.safetensors" if rel != "." else "*.safetensors"
        root = Path(snapshot_download(repo_id, allow_patterns=["*.json", pattern]))
    except ValueError:
        raise
    except Exception as e:  # offline, unknown repo, gated, network error ...
        raise ValueError(f"could not fetch {repo_id!r} from the Hugging Face Hub "
                         f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). {howto}") from e
    return root


def prior_folder(name_or_path=DEFAULT_PRIOR) -> Path:
    """The local folder of a shipped name, a path, or a hub id (downloaded); ValueError otherwise."""
    if isinstance(name_or_path, Path):
        name_or_path = str(name_or_path)
    if not isinstance(name_or_path, str) or not name_or_path:
        raise ValueError(f"name_or_path must be a prior name ({_shipped_message()}), a folder or a hub id, "
                         f"got {name_or_path!r}")
    if name_or_path in SHIPPED_PRIORS:
        folder = WEIGHTS_DIR / name_or_path
        if not (folder / "unet" / WEIGHTS_NAME).is_file():
            raise ValueError(f"the shipped prior {name_or_path!r} is missing from this installation ({folder}); "
                             "reinstall ppl-diffusion or train it with "
                             f"`python -m ppl_diffusion.training --dataset {name_or_path} --out {folder}`")
        return folder
    p = Path(name_or_path).expanduser()
    if p.exists():
        if p.is_file():
            if p.suffix in PICKLE_SUFFIXES:
                raise ValueError(f"{p} is a pickle checkpoint; ppl_diffusion loads safetensors only (unpickling "
                                 "can run arbitrary code). Convert it to a diffusers folder with safetensors.")
            raise ValueError(f"{p} is a file; pass the diffusers folder that holds it (with config.json and "
                             "the scheduler config)")
        return p
    if _HUB_ID.match(name_or_path) and not name_or_path.startswith((".", "~")):
        return _download_hub(name_or_path)
    raise ValueError(f"unknown prior {name_or_path!r}: not a shipped prior ({_shipped_message()}), not an "
                     "existing folder, and not a hub id of the form 'owner/name'")


# ---------------------------------------------------------------------------------------------
# validation and loading
# ---------------------------------------------------------------------------------------------
def _read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise ValueError(f"missing {what} {path}")
    try:
        cfg = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{what} {path} is not valid JSON: {e}") from e
    if not isinstance(cfg, dict):
        raise ValueError(f"{what} {path} must hold a JSON object, got {type(cfg).__name__}")
    return cfg


def _check_unet_config(cfg: dict, path: Path) -> None:
    cls = cfg.get("_class_name")
    if cls is not None and cls not in UNET_CLASSES:
        raise ValueError(f"{path}: _class_name {cls!r} is not supported; ppl_diffusion loads unconditional "
                         f"pixel-space {' / '.join(UNET_CLASSES)} networks")
    missing = [k for k in ("sample_size", "in_channels", "out_channels", "block_out_channels",
                           "down_block_types", "up_block_types") if k not in cfg]
    if missing:
        raise ValueError(f"{path} is not a UNet2DModel config: missing {', '.join(missing)}")
    C, Co = cfg["in_channels"], cfg["out_channels"]
    if not (isinstance(C, int) and isinstance(Co, int) and C > 0 and Co in (C, 2 * C)):
        raise ValueError(f"{path}: out_channels={Co!r} must equal in_channels={C!r} (or twice it for "
                         "learned-variance networks)")
    if cfg.get("class_embed_type") is not None or cfg.get("num_class_embeds") is not None:
        raise ValueError(f"{path}: class-conditional UNets are not supported (class_embed_type / num_class_embeds)")


def _check_scheduler_config(cfg: dict, path: Path) -> None:
    cls = cfg.get("_class_name")
    if cls is not None and cls not in VP_SCHEDULERS:
        raise ValueError(f"{path}: scheduler {cls!r} is not a DDPM-type (discrete variance-preserving) "
                         f"scheduler; expected one of {', '.join(VP_SCHEDULERS[:4])}, ...")
    T = cfg.get("num_train_timesteps")
    if not isinstance(T, int) or T < 2:
        raise ValueError(f"{path}: num_train_timesteps must be an integer >= 2, got {T!r}")
    if cfg.get("trained_betas") is None:
        bs = cfg.get("beta_schedule", "linear")
        if bs not in BETA_SCHEDULES:
            raise ValueError(f"{path}: beta_schedule {bs!r} is not supported; expected one of "
                             f"{', '.join(BETA_SCHEDULES)} or trained_betas")
        for k in ("beta_start", "beta_end"):
            v = cfg.get(k, 1e-4 if k == "beta_start" else 0.02)
            if not isinstance(v, (int, float)) or not 0 < v < 1:
                raise ValueError(f"{path}: {k} must lie in (0, 1), got {v!r}")
    pt = cfg.get("prediction_type", "epsilon")
    if pt not in PREDICTION_TYPES:
        raise ValueError(f"{path}: prediction_type {pt!r} is not supported; expected one of "
                         f"{', '.join(PREDICTION_TYPES)}")
    try:  # the library's own reading of it must succeed too
        from ..schedules import VPSchedule

        VPSchedule.from_scheduler_config(cfg)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e


def _load_state_dict(path: Path) -> dict:
    try:
        from safetensors.torch import load_file

        state = load_file(str(path), device="cpu")
    except Exception as e:  # SafetensorError, OSError, ... on truncated / corrupt files
        raise ValueError(f"{path} is not a readable safetensors file ({type(e).__name__}: {e}); "
                         "re-download or re-save the checkpoint") from e
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:  # a NaN / Inf weight would surface later as a "diverged" guidance step
        raise ValueError(f"{path} holds non-finite (NaN / Inf) weights in {len(bad)} tensor(s): "
                         f"{', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}; the checkpoint is corrupt "
                         "(or was saved from a diverged training run): re-download or retrain it")
    return state


def load_unet(name_or_path=DEFAULT_PRIOR, device=None, dtype=None):
    """Load ``(unet, scheduler_config)``: a validated diffusers ``UNet2DModel`` and its scheduler config dict.

    The network comes back in eval mode with parameters that do not require gradients (gradients
    with respect to the input still flow), on ``device`` (default CPU) in ``dtype`` (default the
    stored float32). Raises ``ValueError`` for an unknown name, a missing / pickle-only / corrupt
    weights file, or a config that is not an unconditional ``UNet2DModel`` with a DDPM-type scheduler.
    """
    folder = prior_folder(name_or_path)
    unet_dir, sched_file = _layout(folder)
    weights = _weights_file(unet_dir)
    cfg_file = unet_dir / "config.json"
    cfg = _read_json(cfg_file, "UNet config")
    _check_unet_config(cfg, cfg_file)
    if not sched_file.is_file():
        raise ValueError(f"{folder} has no scheduler config (looked for {sched_file}); add the "
                         "scheduler_config.json of the DDPM scheduler the network was trained with")
    sched_cfg = _read_json(sched_file, "scheduler config")
    _check_scheduler_config(sched_cfg, sched_file)
    state = _load_state_dict(weights)

    from diffusers import UNet2DModel

    return build_diffusers_module(UNet2DModel, cfg, cfg_file, state, weights, device, dtype), sched_cfg


def build_diffusers_module(cls, cfg: dict, cfg_file, state: dict, weights, device=None, dtype=None):
    """``cls.from_config(cfg)`` with the ``state`` loaded strictly, frozen in eval mode; a config it
    cannot build or weights that do not match raise a ValueError naming the files."""
    from diffusers.utils import logging as dlogging

    verbosity = dlogging.get_verbosity()
    dlogging.set_verbosity_error()  # unknown config keys are ignored with a warning otherwise
    try:
        module = cls.from_config(cfg)
    except Exception as e:
        raise ValueError(f"{cfg_file}: cannot build a {cls.__name__} from this config ({type(e).__name__}: {e})") from e
    finally:
        dlogging.set_verbosity(verbosity)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        msg = str(e).splitlines()
        raise ValueError(f"{weights} does not match {cfg_file}: {' '.join(m.strip() for m in msg[:3])}") from e
    module.requires_grad_(False).eval()
    if device is not None or dtype is not None:
        module.to(device=device, dtype=dtype)
    return module


def load_prior(name_or_path=DEFAULT_PRIOR, device=None, dtype=None, clip_x0: bool | None = None,
               **prior_kwargs):
    """``DiffusionPrior(UNetDenoiser(unet, scheduler_config), **prior_kwargs)`` for a shipped name,
    a local diffusers folder or a hub id (see :func:`load_unet`).

    ``device`` / ``dtype`` place the network; ``clip_x0`` clips the denoiser's E[x0 | x_t] to
    [-1, 1] (default: the scheduler config's ``clip_sample``, which diffusers takes as true when
    absent; the shipped ``patches`` prior sets it, ``digits`` does not); other keyword arguments
    (``steps``, ``eta``, ...) go to ``DiffusionPrior``. A folder with a ``vae/`` subfolder (and the
    shipped ``"digits-latent"`` / ``"patches-latent"``) gives a
    :class:`~ppl_diffusion.models.latent.LatentDiffusionPrior` (:func:`~ppl_diffusion.models.latent.load_latent_prior`).
    """
    from ..denoisers import UNetDenoiser
    from .prior import DiffusionPrior

    if name_or_path == "kernels":  # the blur-kernel prior of blind problems (models/blind.py)
        from .blind import load_kernel_prior

        return load_kernel_prior("kernels", device=device, dtype=dtype, **prior_kwargs)
    if (prior_folder(name_or_path) / "vae").is_dir():  # a latent diffusion folder (vae/, unet/, scheduler/)
        from .latent import load_latent_prior

        return load_latent_prior(name_or_path, device=device, dtype=dtype, clip_x0=bool(clip_x0), **prior_kwargs)
    unet, sched_cfg = load_unet(name_or_path, device=device, dtype=dtype)
    if clip_x0 is None:
        clip_x0 = bool(sched_cfg.get("clip_sample", True))
    return DiffusionPrior(UNetDenoiser(unet, sched_cfg, clip_x0=clip_x0), **prior_kwargs)


def save_unet(unet, scheduler_config: dict, folder) -> Path:
    """Save ``unet`` and ``scheduler_config`` as a diffusers pipeline-layout folder that
    :func:`load_unet` reads back bit-identically (float32 safetensors)."""
    folder = Path(folder)
    (folder / "scheduler").mkdir(parents=True, exist_ok=True)
    unet.save_pretrained(folder / "unet", safe_serialization=True)
    cfg = {k: v for k, v in dict(scheduler_config).items()}
    cfg.setdefault("_class_name", "DDPMScheduler")
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    return folder


def prior_info(name_or_path=DEFAULT_PRIOR) -> dict:
    """The ``training.json`` record of a shipped prior or local folder (empty dict when absent)."""
    folder = prior_folder(name_or_path)
    f = folder / "training.json"
    return json.loads(f.read_text()) if f.is_file() else {}


def heldout_images(name=DEFAULT_PRIOR, device=None, dtype=torch.float32) -> torch.Tensor:
    """Held-out evaluation images of a shipped prior (never seen in training), ``(N, C, H, W)`` in [-1, 1].

    ``digits``: 216 digits (a stratified 12 % split); ``patches``: 256 patches of two photographs
    held out whole. Read from ``heldout.npy`` in the prior's folder, so no image library is needed.
    """
    folder = prior_folder(name)
    f = folder / "heldout.npy"
    if not f.is_file():
        raise ValueError(f"{name!r} has no held-out images ({f} is missing)")
    try:
        arr = np.load(f, allow_pickle=False)
    except Exception as e:
        raise ValueError(f"{f} is not a readable .npy array ({type(e).__name__}: {e})") from e
    if arr.ndim != 4:
        raise ValueError(f"{f} must hold an (N, C, H, W) array, got shape {arr.shape}")
    return torch.as_tensor(arr, dtype=dtype, device=device)
