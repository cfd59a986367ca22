"""PnP-DM and PMC kernels: invariance on Gaussian targets (closed forms), multi-chain diagnostics on a
d = 8 GMM, the pyro.infer.MCMC + arviz.from_pyro contract, tiny-UNet runs, bad input."""
import warnings

import numpy as np
import pyro
import pytest
import scipy.linalg as sla
import torch

from ppl_diffusion.denoisers import UNetDenoiser
from ppl_diffusion.diagnostics import rhat_ess
from ppl_diffusion.inference.kernels import PMC, PnPDM
from ppl_diffusion.inference.kernels.replica_exchange import swap_log_ratio
from ppl_diffusion.models import DiffusionPrior, GaussianMeasurement, GaussianMixture, gmm_benchmark_problem
from ppl_diffusion.models.operators import Blur, CallableOperator, Inpainting, Matrix, PhaseRetrieval
from ppl_diffusion.schedules import VPSchedule

from .conftest import SCHEDULER_CONFIG, tiny_unet

F64 = torch.float64


def gaussian_setup(d=4, m=2, sy=0.5):
    g = torch.Generator().manual_seed(1)
    B = torch.randn(d, d, generator=g, dtype=F64)
    C = B @ B.T / d + 0.3 * torch.eye(d, dtype=F64)
    mu = torch.randn(d, generator=g, dtype=F64)
    A = torch.randn(m, d, generator=g, dtype=F64) / 2
    y = A @ mu + torch.randn(m, generator=g, dtype=F64)
    prior = GaussianMixture(torch.ones(1, dtype=F64), mu[None], C[None]).diffusion_prior(VPSchedule.linear())
    op = Matrix(A)

    def model(y=None):
        x = pyro.sample("x", prior)
        return pyro.sample("y", GaussianMeasurement(op, x, sy), obs=y)

    return model, mu, C, A, y, sy


def gaussian_posterior(mu, C, A, y, noise_cov):
    Ci = torch.linalg.inv(C)
    S = torch.linalg.inv(Ci + A.T @ torch.linalg.solve(noise_cov, A))
    return S @ (Ci @ mu + A.T @ torch.linalg.solve(noise_cov, y)), S


def test_pnpdm_fixed_rho_targets_relaxed_posterior():
    """Fixed-rho split Gibbs: x-marginal = posterior under y ~ N(Ax, sy^2 I + rho^2 A A^T).
    Measured (200 chains x 150 draws, seed 0): |mean err| ~0.01, |cov err| ~0.01; MC s.e. ~0.005 / 0.007;
    tolerance 0.04 (4-5 s.e.). The exact (rho = 0) posterior differs by more than that."""
    model, mu, C, A, y, sy = gaussian_setup()
    rho = 0.5
    k = PnPDM(model, rho0=rho, rho_min=rho)
    r = k.run_chains(y=y, num_chains=200, num_samples=150, warmup_steps=10, generator=torch.Generator().manual_seed(0))
    x = r.flat()
    m = A.shape[0]
    mt, St = gaussian_posterior(mu, C, A, y, sy**2 * torch.eye(m, dtype=F64) + rho**2 * A @ A.T)
    me, Se = gaussian_posterior(mu, C, A, y, sy**2 * torch.eye(m, dtype=F64))
    err_m, err_c = (x.mean(0) - mt).abs().max(), (torch.cov(x.T) - St).abs().max()
    assert err_m < 0.04 and err_c < 0.04, (err_m, err_c)
    # the check can tell the relaxed target from the exact posterior
    assert max((mt - me).abs().max(), (St - Se).abs().max()) > 0.08
    assert r.samples.shape == (200, 150, 4)
    # the EDM grid points below rho = 0.5, plus the start: 68 + 1 on the default 200-point grid (34 + 1 on 100)
    assert r.nfe_per_iteration == 1 + int((k.grid < rho).sum()) and 60 <= r.nfe_per_iteration <= 75


