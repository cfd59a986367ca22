"""Plates of measurements for the MCMC kernels (PnP-DM, PMC) and the SMC samplers (MCGDiff, TDS,
FPS / FPS-SMC, SMCDiff): B = 3 measurements of one exact GMM problem in ONE batched run, each
measurement's draws as close to ITS exact posterior as a separate run's (and far from the others'),
one network call per step for the whole plate, MCGDiff's log-evidence per measurement against the
closed form, the layouts, the Pyro MCMC path and the refusals."""
import math
import warnings

import pyro
import pytest
import torch

from ppl_diffusion.inference.analytic_variance import _SHARED as _SHARED_VARIANCE
from ppl_diffusion.inference.kernels import PMC, ParticleGibbs, PnPDM
from ppl_diffusion.inference.problem import Problem
from ppl_diffusion.inference.smc import FPS, FPSSMC, TDS, MCGDiff, SMCDiff
from ppl_diffusion.metrics import sliced_wasserstein
from ppl_diffusion.models.gmm import gmm_benchmark_problem
from ppl_diffusion.models.measurement import GaussianMeasurement
from ppl_diffusion.models.operators import Inpainting, Matrix
from ppl_diffusion.schedules import VPSchedule

SCHED = VPSchedule.gmm_benchmark()
B = 3


@pytest.fixture(scope="module")
def setup():
    """d = 8 GMM (d_y = 4, seed 3) and B = 3 measurements of 3 prior draws; their exact posteriors
    are unimodal and far apart (min sliced W-1 between them 9.4; exact 400-draw floor 0.05-0.1)."""
    pb = gmm_benchmark_problem(8, 4, seed=3)
    g = torch.Generator().manual_seed(2)
    xs = pb.prior.sample(B, generator=g)
    Y = xs @ pb.A.T + pb.noise_std * torch.randn(B, 4, generator=g, dtype=torch.float64)
    exact = [pb.prior.posterior(pb.A, Y[b], pb.noise_std) for b in range(B)]
    refs = [e.sample(2000, generator=g) for e in exact]
    return pb, xs, Y, exact, refs


def _plate_model(pb, op=None, noise=None):
    prior = pb.prior.diffusion_prior(SCHED)
    op = Matrix(pb.A) if op is None else op
    noise = pb.noise_std if noise is None else noise

    def model(y=None):
        with pyro.plate("images", B):
            x = pyro.sample("x", prior)
            pyro.sample("y", GaussianMeasurement(op, x, noise), obs=y)

    return model


def _sw(x, ref):
    return float(sliced_wasserstein(x, ref, n_projections=200, generator=torch.Generator().manual_seed(0)))


def _check_each_on_its_own(plated, alone, refs, floor_n):
    """plated: (n, B, 8) draws; alone[b]: (n, 8) draws of a separate run on measurement b."""
    for b in range(B):
        sw_plate = _sw(plated[:, b], refs[b])
        sw_alone = _sw(alone[b], refs[b])
        floor = _sw(refs[b][torch.randperm(2000, generator=torch.Generator().manual_seed(b))[:floor_n]], refs[b])
        assert sw_plate < 1.5 * sw_alone + 2 * floor, (b, sw_plate, sw_alone, floor)
        # far from the other measurements' posteriors (they lie >= 9 apart)
        others = [_sw(plated[:, b], refs[c]) for c in range(B) if c != b]
        assert min(others) > 5.0, (b, others)


KERNELS = {
    # every chain of measurement b starts at x_b (the prior draw behind y_b; the kernels are local and
    # from a random start most chains stay in other modes for hundreds of iterations, as on
    # separate runs): a chain that conditioned on another measurement's y would leave for that
    # posterior (9+ away) within a few iterations
    "pnpdm": (lambda m: PnPDM(m, rho0=1.0, rho_min=0.1, num_grid=20), dict(chains=40, warmup=40, thin=2)),
    # replica exchange: 40 chains x 3 replicas x B measurements in one batch (the hot replicas' steps
    # use their chain's y and swap into the cold chain)
    "pnpdm_replicas": (lambda m: PnPDM(m, rho0=1.0, rho_min=0.1, num_grid=20, replicas=3, rho_max=1.0),
                       dict(chains=40, warmup=40, thin=2)),
    "pmc": (lambda m: PMC(m, sigma0=1.0, decay=0.95, sigma_min=0.1, step_fraction=1.0),
            dict(chains=40, warmup=100, thin=5)),
}


