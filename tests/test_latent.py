"""Latent diffusion priors and their solvers: LatentDiffusionPrior, loading a diffusers latent folder,
the exact linear-"autoencoder" check (E2), and the per-method closed-form checks."""
import json
import math

import pyro
import pytest
import torch

from ppl_diffusion.inference.registry import SOLVERS, build_solver
from ppl_diffusion.metrics import sliced_wasserstein
from ppl_diffusion.models import GaussianMeasurement, GaussianMixture
from ppl_diffusion.models.autoencoder import AffineAutoencoder, KLAutoencoder, build_kl_autoencoder
from ppl_diffusion.models.latent import LatentDiffusionPrior, load_latent_prior, save_latent_prior
from ppl_diffusion.models.latent_gmm import latent_gmm_problem
from ppl_diffusion.models.operators import Inpainting, Matrix
from ppl_diffusion.schedules import VPSchedule

LATENT = sorted(n for n, i in SOLVERS.items() if i.family == "latent")
SMALL = {"latent_dps": dict(steps=10), "psld": dict(steps=10), "mpgd": dict(steps=10), "stsl": dict(steps=10),
         "resample": dict(steps=10, interval=2, pixel_iters=20, latent_iters=20)}


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def e2():
    return latent_gmm_problem("a", seed=1)


def test_latent_prior_samples_decoded_latents_and_has_no_density(e2):
    prior = e2.prior(steps=20)
    x = prior.sample((5,), generator=_gen())
    assert x.shape == (5, 16) and x.dtype == torch.float64
    z = e2.autoencoder.encode(x)
    assert torch.allclose(e2.autoencoder.decode(z), x, atol=1e-10)  # samples lie on the decoder's range
    with pytest.raises(NotImplementedError, match="no density"):
        prior.log_prob(x)
    with pytest.raises(ValueError, match="latent solver"):
        _ = prior.denoiser
    with pytest.raises(ValueError, match="latent denoiser works on shape"):
        LatentDiffusionPrior(e2.autoencoder, GaussianMixture(torch.ones(1), torch.zeros(1, 3)).denoiser())


def test_affine_autoencoder_variants_are_left_inverses():
    for v in ("a", "b", "c"):
        pb = latent_gmm_problem(v, seed=0)
        z = torch.randn(7, 4, dtype=torch.float64)
        assert torch.allclose(pb.autoencoder.encode(pb.autoencoder.decode(z)), z, atol=1e-9), v
    W = torch.randn(6, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="left inverse"):
        AffineAutoencoder(W, E=torch.randn(2, 6, dtype=torch.float64))


def test_pixel_solver_refuses_a_latent_prior_and_latent_solver_a_pixel_prior(e2):
    with pytest.raises(ValueError, match=r"DPS: the prior site 'x' is a LatentDiffusionPrior.*latent_dps, psld"):
        build_solver("dps", e2.model())
    pixel = e2.latent_prior.diffusion_prior()
    op = Matrix(torch.eye(4, dtype=torch.float64)[:2])

    def pixel_model(y=None):
        x = pyro.sample("x", pixel)
        return pyro.sample("y", GaussianMeasurement(op, x, 0.1), obs=y)

    for name in LATENT:
        with pytest.raises(ValueError, match="needs a LatentDiffusionPrior"):
            build_solver(name, pixel_model)


def test_psld_refuses_an_operator_whose_normal_map_is_not_a_projection(e2):
    A = torch.randn(5, 16, generator=_gen(), dtype=torch.float64)
    prior = e2.prior()

    def model(y=None):
        x = pyro.sample("x", prior)
        return pyro.sample("y", GaussianMeasurement(Matrix(A), x, 0.1), obs=y)

    with pytest.raises(ValueError, match=r"PSLD needs an operator whose A\^T A is a projection"):
        build_solver("psld", model)
    build_solver("latent_dps", model)  # fine for the others