@pytest.mark.parametrize("swap", ["joint", "marginal"])
def test_pnpdm_replica_exchange_keeps_the_cold_target(swap):
    """Replica exchange over 4 couplings (0.5 ... 3), with either swap ratio: the cold chain's
    x-marginal is still the rho = 0.5 relaxed posterior. Measured (100 chains x 100 draws, seed 0):
    joint |mean err| 0.014, |cov err| 0.012, swap acceptance 0.34-0.45; marginal 0.004 / 0.011,
    acceptance 0.68-0.88; tolerance 0.05.
    The rho = 3 relaxed posterior (where a wrong swap ratio would pull the cold chain) differs by 0.67."""
    model, mu, C, A, y, sy = gaussian_setup()
    k = PnPDM(model, rho0=0.5, rho_min=0.5, replicas=4, rho_max=3.0, swap=swap)
    assert k.ladder == pytest.approx([0.5, 0.5 * 6 ** (1 / 3), 0.5 * 6 ** (2 / 3), 3.0])
    r = k.run_chains(y=y, num_chains=100, num_samples=100, warmup_steps=20, generator=torch.Generator().manual_seed(0))
    x = r.flat()
    m = A.shape[0]
    noise = sy**2 * torch.eye(m, dtype=F64)
    mt, St = gaussian_posterior(mu, C, A, y, noise + 0.25 * A @ A.T)
    mh, Sh = gaussian_posterior(mu, C, A, y, noise + 9.0 * A @ A.T)
    err_m, err_c = (x.mean(0) - mt).abs().max(), (torch.cov(x.T) - St).abs().max()
    assert err_m < 0.05 and err_c < 0.05, (err_m, err_c)
    assert max((mt - mh).abs().max(), (St - Sh).abs().max()) > 0.3
    acc = k.swap_acceptance
    assert acc.shape == (3,) and (acc > 0.2).all() and (acc < 1).all(), acc
    assert r.stats["swap_rate"].shape == (100,)
    # measured network evaluations per chain: every replica's reverse process, idle steps skipped
    assert k.nfe_per_iteration(0) == sum(1 + int((k.grid < rho).sum()) for rho in k.ladder)
    assert r.nfe_per_iteration == k.nfe_per_iteration(0)


@pytest.mark.parametrize("replicas", [1, 4])
def test_pnpdm_correction_targets_the_posterior_not_the_relaxed_one(replicas):
    """correction=True: the coldest chain's x-marginal is the posterior itself (rho = 0), not the rho = 0.5
    relaxed one that the plain kernel keeps (test above; they differ by > 0.08), alone or under replica
    exchange up to rho = 3 (its swaps read the cold chain at rho = 0). Same Monte Carlo budget and tolerance
    as the relaxed test (0.04, 4-5 s.e.); the Metropolis step accepts most moves here (rho s ~ sigma_y)."""
    model, mu, C, A, y, sy = gaussian_setup()
    k = PnPDM(model, rho0=0.5, rho_min=0.5, replicas=replicas, rho_max=3.0 if replicas > 1 else None,
              correction=True)
    r = k.run_chains(y=y, num_chains=200, num_samples=150, warmup_steps=20, generator=torch.Generator().manual_seed(0))
    x = r.flat()
    me, Se = gaussian_posterior(mu, C, A, y, sy**2 * torch.eye(A.shape[0], dtype=F64))
    err_m, err_c = (x.mean(0) - me).abs().max(), (torch.cov(x.T) - Se).abs().max()
    assert err_m < 0.04 and err_c < 0.04, (err_m, err_c)
    assert 0.3 < k.correction_acceptance < 1.0, k.correction_acceptance
    assert "correction_rate" in r.stats


def test_pnpdm_correction_refuses_what_it_cannot_correct():
    """correction needs the closed-form L / L_rho: refused for the joint swap ratio, the Langevin likelihood
    step and a noiseless measurement, each by a message naming the way out."""
    model, *_, y, sy = gaussian_setup()
    with pytest.raises(ValueError, match="swap='marginal'"):
        PnPDM(model, replicas=3, rho_max=3.0, swap="joint", correction=True)
    with pytest.raises(ValueError, match="correction=False"):
        PnPDM(model, likelihood_step="langevin", correction=True).problem(y=y)
    with pytest.raises(ValueError, match="noise_std > 0"):
        PnPDM(gaussian_setup(sy=0.0)[0], correction=True).problem(y=y)
    with pytest.raises(Exception, match="True or False"):
        PnPDM(model, correction="yes")


