"""Split generators ``G = G2 o G1`` and score models on their intermediate layer, for Score-ILO.

Intermediate Layer Optimisation (Daras, Dean, Jalal, Dimakis, ICML 2021) splits a generator at a
layer ``h = G1(z)`` and, after fitting ``z``, fits ``h`` itself through ``G2``: the range of ``G2``
over all ``h`` is larger than the range of ``G``. Score-guided ILO (Daras, Dagan, Dimakis,
Daskalakis, ICML 2022) keeps ``h`` plausible with a score model trained on the layer's activations.
The originals split StyleGAN2; here the generator is the decoder of a latent autoencoder:

* :func:`decoder_split` splits a :class:`~ppl_diffusion.models.autoencoder.KLAutoencoder`'s diffusers
  decoder after ``post_quant_conv`` + ``conv_in`` (layer ``"conv_in"``), after the mid block (layer
  ``"mid_block"``, the default: ``h`` of shape ``(32, 4, 4)`` on ``digits-latent``) or after an
  up block (``"up_blocks.0"``, ...); ``G1`` takes the SCALED latent ``z`` of the latent prior;
* :func:`affine_split` is the exact case: an :class:`~ppl_diffusion.models.autoencoder.AffineAutoencoder`
  with ``G1 = identity`` (``h = z``) and ``G2 = Dec`` (linear).

:class:`IntermediateScore` is a denoiser on the normalised layer ``u = 2 (h - low) / (high - low) - 1``
(sgilo normalises each layer with the fixed min / max of its training activations, to [0, 1]; here to
[-1, 1], the range the library's VP priors are trained on) with the layer name
and a fingerprint of ``G1``'s weights, so that a score model is never used with a generator it was
not trained on. :func:`load_ilo_score` reads the shipped ``digits-latent-ilo`` (trained on
``G1(Enc(x))`` of training digits by ``python -m ppl_diffusion.training.ilo``).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from ..denoisers import Denoiser
from .autoencoder import AffineAutoencoder, Autoencoder, KLAutoencoder

__all__ = ["SplitGenerator", "decoder_split", "affine_split", "split_generator", "IntermediateScore",
           "load_ilo_score", "save_ilo_score", "ILO_DIR", "DECODER_LAYERS"]

ILO_DIR = Path(__file__).resolve().parent.parent / "weights"
#: the split points of a diffusers AutoencoderKL decoder (up_blocks.i for i < number of up blocks)
DECODER_LAYERS = ("conv_in", "mid_block", "up_blocks.<i>")


class SplitGenerator(torch.nn.Module):
    """``G(z) = G2(G1(z))`` with ``G1: z -> h`` and ``G2: h -> x`` on flat batches ``(N, *shape)``.

    ``g1_evals`` / ``g2_evals`` count the single samples each half evaluated (the cost Score-ILO
    reports beside its score-model calls).

    Args:
        g1: callable ``z -> h``.
        g2: callable ``h -> x``.
        latent_shape, hidden_shape, image_shape: shapes of one ``z``, ``h``, ``x``.
        layer: the name of the split point.
        fingerprint: a string identifying ``G1`` (see :func:`g1_fingerprint`).
    """

    def __init__(self, g1, g2, latent_shape, hidden_shape, image_shape, layer: str, fingerprint: str):
        super().__init__()
        self._g1, self._g2 = g1, g2
        self.latent_shape = torch.Size(latent_shape)
        self.hidden_shape = torch.Size(hidden_shape)
        self.image_shape = torch.Size(image_shape)
        self.layer, self.fingerprint = layer, fingerprint
        self.g1_evals = 0
        self.g2_evals = 0

    def g1(self, z: torch.Tensor) -> torch.Tensor:
        self.g1_evals += z.shape[0]
        return self._g1(z)

    def g2(self, h: torch.Tensor) -> torch.Tensor:
        self.g2_evals += h.shape[0]
        return self._g2(h)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.g2(self.g1(z))


def _digest(tensors, layer: str) -> str:
    h = hashlib.sha256(layer.encode())
    for t in tensors:
        h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _decoder_parts(vae, layer: str):
    dec = vae.decoder
    n_up = len(dec.up_blocks)
    valid = ["conv_in", "mid_block"] + [f"up_blocks.{i}" for i in range(n_up - 1)]
    if layer not in valid:
        raise ValueError(f"decoder_split: layer must be one of {valid} (the split point of the decoder), got {layer!r}")
    head = [m for m in (vae.post_quant_conv, dec.conv_in) if m is not None]
    k = 0 if layer == "conv_in" else (1 if layer == "mid_block" else 2 + int(layer.split(".")[1]))
    blocks = [dec.mid_block] + list(dec.up_blocks)
    return head + blocks[:k], blocks[k:]


def decoder_split(autoencoder: KLAutoencoder, layer: str = "mid_block") -> SplitGenerator:
    """Split the decoder of a :class:`KLAutoencoder` after ``layer``; ``G1`` takes the scaled latent
    (``G(z) == autoencoder.decode(z)``)."""
    if not isinstance(autoencoder, KLAutoencoder):
        raise ValueError(f"decoder_split needs a KLAutoencoder (a diffusers AutoencoderKL), got "
                         f"{type(autoencoder).__name__}")
    vae = autoencoder.vae
    first, rest = _decoder_parts(vae, layer)
    dec, s_f = vae.decoder, autoencoder.scale_factor

    def net_dtype():
        return next(vae.parameters()).dtype

    def g1(z):
        out = (z / s_f).to(net_dtype())
        for m in first:
            out = m(out, None) if m is dec.mid_block else m(out)
        return out.to(z.dtype)

    def g2(h):
        out = h.to(net_dtype())
        for m in rest:
            out = m(out, None)
        out = dec.conv_out(dec.conv_act(dec.conv_norm_out(out)))
        return out.to(h.dtype)

    with torch.no_grad():
        probe = g1(torch.zeros((1,) + tuple(autoencoder.latent_shape)))
    params = [p for m in first for p in m.parameters()] + [torch.tensor([s_f])]
    return SplitGenerator(g1, g2, autoencoder.latent_shape, probe.shape[1:], autoencoder.image_shape, layer,
                          _digest(params, layer))


def affine_split(autoencoder: AffineAutoencoder) -> SplitGenerator:
    """The exact split of an affine autoencoder: ``G1 = identity`` (``h = z``), ``G2 = Dec`` (``W h + b``)."""
    if not isinstance(autoencoder, AffineAutoencoder):
        raise ValueError(f"affine_split needs an AffineAutoencoder, got {type(autoencoder).__name__}")
    k = autoencoder.latent_shape

    def g2(h):
        return autoencoder._decode(h).reshape((h.shape[0],) + tuple(autoencoder.image_shape))

    return SplitGenerator(lambda z: z, g2, k, k, autoencoder.image_shape, "identity", "identity")


def split_generator(autoencoder: Autoencoder, layer: str | None = None) -> SplitGenerator:
    """:func:`decoder_split` for a KL autoencoder (``layer`` default ``"mid_block"``), :func:`affine_split`
    for an affine one (``layer`` None or ``"identity"``); a ValueError for anything else."""
    if isinstance(autoencoder, KLAutoencoder):
        return decoder_split(autoencoder, layer or "mid_block")
    if isinstance(autoencoder, AffineAutoencoder):
        if layer not in (None, "identity"):
            raise ValueError(f"an AffineAutoencoder splits only at layer 'identity' (G1 = identity), got {layer!r}")
        return affine_split(autoencoder)
    raise ValueError(f"no split generator for a {type(autoencoder).__name__}: Score-ILO splits the decoder of a "
                     "KLAutoencoder (diffusers AutoencoderKL) or an AffineAutoencoder")


class IntermediateScore(torch.nn.Module):
    """A diffusion denoiser on the normalised intermediate layer ``u = 2 (h - low) / (high - low) - 1``.

    Args:
        denoiser: a :class:`~ppl_diffusion.denoisers.Denoiser` on ``u`` (shape of ``h``).
        low, high: the fixed normalisation (min / max of the training activations); ``low=-1, high=1``
            is the identity.
        layer: the split point it was trained on.
        fingerprint: :attr:`SplitGenerator.fingerprint` of the ``G1`` it was trained on (None: unchecked).
    """

    def __init__(self, denoiser: Denoiser, low: float = -1.0, high: float = 1.0, layer: str = "identity",
                 fingerprint: str | None = None):
        super().__init__()
        if not isinstance(denoiser, Denoiser):
            raise ValueError(f"denoiser must be a ppl_diffusion Denoiser, got {type(denoiser).__name__}")
        if not float(high) > float(low):
            raise ValueError(f"need high > low, got low={low}, high={high}")
        self.denoiser = denoiser
        self.low, self.high = float(low), float(high)
        self.layer, self.fingerprint = layer, fingerprint

    @property
    def scale(self) -> float:
        """``dh / du``."""
        return 0.5 * (self.high - self.low)

    def to_unit(self, h: torch.Tensor) -> torch.Tensor:
        return (h - self.low) / self.scale - 1.0

    def from_unit(self, u: torch.Tensor) -> torch.Tensor:
        return (u + 1.0) * self.scale + self.low

    def check(self, split: SplitGenerator, method: str = "Score-ILO") -> None:
        """ValueError unless this score model was trained on ``split``'s layer (shape, name, fingerprint)."""
        if tuple(self.denoiser.event_shape) != tuple(split.hidden_shape):
            raise ValueError(f"{method}: the score model works on layer activations of shape "
                             f"{tuple(self.denoiser.event_shape)}, the split at {split.layer!r} gives "
                             f"{tuple(split.hidden_shape)}; pass a score model trained on this layer")
        if self.layer != split.layer:
            raise ValueError(f"{method}: the score model was trained on layer {self.layer!r}, the split is at "
                             f"{split.layer!r}; pass layer={self.layer!r} or a score model of this layer")
        if self.fingerprint is not None and self.fingerprint != split.fingerprint:
            raise ValueError(f"{method}: the score model was trained on another G1 (fingerprint {self.fingerprint} "
                             f"vs {split.fingerprint}: a different autoencoder); train one on this autoencoder with "
                             "python -m ppl_diffusion.training.ilo")


