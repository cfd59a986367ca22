"""Score-ILO: the score pull against the exact log-density of a Gaussian mixture, the MAP-mode fixed
point against the L-BFGS stationary point of its closed-form objective (E2: linear G2, exact GMM score
on h), the split decoder of the shipped latent prior, the score model's loader and training command,
and the solver contract (options, refusals naming the site, draws / InferenceData)."""
import pyro
import pytest
import torch

from ppl_diffusion.bench.score_ilo_exact import e2_ilo, ilo_objective, lbfgs, pull_constants
from ppl_diffusion.inference.optimise import ScoreILO
from ppl_diffusion.inference.optimise.score_ilo import score_pull
from ppl_diffusion.inference.registry import get_solver
from ppl_diffusion.models import GaussianMeasurement
from ppl_diffusion.models.operators import Matrix
from ppl_diffusion.models.ilo import IntermediateScore, affine_split, decoder_split, load_ilo_score
from tests.test_solver_contract import _checked_options


@pytest.fixture(scope="module")
def e2():
    return e2_ilo("a", seed=0)


def _potential_grad(e, u, t=0.01, snr=1e-4):
    """grad of (dt beta + eps_c) log p_t(u) + dt beta |u|^2 / 4 (exact GMM marginal)."""
    c = pull_constants(e.schedule, t, snr)
    u = u.detach().clone().requires_grad_(True)
    lp = e.pb.latent_prior.marginal_log_prob(u, c["alpha"], c["sigma"])
    phi = (c["dt"] * c["beta"] + c["eps_c"]) * lp + 0.25 * c["dt"] * c["beta"] * (u * u).sum(-1)
    (g,) = torch.autograd.grad(phi.sum(), u)
    return g


def test_score_pull_is_the_gradient_of_the_noised_log_density(e2):
    """One hot PC step without noise = grad of (dt beta + eps_c) log p_t + dt beta |u|^2 / 4 up to
    O(eps_c dt beta) (~1e-14); with the layer normalised by (low, high) the pull on h is
    (dh/du) times the pull on u."""
    u = e2.pb.latent_prior.sample(6, generator=torch.Generator().manual_seed(1))
    den = e2.score.denoiser
    d = score_pull(den, u, 0.01, hot_steps=1, snr=1e-4)
    g = _potential_grad(e2, u)
    assert torch.allclose(d, g, rtol=1e-8, atol=1e-12)
    assert float(d.norm()) > 1e-4  # a real pull, not a zero
    # a wrong beta (e.g. the discrete beta_k instead of T beta_k) would be off by 1000x
    hs = IntermediateScore(den, low=-3.0, high=5.0)
    h = hs.from_unit(u)
    dh = score_pull(den, h, 0.01, to_unit=hs.to_unit, from_unit=hs.from_unit)
    assert torch.allclose(dh, hs.scale * g, rtol=1e-8, atol=1e-12)


def test_map_mode_gradient_descent_stops_at_the_stationary_point_of_the_closed_form_objective(e2):
    """MAP mode (noise 0), plain GD, h round only: the fixed point equals the L-BFGS stationary point of
    J(h) = MSE - tau / lr [(dt beta + eps_c) log p_t(h) + dt beta |h|^2 / 4] from the same start."""
    h0 = e2.pb.latent_prior.sample(3, generator=torch.Generator().manual_seed(0))
    lr, tau = 1.0, 20.0
    out = ScoreILO(e2.model, score_model=e2.score, z_steps=0, h_steps=600, lr=lr, h_temperature=tau, optimizer="sgd",
                   clamp=False, sphere=False, init=h0).draw(3, y=e2.pb.y)
    h = out.extra["h"]
    J = ilo_objective(e2, lr, tau)
    hj = lbfgs(J, h0)
    assert float((h - hj).abs().max()) < 1e-6
    hv = h.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(J(hv).sum(), hv)
    assert float(grad.abs().max()) < 1e-9
    # the pull matters: without it GD stops elsewhere (at the least-squares point nearest h0)
    plain = ScoreILO(e2.model, score_model=None, z_steps=0, h_steps=100, lr=lr, h_temperature=0.0, optimizer="sgd",
                     clamp=False, sphere=False, init=h0).draw(3, y=e2.pb.y)
    assert float((plain.extra["h"] - hj).abs().max()) > 1e-2


