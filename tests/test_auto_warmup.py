"""``warmup="auto"``: the paired window comparison on synthetic chain records (calibrated when the
chains are stationary, decisive when a share of them drifts), a kernel whose chains start in one of
two symmetric modes (the exact mode weight is 1/2 by symmetry; a fixed short warm-up misses it, the
automatic one runs until it is reached), the cap's warning and PnP-DM's default."""
import math

import pytest
import torch

from ppl_diffusion.inference.kernels import AutoWarmup, DiffusionKernel, PnPDM, WarmupWarning
from ppl_diffusion.inference.kernels.auto_warmup import resolve_warmup, window_drift
from ppl_diffusion.inference.solver import OptionError
from ppl_diffusion.models.gmm import GaussianMixture, GMMProblem
from ppl_diffusion.schedules import VPSchedule

F64 = torch.float64


def _two_state_records(C, T1, T2, start_plus, switch, seed):
    """Feature records ``(T, C, 2)`` of ``C`` two-state Markov chains (symmetric switching ``switch``
    per record) in the points ``(+-3, 0)`` plus unit noise, the first window then the second; each chain
    starts in ``+`` with probability ``start_plus`` (1/2 is the stationary law)."""
    g = torch.Generator().manual_seed(seed)
    s = (torch.rand(C, generator=g) < start_plus).double() * 2 - 1
    out = []
    for _ in range(T1 + T2):
        flip = torch.rand(C, generator=g) < switch
        s = torch.where(flip, -s, s)
        out.append(torch.stack([3 * s, torch.zeros(C, dtype=F64)], -1) + torch.randn(C, 2, generator=g, dtype=F64))
    f = torch.stack(out)
    return f[:T1], f[T1:]


def test_window_drift_is_calibrated_on_stationary_chains_and_sees_a_drifting_share():
    """Stationary chains (half in each state from the start): the paired test rejects at 5 % on about
    5 % of 200 replications (at most 12 %: the binomial 99.9 % point is 9.5 % and the two regions' tests
    are one test here, their shifts being opposite). Chains started 95 / 5 that relax towards 1/2 (one
    switch per 100 records; the expected shift between the windows is -0.18, about 4 standard errors)
    are flagged every time."""
    rejects = 0
    for seed in range(200):
        f1, f2 = _two_state_records(100, 25, 50, 0.5, 0.01, seed)
        rejects += window_drift(f1, f2, regions=2, generator=torch.Generator().manual_seed(seed))["p"] < 0.05
    assert rejects / 200 < 0.12
    for seed in range(20):
        f1, f2 = _two_state_records(100, 25, 50, 0.95, 0.01, seed)
        out = window_drift(f1, f2, regions=2, generator=torch.Generator().manual_seed(seed))
        assert out["p_region"] < 0.01 and abs(out["shift"]) > 0.05


def test_window_drift_reads_the_log_likelihood_and_each_measurement():
    """A log-likelihood that rises between the windows is flagged with the regions still; a drift in
    one measurement of a plate of two (chain i of measurement b at i * 2 + b) is found."""
    f1, f2 = _two_state_records(200, 25, 50, 0.5, 0.02, 3)
    g = torch.Generator().manual_seed(0)
    ll1, ll2 = torch.randn(25, 200, generator=g, dtype=F64), torch.randn(50, 200, generator=g, dtype=F64) + 0.5
    out = window_drift(f1, f2, 1, ll1, ll2, regions=2)
    assert out["p_loglik"] < 1e-6 and out["loglik_shift"] > 0.3
    assert window_drift(f1, f2, 1, ll1, ll1[:25].repeat(2, 1), regions=2)["p_loglik"] > 1e-3
    a1, a2 = _two_state_records(100, 25, 50, 0.5, 0.02, 4)
    b1, b2 = _two_state_records(100, 25, 50, 0.9, 0.02, 5)
    plate1 = torch.stack([a1, b1], 2).reshape(25, 200, 2)
    plate2 = torch.stack([a2, b2], 2).reshape(50, 200, 2)
    assert window_drift(plate1, plate2, 2, regions=2)["p_region"] < 0.01
    assert window_drift(a1, a2, 1, regions=2)["p_region"] > 0.01


def _symmetric_problem():
    """Prior: equal-weight components at (+-3, 0), variance 0.25; ``y`` observes the second coordinate,
    so the posterior keeps weights 1/2 each (by symmetry) and the x2 posterior N(0.15, 0.125)."""
    prior = GaussianMixture(torch.tensor([0.5, 0.5], dtype=F64), torch.tensor([[-3.0, 0.0], [3.0, 0.0]], dtype=F64),
                            torch.tensor([0.25, 0.25]))
    A = torch.tensor([[0.0, 1.0]], dtype=F64)
    y = torch.tensor([0.3], dtype=F64)
    pb = GMMProblem(prior, A, y, 0.5, torch.zeros(2), prior.posterior(A, y, 0.5), 0)
    assert abs(float(pb.posterior.weights[1]) - 0.5) < 1e-12
    return pb


class _TwoModeKernel(DiffusionKernel):
    """A slow mode switcher for :func:`_symmetric_problem`'s posterior: with probability ``eps`` the
    first coordinate is reflected (a measure-preserving involution of the symmetric posterior), then an
    AR(1) step of x1 within its mode (centre +-3, variance 0.25) and of x2 towards its N(0.15, 0.125)."""

    name = "two-mode toy"

    def __init__(self, model, eps, **kw):
        self.eps = eps
        super().__init__(model, **kw)

    def step(self, x, k, generator=None):
        n = x.shape[0]
        flip = torch.rand(n, generator=generator, dtype=x.dtype) < self.eps
        x1 = torch.where(flip, -x[:, 0], x[:, 0])
        m, a = 3.0 * torch.sign(x1), 0.8
        noise = torch.randn(n, 2, generator=generator, dtype=x.dtype) * math.sqrt(1 - a * a)
        x1 = m + a * (x1 - m) + 0.5 * noise[:, 0]
        x2 = 0.15 + a * (x[:, 1] - 0.15) + math.sqrt(0.125) * noise[:, 1]
        return torch.stack([x1, x2], -1)


