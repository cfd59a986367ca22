"""Issue 15: failures are loud and nothing is lost (inference/health.py, memory.py).

One test per bullet, each a reproduction of the issue at tiny size (a d = 4 GMM prior; the digits
prior only where the issue is about it): the divergence guard, MCMC health, SMC health, memory
chunking (bit-identical to one batch, refusal before work), interrupts, the CLI's output check,
checkpoint finiteness and SMCDiff's mask check."""
import math
import shutil

import numpy as np
import pytest
import torch

from ppl_diffusion.bench.reliability import _DeadWeights, _interrupt_model, gmm_setup
from ppl_diffusion.inference.guides.ddrm import DDRM
from ppl_diffusion.inference.guides.dps import DPS
from ppl_diffusion.inference.health import (DivergenceError, FrozenChainsError, RunInterrupted, WeightCollapseError,
                                            chain_health)
from ppl_diffusion.inference.kernels import PMC, PnPDM
from ppl_diffusion.inference.smc.engine import run_smc
from ppl_diffusion.inference.smc.mcgdiff import MCGDiff
from ppl_diffusion.inference.smc.tds import TDS
from ppl_diffusion.inference.variational.red_diff import REDDiff
from ppl_diffusion.memory import MemoryEstimateError, max_batch

F64 = torch.float64


@pytest.fixture(scope="module")
def gmm():
    return gmm_setup()


def G(seed=0):
    return torch.Generator().manual_seed(seed)


# -- 1. the divergence guard ------------------------------------------------------------------
def test_guide_blow_up_raises_naming_step_quantity_and_option(gmm):
    prior, op, model, y = gmm
    with pytest.raises(DivergenceError) as info:  # used to return values of ~1e8
        DPS(model, steps=10, zeta=1e6).sample(2, y=y, generator=G())
    err = info.value
    msg = str(err)
    assert "DPS diverged at step" in msg and "zeta=1e+06" in msg and "|x_t|" in msg
    assert err.step is not None and err.value > err.bound
    assert err.last_x is not None and err.last_x.abs().max() <= err.bound  # the last good state
    x = DPS(model, steps=10).sample(4, y=y, generator=G())  # the default is healthy
    assert torch.isfinite(x).all() and x.abs().max() < 10


def test_red_diff_blow_up_raises_with_loss_trace(gmm):
    prior, op, model, y = gmm
    for lr in (1e6, 1e30):  # returned 2.6e6 / "its last finite values" (1e30) before
        with pytest.raises(DivergenceError) as info:
            REDDiff(model, lr=lr, steps=20).draw(2, y=y)
        err = info.value
        assert "lr=" in str(err) and "|mu|" in str(err)
        assert "loss_trace" in err.partial and torch.isfinite(err.last_x).all() and err.last_x.abs().max() < 100