def test_z_round_with_the_latent_prior_reaches_the_same_fixed_point(e2):
    """With G1 = identity and the latent prior's denoiser = the same GMM, the z round alone (no sphere)
    has the same fixed point as the h round: the latent pull uses the prior's latent denoiser."""
    h0 = e2.pb.latent_prior.sample(2, generator=torch.Generator().manual_seed(3))
    kw = dict(score_model=e2.score, lr=1.0, optimizer="sgd", clamp=False, sphere=False, init=h0)
    a = ScoreILO(e2.model, z_steps=600, h_steps=0, z_temperature=20.0, **kw).draw(2, y=e2.pb.y)
    b = ScoreILO(e2.model, z_steps=0, h_steps=600, h_temperature=20.0, **kw).draw(2, y=e2.pb.y)
    assert torch.allclose(a.extra["z"], b.extra["h"], atol=1e-8)
    assert torch.allclose(a.samples, b.samples, atol=1e-8)


def test_options_refusals_and_draws(e2):
    cls = get_solver("score_ilo").load()
    assert cls is ScoreILO and get_solver("sgilo").name == "score_ilo" and cls.family == "optimisation"
    _checked_options(cls, "score_ilo", {"z_steps", "h_steps", "lr", "optimizer", "noise", "loss", "prior_site"})
    with pytest.raises(ValueError, match="bogus"):
        ScoreILO(e2.model, score_model=e2.score, bogus=1)
    with pytest.raises(ValueError, match="optimizer"):
        ScoreILO(e2.model, score_model=e2.score, optimizer="lbfgs")
    with pytest.raises(ValueError, match="h_temperature=0"):
        ScoreILO(e2.model, score_model=None)
    # the shipped score model is for digits-latent's decoder: refused on E2's 4-dim layer
    with pytest.raises(ValueError, match="shape"):
        ScoreILO(e2.model)
    # a pixel prior: no generator to split; the site is named
    pixel = e2.pb.latent_prior.diffusion_prior(e2.schedule)

    def pixel_model(y=None):
        x = pyro.sample("x", pixel)
        return pyro.sample("y", GaussianMeasurement(Matrix(torch.eye(4, dtype=torch.float64)), x, 0.5), obs=y)

    with pytest.raises(ValueError, match="'x'.*LatentDiffusionPrior"):
        ScoreILO(pixel_model, score_model=e2.score)
    prior = e2.pb.prior(e2.schedule)

    def laplace_model(y=None):
        x = pyro.sample("x", prior)
        return pyro.sample("obs", pyro.distributions.Laplace(x, 0.1).to_event(1), obs=y)

    with pytest.raises(ValueError, match=r"\['obs'\].*loss='nll'"):
        ScoreILO(laplace_model, score_model=e2.score)
    out = ScoreILO(laplace_model, score_model=e2.score, loss="nll", z_steps=3, h_steps=2, clamp=False,
                   lr=0.01).draw(2, y=e2.pb.y, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out.samples).all()

    def free_model(y=None):
        s = pyro.sample("sigma", pyro.distributions.LogNormal(0.0, 1.0))
        x = pyro.sample("x", prior)
        return pyro.sample("y", GaussianMeasurement(e2.pb.operator, x, s), obs=y)

    with pytest.raises(ValueError, match=r"\['sigma'\]"):
        ScoreILO(free_model, score_model=e2.score)
    out = ScoreILO(e2.model, score_model=e2.score, z_steps=4, h_steps=3, hot_steps=2, clamp=False).draw(
        3, y=e2.pb.y, generator=torch.Generator().manual_seed(0))
    assert out.samples.shape == (1, 3, 16) and out.extra["point_estimate"] and out.extra["h"].shape == (3, 4)
    assert out.nfe_per_sample == (4 + 3) * 2 * 2  # 2 score calls per hot step
    assert out.extra["decoder_evals_per_sample"] == 4 + 3 + 1
    assert out.extra["objective_trace"].shape == (7, 3)
    idata = out.to_inference_data()
    assert "objective" in idata.sample_stats and idata.posterior["x"].shape[:2] == (1, 3)
    noisy = ScoreILO(e2.model, score_model=e2.score, z_steps=2, h_steps=2, noise=0.025, clamp=False).draw(
        2, y=e2.pb.y, generator=torch.Generator().manual_seed(0))
    assert not noisy.extra["point_estimate"]


@pytest.fixture(scope="module")
def digits_latent():
    from ppl_diffusion.models.zoo import load_prior

    return load_prior("digits-latent")