def test_latent_dps_with_identity_decoder_is_pixel_dps():
    """Dec = Enc = I: Latent DPS (constant step) reproduces pixel DPS draw for draw."""
    from ppl_diffusion.models.gmm import gmm_benchmark_problem

    pb = gmm_benchmark_problem(4, 2, seed=3)
    ae = AffineAutoencoder(torch.eye(4, dtype=torch.float64))
    lprior = LatentDiffusionPrior(ae, pb.prior.denoiser())
    pprior = pb.prior.diffusion_prior()
    op = pb.operator()

    def model(prior):
        def m(y=None):
            x = pyro.sample("x", prior)
            return pyro.sample("y", GaussianMeasurement(op, x, pb.noise_std), obs=y)
        return m

    a = build_solver("dps", model(pprior), steps=20, eta=1.0, zeta=0.5).sample(6, y=pb.y, generator=_gen(4))
    b = build_solver("latent_dps", model(lprior), steps=20, eta=1.0, zeta=0.5,
                     zeta_schedule="constant").sample(6, y=pb.y, generator=_gen(4))
    assert torch.allclose(a, b, atol=1e-10)


@pytest.mark.parametrize("name", LATENT)
def test_every_latent_solver_draws_on_e2_with_its_cost(e2, name):
    out = build_solver(name, e2.model(), **SMALL[name]).draw(6, y=e2.y, generator=_gen(2))
    assert out.samples.shape == (1, 6, 16) and torch.isfinite(out.samples).all() and out.family == "latent"
    assert out.extra["latents"].shape == (1, 6, 4) and out.nfe_per_sample >= 10
    assert out.extra["decoder_evals_per_sample"] >= 1 + 10 * (name != "resample")
    calls = out.nfe_per_sample + out.extra["decoder_evals_per_sample"] + out.extra["encoder_evals_per_sample"]
    assert out.extra["network_calls_per_sample"] == pytest.approx(calls)
    assert torch.allclose(e2.autoencoder.decode(out.extra["latents"][0]), out.samples[0])


def test_stochastic_resample_moments():
    from ppl_diffusion.inference.latent.resample import stochastic_resample

    zs, zp = torch.full((200_000, 1), 1.5, dtype=torch.float64), torch.full((200_000, 1), -0.5, dtype=torch.float64)
    a_s, s_s, g2 = 0.8, 0.6, 0.2
    d = stochastic_resample(zs, zp, a_s, s_s, g2, _gen())
    mean = (g2 * a_s * 1.5 + s_s**2 * -0.5) / (g2 + s_s**2)
    var = g2 * s_s**2 / (g2 + s_s**2)
    assert abs(float(d.mean()) - mean) < 5 * math.sqrt(var / 2e5)
    assert abs(float(d.var()) / var - 1) < 0.02


def test_resample_solvers_reach_the_least_squares_optimum(e2):
    from ppl_diffusion.inference.latent.resample import latent_optimization, pixel_optimization
    from ppl_diffusion.inference.problem import Problem

    problem = Problem.from_model(e2.model(), y=e2.y)
    x0 = torch.zeros(3, 16, dtype=torch.float64)
    x = pixel_optimization(problem, x0, lr=1e-2, iters=2000, tol=1e-12)
    keep = e2.operator.mask
    # y fitted on the observed pixels (AdamW's default weight decay 0.01, as in the official code, shrinks by < 1 %)
    assert torch.allclose(x[:, keep], e2.y[keep].expand(3, -1), rtol=1e-2, atol=1e-3)
    assert torch.allclose(x[:, ~keep], x0[:, ~keep], atol=1e-2)  # the rest barely moves from the init
    z = latent_optimization(problem, torch.zeros(3, 4, dtype=torch.float64), lr=5e-2, iters=1000, tol=0.0,
                            patience=10_000)
    AW = (e2.A @ e2.autoencoder.W)[keep]
    z_ls = torch.linalg.lstsq(AW, (e2.y - e2.A @ e2.autoencoder.b)[keep]).solution
    assert torch.allclose(z, z_ls.expand(3, -1), rtol=2e-2, atol=2e-3)


def test_mpgd_z_equals_the_latent_step_when_the_encoder_inverts_the_decoder(e2):
    model = e2.model()
    a = build_solver("mpgd", model, steps=15, step_size=0.2).sample(4, y=e2.y, generator=_gen(5))
    b = build_solver("mpgd", model, steps=15, step_size=20.0, variant="z", z_scale=0.01,
                     manifold_window=(0.0, 1.0)).sample(4, y=e2.y, generator=_gen(5))
    assert torch.allclose(a, b, atol=1e-9)


