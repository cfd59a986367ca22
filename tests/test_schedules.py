
import pytest
import torch

from ppl_diffusion.inference.smc.mcgdiff_grid import mcgdiff_grid
from ppl_diffusion.schedules import EDMSchedule, VESchedule, VPSchedule, time_grid


def test_vp_linear_matches_discrete_alphas_cumprod():
    s = VPSchedule.linear()
    ac = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)
    k = torch.tensor([0, 10, 500, 999])
    t = s.timestep_to_t(k)
    assert torch.allclose(s.alpha_bar(t), ac[k], rtol=1e-12)
    assert torch.allclose(s.model_timestep(t), k.double())
    assert float(s.alpha(torch.tensor(0.0))) == 1.0 and float(s.sigma(torch.tensor(0.0))) == 0.0


def test_gmm_benchmark_schedules():
    s = VPSchedule.gmm_benchmark("mcgdiff")
    betas = torch.linspace(0.02, 1e-4, 999, dtype=torch.float64)
    ac = torch.cumprod(torch.cat([torch.ones(1, dtype=torch.float64), 1 - betas]), 0)
    t = s.timestep_to_t(torch.arange(1000))
    assert torch.allclose(s.alpha_bar(t), ac, rtol=1e-12)
    inc = VPSchedule.gmm_benchmark("increasing")
    ac2 = torch.cumprod(torch.linspace(0.9999, 0.98, 1000, dtype=torch.float64), 0)
    assert torch.allclose(inc.alpha_bar(inc.timestep_to_t(torch.arange(1000))), ac2, rtol=1e-12)
    with pytest.raises(ValueError, match="schedule 'nope'"):
        VPSchedule.gmm_benchmark("nope")


@pytest.mark.parametrize("sched", [VPSchedule.linear(), VPSchedule.cosine(), VESchedule(0.01, 50.0), EDMSchedule()])
def test_rho_inverse(sched):
    t = torch.linspace(0.01, 1.0, 37, dtype=torch.float64)
    rho = sched.rho(t)
    back = sched.t_of_rho(rho)
    assert torch.allclose(sched.rho(back), rho, rtol=1e-6)
    assert torch.all(rho[1:] > rho[:-1])  # noise level increases with t


def test_vp_is_variance_preserving():
    s = VPSchedule.cosine()
    t = torch.rand(50, dtype=torch.float64)
    assert torch.allclose(s.alpha(t) ** 2 + s.sigma(t) ** 2, torch.ones(50, dtype=torch.float64))


def test_pf_ode_coefficients_vp():
    # VP: f = -beta/2, g^2 = beta where beta = -d log alpha_bar / dt
    s = VPSchedule.linear()
    t = torch.tensor([0.3, 0.7], dtype=torch.float64)
    f, g2 = s.pf_ode_coefficients(t)
    assert torch.allclose(g2, -2 * f, rtol=1e-6)


def test_time_grids():
    s = VPSchedule.linear()
    for kind in ["uniform", "quadratic", "edm", "alpha"]:
        g = time_grid(s, 20, kind)
        assert g.shape == (21,) and float(g[0]) == 1.0 and float(g[-1]) == 0.0
        assert torch.all(g[1:] < g[:-1])
    q = time_grid(s, 10, "quadratic")
    assert torch.allclose(q, torch.linspace(1, 0, 11, dtype=torch.float64) ** 2)
    with pytest.raises(ValueError, match=r"n_steps\b.*\b0\b"):
        time_grid(s, 0)
    with pytest.raises(ValueError, match="grid kind 'bogus'"):
        time_grid(s, 10, "bogus")
    # "alpha": uniform in alpha(t) down to alpha = 1e-2, then one step to t = 1
    a = s.alpha(time_grid(s, 20, "alpha"))
    assert float(a[1]) == pytest.approx(1e-2) and float(a[0]) < 1e-2
    assert torch.allclose(torch.diff(a[1:]), torch.full((19,), (1.0 - 1e-2) / 19, dtype=torch.float64))
    with pytest.raises(ValueError, match="alpha"):
        time_grid(VESchedule(), 10, "alpha")


def test_mcgdiff_grid_contains_matching_times():
    s = VPSchedule.gmm_benchmark()
    sv = torch.tensor([0.9, 0.5, 0.1], dtype=torch.float64)
    g = mcgdiff_grid(s, 100, sv, 0.2)
    taus = s.t_of_rho(0.2 / sv)
    for tau in taus:
        assert torch.min((g - tau).abs()) < 1e-12
    assert torch.allclose(s.rho(taus), 0.2 / sv, rtol=1e-8)
    assert g.numel() == 101 + 3
    assert torch.equal(mcgdiff_grid(s, 100, sv, 0.0), time_grid(s, 100, "alpha"))
    assert torch.equal(mcgdiff_grid(s, 100, sv, 0.0, kind="uniform"), time_grid(s, 100))
    with pytest.raises(ValueError, match=r"noise_std.*-1\.0"):
        mcgdiff_grid(s, 10, sv, -1.0)