def test_pnpdm_marginal_swap_ratio_is_the_ratio_of_relaxed_posteriors():
    """The marginal swap ratio from the kernel's spectral likelihoods equals the ratio of the relaxed
    posterior densities N(x; m_j, S_j) (rho_j^2 A A^T added to the noise covariance; their
    normalisers and the prior cancel), pair by pair, to 1e-9, on a Gaussian prior where those are
    closed form. A likelihood missing the rho^2 s^2 term (every level alike: ratio 0) misses by > 0.1."""
    from torch.distributions import MultivariateNormal

    from ppl_diffusion.inference.kernels.replica_exchange import marginal_swap_log_ratio

    model, mu, C, A, y, sy = gaussian_setup()
    k = PnPDM(model, rho0=0.3, rho_min=0.3, replicas=4, rho_max=3.0)
    k.prepare(k.problem(y=y))
    assert k.swap_ratio == "marginal"
    rho = torch.tensor(k.ladder, dtype=F64)
    x = torch.randn(5 * 4, 4, generator=torch.Generator().manual_seed(3), dtype=F64) * 1.5
    ll = k._relaxed_loglik(x, rho).reshape(5, 4, 4)
    noise = sy**2 * torch.eye(A.shape[0], dtype=F64)
    post = [MultivariateNormal(*gaussian_posterior(mu, C, A, y, noise + r**2 * A @ A.T)) for r in rho.tolist()]
    lp = torch.stack([p.log_prob(x) for p in post], -1).reshape(5, 4, 4)  # state i at coupling l
    for it in (0, 1):
        j = k.exchange.pairs(it)
        want = lp[:, j + 1, j] + lp[:, j, j + 1] - lp[:, j, j] - lp[:, j + 1, j + 1]
        got = marginal_swap_log_ratio(ll, j)
        assert torch.allclose(got, want, atol=1e-9), (got, want)
        assert want.abs().max() > 0.1


def test_pnpdm_swap_acceptance_probability():
    """The swap move alone, on 200,000 copies of fixed (Delta, rho): pair (j, j+1) swaps with
    probability min(1, exp((Delta_j - Delta_{j+1}) (1/rho_j^2 - 1/rho_{j+1}^2) / 2)) (0.472 and 0.269
    here; s.e. 0.0011), even pairs on even iterations and odd pairs on odd ones. A ratio off by a factor
    (e.g. r^2) or a flipped sign moves these by > 0.1."""
    model, *_ = gaussian_setup()
    k = PnPDM(model, rho0=0.5, rho_min=0.5, replicas=3, rho_max=2.0)
    rho = torch.tensor(k.levels(0), dtype=F64)  # 0.5, 1, 2
    C = 200_000
    delta = torch.tensor([1.0, 1.5, 5.0], dtype=F64).expand(C, 3)
    g = torch.Generator().manual_seed(0)
    for it, (lo, hi) in ((0, (0, 1)), (1, (1, 2))):
        X = torch.arange(3, dtype=F64).reshape(1, 3, 1).expand(C, 3, 1).clone()  # replica labels as states
        k.exchange.swap(X, swap_log_ratio(delta, rho, k.exchange.pairs(it)), rho, it, g)
        log_r = 0.5 * (delta[0, lo] - delta[0, hi]) * (rho[lo] ** -2 - rho[hi] ** -2)
        p = float(torch.exp(log_r).clamp(max=1.0))
        swapped = (X[:, lo, 0] == hi).double().mean()
        assert abs(float(swapped) - p) < 0.005, (it, float(swapped), p)
        assert torch.equal(X[:, hi, 0] == lo, X[:, lo, 0] == hi)  # a swap exchanges the pair
        other = 3 - lo - hi  # the replica outside the pair does not move
        assert (X[:, other, 0] == other).all()
    assert torch.allclose(k.swap_acceptance, torch.tensor([0.472, 0.269], dtype=F64), atol=0.005)


