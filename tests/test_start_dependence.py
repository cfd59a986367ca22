"""Does a chain run's draw still depend on its start? (kernels/mode_check.py: start_dependence.)

The test is a permutation test over independent chains, so its false-alarm rate is its level on any
target; a chain stuck in the mode it started in, or still correlated with its start inside one mode, is
flagged; ParticleGibbs reports it and warns."""
import math
import warnings

import pytest
import torch

from ppl_diffusion.inference.kernels.mode_check import StartDependenceWarning, start_dependence


def _bimodal(n, w_minor, d=6, sep=8.0, generator=None):
    """``n`` draws of ``(1 - w) N(0, I) + w N(sep e_1, I)`` and their component labels."""
    z = (torch.rand(n, generator=generator) < w_minor).double()
    x = torch.randn(n, d, generator=generator, dtype=torch.float64)
    x[:, 0] += sep * z
    return x, z


def _loglik(x):
    return -0.5 * ((x - 1.0) ** 2).sum(-1)


def test_independent_start_and_draws_are_flagged_at_the_tests_level_only():
    """Start and draw independent (the chains have forgotten their start): over 300 repetitions of 100
    chains, p < 0.05 on about 5 % (the permutation test is exact; binomial sd 1.3 %) and the default
    flag (p < 0.01) on about 1 %. A test that flagged mixing chains would fail here."""
    g = torch.Generator().manual_seed(0)
    ps = []
    for _ in range(300):
        s, _ = _bimodal(100, 0.3, generator=g)
        x, _ = _bimodal(100, 0.3, generator=g)
        ps.append(start_dependence(s, x, _loglik, permutations=400, generator=g)["p"])
    ps = torch.tensor(ps)
    assert float((ps < 0.05).double().mean()) <= 0.09, ps
    assert float((ps < 0.01).double().mean()) <= 0.03, ps


def test_chains_stuck_in_the_mode_they_started_in_are_flagged():
    """A planted mode-weight error: the chains start with the minor mode at 0.5 (the posterior has 0.1)
    and never leave their start's mode, though they move freely inside it. The draws' mode weight is the
    start's (0.5), and the region test sees it: more chains in their start's region than under
    independence (measured 0.52 against 0.26: the 4 k-means regions split a mode, inside which the
    chains move, so "same region" is below 1)."""
    g = torch.Generator().manual_seed(1)
    s, z = _bimodal(100, 0.5, generator=g)
    x = torch.randn(100, 6, generator=g, dtype=torch.float64)
    x[:, 0] += 8.0 * z  # a fresh draw inside the start's own mode
    out = start_dependence(s, x, _loglik, generator=g)
    assert not out["ok"] and out["p_region"] < 0.002 and out["same_region"] > out["same_expected"] + 0.2, out
    assert "region they started in" in out["flags"][0]


def test_a_draw_still_correlated_with_its_start_inside_one_mode_is_flagged_by_the_log_likelihood():
    """One Gaussian mode, draw = 0.7 start + 0.71 noise (an AR(1) chain a step after its start): the
    log-likelihoods of start and draw correlate (rank correlation ~0.5), which the log-likelihood test
    flags; with the draw independent of the start it reads ~0."""
    g = torch.Generator().manual_seed(2)
    s = torch.randn(200, 6, generator=g, dtype=torch.float64)
    x = 0.7 * s + math.sqrt(1 - 0.49) * torch.randn(200, 6, generator=g, dtype=torch.float64)
    out = start_dependence(s, x, _loglik, generator=g)
    assert not out["ok"] and out["p_loglik"] < 0.002 and out["rank_corr"] > 0.25, out
    free = start_dependence(s, torch.randn(200, 6, generator=g, dtype=torch.float64), _loglik, generator=g)
    assert free["ok"] and abs(free["rank_corr"]) < 0.2, free


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="shape"):
        start_dependence(torch.zeros(10, 3), torch.zeros(10, 4))
    with pytest.raises(ValueError, match="2 chains"):
        start_dependence(torch.zeros(1, 3), torch.zeros(1, 3))


