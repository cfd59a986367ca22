import pyro
import pyro.distributions as dist
import pytest
import torch

from ppl_diffusion.inference.problem import Problem
from ppl_diffusion.models.gmm import gmm_benchmark_problem
from ppl_diffusion.models.measurement import GaussianMeasurement
from ppl_diffusion.models.operators import Blur, Inpainting, Matrix, PhaseRetrieval
from ppl_diffusion.schedules import VPSchedule


@pytest.fixture
def pb():
    return gmm_benchmark_problem(d=8, d_y=2, seed=0)


def test_gaussian_measurement_model(pb):
    model = pb.model(VPSchedule.linear())
    prob = Problem.from_model(model, y=pb.y)
    assert prob.prior_site == "x" and list(prob.observed) == ["y"] and not prob.latent
    lg = prob.linear_gaussian()
    assert torch.equal(lg.y, pb.y) and lg.noise_std == pb.noise_std
    x = torch.randn(5, 8, dtype=torch.float64)
    ll = prob.log_likelihood(x)
    expect = torch.distributions.Normal(x @ pb.A.T, pb.noise_std).log_prob(pb.y).sum(-1)
    assert torch.allclose(ll, expect)
    ll2, g = prob.grad_log_likelihood(x)
    assert torch.allclose(g, (pb.y - x @ pb.A.T) @ pb.A / pb.noise_std**2)
    # several batch dims
    assert prob.log_likelihood(x.reshape(5, 1, 8)).shape == (5, 1)


def test_plain_normal_likelihood(pb):
    prior = pb.prior.diffusion_prior(VPSchedule.linear())
    A, s = pb.A, pb.noise_std

    def model(y=None):
        x = pyro.sample("x", prior)
        pyro.sample("y", dist.Normal(x @ A.T, s).to_event(1), obs=y)

    def model_no_event(y=None):
        x = pyro.sample("x", prior)
        pyro.sample("y", dist.Normal(x @ A.T, s), obs=y)

    x = torch.randn(6, 8, dtype=torch.float64)
    expect = torch.distributions.Normal(x @ A.T, s).log_prob(pb.y).sum(-1)
    for m in (model, model_no_event):
        prob = Problem.from_model(m, y=pb.y)
        assert not prob.is_gaussian
        assert torch.allclose(prob.log_likelihood(x), expect)
        _, g = prob.grad_log_likelihood(x)
        assert torch.allclose(g, (pb.y - x @ A.T) @ A / s**2)
        with pytest.raises(ValueError, match="GaussianMeasurement"):
            prob.linear_gaussian("DDRM")


def test_extra_latent_site(pb):
    prior = pb.prior.diffusion_prior(VPSchedule.linear())
    op = Matrix(pb.A)

    def model(y=None):
        scale = pyro.sample("scale", dist.LogNormal(0.0, 0.1))
        x = pyro.sample("x", prior)
        pyro.sample("y", dist.Normal(op(x), scale).to_event(1), obs=y)

    prob = Problem.from_model(model, y=pb.y, latent_values={"scale": torch.tensor(0.5)})
    assert list(prob.latent) == ["scale"]
    x = torch.randn(3, 8, dtype=torch.float64)
    expect = torch.distributions.Normal(x @ pb.A.T, 0.5).log_prob(pb.y).sum(-1)
    assert torch.allclose(prob.log_likelihood(x), expect.to(prob.log_likelihood(x).dtype))


def test_prior_not_sampled_when_tracing(pb):
    prior = pb.prior.diffusion_prior(VPSchedule.linear())
    calls = []
    orig = prior.denoiser.denoise
    prior.denoiser.denoise = lambda *a: calls.append(1) or orig(*a)
    Problem.from_model(pb.model(VPSchedule.linear()), y=pb.y)
    meas = GaussianMeasurement(Matrix(pb.A), torch.zeros(8, dtype=torch.float64), 0.1)
    Problem.from_model(lambda y=None: (pyro.sample("x", prior), pyro.sample("y", meas, obs=y)), y=pb.y)
    assert not calls