def test_pnpdm_replica_exchange_moves_between_modes():
    """Two separated modes (prior weights 0.25 / 0.75 at x1 = -/+4, only x2 observed, so the posterior
    keeps those weights). Every chain starts in the minority mode. Plain PnP-DM at rho = 0.2 never
    leaves it (fraction in the + mode 0); with 6 replicas up to rho = 8 the fraction reaches the
    exact 0.75. Measured (128 chains x 100 draws, seed 0): 0.76; MC s.e. ~0.02 with the chains'
    autocorrelation; tolerance 0.07."""
    mix = GaussianMixture(torch.tensor([0.25, 0.75], dtype=F64), torch.tensor([[-4.0, 0.0], [4.0, 0.0]], dtype=F64),
                          torch.full((2,), 0.25, dtype=F64))
    prior = mix.diffusion_prior(VPSchedule.linear())
    op = Matrix(torch.tensor([[0.0, 1.0]], dtype=F64))

    def model(y=None):
        x = pyro.sample("x", prior)
        return pyro.sample("y", GaussianMeasurement(op, x, 0.5), obs=y)

    y = torch.tensor([0.3], dtype=F64)
    init = torch.tensor([-4.0, 0.0], dtype=F64)
    kw = dict(num_chains=128, num_samples=100, warmup_steps=100, thin=2, init=init, y=y)
    plain = PnPDM(model, rho0=0.2, rho_min=0.2, num_grid=30)
    frac_plain = (plain.run_chains(generator=torch.Generator().manual_seed(0), **kw).flat()[:, 0] > 0).double().mean()
    rex = PnPDM(model, rho0=0.2, rho_min=0.2, num_grid=30, replicas=6, rho_max=8.0)
    frac = (rex.run_chains(generator=torch.Generator().manual_seed(0), **kw).flat()[:, 0] > 0).double().mean()
    assert frac_plain < 0.01, frac_plain
    assert abs(frac - 0.75) < 0.07, frac


def pmc_closed_form(variant, mu, C, A, y, sy, sigma, gamma):
    """Stationary law of the (linear, AR(1)) PMC chain on a Gaussian prior with constant sigma."""
    d = mu.numel()
    Id = torch.eye(d, dtype=F64)
    Hg, Q, b = A.T @ A / sy**2, torch.linalg.inv(C + sigma**2 * Id), A.T @ y / sy**2
    if variant == "red":
        M, c = Id - gamma * Hg - gamma * Q, gamma * b + gamma * Q @ mu
    else:
        M, c = (Id - gamma * Q) @ (Id - gamma * Hg), (Id - gamma * Q) @ (gamma * b) + gamma * Q @ mu
    mean = torch.linalg.solve(Id - M, c)
    cov = torch.from_numpy(sla.solve_discrete_lyapunov(M.numpy(), 2 * gamma * np.eye(d)))
    return mean, cov


@pytest.mark.parametrize("variant", ["pnp", "red"])
def test_pmc_constant_sigma_closed_form(variant):
    """Measured (200 chains x 250 draws, thin 2): |mean err| ~0.005, |cov err| ~0.012; tolerance 0.03 / 0.04."""
    model, mu, C, A, y, sy = gaussian_setup()
    sigma, gamma = 0.3, 0.05
    k = PMC(model, variant=variant, sigma0=sigma, sigma_min=sigma, step_size=gamma)
    r = k.run_chains(y=y, num_chains=200, num_samples=250, warmup_steps=200, thin=2,
                     generator=torch.Generator().manual_seed(0))
    x = r.flat()
    mt, St = pmc_closed_form(variant, mu, C, A, y, sy, sigma, gamma)
    err_m, err_c = (x.mean(0) - mt).abs().max(), (torch.cov(x.T) - St).abs().max()
    assert err_m < 0.03 and err_c < 0.04, (err_m, err_c)
    assert r.nfe_per_iteration == 1
    # sign of the score: flipping it would make the chain diverge / miss the target badly
    mp, Sp = gaussian_posterior(mu, C + sigma**2 * torch.eye(4, dtype=F64), A, y, sy**2 * torch.eye(2, dtype=F64))
    assert (mt - mp).abs().max() < 0.05  # small-step chain is close to the sigma-smoothed posterior