def test_cli_divergence_exits_nonzero_with_one_line(tmp_path, capsys):
    from ppl_diffusion.cli import main
    from ppl_diffusion.models.zoo import heldout_images

    img = tmp_path / "digit.npy"
    np.save(img, heldout_images("digits")[0].numpy())
    code = main(["solve", "--image", str(img), "--operator", "inpainting", "--method", "dps", "--method-args",
                 '{"zeta": 1e6, "steps": 5}', "--samples", "1", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "diverged at step" in err[0] and "zeta=1e+06" in err[0]


# -- 2. MCMC health ---------------------------------------------------------------------------
@pytest.mark.parametrize("make", [lambda m: PMC(m, step_size=1e10),
                                  lambda m: PnPDM(m, likelihood_step="langevin", langevin_step=1e10,
                                                  langevin_steps=5, num_grid=10)])
def test_every_chain_frozen_raises(gmm, make):
    prior, op, model, y = gmm
    with pytest.raises(FrozenChainsError) as info:  # used to return frozen draws silently
        make(model).draw(4, y=y, warmup=2, generator=G())
    err = info.value
    assert "every chain is frozen" in str(err) and ("step_size=1e+10" in str(err) or "langevin_step=1e+10" in str(err))
    res = err.partial
    assert res.health["acceptance"].max() == 0 and bool(res.health["frozen"].all())


def test_one_frozen_chain_warns_and_is_flagged(gmm):
    prior, op, model, y = gmm
    init = torch.zeros(3, 4, dtype=F64)
    init[0] = 1e7  # beyond the guard's bound: every move from there is rejected
    with pytest.warns(RuntimeWarning, match=r"chain\(s\) \[0\] are frozen"):
        res = PMC(model).run_chains(y=y, num_chains=3, num_samples=5, init=init, generator=G())
    assert res.health["frozen"].tolist() == [True, False, False]
    assert res.health["acceptance"][0] == 0 and res.health["acceptance"][1:].min() == 1
    idata = res.to_inference_data()
    assert idata.sample_stats["chain_frozen"].values[:, 0].tolist() == [True, False, False]
    # chain_health on its own: acceptance / divergence rates per chain
    h = chain_health(torch.tensor([[True, False], [True, True]]), torch.tensor([[False, True], [False, False]]), "k")
    assert h["acceptance"].tolist() == [0.5, 1.0] and h["divergence"].tolist() == [0.5, 0.0]


# -- 3. SMC health ----------------------------------------------------------------------------
def test_all_minus_inf_weights_raise_naming_the_step():
    with pytest.raises(WeightCollapseError, match=r"step 3/6.*outside the prior's support"):  # was "invalid
        run_smc(_DeadWeights(), 2, 8, generator=G())  # multinomial distribution" from resample


def test_smc_keeps_per_step_ess_and_evidence_and_warns_on_collapse(gmm):
    prior, op, model, y = gmm
    res = MCGDiff(model, particles=16, steps=20).run(y=y, runs=2, generator=G())
    K = res.ess_history.shape[1]
    assert res.extra["log_evidence_history"].shape == (2, K) and res.extra["ess_steps"].shape == (2, K)
    assert torch.allclose(res.extra["log_evidence_history"][:, -1], res.log_evidence)
    far = torch.tensor([3000.0, -3000.0], dtype=F64)  # looked healthy before: ESS = N, log Z = -2e8
    for S in (MCGDiff, TDS):
        with pytest.warns(RuntimeWarning, match="ESS stayed at about one particle"):
            S(model, particles=16, steps=20).draw(2, y=far, generator=G())


def test_smc_particle_blow_up_names_the_cause(gmm):
    prior, op, model, y = gmm
    with pytest.raises(DivergenceError, match=r"mcgdiff diverged at step \d+/\d+.*measurement far outside"):
        MCGDiff(model, particles=16, steps=20).draw(2, y=torch.tensor([1e8, -1e8], dtype=F64), generator=G())


# -- 4. memory ------------------------------------------------------------------------------
def test_chunked_runs_are_bit_identical_to_one_batch(gmm):
    prior, op, model, y = gmm
    den = prior.denoiser
    runs = {
        "DPS (gradient through checkpointed chunks)": lambda: DPS(model, steps=10).sample(20, y=y, generator=G(3)),
        "DDRM": lambda: DDRM(model, steps=10).sample(20, y=y, generator=G(3)),
        "TDS": lambda: TDS(model, particles=16, steps=10).sample(3, y=y, generator=G(3)),
        "MCGDiff": lambda: MCGDiff(model, particles=16, steps=10).sample(3, y=y, generator=G(3)),
        "PnP-DM": lambda: PnPDM(model, num_grid=10, langevin_steps=5).draw(12, y=y, chains=6, warmup=2,
                                                                           generator=G(3)).samples,
    }
    for name, fn in runs.items():
        with max_batch(den, 0):
            one = fn()
        calls = []
        orig = den.denoise
        den.denoise = lambda x, t, calls=calls, orig=orig: (calls.append(x.shape[0]), orig(x, t))[1]
        try:
            with max_batch(den, 5):
                chunked = fn()
        finally:
            del den.denoise
        assert max(calls) <= 5, name  # the network never saw more than max_batch rows
        assert torch.equal(one, chunked), name


def test_second_derivatives_through_checkpointed_chunks(gmm):
    prior, op, model, y = gmm
    x = torch.randn(6, 4, generator=G(), dtype=F64)

    def run(cap):  # log p(x) by the ODE, its gradient and a second derivative (Score Prior's needs)
        xx = x.clone().requires_grad_(True)
        with max_batch(prior.denoiser, cap):
            lp = prior.log_prob_with_error(xx, steps=3)[0].sum()
            (g,) = torch.autograd.grad(lp, xx, create_graph=True)
            (h,) = torch.autograd.grad(g.sum(), xx)
        return lp.detach(), g.detach(), h

    for one, chunked in zip(run(0), run(5)):  # 4 x 6 rows per call (exact divergence) in chunks of 5
        assert torch.equal(one, chunked)


def test_unet_chunks_bit_identical():
    from ppl_diffusion.models.zoo import load_prior

    den = load_prior("digits").denoiser
    x = torch.randn(160, 1, 16, 16, generator=G())
    with torch.no_grad(), max_batch(den, 0):
        one = den(x, torch.tensor(0.4))
    with torch.no_grad(), max_batch(den, 128):
        chunked = den(x, torch.tensor(0.4))  # a chunk of 128 and an overlapping last 128
    assert torch.equal(one, chunked)


def test_a_batch_that_cannot_fit_is_refused_before_work(gmm):
    prior, op, model, y = gmm
    den = prior.denoiser
    n0 = den.nfe
    with pytest.raises(MemoryEstimateError, match=r"1000000000000 samples .* need about .*nothing was run"):
        DDRM(model).sample(10**12, y=y)
    with pytest.raises(MemoryEstimateError):
        prior.sample((10**12,))
    with pytest.raises(MemoryEstimateError, match="particles"):
        MCGDiff(model, particles=10**6).run(y=y, runs=10**6)
    assert den.nfe == n0


# -- 5. interrupts --------------------------------------------------------------------------
def test_ctrl_c_keeps_the_partial_results(gmm):
    prior, op, model, y = gmm
    with pytest.raises(RunInterrupted) as info:  # a KeyboardInterrupt
        PMC(_interrupt_model(prior, op, 12)).run_chains(y=y, num_chains=2, num_samples=20, generator=G())
    res = info.value.partial
    assert isinstance(info.value, KeyboardInterrupt) and res.interrupted
    assert res.samples.shape[:2] == (2, 11) and torch.isfinite(res.samples).all()
    with pytest.raises(RunInterrupted) as info:
        # the plug-in step variance: no Analytic-DPM estimate before the run, whose calls are counted
        TDS(_interrupt_model(prior, op, 8), particles=8, steps=20, reverse_variance="ddpm").run(y=y, generator=G())
    res = info.value.partial
    assert res.extra["interrupted"] and res.particles.shape == (1, 8, 4) and res.extra["steps_done"] == 6
    with pytest.raises(RunInterrupted) as info:
        DDRM(_interrupt_model(prior, op, 5), steps=20).sample(8, y=y, generator=G())
    part = info.value.partial
    assert part["interrupted"] and part["x"].shape == (8, 4) and info.value.step == 4
    with pytest.raises(RunInterrupted) as info:
        REDDiff(_interrupt_model(prior, op, 10), steps=50).draw(2, y=y)
    part = info.value.partial
    assert part["interrupted"] and len(part["loss_trace"]) == 9 and part["mu"].shape == (4,)


# -- 6. CLI output paths, checkpoints, SMCDiff --------------------------------------------------
def test_cli_refuses_an_unwritable_out_before_work(tmp_path, capsys):
    import time

    from ppl_diffusion.cli import main

    blocker = tmp_path / "file"
    blocker.write_text("")
    t0 = time.perf_counter()
    code = main(["solve", "--image", str(tmp_path / "missing.npy"), "--operator", "inpainting", "--method", "ddrm",
                 "--out", str(blocker / "sub")])
    err = capsys.readouterr().err
    assert code == 2 and "--out" in err and "cannot be created" in err and time.perf_counter() - t0 < 5


def test_cli_writes_the_partial_result_on_ctrl_c(tmp_path, monkeypatch, capsys):
    import ppl_diffusion.methods as methods
    from ppl_diffusion.cli import main
    from ppl_diffusion.models.zoo import heldout_images

    def interrupted(*args, **kwargs):  # what a solver raises on Ctrl-C
        raise RunInterrupted("interrupted", partial={"x": torch.ones(3, 1, 16, 16), "interrupted": True})

    monkeypatch.setattr(methods, "run_method", interrupted)
    img = tmp_path / "digit.npy"
    np.save(img, heldout_images("digits")[0].numpy())
    code = main(["solve", "--image", str(img), "--operator", "inpainting", "--method", "ddrm", "--out",
                 str(tmp_path / "o")])
    assert code == 130 and np.load(tmp_path / "o" / "partial.npy").shape == (3, 1, 16, 16)
    assert "partial.npy" in capsys.readouterr().err


def test_checkpoint_with_nan_weights_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    from ppl_diffusion.models.zoo import load_prior, prior_folder

    folder = tmp_path / "p"
    shutil.copytree(prior_folder("digits"), folder)
    f = folder / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(str(f))
    key = sorted(state)[3]
    state[key] = state[key].clone()
    state[key].view(-1)[0] = math.nan
    save_file(state, str(f))
    with pytest.raises(ValueError, match=f"non-finite .*{key}"):
        load_prior(folder)


def test_smcdiff_needs_a_real_mask_operator():
    import pyro

    from ppl_diffusion.inference.smc.smcdiff import SMCDiff
    from ppl_diffusion.models import GaussianMeasurement, GaussianMixture
    from ppl_diffusion.models.operators import Inpainting, Matrix
    from ppl_diffusion.schedules import VPSchedule

    prior = GaussianMixture(torch.ones(1, dtype=F64), torch.zeros(1, 4, dtype=F64)).diffusion_prior(VPSchedule.linear())

    class FakeMask(Matrix):  # a .mask attribute, but y = A x is not masking
        name = "inpainting"

    fake = FakeMask(torch.ones(4, 4, dtype=F64))
    fake.mask = torch.tensor([True, False, True, False])

    def make(op):
        def model(y=None):
            x = pyro.sample("x", prior)
            return pyro.sample("y", GaussianMeasurement(op, x, 0.1), obs=y)
        return model

    with pytest.raises(ValueError, match="does not act as one"):
        SMCDiff(make(fake))
    with pytest.raises(ValueError, match="boolean .mask tensor"):
        SMCDiff(make(Matrix(torch.ones(2, 4, dtype=F64))))
    SMCDiff(make(Inpainting(torch.tensor([True, False, True, False]))))


def test_reliability_bench_writes_its_table(tmp_path, monkeypatch):
    import ppl_diffusion.bench.reliability as rel

    monkeypatch.setattr(rel, "fault_rows", lambda: [("f", "r", "o")])
    monkeypatch.setattr(rel, "chunk_rows", lambda: [("guide", "run", 4, "yes")])
    rel.main(["--out", str(tmp_path), "--skip-memory"])
    text = (tmp_path / "reliability.md").read_text()
    assert "| f | r | o |" in text and "| guide | run | 4 | yes |" in text


def test_an_interrupted_pyro_mcmc_run_keeps_the_kernels_draws(gmm):
    """Pyro's MCMC.run drops its samples on Ctrl-C (get_samples() then fails); our kernel keeps every
    post-warm-up state it produced: kernel.samples_so_far()."""
    from pyro.infer import MCMC

    prior, op, model, y = gmm
    kernel = PMC(_interrupt_model(prior, op, 15))
    mcmc = MCMC(kernel, num_samples=30, warmup_steps=3, disable_progbar=True)
    with pytest.raises(KeyboardInterrupt):
        mcmc.run(y=y)
    kept = kernel.samples_so_far()
    assert kept.shape[0] == kernel._t - 3 and kept.shape[0] > 0, (kept.shape, kernel._t)
    assert kept.shape[1:] == (4,) and torch.isfinite(kept).all()
    assert not torch.equal(kept[0], kept[-1])  # the chain moved: these are its states, not a copy of one
