"""Shipped priors, the loader's validation and the trainer (fast: tiny models, no network)."""
import json
import shutil

import numpy as np
import pytest
import torch

from ppl_diffusion.metrics import nearest_rms, neighbour_correlation
from ppl_diffusion.models import zoo
from ppl_diffusion.models.zoo import heldout_images, list_priors, load_prior, load_unet, save_unet

SHAPES = {"digits": (1, 16, 16), "patches": (1, 32, 32)}
SCHED = {"_class_name": "DDPMScheduler", "num_train_timesteps": 1000, "beta_schedule": "linear",
         "beta_start": 1e-4, "beta_end": 0.02, "prediction_type": "epsilon"}


def _tiny_unet(seed=0):
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    return UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                       layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=8)


@pytest.fixture
def tiny_folder(tmp_path):
    return save_unet(_tiny_unet(), SCHED, tmp_path / "tiny")


def _fixed_input(shape, n=3):
    g = torch.Generator().manual_seed(123)
    return torch.randn((n,) + tuple(shape), generator=g), torch.tensor([0.0, 412.5, 999.0])[:n]


# ---------------------------------------------------------------------------------------------
# shipped priors
# ---------------------------------------------------------------------------------------------
def test_list_priors_has_the_shipped_priors():
    assert {"digits", "patches"} <= set(list_priors()) <= set(zoo.SHIPPED_PRIORS)  # + digits-latent, patches-latent
    assert zoo.DEFAULT_PRIOR == "digits"


@pytest.mark.parametrize("name", ["digits", "patches"])
def test_shipped_prior_loads_and_runs(name):
    unet, cfg = load_unet(name)
    assert cfg["prediction_type"] == "epsilon" and cfg["num_train_timesteps"] == 1000
    assert cfg["beta_schedule"] == "linear"
    assert not unet.training and not any(p.requires_grad for p in unet.parameters())
    assert 2e5 < sum(p.numel() for p in unet.parameters()) < 1.6e6
    x, t = _fixed_input(SHAPES[name])
    with torch.no_grad():
        out = unet(x, t).sample
    assert out.shape == x.shape and torch.isfinite(out).all()
    # a trained epsilon network predicts the noise: at t=999 x_t is almost pure noise
    assert float(((out[2] - x[2]) ** 2).mean()) < 0.1
    h = heldout_images(name)
    assert h.dtype == torch.float32 and h.shape[1:] == SHAPES[name] and 100 <= h.shape[0] <= 400
    assert float(h.min()) >= -1.0 and float(h.max()) <= 1.0
    info = zoo.prior_info(name)
    for key in ("wall_time_train_s", "final_train_loss", "heldout_denoising_loss", "command", "seed"):
        assert key in info
    assert info["command"].startswith("python -m ppl_diffusion.training --dataset " + name)


@pytest.mark.parametrize("name", ["digits", "patches"])
def test_save_reload_round_trip_is_bit_identical(name, tmp_path):
    unet, cfg = load_unet(name)
    save_unet(unet, cfg, tmp_path / name)
    unet2, cfg2 = load_unet(tmp_path / name)
    assert cfg2 == cfg
    sd1, sd2 = unet.state_dict(), unet2.state_dict()
    assert sd1.keys() == sd2.keys()
    assert all(torch.equal(sd1[k], sd2[k]) for k in sd1)
    x, t = _fixed_input(SHAPES[name])
    with torch.no_grad():
        assert torch.equal(unet(x, t).sample, unet2(x, t).sample)


def test_load_prior_builds_a_diffusion_prior():
    from ppl_diffusion.models.prior import DiffusionPrior

    prior = load_prior("digits", steps=5)
    assert isinstance(prior, DiffusionPrior)
    assert tuple(prior.event_shape) == (1, 16, 16)
    assert prior.denoiser.clip_x0 is False  # digits: clip_sample false in its scheduler config
    assert load_prior("patches").denoiser.clip_x0 is True
    assert load_prior("patches", clip_x0=False).denoiser.clip_x0 is False


def test_load_unet_device_and_dtype():
    unet, _ = load_unet("digits", dtype=torch.float64)
    assert next(unet.parameters()).dtype == torch.float64
    x, t = _fixed_input((1, 16, 16), 2)
    with torch.no_grad():
        assert torch.isfinite(unet(x.double(), t.double()).sample).all()


# ---------------------------------------------------------------------------------------------
# local folders and bad input
# ---------------------------------------------------------------------------------------------
def test_local_folder_layouts(tiny_folder, tmp_path):
    unet, cfg = load_unet(tiny_folder)
    assert cfg["beta_end"] == 0.02
    # bare layout: config.json + weights + scheduler_config.json side by side
    bare = tmp_path / "bare"
    shutil.copytree(tiny_folder / "unet", bare)
    shutil.copy(tiny_folder / "scheduler" / "scheduler_config.json", bare)
    unet2, _ = load_unet(str(bare))
    assert all(torch.equal(a, b) for a, b in zip(unet.state_dict().values(), unet2.state_dict().values()))
    # the unet/ subfolder itself, next to scheduler/
    load_unet(tiny_folder / "unet")