def test_stsl_trace_term_is_constant_for_a_gaussian_latent():
    from ppl_diffusion.inference.latent.stsl import trace_term

    g = GaussianMixture(torch.ones(1, dtype=torch.float64), torch.zeros(1, 3, dtype=torch.float64),
                        torch.diag(torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64))[None])
    den = g.denoiser(VPSchedule.linear())
    z = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    t = torch.tensor(0.4, dtype=torch.float64)
    a, s = den.coefficients(t, z)
    v = torch.randint(0, 2, (4, 3), generator=_gen()).double() * 2 - 1
    tr = trace_term(den, z, t, a, s, v, 1e-3 * s)
    (grad,) = torch.autograd.grad(tr.sum(), z)
    assert grad.abs().max() < 1e-8
    # and equals the exact trace of sigma^2 d score / dz = alpha^2 C (alpha^2 C + sigma^2)^-1 - I summed
    c = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
    exact = float((a**2 * c / (a**2 * c + s**2) - 1).sum())
    assert torch.allclose(tr.detach(), torch.full((4,), exact, dtype=torch.float64), atol=1e-6)


def test_e2_every_solver_beats_the_prior(e2):
    """Sanity on the exact problem (numbers are reported in benchmarks/results/latent_e2.md): each
    solver's sliced W to the exact p(z | y) is far below the prior's."""
    n = 200
    ref = e2.posterior.sample(n, generator=_gen(9))
    w_prior = float(sliced_wasserstein(e2.latent_prior.sample(n, generator=_gen(8)), ref, generator=_gen(1)))
    for name in LATENT:
        opts = dict(SMALL[name], steps=40)
        z = build_solver(name, e2.model(), **opts).draw(n, y=e2.y, generator=_gen(3)).extra["latents"][0]
        w = float(sliced_wasserstein(z, ref, generator=_gen(1)))
        assert w < 0.5 * w_prior, (name, w, w_prior)


# -- a diffusers latent folder -------------------------------------------------------------------
def _tiny_folder(tmp_path, latent_channels=2, unet_channels=2):
    from ppl_diffusion.training.unet import SCHEDULER_CONFIG, build_unet

    torch.manual_seed(0)
    vae = build_kl_autoencoder(8, 1, (8, 8), latent_channels, norm_num_groups=4, scaling_factor=0.7)
    unet = build_unet(4, (8, 8), (False, False), 1, in_channels=unet_channels, norm_num_groups=4)
    return save_latent_prior(vae, unet, dict(SCHEDULER_CONFIG), tmp_path / "ldm"), vae


def test_load_prior_reads_a_diffusers_latent_folder(tmp_path):
    from ppl_diffusion.models.zoo import load_prior

    folder, vae = _tiny_folder(tmp_path)
    prior = load_prior(str(folder), steps=3)
    assert isinstance(prior, LatentDiffusionPrior) and isinstance(prior.autoencoder, KLAutoencoder)
    assert prior.event_shape == (1, 8, 8) and prior.latent_shape == (2, 4, 4) and prior.scale_factor == 0.7
    x = torch.rand(2, 1, 8, 8) * 2 - 1
    with torch.no_grad():
        z_ref = 0.7 * vae.encode(x).latent_dist.mean
        assert torch.allclose(prior.autoencoder.encode(x), z_ref, atol=1e-6)
        assert torch.allclose(prior.autoencoder.decode(z_ref), vae.decode(z_ref / 0.7).sample, atol=1e-6)
        assert prior.latent_denoiser(z_ref, 0.5).shape == (2, 2, 4, 4)


def test_latent_folder_errors_name_the_files(tmp_path):
    folder, _ = _tiny_folder(tmp_path, latent_channels=2, unet_channels=3)
    with pytest.raises(ValueError, match=r"in_channels=3.*latent_channels=2"):
        load_latent_prior(folder)
    folder2, _ = _tiny_folder(tmp_path / "b")
    (folder2 / "vae" / "diffusion_pytorch_model.safetensors").rename(folder2 / "vae" / "diffusion_pytorch_model.bin")
    with pytest.raises(ValueError, match="pickle"):
        load_latent_prior(folder2)
    cfg = json.loads((folder / "vae" / "config.json").read_text())
    cfg["_class_name"] = "VQModel"
    (folder / "vae" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="VQModel"):
        load_latent_prior(folder)
    with pytest.raises(ValueError, match="no vae/"):
        load_latent_prior(tmp_path / "b" / "ldm" / "unet")


