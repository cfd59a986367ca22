import os

import pytest
import torch

# Small tensors dominate the test suite: one intra-op thread avoids oversubscription on 2-core CI.
torch.set_num_threads(int(os.environ.get("PPL_TEST_THREADS", "1")))


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)


def tiny_unet(size=16, channels=1, seed=0):
    """A tiny random diffusers UNet2DModel (for shape / plumbing tests, no download)."""
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    return UNet2DModel(sample_size=size, in_channels=channels, out_channels=channels,
                       block_out_channels=(16, 32), layers_per_block=1,
                       down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=8)


SCHEDULER_CONFIG = {"num_train_timesteps": 1000, "beta_schedule": "linear", "beta_start": 1e-4,
                    "beta_end": 0.02, "prediction_type": "epsilon"}