def test_bad_models(pb):
    prior = pb.prior.diffusion_prior(VPSchedule.linear())

    def no_prior(y=None):
        x = pyro.sample("x", dist.Normal(torch.zeros(8), 1).to_event(1))
        pyro.sample("y", dist.Normal(x, 1).to_event(1), obs=y)

    with pytest.raises(ValueError, match="no DiffusionPrior"):
        Problem.from_model(no_prior, y=torch.zeros(8))

    def two_priors(y=None):
        a = pyro.sample("a", prior)
        b = pyro.sample("b", prior)
        pyro.sample("y", dist.Normal(a + b, 1).to_event(1), obs=y)

    with pytest.raises(ValueError, match="several DiffusionPrior"):
        Problem.from_model(two_priors, y=torch.zeros(8, dtype=torch.float64))
    assert Problem.from_model(two_priors, y=torch.zeros(8, dtype=torch.float64), prior_site="b").prior_site == "b"

    model = pb.model(VPSchedule.linear())
    with pytest.raises(ValueError, match="no observed site"):
        Problem.from_model(model)
    with pytest.raises(ValueError, match="NaN"):
        Problem.from_model(model, y=torch.tensor([float("nan"), 0.0], dtype=torch.float64))
    with pytest.raises(ValueError, match=r"y must have shape.*\(3,\)"):
        Problem.from_model(model, y=torch.zeros(3, dtype=torch.float64))


def test_measurement_validation():
    op = Inpainting(torch.ones(1, 4, 4, dtype=torch.bool))
    x = torch.zeros(2, 1, 4, 4)
    with pytest.raises(ValueError, match="noise_std"):
        GaussianMeasurement(op, x, -0.1)
    with pytest.raises(ValueError, match=r"x must have shape.*\(2, 1, 5, 5\)"):
        GaussianMeasurement(op, torch.zeros(2, 1, 5, 5), 0.1)
    m = GaussianMeasurement(op, x, 0.1)
    assert m.batch_shape == (2,) and m.event_shape == (1, 4, 4)
    with pytest.raises(ValueError, match=r"y must have shape.*\(2, 1, 3, 3\)"):
        m.log_prob(torch.zeros(2, 1, 3, 3))
    with pytest.raises(ValueError, match="NaN"):
        m.log_prob(torch.full((2, 1, 4, 4), float("inf")))
    y = m.sample()
    assert y.shape == (2, 1, 4, 4)
    expect = torch.distributions.Normal(torch.zeros(16), 0.1).log_prob(y.reshape(2, 16)).sum(-1)
    assert torch.allclose(m.log_prob(y), expect, atol=1e-5)
    with pytest.raises(ValueError, match="noiseless"):
        GaussianMeasurement(op, x, 0.0).log_prob(y)


def test_operator_input_errors():
    with pytest.raises(ValueError, match=r"mask.*\(3, 3\)"):
        Inpainting(torch.ones(3, 3, dtype=torch.bool), shape=(1, 4, 4))
    with pytest.raises(ValueError, match=r"kernel.*\(9, 9\).*larger"):
        Blur(torch.ones(9, 9) / 81, in_shape=(1, 8, 8))


def test_nonlinear_operator_problem():
    from ppl_diffusion.denoisers import CallableDenoiser

    den = CallableDenoiser(lambda x, t: 0.0 * x, VPSchedule.linear(), (1, 8, 8))
    from ppl_diffusion.models.prior import DiffusionPrior

    prior = DiffusionPrior(den)
    op = PhaseRetrieval((1, 8, 8))

    def model(y=None):
        x = pyro.sample("x", prior)
        pyro.sample("y", GaussianMeasurement(op, x, 0.05), obs=y)

    x_true = torch.rand(1, 8, 8)
    y = op(x_true)
    prob = Problem.from_model(model, y=y)
    with pytest.raises(ValueError, match="linear operator"):
        prob.linear_gaussian("DDRM")
    assert prob.gaussian().operator is op
    ll, g = prob.grad_log_likelihood(torch.rand(4, 1, 8, 8))
    assert g.shape == (4, 1, 8, 8) and torch.isfinite(g).all()