def test_latent_solver_contract(e2):
    """Options keyword-only with defaults, each in the Args section; unknown options named."""
    import inspect
    import re

    for name in LATENT:
        cls = SOLVERS[name].load()
        params = inspect.signature(cls).parameters
        assert list(params)[0] == "model"
        args = cls.__doc__[cls.__doc__.index("Args:"):]
        for opt, p in params.items():
            if opt == "model":
                continue
            assert p.kind is p.KEYWORD_ONLY and p.default is not p.empty, (name, opt)
            assert re.search(rf"\b{opt}\b", args), (name, opt)
        with pytest.raises(ValueError, match="bogus") as err:
            cls(e2.model(), bogus=1)
        assert "valid options" in str(err.value)
        with pytest.raises(ValueError, match="steps"):
            cls(e2.model(), steps=0)


def test_latent_solver_is_a_pyro_guide(e2):
    from pyro.infer import Predictive

    guide = build_solver("latent_dps", e2.model(), steps=5)
    out = Predictive(e2.model(), guide=guide, num_samples=3, parallel=True, return_sites=["x"])(y=e2.y)
    assert out["x"].shape[-1] == 16 and out["x"].numel() == 48
    _ = Inpainting  # the E2 operator type


# -- the shipped latent priors ------------------------------------------------------------------
@pytest.mark.parametrize("name,latent_shape,min_psnr", [("digits-latent", (4, 4, 4), 28.0),
                                                         ("patches-latent", (4, 8, 8), 24.0)])
def test_shipped_latent_prior_reconstructs_and_samples_like_the_data(name, latent_shape, min_psnr):
    """Held-out reconstructions are sharp (PSNR) and decoded samples are as close to the training data
    as held-out images are (nearest-neighbour RMS distance), without copying it."""
    from ppl_diffusion.models.zoo import heldout_images, list_priors, load_prior, prior_info
    from ppl_diffusion.training.data import digits_dataset, patches_dataset

    if name not in list_priors():
        pytest.skip(f"{name} weights not installed")
    prior = load_prior(name, steps=100)
    assert isinstance(prior, LatentDiffusionPrior) and prior.latent_shape == latent_shape
    data = name.split("-")[0]
    info = prior_info(name)
    assert info["command"].startswith(f"python -m ppl_diffusion.training.latent --dataset {data}")
    x = heldout_images(name)
    with torch.no_grad():
        rec = prior.autoencoder.decode(prior.autoencoder.encode(x))
    psnr = 10 * torch.log10(4.0 / (rec - x).pow(2).flatten(1).mean(1))
    assert float(psnr.mean()) > min_psnr  # measured 31.0 (digits) / 25.8 dB (patches), training.json
    s = prior.sample((32,), generator=_gen(3)).clamp(-1, 1)
    train = digits_dataset("train") if data == "digits" else patches_dataset("train", num=2048)

    from ppl_diffusion.metrics import nearest_rms

    d_samples, d_heldout = nearest_rms(s, train), nearest_rms(x, train)
    # measured (64 samples, training.json): digits 0.25 vs 0.18, patches 0.17 vs 0.22
    assert 0.5 * d_heldout < d_samples < 1.8 * d_heldout, (d_samples, d_heldout)
    assert abs(float(s.mean()) - float(train.mean())) < 0.15  # brightness of the data


def test_demo_uses_the_latent_solvers_on_a_latent_prior():
    """`ppl-diffusion demo --prior digits-latent` runs latent solvers (the pixel ones would be refused)."""
    from ppl_diffusion.demo import _latent_folder, latent_demo_config
    from ppl_diffusion.models.zoo import list_priors

    assert _latent_folder("digits") is None and _latent_folder("no-such-prior") is None
    if "digits-latent" in list_priors():
        assert _latent_folder("digits-latent") is not None
    for fast in (True, False):
        cfg = latent_demo_config(fast)
        assert {SOLVERS[m].family for part in ("lin", "phase") for m in cfg[part]} == {"latent"}
