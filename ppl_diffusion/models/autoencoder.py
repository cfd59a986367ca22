"""Autoencoders of latent diffusion priors: ``encode(x) -> z`` and ``decode(z) -> x``.

A latent diffusion model (Rombach et al., CVPR 2022) runs its diffusion on ``z = s_f * Enc_mean(x)``,
where ``s_f`` is the latent scale factor (1 / std of the training latents; 0.18215 for Stable
Diffusion's KL-f8 autoencoder). Every autoencoder here hides ``s_f``: :meth:`Autoencoder.encode`
returns the *scaled* latent the diffusion model sees and :meth:`Autoencoder.decode` takes it back.

* :class:`KLAutoencoder` wraps a diffusers ``AutoencoderKL`` (the autoencoder class of Stable
  Diffusion), so a downloaded ``vae/`` folder and the shipped ``digits-latent`` / ``patches-latent``
  ones load the same way (:func:`ppl_diffusion.models.latent.load_latent_prior`);
* :class:`AffineAutoencoder` is the linear-Gaussian "autoencoder" ``Dec(z) = W z + b`` with a left
  inverse ``Enc`` (``Enc(Dec(z)) = z``), for which a latent Gaussian-mixture prior gives an exact
  posterior (:mod:`ppl_diffusion.models.latent_gmm`).

Both are batched over any leading dimensions, differentiable (solvers backpropagate through the
decoder and the encoder), and count their evaluations of single samples in ``decoder_evals`` /
``encoder_evals`` (the cost that latent solvers report beside the denoiser's).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["Autoencoder", "KLAutoencoder", "AffineAutoencoder", "build_kl_autoencoder"]


class Autoencoder(torch.nn.Module):
    """Base class: subclasses implement ``_encode`` / ``_decode`` on flat batches ``(N, *shape)``.

    Args:
        image_shape: shape of one image ``x`` (e.g. ``(1, 16, 16)``).
        latent_shape: shape of one latent ``z`` (e.g. ``(4, 4, 4)``).
    """

    def __init__(self, image_shape: Sequence[int], latent_shape: Sequence[int]):
        super().__init__()
        self.image_shape = torch.Size(image_shape)
        self.latent_shape = torch.Size(latent_shape)
        self.encoder_evals = 0
        self.decoder_evals = 0

    def reset_counts(self) -> None:
        self.encoder_evals = 0
        self.decoder_evals = 0

    def _split(self, v: torch.Tensor, shape: torch.Size, what: str):
        ne = len(shape)
        if not isinstance(v, torch.Tensor) or v.dim() < ne or tuple(v.shape[v.dim() - ne:]) != tuple(shape):
            got = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
            raise ValueError(f"{type(self).__name__}.{what} expects shape (*batch, {tuple(shape)}), got {got}")
        batch = v.shape[: v.dim() - ne]
        return v.reshape((-1,) + tuple(shape)), batch

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The scaled latent ``z = s_f Enc_mean(x)``, shape ``(*batch, *latent_shape)``."""
        flat, batch = self._split(x, self.image_shape, "encode")
        self.encoder_evals += flat.shape[0]
        return self._encode(flat).reshape(tuple(batch) + tuple(self.latent_shape))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """The image ``Dec(z / s_f)``, shape ``(*batch, *image_shape)``."""
        flat, batch = self._split(z, self.latent_shape, "decode")
        self.decoder_evals += flat.shape[0]
        return self._decode(flat).reshape(tuple(batch) + tuple(self.image_shape))

    def _encode(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _decode(self, z: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def reference(self):
        """``(dtype, device)`` of the autoencoder's parameters."""
        p = next(iter(self.parameters()), None)
        if p is None:
            b = next(iter(self.buffers()), None)
            return (b.dtype, b.device) if b is not None else (torch.get_default_dtype(), torch.device("cpu"))
        return p.dtype, p.device


class KLAutoencoder(Autoencoder):
    """A diffusers ``AutoencoderKL`` with its latent scale factor.

    ``encode`` returns ``s_f`` times the mean of the encoder's Gaussian (no sampling), ``decode``
    divides by ``s_f`` (and subtracts nothing: ``shift_factor`` configs are refused) before the
    decoder. The network runs in its own dtype; inputs and outputs keep the caller's dtype.

    Args:
        vae: a diffusers ``AutoencoderKL``.
        scale_factor: ``s_f`` (default: ``vae.config.scaling_factor``).

    The diffusers modules stay reachable for methods that split the decoder (e.g. Score-ILO's
    intermediate layers): ``self.vae.decoder.conv_in``, ``.mid_block``, ``.up_blocks``,
    ``.conv_norm_out``, ``.conv_out``, and ``self.vae.post_quant_conv`` before them.
    """

    def __init__(self, vae, scale_factor: float | None = None):
        cfg = getattr(vae, "config", None)
        if cfg is None:
            raise ValueError("vae must be a diffusers AutoencoderKL with a .config")
        if getattr(cfg, "shift_factor", None) not in (None, 0, 0.0):
            raise ValueError("AutoencoderKL configs with a shift_factor are not supported")
        n_down = len(cfg.block_out_channels) - 1
        size = cfg.sample_size
        H, W = (size, size) if isinstance(size, int) else tuple(size)
        if H % 2**n_down or W % 2**n_down:
            raise ValueError(f"AutoencoderKL sample_size {size} is not divisible by 2^{n_down}")
        super().__init__((cfg.in_channels, H, W), (cfg.latent_channels, H // 2**n_down, W // 2**n_down))
        self.vae = vae
        self.scale_factor = float(cfg.scaling_factor if scale_factor is None else scale_factor)
        if not self.scale_factor > 0:
            raise ValueError(f"scale_factor must be > 0, got {self.scale_factor}")
        for p in self.vae.parameters():
            p.requires_grad_(False)
        self.vae.eval()

    @property
    def net_dtype(self) -> torch.dtype:
        return next(self.vae.parameters()).dtype

    def _encode(self, x):
        h = self.vae.encode(x.to(self.net_dtype)).latent_dist.mean
        return (self.scale_factor * h).to(x.dtype)

    def _decode(self, z):
        return self.vae.decode((z / self.scale_factor).to(self.net_dtype)).sample.to(z.dtype)


def build_kl_autoencoder(image_size: int, in_channels: int = 1, channels: Sequence[int] = (32, 64, 64),
                         latent_channels: int = 4, layers_per_block: int = 1, norm_num_groups: int = 16,
                         scaling_factor: float = 1.0):
    """A small diffusers ``AutoencoderKL``: ``len(channels) - 1`` stride-2 downsamplings (16x16 ->
    4x4 with three levels), no mid-block attention, ``latent_channels`` latent channels."""
    from diffusers import AutoencoderKL

    channels = tuple(int(c) for c in channels)
    if any(c % norm_num_groups for c in channels):
        raise ValueError(f"channels must be multiples of norm_num_groups={norm_num_groups}, got {channels}")
    n = len(channels)
    return AutoencoderKL(
        in_channels=in_channels, out_channels=in_channels, down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n, block_out_channels=channels, layers_per_block=layers_per_block,
        latent_channels=latent_channels, norm_num_groups=norm_num_groups, sample_size=image_size,
        scaling_factor=scaling_factor, mid_block_add_attention=False,
    )


class AffineAutoencoder(Autoencoder):
    """``Dec(z) = W z + b`` and ``Enc(x) = E (x - b)`` with ``E W = I`` (a left inverse).

    With ``E = W^+`` (the default) ``Dec(Enc(x))`` is the orthogonal projection onto the decoder's
    range; ``E = W^+ + N`` with ``N W = 0`` is still a left inverse but oblique off the range (the
    variant that exposes methods re-encoding images that left the range).

    Args:
        W: decoder matrix ``(d, k)`` of full column rank.
        b: decoder offset ``(d,)`` (default 0).
        E: encoder matrix ``(k, d)`` (default the pseudo-inverse of ``W``); must satisfy ``E W = I``.
        image_shape: shape of ``x`` (default ``(d,)``).
    """

    def __init__(self, W: torch.Tensor, b: torch.Tensor | None = None, E: torch.Tensor | None = None,
                 image_shape: Sequence[int] | None = None):
        W = torch.as_tensor(W)
        if W.dim() != 2 or W.shape[1] > W.shape[0]:
            raise ValueError(f"W must be a (d, k) matrix with k <= d, got shape {tuple(W.shape)}")
        d, k = W.shape
        if int(torch.linalg.matrix_rank(W)) < k:
            raise ValueError("W must have full column rank")
        b = torch.zeros(d, dtype=W.dtype) if b is None else torch.as_tensor(b, dtype=W.dtype).reshape(d)
        E = torch.linalg.pinv(W) if E is None else torch.as_tensor(E, dtype=W.dtype)
        if tuple(E.shape) != (k, d):
            raise ValueError(f"E must have shape {(k, d)}, got {tuple(E.shape)}")
        err = float((E @ W - torch.eye(k, dtype=W.dtype)).abs().max())
        if err > 1e-6 * max(1.0, float(E.abs().max() * W.abs().max())):
            raise ValueError(f"E is not a left inverse of W (max |E W - I| = {err:.3g})")
        image_shape = (d,) if image_shape is None else tuple(image_shape)
        if int(torch.Size(image_shape).numel()) != d:
            raise ValueError(f"image_shape {image_shape} does not hold d = {d} values")
        super().__init__(image_shape, (k,))
        self.register_buffer("W", W)
        self.register_buffer("b", b)
        self.register_buffer("E", E)
        self.scale_factor = 1.0

    def _encode(self, x):
        flat = x.reshape(x.shape[0], -1)
        return (flat - self.b.to(x.dtype)) @ self.E.to(x.dtype).T

    def _decode(self, z):
        return z @ self.W.to(z.dtype).T + self.b.to(z.dtype)
