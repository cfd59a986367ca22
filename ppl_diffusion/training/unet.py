"""The network of the shipped priors: presets, the DDPM scheduler config, the diffusers UNet builder
and an ancestral DDPM sampler (used for the ``samples.png`` grid written beside the weights)."""
from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["PRESETS", "SCHEDULER_CONFIG", "build_unet", "ddpm_sample"]

#: Default network / optimisation settings of the shipped priors (CLI options override them).
_PRESET_COMMON = dict(layers_per_block=1, batch_size=64, lr=2e-3, warmup=200, ema_decay=0.999, augment=True)
PRESETS = {
    "digits": dict(_PRESET_COMMON, sample_size=16, channels=(16, 32, 64), attention=(False, False, True),
                   steps=5000, clip_sample=False),
    "patches": dict(_PRESET_COMMON, sample_size=32, channels=(16, 32, 64, 64),
                    attention=(False, False, False, True), steps=4000, clip_sample=True),
    # blur kernels (7x7 padded to 8x8, kappa in [-1, 1]): data come fresh from the generator
    "kernels": dict(_PRESET_COMMON, sample_size=8, channels=(16, 32), attention=(False, False),
                    steps=4000, clip_sample=True, augment=False),
}
# The presets are sized for CPU training (the shipped priors were trained on a shared 2-core CPU):
# 0.69M / 1.09M parameters, 2.8 / 4.4 MB of float32 safetensors. ``clip_sample`` is written to the
# scheduler config: E[x0 | x_t] of data in [-1, 1] lies in [-1, 1], so clipping the network's
# estimate can only move it closer to the truth; the patch network needs it for stable ancestral
# sampling (unclipped, its samples drift to saturated black / white), the digit network does not.

SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_schedule="linear",
    beta_start=1e-4,
    beta_end=0.02,
    prediction_type="epsilon",
    variance_type="fixed_small",
    clip_sample=False,
)


def build_unet(sample_size: int, channels: Sequence[int], attention: Sequence[bool] | None = None,
               layers_per_block: int = 1, in_channels: int = 1, norm_num_groups: int = 8,
               attention_head_dim: int = 32):
    """A small diffusers ``UNet2DModel``; ``attention[i]`` puts self-attention in level ``i``."""
    from diffusers import UNet2DModel

    channels = tuple(int(c) for c in channels)
    if not channels or any(c <= 0 or c % norm_num_groups for c in channels):
        raise ValueError(f"channels must be positive multiples of {norm_num_groups}, got {channels}")
    attention = tuple(bool(a) for a in (attention if attention is not None else [False] * len(channels)))
    if len(attention) != len(channels):
        raise ValueError(f"attention needs one flag per level ({len(channels)}), got {len(attention)}")
    if sample_size % (2 ** (len(channels) - 1)):
        raise ValueError(f"sample_size {sample_size} is not divisible by 2^{len(channels) - 1}")
    # the mid block always has self-attention on channels[-1]: it needs at least one head too
    att_ch = [c for c, a in zip(channels, attention) if a] + [channels[-1]]
    attention_head_dim = min([attention_head_dim] + att_ch)  # at least one head per attention level
    down = tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attention)
    up = tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention))
    return UNet2DModel(
        sample_size=sample_size, in_channels=in_channels, out_channels=in_channels,
        block_out_channels=channels, layers_per_block=layers_per_block,
        down_block_types=down, up_block_types=up, norm_num_groups=norm_num_groups,
        attention_head_dim=attention_head_dim,
    )


@torch.no_grad()
def ddpm_sample(unet, scheduler_config: dict, num: int, steps: int = 1000, generator=None, device=None):
    """Ancestral DDPM samples of ``unet`` with ``steps`` (<= 1000) evenly spaced steps, clipped to [-1, 1]."""
    from diffusers import DDPMScheduler

    sched = DDPMScheduler.from_config(scheduler_config)
    sched.set_timesteps(steps)
    cfg = unet.config
    size = cfg.sample_size
    H, W = (size, size) if isinstance(size, int) else tuple(size)
    dev = device or next(unet.parameters()).device
    x = torch.randn((num, cfg.in_channels, H, W), generator=generator, device=dev)
    for t in sched.timesteps:
        eps = unet(x, t.to(dev).expand(num)).sample
        x = sched.step(eps, t, x, generator=generator).prev_sample
    return x.clamp(-1, 1)
