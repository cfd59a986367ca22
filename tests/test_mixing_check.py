"""Kernel runs report mode-sensitive between-chain diagnostics and warn when their chains have not mixed
(ppl_diffusion/inference/kernels/mode_check.py: ``chain_convergence``, ``mixing_check``, ``MixingWarning``)."""
import warnings

import pyro
import pytest
import torch

from ppl_diffusion.bench.exactness import exactness_problem
from ppl_diffusion.bench.mixing_check import two_mode_pnpdm
from ppl_diffusion.diagnostics import rhat
from ppl_diffusion.inference.kernels import PnPDM
from ppl_diffusion.inference.kernels import MixingWarning
from ppl_diffusion.inference.kernels.mode_check import chain_convergence
from ppl_diffusion.models.measurement import GaussianMeasurement
from ppl_diffusion.models.operators import Matrix
from ppl_diffusion.schedules import VPSchedule

from .test_kernels import gaussian_setup

F64 = torch.float64


_two_modes = two_mode_pnpdm  # the planted non-mixing run (ppl_diffusion/bench/mixing_check.py)


def _mixing_warnings(record):
    return [w for w in record if issubclass(w.category, MixingWarning)]


def test_flags_are_calibrated_on_exact_draws():
    """Exact posterior draws laid out as chains (4 x 10, 8 x 20, 16 x 20; 20 seeds each) have mixed
    perfectly. Split R-hat alone (> 1.05) flags 13 of these 60 (a rare k-means region's indicator on short
    chains); with the permutation test (p < 0.01 for each of the two R-hats, so at most 2 % false alarms)
    2 of 60. Bounds: >= 8 for R-hat alone, <= 4 with the test (binomial(60, 0.02) >= 5: p = 0.007)."""
    pb = exactness_problem("uneven", 8, 2, seed=1)

    def ll(z):
        return -0.5 * ((z @ pb.A.T - pb.y) ** 2).sum(-1)

    rhat_alone = flagged = 0
    for C, S in [(4, 10), (8, 20), (16, 20)]:
        for seed in range(20):
            x = pb.posterior.sample(C * S, generator=torch.Generator().manual_seed(seed)).reshape(C, S, -1)
            d = chain_convergence(x, ll)
            rhat_alone += d["max_rhat"] > 1.05
            flagged += not d["ok"]
    assert rhat_alone >= 8, rhat_alone
    assert flagged <= 4, flagged


def test_run_chains_warns_when_chains_hold_their_starting_modes():
    """The planted mode-weight error of a real run (half the chains in each mode, pooled minor weight 0.5
    against the exact 0.1): run_chains and draw warn with MixingWarning naming the region, and keep the
    statistics in ``.convergence`` / ``extra["convergence"]``."""
    pb, kern, split = _two_modes()
    with pytest.warns(MixingWarning, match=r"region \d \(pooled weight .*indicator .* \(permutation p = 0\.00"):
        r = kern.run_chains(y=pb.y, num_chains=8, num_samples=100, warmup_steps=5, init=split,
                            generator=torch.Generator().manual_seed(0))
    assert abs(float((r.samples[..., 0] > 0).double().mean()) - 0.5) < 0.05  # the planted error
    c = r.convergence
    assert not c["ok"] and float(c["rhat_regions"].max()) > 1.5 and c["p_regions"] < 0.01
    assert c["occupancy"].shape == (8, 4)
    with pytest.warns(MixingWarning, match="PnP-DM: 8 chains x 25 draws"):
        d = kern.draw(200, y=pb.y, chains=8, warmup=5, init=split, generator=torch.Generator().manual_seed(1))
    assert not d.extra["convergence"]["ok"]


def test_short_chains_are_reported_not_warned():
    """Below 20 draws per chain the flags are computed but no warning is raised (a chain is not expected to
    visit every mode in so few draws; ``draw``'s default layout of many 2-draw chains relies on its
    warm-up check); below 4 draws there is no split R-hat at all."""
    pb, kern, split = _two_modes()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        r = kern.run_chains(y=pb.y, num_chains=8, num_samples=10, warmup_steps=5, init=split,
                            generator=torch.Generator().manual_seed(0))
        d4 = kern.draw(32, y=pb.y, generator=torch.Generator().manual_seed(0))  # PnP-DM's default: 4 per chain
        d2 = kern.draw(16, y=pb.y, chains=8, generator=torch.Generator().manual_seed(0))  # 2 per chain
    assert not _mixing_warnings(record)
    assert not r.convergence["ok"]
    assert d4.extra["convergence"]["rhat_regions"].shape == (4,)
    assert d2.extra["convergence"] is None