def test_unknown_name_lists_shipped_priors():
    with pytest.raises(ValueError, match="'digits', 'patches'"):
        load_unet("no-such-prior")
    with pytest.raises(ValueError, match="name_or_path"):
        load_unet(3)


def test_pickle_only_folder_is_refused(tiny_folder):
    w = tiny_folder / "unet" / "diffusion_pytorch_model.safetensors"
    torch.save(_tiny_unet().state_dict(), tiny_folder / "unet" / "diffusion_pytorch_model.bin")
    w.unlink()
    with pytest.raises(ValueError, match=r"pickle.*diffusion_pytorch_model\.bin"):
        load_unet(tiny_folder)
    with pytest.raises(ValueError, match="pickle"):
        load_unet(tiny_folder / "unet" / "diffusion_pytorch_model.bin")


def test_corrupt_safetensors_is_refused(tiny_folder):
    w = tiny_folder / "unet" / "diffusion_pytorch_model.safetensors"
    data = w.read_bytes()
    w.write_bytes(data[: len(data) // 2])  # truncated download
    with pytest.raises(ValueError, match="diffusion_pytorch_model.safetensors"):
        load_unet(tiny_folder)
    w.write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="not a readable safetensors"):
        load_unet(tiny_folder)


def test_weights_that_do_not_match_the_config_are_refused(tiny_folder, tmp_path):
    other = save_unet(_tiny_unet(), SCHED, tmp_path / "other")
    cfg = json.loads((other / "unet" / "config.json").read_text())
    cfg["block_out_channels"] = [16, 16]
    (other / "unet" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="does not match"):
        load_unet(other)


@pytest.mark.parametrize("where,edit,match", [
    ("unet", lambda c: c.update(_class_name="UNet2DConditionModel"), "UNet2DConditionModel"),
    ("unet", lambda c: c.pop("block_out_channels"), "block_out_channels"),
    ("unet", lambda c: c.update(out_channels=3), "out_channels"),
    ("scheduler", lambda c: c.update(_class_name="ScoreSdeVeScheduler"), "DDPM-type"),
    ("scheduler", lambda c: c.update(beta_schedule="sigmoid"), "beta_schedule"),
    ("scheduler", lambda c: c.update(prediction_type="flow"), "prediction_type"),
    ("scheduler", lambda c: c.pop("num_train_timesteps"), "num_train_timesteps"),
])
def test_bad_config_is_refused(tiny_folder, where, edit, match):
    f = tiny_folder / where / ("config.json" if where == "unet" else "scheduler_config.json")
    cfg = json.loads(f.read_text())
    edit(cfg)
    f.write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=match) as e:
        load_unet(tiny_folder)
    assert f.name in str(e.value)