def test_particle_gibbs_flags_draws_that_still_carry_its_start():
    """ParticleGibbs(MCGDiff) on a d = 8 bimodal posterior (exactness family 'uneven', seed 1; weights
    0.94 / 0.06), 100 chains: a draw one conditional sweep after the start still sits in its start's
    region (same region 0.59-0.65 against 0.31-0.32 under independence, measured with 200 chains) and is
    flagged with a StartDependenceWarning; after 10 sweeps the draws have forgotten the start (p 0.12-1.0
    after 5-40 sweeps over two seeds) and nothing is flagged."""
    from ppl_diffusion.bench.exactness import exactness_problem
    from ppl_diffusion.inference.kernels import ParticleGibbs
    from ppl_diffusion.inference.smc import MCGDiff
    from ppl_diffusion.schedules import VPSchedule

    pb = exactness_problem("uneven", 8, 2, 1)
    model = pb.model(VPSchedule.gmm_benchmark())

    def run(warmup):
        kern = ParticleGibbs(MCGDiff(model, particles=32, steps=50, final_correction=False), chains=100,
                             generator=torch.Generator().manual_seed(0))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            d = kern.draw(100, y=pb.y, warmup=warmup)
        return d, [w for w in caught if issubclass(w.category, StartDependenceWarning)]

    d0, w0 = run(0)
    assert not d0.extra["start_check"]["ok"] and w0, d0.extra["start_check"]
    assert "after 1 conditional sweep the draws still depend" in str(w0[0].message) and "warmup" in str(w0[0].message)
    assert d0.extra["result"].start_check is d0.extra["start_check"]
    d10, w10 = run(10)
    assert d10.extra["start_check"]["ok"] and not w10, d10.extra["start_check"]


def _pg_uneven(chains=100, seed=0, particles=32, pimh=False):
    """ParticleGibbs(MCGDiff, 32 particles, 50 steps) on the d = 8 bimodal posterior of the test above; by
    default the conditional sweep alone (``pimh=False``), whose slow moves between modes are what the start
    and region-change diagnostics below must see."""
    from ppl_diffusion.bench.exactness import exactness_problem
    from ppl_diffusion.inference.kernels import ParticleGibbs
    from ppl_diffusion.inference.smc import MCGDiff
    from ppl_diffusion.schedules import VPSchedule

    pb = exactness_problem("uneven", 8, 2, 1)
    kern = ParticleGibbs(MCGDiff(pb.model(VPSchedule.gmm_benchmark()), particles=particles, steps=50,
                                 final_correction=False), chains=chains, generator=torch.Generator().manual_seed(seed),
                         pimh=pimh)
    return kern, pb


def test_particle_gibbs_auto_warmup_sweeps_until_the_start_is_forgotten():
    """warmup=AutoWarmup(first=1, ...): after 1 sweep the chains still sit in their start's region (p 0.001
    over seeds 0-2, measured), after 2 still on 2 of 3 seeds, after 4 not (p 0.25-0.65); the warm-up must
    go on past the checkpoints that reject and stop at the first that does not, report each test, and the
    first kept draw must then pass the start check. A fixed warm-up of 1 is flagged (test above)."""
    from ppl_diffusion.inference.kernels import AutoWarmup

    kern, pb = _pg_uneven()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        d = kern.draw(100, y=pb.y, warmup=AutoWarmup(first=1, max_warmup=64, alpha=0.05))
    checks = d.extra["warmup_checks"]
    assert [c["at"] for c in checks] == [2 ** i for i in range(len(checks))], checks
    assert not checks[0]["ok"] and all(not c["settled"] for c in checks[:-1]) and checks[-1]["settled"], checks
    assert checks[-1]["ok"] and checks[-1]["start_left"] <= 0.05, checks
    assert d.extra["warmup"] == checks[-1]["at"] >= 2 and d.extra["result"].warmup == d.extra["warmup"]
    assert d.extra["start_check"]["ok"] and not [w for w in caught if issubclass(w.category, StartDependenceWarning)]
    assert d.samples.shape == (100, 1, 8)