@pytest.mark.parametrize("name", sorted(KERNELS))
def test_kernel_plate_is_one_batch_conditioned_per_measurement(setup, name):
    """C = 40 chains per measurement as one batch of 120 chains: samples (chain, draw, B, *event),
    each measurement's draws as close to its exact posterior as a separate 40-chain run's, and the
    plate makes exactly as many network calls as ONE separate run (one call per step for all).
    Measured sliced W-1 per measurement (plate / separate; exact 400-draw floor 0.04-0.05; to the
    other measurements' posteriors >= 8.8): PnP-DM 0.13-0.15 / 0.11-0.20, with replicas 0.11-0.17 /
    0.11-0.16, PMC 0.19-0.22 / 0.18-0.25."""
    pb, xs, Y, _, refs = setup
    make, kw = KERNELS[name]
    model = _plate_model(pb)
    den = Problem.from_model(model, allow_unobserved=True).denoiser
    den.reset_nfe()
    table = _SHARED_VARIANCE.nfe  # PnP-DM's one-off step-variance table is not a per-iteration call
    d = make(model).draw(400, y=Y, init=xs, generator=torch.Generator().manual_seed(1), **kw)
    calls_plate = den.nfe - (_SHARED_VARIANCE.nfe - table)
    assert d.samples.shape == (40, 10, B, 8)
    assert d.stats["diverging"].shape == (40, 10, B)
    one = pb.model(SCHED)
    den = Problem.from_model(one, allow_unobserved=True).denoiser
    alone = []
    for b in range(B):
        den.reset_nfe()
        table = _SHARED_VARIANCE.nfe
        r = make(one).draw(400, y=Y[b], init=xs[b], generator=torch.Generator().manual_seed(2 + b), **kw)
        alone.append(r.flat())
        calls = den.nfe - (_SHARED_VARIANCE.nfe - table)
        assert calls == calls_plate, (calls, calls_plate)
        # evaluations per draw of one measurement, as for a separate run
        assert d.nfe_per_sample == pytest.approx(r.nfe_per_sample)
    _check_each_on_its_own(d.samples.reshape(-1, B, 8), alone, refs, 400)


def test_kernel_plate_layout_and_inference_data(setup):
    """run_chains on a plate: chain i of measurement b is batch element i * B + b (the
    expand_measurements layout), per-measurement init, ArviZ dims (chain, draw, measurement, dim)."""
    pb, xs, Y, _, _ = setup
    k = PnPDM(_plate_model(pb), rho0=0.1, rho_min=0.1, num_grid=20)
    # start each measurement's chains at its true x: after 3 iterations each sits near its own x
    r = k.run_chains(y=Y, num_chains=2, num_samples=3, init=xs, generator=torch.Generator().manual_seed(0))
    assert r.samples.shape == (2, 3, B, 8) and r.stats["diverging"].shape == (2, 3, B)
    dist = (r.samples[:, -1, :, None] - xs[None, None]).norm(dim=-1)  # (chain, measurement, x_c)
    assert bool((dist.argmin(-1) == torch.arange(B)).all()), dist
    assert k.current_problem.observation.shape == (2 * B, 4)
    assert torch.equal(k.current_problem.observation[4], Y[1])  # i = 1, b = 1 -> 1 * B + 1
    idata = r.to_inference_data()
    assert idata.posterior["x"].dims == ("chain", "draw", "measurement", "dim")
    assert idata.observed_data["y"].dims[0] == "measurement"
    assert idata.sample_stats["diverging"].dims == ("chain", "draw", "measurement")
    with pytest.raises(ValueError, match="init must have shape"):
        k.run_chains(y=Y, num_chains=2, num_samples=1, init=torch.zeros(5, 8, dtype=torch.float64))