def test_multichain_diagnostics_gmm_d8():
    """d = 8 GMM (BENCHMARKS §1, d_y = 8, seed 1; unimodal posterior, weight 1.0): 16 vectorised chains.
    Measured: PnP-DM R-hat 1.001, ESS_min ~4200; PMC R-hat ~1.006, ESS_min ~1200."""
    pb = gmm_benchmark_problem(8, 8, seed=1)
    model = pb.model(VPSchedule.gmm_benchmark())
    runs = {
        "pnpdm": (PnPDM(model, rho_min=1.0, num_grid=20), dict(num_samples=300, warmup_steps=50)),
        "pmc": (PMC(model, sigma0=20.0, decay=0.98, sigma_min=0.5, step_fraction=0.5),
                dict(num_samples=300, warmup_steps=600, thin=6)),
    }
    for name, (k, kw) in runs.items():
        r = k.run_chains(y=pb.y, num_chains=16, generator=torch.Generator().manual_seed(0), **kw)
        rh, ess = rhat_ess(r.samples)
        assert rh.max() < 1.01, (name, rh)
        assert ess.min() > 500, (name, ess)
        idata = r.to_inference_data()
        assert dict(idata.posterior["x"].sizes) == {"chain": 16, "draw": 300, "dim": 8}
        assert idata.sample_stats["diverging"].shape == (16, 300)
        # the chains sit on the posterior mode (within the relaxation bias)
        assert (r.flat().mean(0) - pb.posterior.mean()).abs().max() < 0.6, name


def test_kernels_near_noise_floor_gmm_d8():
    """d = 8 GMM (d_y = 8, seed 1; unimodal posterior), 16 vectorised chains x 100 draws: sliced W-1
    (200 directions) to 10,000 exact draws within 6x the noise floor of 1,600 exact draws (floor
    ~0.011). Measured: PnP-DM (rho_min 0.1) 4.0x, PMC (sigma_min 0.1) 2.4x — the chains' draws are
    autocorrelated, so part of the gap is their smaller effective sample size. A fixed rho = 1
    (a visibly relaxed target) scores 36x: the check sees the relaxation bias."""
    from ppl_diffusion.metrics import sliced_wasserstein

    pb = gmm_benchmark_problem(8, 8, seed=1)
    model = pb.model(VPSchedule.gmm_benchmark())
    g = torch.Generator().manual_seed(1)
    ref = pb.posterior.sample(10000, generator=g)
    floor = sum(float(sliced_wasserstein(pb.posterior.sample(1600, generator=g), ref, n_projections=200, generator=g))
                for _ in range(3)) / 3
    runs = {"pnpdm": (PnPDM(model, rho_min=0.1, num_grid=50), dict(warmup_steps=50, thin=2)),
            "pmc": (PMC(model, sigma0=20.0, decay=0.98, sigma_min=0.1, step_fraction=0.5),
                    dict(warmup_steps=600, thin=6)),
            "pnpdm rho=1": (PnPDM(model, rho0=1.0, rho_min=1.0, num_grid=50), dict(warmup_steps=50, thin=2))}
    ratio = {}
    for name, (k, kw) in runs.items():
        r = k.run_chains(y=pb.y, num_chains=16, num_samples=100, generator=torch.Generator().manual_seed(0), **kw)
        ratio[name] = float(sliced_wasserstein(r.flat(), ref, n_projections=200, generator=g)) / floor
    assert ratio["pnpdm"] < 6 and ratio["pmc"] < 6, ratio
    assert ratio["pnpdm rho=1"] > 3 * ratio["pnpdm"], ratio


@pytest.mark.parametrize("make", [lambda m: PnPDM(m, rho_min=1.0, num_grid=20),
                                  lambda m: PnPDM(m, rho_min=1.0, num_grid=20, replicas=3, rho_max=4.0),
                                  lambda m: PMC(m, sigma0=1.0, sigma_min=1.0)])