def test_invalid_json_and_missing_pieces(tiny_folder, tmp_path):
    (tiny_folder / "scheduler" / "scheduler_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="scheduler_config.json"):
        load_unet(tiny_folder)
    (tiny_folder / "scheduler" / "scheduler_config.json").unlink()
    with pytest.raises(ValueError, match="scheduler config"):
        load_unet(tiny_folder)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not a diffusers model folder"):
        load_unet(tmp_path / "empty")


def test_hub_failure_says_what_to_do(monkeypatch):
    import huggingface_hub

    def offline(*args, **kwargs):
        raise OSError("offline")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(ValueError, match="huggingface-cli download someone/some-ddpm") as e:
        load_unet("someone/some-ddpm")
    assert "load_prior(DIR)" in str(e.value)


def test_hub_download_reads_only_configs_then_safetensors(monkeypatch, tiny_folder, tmp_path):
    import huggingface_hub

    repo = tmp_path / "snapshot"
    shutil.copytree(tiny_folder, repo)
    torch.save({}, repo / "unet" / "diffusion_pytorch_model.bin")  # must never be requested
    calls = []

    def fake(repo_id, allow_patterns=None, **kwargs):
        calls.append(list(allow_patterns))
        return str(repo)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    unet, cfg = load_unet("owner/name")
    assert calls == [["*.json"], ["*.json", "unet/*.safetensors"]]


# ---------------------------------------------------------------------------------------------
# data sets and the trainer
# ---------------------------------------------------------------------------------------------
def test_datasets_shapes_and_splits():
    pytest.importorskip("sklearn")
    pytest.importorskip("skimage")
    from ppl_diffusion import training

    tr, te = training.digits_dataset("train"), training.digits_dataset("test")
    assert tr.shape == (1581, 1, 16, 16) and te.shape == (216, 1, 16, 16)
    assert float(tr.min()) == -1.0 and float(tr.max()) == 1.0
    _, y = training._digits_raw()
    a, b = training._digits_split_indices(y)
    assert np.intersect1d(a, b).size == 0 and a.size + b.size == 1797
    # the shipped held-out images are exactly this split
    assert torch.equal(heldout_images("digits"), te)
    p = training.patches_dataset("test")
    assert p.shape == (256, 1, 32, 32) and float(p.min()) >= -1 and float(p.max()) <= 1
    assert torch.equal(heldout_images("patches"), p)
    assert training.patches_dataset("train", num=16).shape == (16, 1, 32, 32)
    with pytest.raises(ValueError, match="split"):
        training.digits_dataset("valid")


def test_tiny_training_run_writes_a_loadable_folder(tmp_path):
    pytest.importorskip("sklearn")
    from ppl_diffusion.training import train_prior

    out = tmp_path / "run"
    rec = train_prior("digits", out, steps=3, batch_size=8, channels=(8, 16), attention=(False, True),
                      seed=0, device="cpu", num_samples=4, sample_steps=3, max_train_images=16, verbose=False)
    for f in ("unet/config.json", "unet/diffusion_pytorch_model.safetensors", "scheduler/scheduler_config.json",
              "training.json", "samples.png", "heldout.npy"):
        assert (out / f).is_file(), f
    info = json.loads((out / "training.json").read_text())
    assert info == json.loads(json.dumps(rec))
    assert info["steps"] == 3 and info["split"]["heldout"] == 216 and np.isfinite(info["heldout_denoising_loss"])
    unet, cfg = load_unet(out)
    assert cfg["_class_name"] == "DDPMScheduler" and cfg["prediction_type"] == "epsilon"
    assert tuple(load_prior(out).event_shape) == (1, 16, 16)
    assert heldout_images(out).shape == (216, 1, 16, 16)
    # same seed and command -> the same network, bit for bit
    train_prior("digits", tmp_path / "again", steps=3, batch_size=8, channels=(8, 16), attention=(False, True),
                seed=0, device="cpu", num_samples=4, sample_steps=3, max_train_images=16, verbose=False)
    unet2, _ = load_unet(tmp_path / "again")
    assert all(torch.equal(a, b) for a, b in zip(unet.state_dict().values(), unet2.state_dict().values()))


def test_train_prior_rejects_bad_arguments(tmp_path):
    from ppl_diffusion.training import train_prior

    with pytest.raises(ValueError, match="dataset_name"):
        train_prior("cifar", tmp_path)
    with pytest.raises(ValueError, match="steps"):
        train_prior("digits", tmp_path, steps=0)
    with pytest.raises(ValueError, match="sample_steps"):
        train_prior("digits", tmp_path, steps=1, sample_steps=5000)


@pytest.mark.parametrize("channels,attention", [((16, 16), None), ((8, 16), (False, False)), ((16, 32), (False, True))])
def test_build_unet_without_or_with_small_attention_levels(channels, attention):
    """The mid block always attends on channels[-1]: narrow nets without attention levels must build."""
    from ppl_diffusion import training

    unet = training.build_unet(8, channels, attention)
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        out = unet(x, torch.tensor([10, 500])).sample
    assert out.shape == x.shape and torch.isfinite(out).all()


_nn_rms = nearest_rms  # the shipped priors' sample check (also used by other tests)
_lag1 = neighbour_correlation


@pytest.mark.parametrize("name", ["digits", "patches"])
def test_shipped_prior_samples_resemble_the_data(name):
    """32 ancestral samples (50 steps) against the training data. Measured (seed 0): nearest-neighbour
    RMS distance samples / held-out / Gaussian noise = digits 0.232 / 0.181 / 0.788, patches 0.136 /
    0.208 / 0.391; mean -0.404 vs -0.389 (digits), -0.226 vs -0.186 (patches); std ratio 1.00 / 0.83;
    centred neighbour correlation 0.862 vs 0.865, 0.924 vs 0.860 (pixel-shuffled images: ~0.0)."""
    from ppl_diffusion import training

    x = load_prior(name, steps=50).with_options(eta=1.0).sample((32,), generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(x).all()
    held = heldout_images(name)
    train = training.digits_dataset("train") if name == "digits" else training.patches_dataset("train", num=2048)
    g = torch.Generator().manual_seed(1)
    noise = train.mean() + train.std() * torch.randn(x.shape, generator=g)
    shuffled = held[:32].flatten(1)[:, torch.randperm(x[0].numel(), generator=g)].reshape(held[:32].shape)
    d_s, d_h, d_n = _nn_rms(x, train), _nn_rms(held, train), _nn_rms(noise, train)
    assert d_s <= 1.5 * d_h and d_s <= 0.5 * d_n, (d_s, d_h, d_n)
    assert abs(float(x.mean() - train.mean())) < 0.1
    assert 0.75 < float(x.std() / train.std()) < 1.25
    assert abs(_lag1(x) - _lag1(train)) < 0.1 and abs(_lag1(shuffled)) < 0.1 and abs(_lag1(noise)) < 0.1