def test_particle_gibbs_auto_warmup_needs_chains_and_keeps_draws_on_interrupt():
    """warmup="auto" compares the chains' ensemble and refuses too few chains with the way forward;
    Ctrl-C during the draws raises RunInterrupted whose partial result holds the draws kept so far."""
    from ppl_diffusion.inference.health import RunInterrupted
    from ppl_diffusion.inference.solver import OptionError

    kern, pb = _pg_uneven(chains=4)
    with pytest.raises(OptionError, match=r"needs >= 16 chains.*pass chains=16"):
        kern.draw(8, y=pb.y, warmup="auto")
    kern, pb = _pg_uneven(chains=20)
    sweep, calls = kern._sweep, []

    def interrupted(reference):  # Ctrl-C during the 6th conditional sweep (the start is call 1)
        calls.append(1)
        if len(calls) == 7:
            raise KeyboardInterrupt
        return sweep(reference)

    kern._sweep = interrupted
    with pytest.raises(RunInterrupted, match="interrupted after 5 conditional sweeps with 3 draws per chain") as err:
        kern.run_chains(y=pb.y, num_samples=10, warmup_steps=2)
    part = err.value.partial
    assert part.interrupted and part.samples.shape == (20, 3, 8) and part.warmup == 2


def test_particle_gibbs_auto_warmup_at_its_cap_says_particles_not_sweeps():
    """With 2 particles a sweep almost never moves a chain to the other mode: every check of an automatic
    warm-up capped at 4 sweeps rejects (p 0.001 at 2 and 4 sweeps and at the first draw, seeds 0-2,
    measured), and the warning names the cap and the particles as the remedy, not more sweeps."""
    from ppl_diffusion.inference.kernels import AutoWarmup

    kern, pb = _pg_uneven(particles=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        d = kern.draw(100, y=pb.y, warmup=AutoWarmup(first=2, max_warmup=4, alpha=0.05))
    assert [c["at"] for c in d.extra["warmup_checks"]] == [2, 4] and d.extra["warmup"] == 4
    assert not any(c["ok"] for c in d.extra["warmup_checks"]) and not d.extra["start_check"]["ok"]
    msg = [str(w.message) for w in caught if issubclass(w.category, StartDependenceWarning)]
    assert len(msg) == 1 and "ran to its cap" in msg[0] and "particles (now 2" in msg[0], msg


def test_particle_gibbs_region_changes_flag_chains_that_cannot_have_left_their_start_mode():
    """The chains' changes of mode-like region in the warm-up bound what is left of the start's mode
    weights: for the slowest two-group split of the 4 k-means regions, a two-state chain with r crossings per
    chain and sweep and a fraction p of its time on one side relaxes at a + b = r / (2 p (1 - p)) and keeps
    exp(-warmup (a + b)) of its start's excess. On this posterior (weights 0.94 / 0.06) k-means splits the
    major mode, so most changes move no mode weight (2 particles: 4.4-5.7 changes per chain in 128 sweeps
    while the start test still rejects, measured); the slowest split is the minor mode alone (3.5-5 % of
    the time, relaxation 4.1-5.1 sweeps with 32 particles, seeds 0-2). Planted: 2 particles in 10 sweeps
    (start_left 0.83-1.0, measured) and a kernel frozen at its start warn; 32 particles in 30 sweeps
    (start_left 0.001-0.003) do not."""
    from ppl_diffusion.inference.kernels.particle_gibbs import RegionChangeWarning

    def run(kern, pb, warmup=10):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            d = kern.draw(100, y=pb.y, warmup=warmup)
        return d.extra["region_changes"], [str(w.message) for w in caught if w.category is RegionChangeWarning]

    kern, pb = _pg_uneven(particles=2)
    rc, msg = run(kern, pb)
    assert rc["warmup"] == 10 and rc["warmup_per_chain"] < 0.5 and rc["start_left"] > 0.3, rc
    assert len(msg) == 1 and "particles (now 2" in msg[0], msg
    if "Raise warmup to at least" in msg[0]:
        need = int(msg[0].split("Raise warmup to at least ")[1].split()[0])
        assert need == math.ceil(math.log(20) * rc["slowest"]["relaxation"]) and need > 20, (need, rc)

    kern, pb = _pg_uneven(particles=32)
    sweep = kern._sweep
    kern._sweep = lambda ref: sweep(None) if ref is None else (ref, kern._x)  # planted: never moves
    rc, msg = run(kern, pb)
    assert rc["warmup_per_chain"] == 0 and rc["rate"] == 0 and rc["start_left"] == 1.0, rc
    assert len(msg) == 1 and "never changed region" in msg[0], msg

    kern, pb = _pg_uneven(particles=32)
    rc, msg = run(kern, pb, warmup=30)
    slow = rc["slowest"]
    assert rc["warmup_per_chain"] > 8 and rc["start_left"] < 0.02 and not msg, rc
    assert len(slow["split"]) in (1, 3) and min(slow["time_in_split"], 1 - slow["time_in_split"]) < 0.1, slow
    assert 2.5 < slow["relaxation"] < 8, slow


def test_particle_gibbs_auto_warmup_also_waits_for_region_changes():
    """warmup="auto" stops only where the start test passes AND the chains' region changes so far leave at
    most MAX_START_LEFT (5 %) of the start. Planted: the start test always passes, so the region changes
    alone decide. With 32 particles the slowest split relaxes in 4.3-4.9 sweeps, which leaves 0.59-0.79 of
    the start after 2 sweeps, 0.50-0.54 after 4, 0.18-0.27 after 8 and 0.025-0.057 after 16 (measured, seeds
    0-2): the warm-up must pass over 2, 4 and 8 and stop at 16 or 32. A kernel frozen at its start never
    changes region and runs to the cap with a RegionChangeWarning."""
    from ppl_diffusion.inference.kernels import AutoWarmup
    from ppl_diffusion.inference.kernels.particle_gibbs import MAX_START_LEFT, RegionChangeWarning

    def passing(kern):
        test = kern._start_dependence
        kern._start_dependence = lambda *a, **k: {**test(*a, **k), "ok": True}
        return kern

    kern, pb = _pg_uneven(particles=32)
    d = passing(kern).draw(100, y=pb.y, warmup=AutoWarmup(first=2, max_warmup=64, alpha=0.05))
    checks = d.extra["warmup_checks"]
    assert [c["at"] for c in checks][:3] == [2, 4, 8] and d.extra["warmup"] in (16, 32), checks
    assert all(c["ok"] for c in checks) and [c["settled"] for c in checks] == [False] * (len(checks) - 1) + [True]
    assert all(c["start_left"] > MAX_START_LEFT for c in checks[:-1]) and checks[-1]["start_left"] <= MAX_START_LEFT

    kern, pb = _pg_uneven(particles=32)
    sweep = kern._sweep
    kern._sweep = lambda ref: sweep(None) if ref is None else (ref, kern._x)  # planted: never moves
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        d = passing(kern).draw(100, y=pb.y, warmup=AutoWarmup(first=2, max_warmup=8, alpha=0.05))
    assert [c["at"] for c in d.extra["warmup_checks"]] == [2, 4, 8] and d.extra["warmup"] == 8
    assert not any(c["settled"] for c in d.extra["warmup_checks"])
    msg = [str(w.message) for w in caught if w.category is RegionChangeWarning]
    assert len(msg) == 1 and "never changed region" in msg[0], msg


def test_particle_gibbs_pooled_start_removes_the_independent_runs_wrong_components():
    """start="pooled" draws the chains' start from the truncated evidence pool of their unconditional runs.
    Holdout problem (fullcov, d = 8, d_y = 2, seed 114; exact weights 0.407 / 0.590 / 0 / 0.003 / 0 / 0),
    MCGDiff with 8 particles and 50 steps, 2,000 chains: one draw per run puts 27-29 % of the chains in
    components of posterior weight <= 0.003 (TV 0.30 to the exact weights over seeds 0-2, measured), from
    which the conditional sweeps leave only over hundreds of sweeps; the pool puts 0.2-0.4 % there (TV
    0.036-0.063, what is left being the 50-step target's own). A bad value is refused."""
    from ppl_diffusion.bench.exactness import exactness_problem
    from ppl_diffusion.inference.kernels import ParticleGibbs
    from ppl_diffusion.inference.smc import MCGDiff
    from ppl_diffusion.inference.solver import OptionError
    from ppl_diffusion.schedules import VPSchedule

    pb = exactness_problem("fullcov", 8, 2, 114)
    w_exact = pb.posterior.weights
    wrong = w_exact <= 0.01

    def start_weights(start):
        kern = ParticleGibbs(MCGDiff(pb.model(VPSchedule.gmm_benchmark()), particles=8, steps=50,
                                     final_correction=False), chains=2000, generator=torch.Generator().manual_seed(0),
                             start=start)
        with torch.no_grad():
            kern.setup(0, y=pb.y)
        assert len(kern._reference) > 1 and kern._x.shape == (2000, 8)
        return pb.posterior.responsibilities(kern._x.double()).mean(0)

    runs, pooled = start_weights("runs"), start_weights("pooled")
    tv = lambda w: float(0.5 * (w - w_exact).abs().sum())  # noqa: E731
    assert float(runs[wrong].sum()) > 0.2 and tv(runs) > 0.25, runs
    assert float(pooled[wrong].sum()) < 0.01 and tv(pooled) < 0.1, pooled

    model = pb.model(VPSchedule.gmm_benchmark())
    with pytest.raises(OptionError, match="start must be one of"):
        ParticleGibbs(MCGDiff(model, particles=8, steps=10, final_correction=False), chains=4, start="best")


def test_particle_gibbs_pimh_moves_take_chains_out_of_the_wrong_components():
    """ParticleGibbs(pimh=True) follows each conditional sweep by an independent move (a fresh run's particle,
    accepted with probability min(1, Z'/Z)). Holdout problem 114 (exact weights 0.407 / 0.590 / 0 / 0.003 /
    0 / 0), MCGDiff with 8 particles and 50 steps, 500 chains from one run each: 25-27 % of the chains start
    in components of weight <= 0.003. After 8 sweeps the conditional sweep alone leaves 23-24 % there
    (measured, seeds 0-2); with the independent moves 2.4-2.8 % (acceptance 0.14). Accepting every
    proposal would put 72-75 % there (the fresh runs resample at every step: measured), so the test fails
    for a wrong acceptance as well as for no move."""
    from ppl_diffusion.bench.exactness import exactness_problem
    from ppl_diffusion.inference.kernels import ParticleGibbs
    from ppl_diffusion.inference.smc import MCGDiff
    from ppl_diffusion.schedules import VPSchedule

    pb = exactness_problem("fullcov", 8, 2, 114)
    wrong = pb.posterior.weights <= 0.01

    def wrong_after(pimh, sweeps=8):
        kern = ParticleGibbs(MCGDiff(pb.model(VPSchedule.gmm_benchmark()), particles=8, steps=50,
                                     final_correction=False), chains=500, generator=torch.Generator().manual_seed(0),
                             pimh=pimh)
        with torch.no_grad():
            kern.setup(0, y=pb.y)
            for _ in range(sweeps):
                kern._reference, kern._x = kern._sweep(kern._reference)
        return float(pb.posterior.responsibilities(kern._x.double()).mean(0)[wrong].sum()), kern

    stuck, plain = wrong_after(False)
    moved, kern = wrong_after(True)
    assert stuck > 0.18 and plain.pimh_acceptance() is None, stuck
    assert moved < 0.06, moved
    assert 0.05 < kern.pimh_acceptance() < 0.4, kern.pimh_acceptance()
    assert kern._pimh_proposed == 8 * 500