def test_pyro_mcmc_and_arviz(make):
    import arviz as az
    from pyro.infer import MCMC

    pb = gmm_benchmark_problem(8, 2, seed=0)
    model = pb.model(VPSchedule.gmm_benchmark())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "num_chains=2 is more than available_cpu" on 2-core machines
        mcmc = MCMC(make(model), num_samples=15, warmup_steps=5, num_chains=2, disable_progbar=True)
        mcmc.run(y=pb.y)
    assert mcmc.get_samples(group_by_chain=True)["x"].shape == (2, 15, 8)
    kernel = mcmc.kernel
    # the replicas ran and swapped inside Pyro's loop (visible here when Pyro ran the chains in this
    # process, as it does on machines with fewer than num_chains + 1 cores)
    if getattr(kernel, "replicas", 1) > 1 and kernel._hot is not None:
        assert float(kernel.exchange.tried.sum()) > 0 and kernel._hot.shape[:2] == (1, kernel.replicas - 1)
    idata = az.from_pyro(mcmc)
    assert idata.posterior["x"].shape == (2, 15, 8)
    assert idata.sample_stats["diverging"].shape == (2, 15)
    assert "y" in idata.observed_data and "y" in idata.log_likelihood
    diag = mcmc.diagnostics()
    assert "divergences" in diag
    x = idata.posterior["x"].values
    assert np.isfinite(x).all() and not np.allclose(x[0], x[1])


@pytest.fixture(scope="module")
def unet_prior():
    den = UNetDenoiser(tiny_unet().double(), SCHEDULER_CONFIG)
    return DiffusionPrior(den)


def _image_model(prior, op, sy):
    def model(y=None):
        x = pyro.sample("x", prior)
        return pyro.sample("y", GaussianMeasurement(op, x, sy), obs=y)

    return model


@pytest.mark.parametrize("task", ["inpainting", "deblur", "phase"])
def test_tiny_unet(unet_prior, task):
    g = torch.Generator().manual_seed(0)
    shape = (1, 16, 16)
    if task == "inpainting":
        op = Inpainting.random(shape, 0.5, generator=g)
    elif task == "deblur":
        op = Blur.gaussian(shape, 1.0, dtype=F64)
    else:
        op = PhaseRetrieval(shape)
    x_true = torch.rand(shape, generator=g, dtype=F64) * 2 - 1
    y = op(x_true) + 0.05 * torch.randn(op.out_shape, generator=g, dtype=F64)
    model = _image_model(unet_prior, op, 0.05)
    kernels = [PnPDM(model, rho0=1.0, decay=0.5, rho_min=0.5, num_grid=20, langevin_steps=5, langevin_step=1e-4),
               PMC(model, sigma0=0.5, sigma_min=0.5, step_size=1e-4)]
    for k in kernels:
        r = k.run_chains(y=y, num_chains=2, num_samples=2, warmup_steps=1, generator=g)
        assert r.samples.shape == (2, 2) + shape and torch.isfinite(r.samples).all()
        idata = r.to_inference_data()
        assert dict(idata.posterior["x"].sizes) == {"chain": 2, "draw": 2, "channel": 1, "row": 16, "col": 16}
    assert kernels[0].mode == {"inpainting": "svd", "deblur": "svd", "phase": "langevin"}[task]