def test_well_mixed_chains_do_not_warn_and_poorly_mixed_ones_agree_with_coordinate_rhat():
    """PnP-DM on a Gaussian posterior (4-d, 8 chains x 100 draws after 100 iterations): keeping every
    5th iteration the chains mix (coordinate R-hat <= 1.03 in the measured seeds) and nothing is flagged;
    keeping every iteration, the same kernel's draws are autocorrelated over the run (coordinate R-hat
    1.04-1.11, bulk ESS 58-208 of 800) and the region statistic flags it."""
    model, *_, y, _ = gaussian_setup()
    kern = PnPDM(model)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        r = kern.run_chains(y=y, num_chains=8, num_samples=100, warmup_steps=100, thin=5,
                            generator=torch.Generator().manual_seed(0))
    assert not _mixing_warnings(record) and r.convergence["ok"], r.convergence["flags"]
    assert float(rhat(r.samples).max()) < 1.05
    with pytest.warns(MixingWarning):
        r1 = kern.run_chains(y=y, num_chains=8, num_samples=100, warmup_steps=100, thin=1,
                             generator=torch.Generator().manual_seed(0))
    assert float(rhat(r1.samples).max()) > 1.05


def test_plate_reports_each_measurement_and_names_the_one_that_did_not_mix():
    """A plate of two measurements as one batch: measurement 0's chains start split between the modes,
    measurement 1's all in the major one (every 20th iteration kept: within a mode this small-coupling
    kernel needs it, at thin 10 measurement 1 is flagged too). ``.convergence`` is one report per
    measurement; the warning names measurement 0 only."""
    pb, _, split = _two_modes()
    prior = pb.prior.diffusion_prior(VPSchedule.gmm_benchmark())
    op = Matrix(pb.A)

    def model(y=None):
        with pyro.plate("measurements", 2):
            x = pyro.sample("x", prior)
            pyro.sample("y", GaussianMeasurement(op, x, 0.5), obs=y)

    kern = PnPDM(model, rho0=0.1, rho_min=0.1, decay=1.0, num_grid=10)
    init = torch.stack([split, torch.tensor([[-3.0, 0.0]] * 8, dtype=F64)], 1)  # (chain, measurement, d)
    Y = pb.y.expand(2, 1)
    with pytest.warns(MixingWarning, match=r"\(measurement 0 of 2\)"):
        r = kern.run_chains(y=Y, num_chains=8, num_samples=40, warmup_steps=50, thin=20, init=init,
                            generator=torch.Generator().manual_seed(0))
    assert isinstance(r.convergence, list) and len(r.convergence) == 2
    assert not r.convergence[0]["ok"] and r.convergence[1]["ok"]


def test_planted_chains_have_the_stated_laws():
    """The bench's chains (ppl_diffusion/bench/mixing_check.py): 'exact' draws put the posterior's weights on
    its components (20,000 draws: s.e. <= 0.004, bound 0.02); 'stuck' chains keep one component each;
    'one in the minor mode' puts its last chain in the second-heaviest component only."""
    from ppl_diffusion.bench.mixing_check import planted_chains

    post = exactness_problem("uneven", 8, 2, seed=1).posterior
    g = torch.Generator().manual_seed(0)
    x = planted_chains(post, 100, 200, "exact", g)
    assert float((post.responsibilities(x.reshape(-1, 8)).mean(0) - post.weights).abs().max()) < 0.02
    top = post.responsibilities(planted_chains(post, 10, 50, "stuck", g)).argmax(-1)
    assert bool((top == top[:, :1]).all())
    minor = int(post.weights.argsort(descending=True)[1])
    last = post.responsibilities(planted_chains(post, 4, 50, "one in the minor mode", g)[-1]).argmax(-1)
    assert bool((last == minor).all())
