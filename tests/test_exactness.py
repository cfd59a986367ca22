"""Issue 17: the stricter yardstick (exact spread), evidence-weighted SMC draws, mode-sensitive kernel
diagnostics. All checks run on closed forms or planted errors (no long sampler runs)."""
import math

import pytest
import torch

from ppl_diffusion.bench.exactness import (FAMILIES, Reference, component_weights, exact_spread, exactness_problem,
                                           score, verdict)
from ppl_diffusion.inference.kernels.mode_check import chain_convergence, split_rhat_basic
from ppl_diffusion.inference.smc.evidence import (RELIABLE_BIAS, draw_from_runs, good_pareto_k, pareto_k,
                                                  pooled_resample, region_bias, reliability, run_log_weights)
from ppl_diffusion.inference.smc.result import SMCResult
from ppl_diffusion.models.gmm import GaussianMixture


def test_families_have_valid_posteriors_and_soft_weights_are_unbiased():
    for fam in FAMILIES:
        pb = exactness_problem(fam, 8, 2, seed=3)
        post = pb.posterior
        assert torch.isclose(post.weights.sum(), torch.tensor(1.0, dtype=torch.float64))
        # each posterior covariance is symmetric positive definite
        assert bool((torch.linalg.eigvalsh(post.full_covs()) > 0).all())
        x = post.sample(20000, generator=torch.Generator().manual_seed(0))
        w = component_weights(x, post)
        # E[responsibilities] = weights: Monte Carlo error of 20,000 draws (sd <= 0.0036)
        assert float((w - post.weights).abs().max()) < 0.015, fam
    assert exactness_problem("spectrum", 8, 4, seed=1).A.shape == (4, 8)
    s = torch.linalg.svdvals(exactness_problem("spectrum", 8, 4, seed=1).A)
    assert float(s.max() / s.min()) > 2.0  # a spread of singular values


def test_exact_spread_verdicts():
    pb = exactness_problem("uneven", 8, 1, seed=0)
    ref = Reference.build(pb, n_ref=4000, n_projections=64)
    spread = exact_spread(ref, 300, sets=20, seed=0)
    assert spread.bounds["cov"][0] < 0.9 < spread.bounds["cov"][1] + 0.01
    # a further exact set is inside on all three in most seeds; 10 sets: at least 6 (binomial, p ~ 0.86)
    g = torch.Generator().manual_seed(11)
    inside = sum(verdict(score(pb.posterior.sample(300, generator=g), ref), spread)["all"] for _ in range(10))
    assert inside >= 6
    # planted errors: draws 30 % too narrow (coverage), all mass in the top component (TV, SW)
    x = pb.posterior.sample(300, generator=g)
    narrow = pb.posterior.mean() + 0.7 * (x - pb.posterior.mean())
    assert not verdict(score(narrow, ref), spread)["cov"]
    top = int(pb.posterior.weights.argmax())
    one = GaussianMixture(torch.ones(1), pb.posterior.means[top:top + 1], pb.posterior.full_covs()[top:top + 1])
    v = verdict(score(one.sample(300, generator=g), ref), spread)
    assert float(1 - pb.posterior.weights.max()) > 0.1 and not v["tv"]


def _toy_result(R, N, seed=0):
    """Runs of two kinds: with prob 1/2 all particles at 0 with Z = 1, else at 1 with Z = 3. The
    target puts 3/4 on 1; one draw per run puts 1/2."""
    g = torch.Generator().manual_seed(seed)
    kind = torch.randint(0, 2, (R,), generator=g)
    particles = kind[:, None, None].expand(R, N, 1).to(torch.float64).clone()
    logw = torch.randn(R, N, generator=g, dtype=torch.float64)  # within-run weights: irrelevant here
    log_z = torch.where(kind == 1, math.log(3.0), 0.0).to(torch.float64)
    return SMCResult(particles, logw, log_z, torch.zeros(R, 1), torch.zeros(R, 1, dtype=torch.bool))


def test_pooled_draws_remove_the_independent_run_bias():
    res = _toy_result(400, 8)
    g = torch.Generator().manual_seed(1)
    indep = res.resample(4000, g)
    pooled = pooled_resample(res, 4000, g)
    assert abs(float(indep.mean()) - 0.5) < 0.06          # the biased law (runs are 1/2 of each kind)
    assert abs(float(pooled.mean()) - 0.75) < 0.03        # the target: runs weighted by Z
    rel = reliability(res)
    # Z in {1, 3} with prob 1/2: cv^2 = Var Z / (E Z)^2 = 1/4 -> bias bound 0.25 >= the true bias 0.25
    assert abs(float(rel["cv2"][0]) - 0.25) < 0.05
    # the region estimate measures the bias itself: 0.25, jackknife se ~ sqrt(3/16 / 400) ~ 0.02
    assert abs(float(rel["bias_estimate"][0]) - 0.25) < 0.06 and 0.005 < float(rel["bias_se"][0]) < 0.05
    assert bool(rel["unreliable_independent"][0]) and not bool(rel["unreliable_pooled"][0])
    assert abs(float(rel["log_evidence"][0]) - math.log(2.0)) < 0.1
    # a plate of B = 2 measurements: pooling stays within each measurement (runs i * B + b)
    res.extra["measurements"] = 2
    both = pooled_resample(res, 1000, g).reshape(1000, 2)
    assert both.shape == (1000, 2) and reliability(res)["runs"].tolist() == [200.0, 200.0]
    with pytest.raises(ValueError, match="interleave"):  # a plate's runs cannot be sliced as one set
        res.select_runs(torch.arange(10))