def test_bad_input():
    pb = gmm_benchmark_problem(8, 2, seed=0)
    model = pb.model(VPSchedule.gmm_benchmark())
    # (options, key words of the expected message: the option and its bad value)
    for kw, msg in ((dict(rho0=0.0), r"rho0\b.*0\.0"),
                    (dict(rho_min=-1.0), r"rho_min\b.*-1\.0"),
                    (dict(decay=0.0), r"decay\b.*0\.0"),
                    (dict(decay=1.5), r"decay\b.*1\.5"),
                    (dict(rho0=0.1, rho_min=0.3), r"rho_min \(0\.3\).*rho0 \(0\.1\)"),
                    (dict(langevin_step=0.0), r"langevin_step\b.*0\.0"),
                    (dict(langevin_steps=0), r"langevin_steps\b.*\b0\b"),
                    (dict(prior_solver="euler"), r"prior_solver\b.*'euler'"),
                    (dict(num_grid=1), r"num_grid\b.*\b1\b"),
                    (dict(replicas=0), r"replicas\b.*\b0\b"),
                    (dict(replicas=2.5), r"replicas\b.*2\.5"),
                    (dict(replicas=4, rho_max=0.1), r"rho_max \(0\.1\).*rho_min"),
                    (dict(replicas=3, rho_max=-1.0), r"rho_max\b.*-1\.0")):
        with pytest.raises(ValueError, match=msg):
            PnPDM(model, **kw)
    for kw, msg in ((dict(step_size=0.0), r"step_size\b.*\b0\.0"),
                    (dict(step_size=-1e-3), r"step_size\b.*-0\.001"),
                    (dict(step_size="big"), r"step_size\b.*'big'"),
                    (dict(sigma_min=0.0), r"sigma_min\b.*0\.0"),
                    (dict(variant="foo"), r"variant\b.*'foo'"),
                    (dict(step_fraction=3.0), r"step_fraction\b.*3\.0"),
                    (dict(alpha=-1.0), r"alpha\b.*-1\.0")):
        with pytest.raises(ValueError, match=msg):
            PMC(model, **kw)
    k = PnPDM(model)
    with pytest.raises(ValueError, match=r"num_chains\b.*\b0\b"):
        k.run_chains(y=pb.y, num_chains=0)
    with pytest.raises(ValueError, match="no DiffusionPrior site"):
        PnPDM(lambda: None)
    # a nonlinear operator whose likelihood is not differentiable (no closed form, no autograd)
    prior = pb.prior.diffusion_prior(VPSchedule.gmm_benchmark())
    op = CallableOperator(lambda x: torch.round(x.detach()), (8,), (8,))

    def nd_model(y=None):
        x = pyro.sample("x", prior)
        return pyro.sample("y", GaussianMeasurement(op, x, 0.1), obs=y)

    with pytest.raises(ValueError, match="differentiable"):
        PnPDM(nd_model)
    with pytest.raises(ValueError, match="differentiable"):
        PMC(nd_model, step_size=1e-3)
    # noiseless measurement with a nonlinear operator, PMC with auto step size but no SVD
    op2 = CallableOperator(lambda x: x**2, (8,), (8,))

    def nl_model(y=None, noise=0.0):
        x = pyro.sample("x", prior)
        return pyro.sample("y", GaussianMeasurement(op2, x, noise), obs=y)

    with pytest.raises(ValueError, match="noiseless.*SVD"):
        PnPDM(nl_model)
    with pytest.raises(ValueError, match="noiseless"):
        PMC(nl_model, step_size=1e-3)

    def nl_model_noisy(y=None):
        return nl_model(y, noise=0.1)

    with pytest.raises(ValueError, match="step_size"):
        PMC(nl_model_noisy, step_size="auto", sigma0=1.0)
    PMC(nl_model_noisy, step_size=1e-3, sigma0=1.0)  # a numeric step size is fine


def test_pnpdm_draw_default_warmup_is_longer_with_replicas(monkeypatch):
    """PnPDM.draw's default burn-in: max(20, annealing) for one chain per coupling, max(200, annealing)
    with replicas (the burn-in measured in benchmarks/results/exactness_d8_pnpdm.md); an explicit
    warmup is kept."""
    from ppl_diffusion.inference.kernels.base import DiffusionKernel

    seen = []
    monkeypatch.setattr(DiffusionKernel, "draw", lambda self, n, *a, warmup=None, **kw: seen.append(warmup))
    model, *_ = gaussian_setup()
    PnPDM(model, rho0=0.5, rho_min=0.5).draw(8)
    PnPDM(model, rho0=0.5, rho_min=0.5, replicas=3, rho_max=2.0).draw(8)
    k = PnPDM(model, rho0=100.0, rho_min=0.01, decay=0.96, replicas=3)
    PnPDM(model, rho0=0.5, rho_min=0.5, replicas=3, rho_max=2.0).draw(8, warmup=7)
    k.draw(8)
    assert k.annealing_steps > 200
    assert seen == [20, 200, 7, k.annealing_steps]