@pytest.mark.parametrize("replicas", [1, 3])
def test_pnpdm_plate_likelihood_steps_use_each_chains_own_y(setup, replicas):
    """The per-chain constants on a plate's view: the Langevin step's gradient and the SVD step's
    spectral observation of chain c (and of its replicas, chain-major) are those of measurement c % B."""
    pb, _, Y, _, _ = setup
    C = 2
    sy = pb.noise_std
    k = PnPDM(_plate_model(pb), likelihood_step="langevin", replicas=replicas, rho_max=2.0)
    problem = k.problem(y=Y)
    k._bind(problem, C)
    z = torch.randn(C * B * replicas, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    g = k._grad_log_likelihood(z)
    meas = (torch.arange(C * B * replicas) // replicas) % B
    expected = -((z @ pb.A.T - Y[meas]) @ pb.A) / sy ** 2
    torch.testing.assert_close(g, expected)
    k = PnPDM(_plate_model(pb), likelihood_step="svd", replicas=replicas, rho_max=2.0)
    k._bind(problem, C)
    ybar = k._rows(k.ybar, C * B * replicas)
    op = Matrix(pb.A)
    torch.testing.assert_close(ybar, op.Ut(Y[meas]).reshape(C * B * replicas, -1)[:, : k.s.numel()])


def test_pyro_mcmc_with_a_plate(setup):
    """pyro.infer.MCMC on a plated model: one Pyro chain's state is (B, *event), its B measurements
    moving as B chains of one batch; arviz.from_pyro keeps the plate."""
    import arviz as az
    from pyro.infer import MCMC

    pb, xs, Y, exact, _ = setup
    kernel = PnPDM(_plate_model(pb), rho0=1.0, rho_min=0.1, num_grid=20)
    pyro.set_rng_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mcmc = MCMC(kernel, num_samples=60, warmup_steps=30, num_chains=1, initial_params={"x": xs},
                    disable_progbar=True)
        mcmc.run(y=Y)
    x = mcmc.get_samples()["x"]
    assert x.shape == (60, B, 8)
    for b in range(B):  # each measurement's chain sits on its own posterior: its mean within the
        # exact posterior's spread (norm of the sd 2.4; measured 2.4, 1.2-3.3, 2.0) of the exact
        # mean, the other measurements' exact means 30-90 away
        err = [float((x[:, b].mean(0) - exact[c].mean()).norm()) for c in range(B)]
        assert err[b] < 4.0 and min(e for c, e in enumerate(err) if c != b) > 20.0, (b, err)
    idata = az.from_pyro(mcmc)
    assert idata.posterior["x"].shape == (1, 60, B, 8)
    with pytest.raises(ValueError, match=r"must have shape \(3, 8\)"):
        kernel.sample({"x": torch.zeros(8, dtype=torch.float64)})


SMC = {
    "mcgdiff": (MCGDiff, dict(particles=32, steps=30)),
    "tds": (TDS, dict(particles=16, steps=30)),
}


@pytest.mark.parametrize("name", sorted(SMC))
def test_smc_plate_is_one_batch_conditioned_per_measurement(setup, name):
    """n = 100 draws per measurement from 100 * B independent runs in one batch: samples
    (1, n, B, *event), each measurement's draws as close to its exact posterior as a separate run's,
    and as many network calls as ONE separate run (one call per step for the whole plate). Measured
    sliced W-1 per measurement (plate / separate): MCGDiff 0.13-0.22 / 0.12-0.18, TDS 0.15-3.4 /
    0.10-3.1 (16 particles x 30 steps miss part of measurement 0's posterior both ways)."""
    pb, _, Y, _, refs = setup
    cls, kw = SMC[name]
    model = _plate_model(pb)
    den = Problem.from_model(model, allow_unobserved=True).denoiser
    den.reset_nfe()
    d = cls(model, **kw).draw(100, y=Y, generator=torch.Generator().manual_seed(1))
    # the run's calls: without those of the step-variance estimate (Analytic-DPM), made once per denoiser
    # and grid in the process (a separate solver on a prior whose estimate is cached pays nothing)
    calls_plate = d.extra["result"].nfe
    ve_plate = d.extra["result"].extra["variance_evals"]
    assert (den.nfe > calls_plate) == (ve_plate > 0)
    assert d.samples.shape == (1, 100, B, 8)
    assert d.extra["log_evidence"].shape == (100 * B,) and d.extra["result"].extra["measurements"] == B
    one = pb.model(SCHED)
    den = Problem.from_model(one, allow_unobserved=True).denoiser
    alone = []
    for b in range(B):
        den.reset_nfe()
        r = cls(one, **kw).draw(100, y=Y[b], generator=torch.Generator().manual_seed(2 + b))
        alone.append(r.samples[0])
        assert r.extra["result"].nfe == calls_plate, (r.extra["result"].nfe, calls_plate)
        assert d.nfe_per_sample == pytest.approx(r.nfe_per_sample)
    _check_each_on_its_own(d.samples[0], alone, refs, 100)


def test_mcgdiff_plate_log_evidence_per_measurement(setup):
    """run(runs=R) on a plate: R * B runs, run i * B + b on measurement b; each measurement's mean
    log-evidence within test_smc's tolerance (4 MC standard errors + 0.1) of its exact log p(y_b).
    Measured (100 steps, 512 particles, 8 runs, minus exact): -0.55, -0.29, -0.05 (separate runs of
    the same settings: -0.7 to +0.3)."""
    pb, _, Y, exact, _ = setup
    R = 8
    res = MCGDiff(_plate_model(pb), particles=512, steps=100).run(y=Y, runs=R,
                                                                  generator=torch.Generator().manual_seed(1))
    assert res.particles.shape == (R * B, 512, 8) and res.log_evidence.shape == (R * B,)
    le = res.log_evidence.reshape(R, B)
    for b in range(B):
        ex = float(exact[b].log_evidence)
        err = float(le[:, b].std()) / math.sqrt(R)
        assert abs(float(le[:, b].mean()) - ex) < 4 * err + 0.1, (b, float(le[:, b].mean()), err, ex)


@pytest.mark.parametrize("cls", [FPS, FPSSMC])
def test_fps_plate_conditions_each_run_on_its_own(setup, cls):
    """FPS / FPS-SMC on a plate (their filter law is not the posterior): each measurement's draws as
    close to its exact posterior as a separate run's, one network call per step for the plate."""
    pb, _, Y, _, refs = setup
    model = _plate_model(pb)
    den = Problem.from_model(model, allow_unobserved=True).denoiser
    den.reset_nfe()
    kw = dict(steps=30) if cls is FPS else dict(steps=30, particles=16)
    d = cls(model, **kw).draw(100, y=Y, generator=torch.Generator().manual_seed(1))
    assert d.samples.shape == (1, 100, B, 8) and den.nfe == 30
    one = pb.model(SCHED)
    alone = [cls(one, **kw).sample(100, y=Y[b], generator=torch.Generator().manual_seed(2 + b)) for b in range(B)]
    for b in range(B):
        sw_plate, sw_alone = _sw(d.samples[0, :, b], refs[b]), _sw(alone[b], refs[b])
        assert sw_plate < 1.5 * sw_alone + 0.2, (b, sw_plate, sw_alone)


def test_smcdiff_plate_keeps_each_measurements_observed_entries(setup):
    """SMCDiff on a plate of inpainting measurements: every draw of measurement b carries y_b on the
    observed entries (run i * B + b's trajectory ends at its own y)."""
    pb, xs, _, _, _ = setup
    op = Inpainting(torch.tensor([True] * 6 + [False] * 2), shape=(8,))
    Y = op(xs)
    d = SMCDiff(_plate_model(pb, op, 0.0), particles=8, steps=20).draw(20, y=Y,
                                                                       generator=torch.Generator().manual_seed(0))
    assert d.samples.shape == (1, 20, B, 8)
    assert torch.equal(d.samples[0, :, :, :6], xs[None, :, :6].expand(20, B, 6))


def test_particle_gibbs_refuses_a_plate(setup):
    pb, _, Y, _, _ = setup
    with pytest.raises(ValueError, match=r"ParticleGibbs.*plate\(s\) \['images'\]"):
        ParticleGibbs(MCGDiff(_plate_model(pb), particles=4, steps=5))


def test_plates_benchmark_smoke(tmp_path):
    """benchmarks/plates.py on the tiny random UNet: B = 2 measurements, the plate makes one separate
    run's network calls (DDRM: 3 steps; MCGDiff: 3 + 1 matching time; its one-off Analytic-DPM estimate is
    made before the counts), a solver without plates is listed as refused, the file is written."""
    from ppl_diffusion.bench.plates import bench_plates

    path = tmp_path / "plates.md"
    text = bench_plates(["ddrm", "mcgdiff", "score_prior"], "sr2", 2, 1, 3, 0, "tiny", out=str(path), cmd="cmd")
    assert path.read_text() == text
    assert "| ddrm | steps=3 |" in text and "| 3 / 3 / 6 | 2 / 1 | 3 / 3 |" in text
    assert "| 4 / 4 / 8 | 16 / 8 |" in text  # MCGDiff: 1 draw x 8 particles x 2 measurements per call
    assert "- score_prior: score_prior: the model puts the prior site 'x' in plate(s) ['images']" in text