def _spread_toy(R, N, seed, shift):
    """Runs of two kinds (all particles near 0 or near 4, each kind with prob 1/2), within-run weights
    random, log Z_hat = N(0, 1) + shift * kind: with shift = 0 the evidence is unrelated to the mode
    (no bias, but a large Z_hat spread); the bias of one draw per run is then
    1/2 - E[Z 1(kind)] / E[Z] = 1/2 - e^shift / (1 + e^shift)."""
    g = torch.Generator().manual_seed(seed)
    kind = torch.randint(0, 2, (R,), generator=g)
    x = kind[:, None, None].double() * 4 + 0.3 * torch.randn(R, N, 1, generator=g, dtype=torch.float64)
    logw = 0.5 * torch.randn(R, N, generator=g, dtype=torch.float64)
    log_z = torch.randn(R, generator=g, dtype=torch.float64) + shift * kind
    return SMCResult(x, logw, log_z, torch.zeros(R, 1), torch.zeros(R, 1, dtype=torch.bool))


def test_truncated_pool_caps_heavy_runs_and_stays_consistent():
    # 99 runs with Z_hat = 1 and one with 1000: the pool gives that run 1000 / 1099 = 0.91 of the draws;
    # capped at sqrt(R) x mean = 10 x 10.99 = 109.9, it gets 109.9 / (109.9 + 99) = 0.526
    res = _spread_toy(100, 16, 0, 0.0)
    res.log_evidence[:] = 0.0
    res.log_evidence[7] = math.log(1000.0)
    assert abs(float(torch.exp(run_log_weights(res)[7])) - 1000 / 1099) < 1e-12
    lt = torch.exp(run_log_weights(res, smoothing="truncated"))
    assert abs(float(lt.sum()) - 1.0) < 1e-12 and abs(float(lt[7]) - 109.9 / 208.9) < 1e-12
    # a run with zero evidence gets no weight either way
    res.log_evidence[3] = -math.inf
    assert float(torch.exp(run_log_weights(res, smoothing="truncated"))[3]) == 0.0
    # consistency as R grows: runs of two kinds, log Z_hat = N(0, 1) + kind; the target puts
    # e / (1 + e) = 0.731 on kind 1 (one draw per run: 1/2). Truncation at 1 / sqrt(R) with R = 4000
    # leaves a bias of E[Z 1(Z > sqrt(R) mean Z)] / E[Z] (lognormal tail above 63x the mean: < 1e-4)
    big = _spread_toy(4000, 4, 1, 1.0)
    x = pooled_resample(big, 20000, torch.Generator().manual_seed(0), smoothing="truncated")
    assert abs(float((x > 2).double().mean()) - math.e / (1 + math.e)) < 0.02
    x = big.resample(4000, torch.Generator().manual_seed(0))
    assert abs(float((x > 2).double().mean()) - 0.5) < 0.03