def save_ilo_score(unet, scheduler_config: dict, folder, *, low: float, high: float, layer: str, fingerprint: str,
                   autoencoder: str) -> Path:
    """Write ``unet/``, ``scheduler/`` and ``ilo.json`` (normalisation, layer, fingerprint) to ``folder``."""
    from .zoo import save_unet

    folder = Path(folder)
    save_unet(unet, scheduler_config, folder)
    cfg = {"layer": layer, "low": float(low), "high": float(high), "fingerprint": fingerprint,
           "autoencoder": autoencoder}
    (folder / "ilo.json").write_text(json.dumps(cfg, indent=1) + "\n")
    return folder


def load_ilo_score(name_or_path: str = "digits-latent-ilo", device=None, dtype=None) -> IntermediateScore:
    """A shipped name (``"digits-latent-ilo"``: the mid-block layer of ``digits-latent``'s decoder) or a
    folder written by :func:`save_ilo_score`."""
    from ..denoisers import UNetDenoiser
    from .zoo import load_unet

    folder = Path(name_or_path)
    if not folder.is_dir():
        folder = ILO_DIR / str(name_or_path)
    if not (folder / "ilo.json").is_file():
        raise ValueError(f"no intermediate-layer score model at {name_or_path!r} (looked for {folder}/ilo.json); "
                         "the shipped one is 'digits-latent-ilo' (python -m ppl_diffusion.training.ilo)")
    cfg = json.loads((folder / "ilo.json").read_text())
    unet, sched = load_unet(str(folder), device=device, dtype=dtype)
    return IntermediateScore(UNetDenoiser(unet, sched), cfg["low"], cfg["high"], cfg["layer"], cfg["fingerprint"])