def test_auto_warmup_runs_until_the_chains_reach_the_mode_weight_a_fixed_one_misses():
    """200 chains all started in the left mode, one switch per 500 iterations on average: after a
    fixed 100 iterations the kept draws put ~0.2 in the right mode (exact 1/2); ``warmup="auto"`` keeps
    doubling while the chains drain out of the left mode and its draws are within 0.08 of 1/2 (3.5
    standard errors of 200 nearly independent chains). Chains started in the stationary law stop at
    the first comparison (200)."""
    pb = _symmetric_problem()
    model, y = pb.model(VPSchedule.gmm_benchmark()), pb.y
    left = torch.tensor([-3.0, 0.15], dtype=F64).expand(200, 2).clone()
    kern = _TwoModeKernel(model, 0.002)
    fixed = kern.draw(800, y=y, chains=200, warmup=100, thin=10, init=left, generator=torch.Generator().manual_seed(1))
    assert float((fixed.samples[..., 0] > 0).double().mean()) < 0.3
    auto = kern.draw(800, y=y, chains=200, warmup="auto", thin=10, init=left,
                     generator=torch.Generator().manual_seed(1))
    assert auto.extra["warmup"] >= 800 and auto.extra["result"].warmup == auto.extra["warmup"]
    assert abs(float((auto.samples[..., 0] > 0).double().mean()) - 0.5) < 0.08
    checks = auto.extra["warmup_checks"]
    assert checks[0]["p"] < 0.05 and checks[-1]["p"] >= 0.05 and checks[-1]["to"] == auto.extra["warmup"]
    assert auto.nfe_per_sample == 0.0 and auto.samples.shape[:2] == (200, 4)
    mixed = torch.tensor([[-3.0, 0.15], [3.0, 0.15]], dtype=F64).repeat(100, 1)
    ok = kern.draw(800, y=y, chains=200, warmup="auto", thin=10, init=mixed, generator=torch.Generator().manual_seed(2))
    assert ok.extra["warmup"] <= 400


def test_auto_warmup_warns_at_its_cap_with_the_region_and_the_options():
    """Chains that drain far slower than the cap allows: the warm-up stops at ``max_warmup`` with a
    WarmupWarning naming the drift and the way forward, and the draws are still returned."""
    pb = _symmetric_problem()
    left = torch.tensor([-3.0, 0.15], dtype=F64).expand(100, 2).clone()
    kern = _TwoModeKernel(pb.model(VPSchedule.gmm_benchmark()), 0.004)
    with pytest.warns(WarmupWarning, match=r"max_warmup=200 .* raise max_warmup") as rec:
        d = kern.draw(200, y=pb.y, chains=100, warmup=AutoWarmup(first=50, max_warmup=200), init=left,
                      generator=torch.Generator().manual_seed(0))
    assert rec[0].filename == __file__  # reported at the user's call, not inside the library
    assert d.extra["warmup"] == 200 and len(d.extra["warmup_checks"]) == 2


def test_auto_warmup_refuses_too_few_chains_and_bad_settings():
    with pytest.raises(OptionError, match="needs >= 16 chains per measurement, got 4"):
        resolve_warmup("auto", "PnP-DM", chains=4)
    with pytest.raises(OptionError, match="warmup must be an int >= 0 or 'auto'"):
        resolve_warmup("long", "PnP-DM")
    with pytest.raises(OptionError, match="at least twice first"):
        AutoWarmup(first=100, max_warmup=150)
    pb = _symmetric_problem()
    with pytest.raises(OptionError, match="pyro.infer.MCMC needs an int warmup_steps"):
        PnPDM(pb.model(VPSchedule.gmm_benchmark())).setup("auto", y=pb.y)
    w = resolve_warmup("auto", "PnP-DM", minimum=250)  # PnP-DM's annealing comes first
    assert (w.first, w.checkpoints()[:2]) == (250, [250, 500])


def test_pnpdm_draw_defaults_to_the_automatic_warmup_with_replicas_and_enough_chains():
    """Replicas and >= 16 chains: the warm-up is chosen by the chains (first comparison at 200);
    fewer chains or no replicas keep the fixed defaults (200 / the annealing)."""
    pb = _symmetric_problem()
    model = pb.model(VPSchedule.gmm_benchmark())
    kern = PnPDM(model, rho0=0.5, rho_min=0.5, replicas=3, rho_max=2.0, num_grid=10)
    d = kern.draw(64, y=pb.y, generator=torch.Generator().manual_seed(0))  # 16 chains
    assert d.extra["warmup_checks"] and d.extra["warmup"] >= 200
    assert d.extra["warmup_checks"][0]["to"] == 200
    few = kern.draw(32, y=pb.y, generator=torch.Generator().manual_seed(0))  # 8 chains
    assert few.extra["warmup"] == 200 and not few.extra["warmup_checks"]
    plain = PnPDM(model, rho0=0.5, rho_min=0.5, num_grid=10).draw(64, y=pb.y)
    assert plain.extra["warmup"] == 20 and not plain.extra["warmup_checks"]