def _gpd_log_weights(R, xi, seed):
    """log of R draws of a generalised Pareto with shape ``xi`` (scale 1, location 1): its tail index is xi."""
    u = torch.rand(R, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return torch.log1p(((1 - u) ** (-xi) - 1) / xi)


def test_pareto_k_reads_the_tail_shape_of_the_run_weights():
    assert abs(good_pareto_k(100) - 0.5) < 1e-12 and good_pareto_k(10**6) == 0.7  # min(1 - 1/log10 R, 0.7)
    for xi in (0.2, 0.5, 0.9):
        res = _spread_toy(4000, 2, 0, 0.0)
        res.log_evidence[:] = _gpd_log_weights(4000, xi, seed=int(10 * xi))
        # tail fit on the largest 3 sqrt(4000) = 190 weights: k_hat's sd is about 0.1 there
        assert abs(float(pareto_k(res)[0]) - xi) < 0.2, xi
    # smoothing keeps a proper pool and changes only the tail (the largest 190 weights): the body's
    # weights keep their ratios, the tail's do not
    lw, ls = run_log_weights(res), run_log_weights(res, smoothing="psis")
    assert abs(float(torch.exp(ls).sum()) - 1.0) < 1e-12
    order = torch.argsort(lw)
    shift = (ls - lw)[order]
    assert float((shift[:3000] - shift[0]).abs().max()) < 1e-9 and float((shift[-150:] - shift[0]).abs().max()) > 1e-3
    # too few runs for the tail fit (ArviZ needs more than 4 tail runs): inf, i.e. never "good"
    assert math.isinf(float(pareto_k(_spread_toy(20, 2, 0, 0.0))[0]))
    with pytest.raises(ValueError, match="smoothing"):
        run_log_weights(res, smoothing="clip")


def test_ess_half_rule_pools_where_the_runs_ess_is_at_least_half_the_runs():
    from ppl_diffusion.bench.exactness import _ess_half_pools

    # the rule's edge: four runs with Z_hat = (1, 1, 1, a) have ESS (3 + a)^2 / (3 + a^2) >= 2 iff a <= 3 + sqrt(12)
    res = _toy_result(4, 2)
    edge = 3 + math.sqrt(12.0)
    for a, pools in ((edge - 0.05, True), (edge + 0.05, False)):
        res.log_evidence[:] = 0.0
        res.log_evidence[3] = math.log(a)
        assert _ess_half_pools(res) is pools, a
    assert _ess_half_pools(_toy_result(1, 4)) is False  # one run: no between-run statistic


def test_pareto_k_flags_the_pool_of_a_heavy_tailed_measurement_only():
    """A plate of two measurements, runs of two kinds (particles at 0 or 1, half the runs each).
    Measurement 0: Z_hat in {1, 3} by kind, bounded weights (k_hat <= good): the pool's law puts 3/4 on
    1 (one draw per run: 1/2) and is trusted. Measurement 1: kind-1 runs have Pareto(1.2) evidences,
    kind-0 runs 1e-3: a heavy tail (k_hat 0.89 from 200 heavy runs, > good), the pool rests on a few runs, and
    reliability() says so even though its runs ESS clears the old threshold of 20."""
    R, B = 800, 2
    res = _toy_result(R, 4)
    res.extra["measurements"] = B
    kind = res.particles[:, 0, 0]
    res.log_evidence[1::2] = torch.where(kind[1::2] == 1, _gpd_log_weights(R, 1.2, seed=3)[1::2], math.log(1e-3))
    k = pareto_k(res)
    assert float(k[0]) <= good_pareto_k(R // B) < 0.65 < 0.8 < float(k[1])  # good_k(400) = 0.616
    rel = reliability(res)
    assert rel["unreliable_pooled"].tolist() == [False, True]
    assert float(rel["runs_ess"][1]) > 20.0  # 20.9: the runs-ESS rule alone would not flag it, k_hat does
    assert torch.allclose(rel["pareto_k"], k) and abs(float(rel["good_k"][0]) - good_pareto_k(400)) < 1e-12
    g = torch.Generator().manual_seed(0)
    x = draw_from_runs(res, 4000, g, True).reshape(4000, B)
    assert abs(float(x[:, 0].mean()) - 0.75) < 0.04   # measurement 0: the pool's target
    assert float(x[:, 1].mean()) > 0.9                 # measurement 1: all on the few heavy kind-1 runs
    one = draw_from_runs(res, 4000, g).reshape(4000, B)
    assert abs(float(one[:, 1].mean()) - 0.5) < 0.08   # one draw per run: half the runs of each kind
    with pytest.raises(ValueError, match="pooled must be"):
        draw_from_runs(res, 4, g, "sometimes")


def test_region_bias_separates_a_biased_run_set_from_a_noisy_clean_one():
    """The Cauchy-Schwarz bound flags any spread of Z_hat; the region estimate only a real bias."""
    for seed in range(5):
        clean = reliability(_spread_toy(400, 16, seed, 0.0))
        assert float(clean["bias_bound"][0]) > 0.3  # the old bound-based flag would fire here
        assert not bool(clean["unreliable_independent"][0]), (seed, clean["bias_estimate"], clean["bias_se"])
        biased = _spread_toy(400, 16, seed, 1.0)  # true bias 1/2 - e/(1+e) = -0.231
        rb = region_bias(biased)
        assert abs(float(rb["bias_estimate"][0]) - 0.231) < 3 * float(rb["bias_se"][0]) + 0.01
        assert bool(reliability(biased)["unreliable_independent"][0])
    # one run: undefined, not flagged
    one = _spread_toy(1, 16, 0, 1.0)
    assert math.isnan(float(region_bias(one)["bias_estimate"][0]))
    assert not bool(reliability(one)["unreliable_independent"][0])
    # no run with a finite evidence: no bias estimate, and the pool is flagged
    dead = _spread_toy(10, 4, 0, 0.0)
    dead.log_evidence[:] = -math.inf
    rel = reliability(dead)
    assert math.isnan(float(rel["bias_estimate"][0])) and bool(rel["unreliable_pooled"][0])


def _planted_mode_loss():
    """(problem, model, sampler): MCGDiff forced to resample multinomially at every step with 16 particles on a
    d = 8 mixture whose minor mode it loses in most runs."""
    from ppl_diffusion.inference.smc import MCGDiff
    from ppl_diffusion.schedules import VPSchedule

    pb = exactness_problem("uneven", 8, 2, seed=1, mean_scale=4.0)
    model = pb.model(VPSchedule.gmm_benchmark())
    return pb, model, MCGDiff(model, particles=16, steps=50, resampling="multinomial", ess_threshold=1.0)


def test_reliability_flags_a_planted_mode_loss_of_a_real_smc_sampler():
    """MCGDiff forced to resample multinomially at every step (particle Gibbs's regime) with 16
    particles loses the minor mode in most runs: one draw per run reads it at about a third of its
    exact weight (benchmarks/results/smc_mode_bias.md). The region estimate flags it; the default
    (systematic when ESS < N/2) at the same cost is not flagged."""
    from ppl_diffusion.inference.smc import MCGDiff

    pb, model, forced = _planted_mode_loss()
    j = int(torch.sort(pb.posterior.weights, descending=True).indices[1])
    exact = float(pb.posterior.weights[j])
    res = forced.run(y=pb.y, runs=2000, generator=torch.Generator().manual_seed(0))
    # the law of one draw per run: mean over runs of sum_i W_i r_j(x_i) (r_j: posterior responsibility)
    post = pb.posterior
    logn, _ = post._component_terms(res.particles.reshape(-1, 8), 1.0, 0.0)
    resp = torch.softmax(logn + torch.log(post.weights), -1)[:, j].reshape(2000, 16)
    indep = float((res.weights * resp).sum(1).mean())
    assert exact - indep > RELIABLE_BIAS  # the plant: the minor mode is under-weighted by > 0.03
    rel = reliability(res)
    assert bool(rel["unreliable_independent"][0]), (rel["bias_estimate"], rel["bias_z"])
    assert float(rel["bias_estimate"][0]) > RELIABLE_BIAS
    default = MCGDiff(model, particles=16, steps=50)
    rel_default = reliability(default.run(y=pb.y, runs=2000, generator=torch.Generator().manual_seed(2)))
    assert not bool(rel_default["unreliable_independent"][0]), (rel_default["bias_estimate"], rel_default["bias_z"])


def _chains(weights, per_chain_component, S, seed):
    """Chains of exact draws from a 2-mode mixture; chain c draws only from component
    per_chain_component[c] (-1: from the whole mixture)."""
    g = torch.Generator().manual_seed(seed)
    mix = GaussianMixture(torch.tensor(weights, dtype=torch.float64), torch.tensor([[0.0, 0.0], [6.0, 0.0]]),
                          torch.tensor([1.0, 1.0]))
    out = []
    for comp in per_chain_component:
        if comp < 0:
            out.append(mix.sample(S, generator=g))
        else:
            out.append(mix.means[comp] + torch.randn(S, 2, generator=g, dtype=torch.float64))
    return torch.stack(out), mix


def test_mode_diagnostics_flag_a_planted_stuck_chain():
    ll = lambda x: -0.5 * ((x - torch.tensor([0.5, 0.0], dtype=x.dtype)) ** 2).sum(-1) / 4.0  # noqa: E731
    healthy, _ = _chains([0.8, 0.2], [-1] * 8, 200, 0)
    d = chain_convergence(healthy, ll, regions=2)
    assert d["ok"], d["flags"]
    assert d["rhat_loglik"] < 1.03
    # one chain of eight stuck in the minor mode: pooled minor weight 0.3 instead of 0.2
    stuck, _ = _chains([0.8, 0.2], [-1] * 7 + [1], 200, 1)
    d = chain_convergence(stuck, ll, regions=2)
    assert not d["ok"] and d["rhat_loglik"] > 1.05 and float(d["rhat_regions"].max()) > 1.05
    # coordinate-wise R-hat of the second coordinate (the same law in both modes) does not see it
    from ppl_diffusion.diagnostics import rhat

    assert float(rhat(stuck)[1]) < 1.05


def test_split_rhat_basic_on_indicators():
    v = torch.zeros(4, 10, 1)
    assert float(split_rhat_basic(v)[0]) == 1.0
    v[0] = 1.0
    assert math.isinf(float(split_rhat_basic(v)[0]))


def test_smc_draw_pooled_and_reliability_on_a_gmm():
    from ppl_diffusion.inference.smc import MCGDiff
    from ppl_diffusion.schedules import VPSchedule

    pb = exactness_problem("uneven", 8, 2, seed=1)
    sv = MCGDiff(pb.model(VPSchedule.gmm_benchmark()), particles=8, steps=10)
    d = sv.draw(16, y=pb.y, generator=torch.Generator().manual_seed(0), pooled=True)
    assert d.samples.shape == (1, 16, 8) and torch.isfinite(d.samples).all()
    t = sv.draw(16, y=pb.y, generator=torch.Generator().manual_seed(0), pooled="truncated")
    assert t.samples.shape == (1, 16, 8) and torch.isfinite(t.samples).all()
    # 16 runs: too few for the Pareto tail fit (k_hat inf), so the pool is flagged
    rel_t = t.extra["reliability"]
    assert math.isinf(float(rel_t["pareto_k"][0])) and bool(rel_t["unreliable_pooled"][0])
    with pytest.raises(ValueError, match="pooled must be"):
        sv.draw(4, y=pb.y, pooled="yes")
    rel = d.extra["reliability"]
    assert rel["runs"].tolist() == [16.0] and 1.0 <= float(rel["runs_ess"][0]) <= 16.0
    res = d.extra["result"]
    assert res.reliability()["cv2"].shape == (1,) and res.pooled_resample(5).shape == (5, 8)


def test_mode_diagnostics_flag_a_pnpdm_run_stuck_in_its_starting_modes():
    """A real kernel run with a planted mode-weight error: PnP-DM chains (no replicas, small coupling)
    cannot cross between two modes 6 apart; half the chains start in each, so the pooled minor-mode
    weight is ~0.5 where the exact posterior has 0.1. Coordinate R-hat of the observed coordinate
    and the log-likelihood (the observation does not tell the modes apart) stay near 1; the region
    statistic flags it."""
    from ppl_diffusion.inference.kernels.mode_check import MixingWarning

    from .test_mixing_check import _two_modes

    pb, kern, init = _two_modes()
    y = pb.y
    assert abs(float(pb.posterior.weights[1]) - 0.1) < 1e-9
    # 100 draws per chain: with 40 the log-likelihood's R-hat of this run scatters around 1.2 over seeds
    with pytest.warns(MixingWarning):  # run_chains checks this itself (tests/test_mixing_check.py)
        r = kern.run_chains(y=y, num_chains=8, num_samples=100, warmup_steps=5, init=init,
                            generator=torch.Generator().manual_seed(0))
    x = r.samples
    assert abs(float((x[..., 0] > 0).double().mean()) - 0.5) < 0.05  # the planted error: 0.5 instead of 0.1
    d = chain_convergence(x, kern.problem(y=y).log_likelihood, kernel=kern, regions=2)
    assert not d["ok"] and float(d["rhat_regions"].max()) > 1.5
    assert d["rhat_loglik"] < 1.2  # the log-likelihood alone does not see this one


def test_tail_steps_restore_variance_the_noiseless_last_step_drops():
    """A narrow Gaussian prior (variance 0.05) on the GMM benchmark schedule: the last DDPM step from
    sigma 0.14 to 0 returns E[x_0 | x_t1] and drops Var(x_0 | x_t1); 10 tail steps down to sigma 1e-3
    give back part of it (measured at 50 steps, 4,000 runs: unobserved coordinate 0.023 -> 0.032 of
    the exact 0.050; the rest is the plug-in variance deficit of the coarse DDPM steps, which more
    steps reduce: 0.042 at 400 steps)."""
    from ppl_diffusion.inference.smc import MCGDiff
    from ppl_diffusion.inference.smc.tail import refine_tail
    from ppl_diffusion.models.gmm import GMMProblem
    from ppl_diffusion.schedules import VPSchedule, time_grid

    sched = VPSchedule.gmm_benchmark()
    base = time_grid(sched, 50, "alpha")
    t = refine_tail(sched, base, 10)
    assert t.numel() == base.numel() + 10 and bool((t[1:] < t[:-1]).all()) and float(t[-1]) == 0.0
    assert abs(float(sched.sigma(t[-2])) - 1e-3) < 1e-5 and torch.equal(refine_tail(sched, base, 0), base)
    prior = GaussianMixture(torch.ones(1, dtype=torch.float64), torch.zeros(1, 2, dtype=torch.float64),
                            torch.tensor([0.05]))
    A, y = torch.tensor([[1.0, 0.0]], dtype=torch.float64), torch.tensor([0.1], dtype=torch.float64)
    pb = GMMProblem(prior, A, y, 0.3, torch.zeros(2), prior.posterior(A, y, 0.3), 0)
    var = {}
    for tail in (0, 10):
        sv = MCGDiff(pb.model(sched), particles=2, steps=50, tail_steps=tail, grid="alpha", reverse_variance="ddpm")
        r = sv.run(y=y, runs=2000, generator=torch.Generator().manual_seed(0))
        assert r.ess_history.shape[1] == 51 + tail  # 50 steps + the matching time + the tail
        var[tail] = float(r.resample(2000, torch.Generator().manual_seed(1))[:, 1].var())
    # sd of a variance estimate from 2,000 Gaussian draws: ~3 % of it
    assert var[0] < 0.027 and var[10] > 0.029 and var[10] < 0.05


def test_exactness_table_run_in_parts_merges_to_the_whole_run(tmp_path):
    """Problems 0-1 and 2-3 run separately (``--first-problem``) and joined give the summary and the
    problem rows of one run over problems 0-3 (the seeds fix everything but the seconds column)."""
    from ppl_diffusion.bench.exactness import main

    common = ["--d", "8", "--dys", "1", "--samples", "40", "--steps", "20", "--methods", "tds:particles=8"]
    main(common + ["--problems", "4", "--out", str(tmp_path / "whole.md")])
    main(common + ["--problems", "2", "--out", str(tmp_path / "a.md")])
    main(common + ["--problems", "2", "--first-problem", "2", "--out", str(tmp_path / "b.md")])
    main(["merge", str(tmp_path / "a.md"), str(tmp_path / "b.md"), "--out", str(tmp_path / "joined.md")])

    def tables(path):
        blocks = [b for b in (tmp_path / path).read_text().split("\n\n") if b.startswith("| ")]
        strip = [[ln.rsplit("|", 2)[0] for ln in b.splitlines()] for b in blocks]  # drop the seconds column
        return blocks[0], strip[1]

    whole, joined = tables("whole.md"), tables("joined.md")
    assert joined[1] == whole[1] and len(whole[1]) == 2 + 4 * 3  # independent, pooled, truncated rows
    import re

    def split(summary):  # counts and flags exactly; the mean coverages are joined from 3-decimal parts: +-0.001
        lines = summary.splitlines()
        counts = [ln.rsplit("|", 3)[0] for ln in lines]
        flags = [ln.rsplit("|", 2)[1] for ln in lines]
        return counts + flags, [float(v) for v in re.findall(r"0\.[0-9]{3}", summary)]

    (jc, jv), (wc, wv) = split(joined[0]), split(whole[0])
    assert jc == wc and len(jv) == len(wv) == 6
    assert re.search(r"\| [0-9]+/[0-9]+ / [0-9]+/[0-9]+ \|", whole[0])  # the flag cell of the SMC row
    assert all(abs(a - b) <= 0.0011 for a, b in zip(jv, wv)), (jv, wv)
    assert "(spectrum, 8, 1, 2)" in (tmp_path / "b.md").read_text()  # seed 2 cycles to the third family
    # the joined notes are the parts' generated notes: without a part's PARTIAL sentence or a reading added by hand
    b = (tmp_path / "b.md").read_text().rstrip()
    head, notes = b.rsplit("\n\n", 1)
    (tmp_path / "b2.md").write_text(f"{head}\n\nPARTIAL: interrupted after 1 of 2 problems (rows of an unfinished "
                                    f"problem included). {notes}\n\nReading (added by hand): a part.\n")
    main(["merge", str(tmp_path / "a.md"), str(tmp_path / "b2.md"), "--out", str(tmp_path / "j2.md")])
    j2 = (tmp_path / "j2.md").read_text()
    assert "PARTIAL" not in j2 and "Reading (added by hand)" not in j2 and notes in j2
    # a part run with draws=independent (the same runs, only the first row) adds up under the sampler's label
    main(common + ["--problems", "2", "--first-problem", "2", "--out", str(tmp_path / "c.md"),
                   "--methods", "tds:particles=8,draws=independent"])
    main(["merge", str(tmp_path / "a.md"), str(tmp_path / "c.md"), "--out", str(tmp_path / "mixed.md")])
    mixed = tables("mixed.md")[0]
    assert "| tds:particles=8 | 1 | 4 |" in mixed and "| tds:particles=8 pooled | 1 | 2 |" in mixed
    assert "draws=" not in mixed


def test_exact_prior_step_draws_the_mixtures_conditional():
    """The bench's exact PnP-DM prior step (exactness.exact_prior_step) draws x ~ p(x | z) for
    z = x + rho eps, per sample at its own coupling: 40,000 draws at one z and two couplings match
    the closed-form conditional (the mixture's posterior under y = z, A = I, noise rho) in mean (to
    0.03) and covariance (to 0.05), for isotropic and full-covariance components; the conditional at
    the other coupling differs by > 0.2, so a per-sample coupling mix-up fails."""
    from ppl_diffusion.bench.exactness import exact_prior_step

    g = torch.Generator().manual_seed(0)
    eye = torch.eye(2, dtype=torch.float64)
    means = torch.tensor([[-1.5, 0.0], [1.5, 0.5]], dtype=torch.float64)
    full = torch.tensor([[[0.5, 0.2], [0.2, 0.3]], [[0.2, -0.1], [-0.1, 0.9]]], dtype=torch.float64)
    for covs in (torch.tensor([0.3, 0.8], dtype=torch.float64), full):
        mix = GaussianMixture(torch.tensor([0.4, 0.6], dtype=torch.float64), means, covs)

        class Stub:
            pass

        kern = exact_prior_step(Stub(), mix)
        z = torch.tensor([0.4, 0.2], dtype=torch.float64)
        rho = torch.tensor([0.3, 1.2], dtype=torch.float64)
        n = 40_000
        level = torch.arange(2).repeat_interleave(n)
        x = kern._prior(z.expand(2 * n, 2), rho, level, g)
        posts = [mix.posterior(eye, z, float(r)) for r in rho]
        for j, post in enumerate(posts):
            xj = x[level == j]
            assert (xj.mean(0) - post.mean()).abs().max() < 0.03, (j, xj.mean(0), post.mean())
            assert (torch.cov(xj.T) - post.covariance()).abs().max() < 0.05
        assert max((posts[0].mean() - posts[1].mean()).abs().max(),
                   (posts[0].covariance() - posts[1].covariance()).abs().max()) > 0.2


def test_per_run_component_weights_and_the_pooling_check(tmp_path):
    """Runs of exact posterior draws with equal weights estimate the component weights without bias
    (E[responsibilities] = weights), so their mean over runs matches; the pooling bench writes its table."""
    from ppl_diffusion.bench.exactness import per_run_component_weights, pooling_check

    pb = exactness_problem("uneven", 8, 2, seed=7)
    post = pb.posterior
    R, N = 400, 16
    x = post.sample(R * N, generator=torch.Generator().manual_seed(0)).reshape(R, N, 8)
    res = SMCResult(x, torch.zeros(R, N, dtype=torch.float64), torch.zeros(R, dtype=torch.float64),
                    torch.zeros(R, 1), torch.zeros(R, 1, dtype=torch.bool))
    P = per_run_component_weights(res, post)
    assert P.shape == (R, post.K) and torch.allclose(P.sum(1), torch.ones(R, dtype=torch.float64))
    # 6,400 draws: sd of a weight estimate <= 0.5 / 80 = 0.006
    assert float((P.mean(0) - post.weights).abs().max()) < 0.025
    pooling_check("8,2,7", runs=8, reps=1, steps=10, out=tmp_path, configs=("", "particles=4"))
    text = (tmp_path / "smc_pooling_check.md").read_text()
    rows = [ln for ln in text.splitlines() if ln.startswith("| (uneven, 8, 2, 7) |")]
    assert [r.split("|")[2].strip() for r in rows] == ["defaults", "particles=4"]
    # the option reaches the sampler: 4 particles instead of 64 give other runs from the same seed
    assert rows[0].split("|")[4:9] != rows[1].split("|")[4:9]
    assert "| mean | defaults |" in text and "| mean | particles=4 |" in text
    # the rules on exact runs with equal evidences: every law is the mean of the runs' estimates
    from ppl_diffusion.bench.exactness import POOL_RULES, _rule_weights

    sub = res.select_runs(torch.arange(100))
    assert sub.num_runs == 100 and torch.equal(sub.particles, res.particles[:100])
    tv, used = _rule_weights(sub, P[:100], post)
    assert len(tv) == len(POOL_RULES) and max(tv) - min(tv) < 1e-9 and used  # equal weights tie: k-hat 0, pooled
    pooling_check("8,2,7", runs=8, reps=1, steps=10, out=tmp_path, block=4, name="blocks")
    text = (tmp_path / "blocks.md").read_text()
    assert "ess-half pooled (blocks of 4)" in text and "| mean |" in text


def test_exact_control_row_scores_like_a_further_exact_set(tmp_path):
    """``--methods exact``: a further set of exact draws run through the table, drawn apart from the
    reference and from the spread's sets (its scores equal none of theirs), inside all three statistics on
    most problems (an exact sampler's rate against 20 sets: ~0.8; 10 problems, fixed seeds: >= 6), and
    refusing options (it is not a sampler to tune)."""
    from ppl_diffusion.bench.exactness import _draws, run_exactness

    tally = run_exactness(8, [2], 10, ["exact"], n_samples=100, out=tmp_path, name="ctrl")
    rows = tally[("exact", 2)]
    assert len(rows) == 10 and sum(r["all"] for r in rows) >= 6
    assert "| exact | 2 | 10 |" in (tmp_path / "ctrl.md").read_text()
    pb = exactness_problem("fullcov", 8, 2, seed=0)
    ref = Reference.build(pb, seed=0)
    spread = exact_spread(ref, 100, seed=0)
    ((_, x, rel),) = _draws("exact", {}, pb, None, 100, 0, torch.Generator().manual_seed(90_000))
    s = score(x, ref)
    assert rel is None and x.shape == (100, 8) and x.dtype == torch.float64
    assert bool((spread.sw - s["sw"]).abs().min() > 0)
    with pytest.raises(ValueError, match="no options"):
        _draws("exact", {"particles": 4}, pb, None, 100, 0, torch.Generator())


def test_evidence_steps_table_covers_every_filtering_step(tmp_path):
    """The evidence-steps bench: the minor mode's lift is posterior / prior weight of the problem, and the
    three rho windows partition the filtering steps (their step counts add up to the last matching
    index J of the sampler's grid)."""
    import re

    from ppl_diffusion.bench.exactness import evidence_steps
    from ppl_diffusion.inference.registry import build_solver
    from ppl_diffusion.schedules import VPSchedule

    evidence_steps("8,2,7", runs=12, particles=8, steps=20, out=tmp_path, name="ev")
    row = next(ln for ln in (tmp_path / "ev.md").read_text().splitlines() if ln.startswith("| (uneven, 8, 2, 7)"))
    pb = exactness_problem("uneven", 8, 2, seed=7)
    minor = int(torch.argsort(pb.posterior.weights, descending=True)[1])
    lift = float(pb.posterior.weights[minor] / pb.prior.weights[minor])
    assert f"{lift:.1f}x" in row
    sv = build_solver("mcgdiff", pb.model(VPSchedule.gmm_benchmark()), particles=8, steps=20)
    sv.run(y=pb.y, runs=2, generator=torch.Generator().manual_seed(0))
    assert sum(int(n) for n in re.findall(r"\((\d+) steps\)", row)) == sv.last_fk.J


def test_an_interrupted_exactness_run_writes_the_problems_it_finished(tmp_path, monkeypatch):
    """SIGTERM in the third of four problems (sent by the run itself): the table holds problems 0-1, says it is
    partial, and the interrupt still propagates; the rows equal those of an uninterrupted run over 0-1."""
    import os
    import signal

    import pytest

    from ppl_diffusion.bench import exactness

    common = ["--d", "8", "--dys", "1", "--samples", "40", "--steps", "20",
              "--methods", "tds:particles=8,draws=independent"]
    exactness.main(common + ["--problems", "2", "--out", str(tmp_path / "two.md")])
    real = exactness._draws

    def draws(solver, opts, pb, *args):
        if pb.y.shape[-1] == 1 and exactness._draws.calls == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        exactness._draws.calls += 1
        return real(solver, opts, pb, *args)

    draws.calls = 0
    monkeypatch.setattr(exactness, "_draws", draws)
    with pytest.raises(KeyboardInterrupt):
        exactness.main(common + ["--problems", "4", "--out", str(tmp_path / "cut.md")])
    assert signal.getsignal(signal.SIGTERM) is not exactness._interrupt  # main put the previous handler back
    cut, two = (tmp_path / "cut.md").read_text(), (tmp_path / "two.md").read_text()
    assert "PARTIAL: interrupted after 2 of 4 problems" in cut and "PARTIAL" not in two

    def rows(text):  # the problem rows without the seconds column
        return [ln.rsplit("|", 2)[0] for ln in text.splitlines() if ln.startswith("| (")]

    assert rows(cut) == rows(two) and len(rows(cut)) == 2
    assert "| tds:particles=8,draws=independent | 1 | 2 |" in cut


def test_draw_warns_when_one_draw_per_run_misweights_a_mode():
    """The planted mode loss above, through the user's call: ``draw`` (one draw per run) warns with the
    estimated bias and the pool as the way out; the pool of the same runs does not warn, and the default
    resampling at the same cost (not flagged above) does not either."""
    import warnings

    from ppl_diffusion.inference.smc import MCGDiff
    from ppl_diffusion.inference.smc.evidence import WARN_MIN_RUNS, UnreliableDrawsWarning

    pb, model, forced = _planted_mode_loss()
    with pytest.warns(UnreliableDrawsWarning, match=r"pooled=True") as rec:
        d = forced.draw(2000, y=pb.y, generator=torch.Generator().manual_seed(0))
    assert bool(d.extra["reliability"]["unreliable_independent"][0])
    assert f"{float(d.extra['reliability']['bias_estimate'][0]):.3f}" in str(rec[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnreliableDrawsWarning)
        forced.draw(2000, y=pb.y, generator=torch.Generator().manual_seed(0), pooled=True)
        MCGDiff(model, particles=16, steps=50).draw(2000, y=pb.y, generator=torch.Generator().manual_seed(2))
        d4 = forced.draw(4, y=pb.y, generator=torch.Generator().manual_seed(0))  # too few runs to warn on
    assert float(d4.extra["reliability"]["runs"][0]) < WARN_MIN_RUNS