def test_decoder_split_reproduces_the_decoder_and_names_its_layers(digits_latent):
    ae = digits_latent.autoencoder
    z = torch.randn(3, *ae.latent_shape, generator=torch.Generator().manual_seed(0))
    for layer, shape in (("conv_in", (32, 4, 4)), ("mid_block", (32, 4, 4)), ("up_blocks.0", (32, 8, 8))):
        s = decoder_split(ae, layer)
        h = s.g1(z)
        assert tuple(h.shape[1:]) == shape == tuple(s.hidden_shape)
        assert torch.allclose(s.g2(h), ae.decode(z), atol=1e-5)
    with pytest.raises(ValueError, match="layer must be one of"):
        decoder_split(ae, "up_blocks.2")
    with pytest.raises(ValueError, match="AffineAutoencoder"):
        affine_split(ae)


def test_shipped_score_model_matches_the_shipped_decoder(digits_latent):
    hs = load_ilo_score("digits-latent-ilo")
    split = decoder_split(digits_latent.autoencoder, hs.layer)
    hs.check(split)
    other = decoder_split(digits_latent.autoencoder, "conv_in")
    with pytest.raises(ValueError, match="layer"):
        hs.check(other)
    with pytest.raises(ValueError, match="no intermediate-layer score model"):
        load_ilo_score("nosuch")


def test_shipped_score_model_samples_decode_like_the_data(digits_latent):
    """G2 of the layer score model's samples is as close to the training digits as held-out digits are
    (nearest-neighbour RMS distance, the shipped priors' criterion), without copying them."""
    from ppl_diffusion.models.zoo import heldout_images
    from ppl_diffusion.training.data import digits_dataset
    from ppl_diffusion.training.unet import ddpm_sample

    hs = load_ilo_score("digits-latent-ilo")
    split = decoder_split(digits_latent.autoencoder, hs.layer)
    u = ddpm_sample(hs.denoiser.unet, hs.denoiser.scheduler_config, 32, steps=100,
                    generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        s = split.g2(hs.from_unit(u)).clamp(-1, 1)
    train, x = digits_dataset("train"), heldout_images("digits-latent")

    from ppl_diffusion.metrics import nearest_rms

    d_samples, d_heldout = nearest_rms(s, train), nearest_rms(x, train)
    assert 0.5 * d_heldout < d_samples < 1.8 * d_heldout, (d_samples, d_heldout)
    # pure noise through G2 is far from the data: the check can fail
    with torch.no_grad():
        junk = split.g2(hs.from_unit(torch.rand(32, *split.hidden_shape, generator=torch.Generator().manual_seed(0))
                                     * 2 - 1)).clamp(-1, 1)
    assert nearest_rms(junk, train) > 1.8 * d_heldout


def test_training_command_writes_a_loadable_score_model(tmp_path):
    from ppl_diffusion.training.ilo import main

    assert main(["--out", str(tmp_path / "ilo"), "--steps", "2", "--threads", "1", "--copies", "1",
                 "--num-samples", "2", "--sample-steps", "2", "--channels", "16,16"]) == 0
    hs = load_ilo_score(str(tmp_path / "ilo"))
    assert hs.layer == "mid_block" and hs.low < 0 < hs.high and tuple(hs.denoiser.event_shape) == (32, 4, 4)
    import json

    rec = json.loads((tmp_path / "ilo" / "training.json").read_text())
    assert rec["command"].startswith("python -m ppl_diffusion.training.ilo") and rec["wall_time_train_s"] >= 0


@pytest.mark.slow
def test_score_ilo_inpaints_a_heldout_digit(digits_latent):
    """On a held-out digit with 70 % of the pixels missing, 100 + 100 iterations of the default
    solver recover the digit (PSNR > 18 dB; the measurement's zero-filled image is < 12 dB)."""
    from ppl_diffusion.metrics import psnr
    from ppl_diffusion.models.operators import Inpainting
    from ppl_diffusion.models.zoo import heldout_images
    from ppl_diffusion.tasks import make_model

    x = heldout_images("digits-latent")[0]
    keep = torch.rand(x.shape, generator=torch.Generator().manual_seed(0)) > 0.7
    op = Inpainting(keep)
    y = op(x) + 0.05 * torch.randn(op.out_shape, generator=torch.Generator().manual_seed(1))
    out = ScoreILO(make_model(digits_latent, op, 0.05), z_steps=100, h_steps=100).draw(
        2, y=y, generator=torch.Generator().manual_seed(2))
    best = out.samples[0, int(out.stats["objective"].argmin())]
    assert float(psnr(best, x)) > 18 and float(psnr(op(x) * 1.0, x)) < 12
