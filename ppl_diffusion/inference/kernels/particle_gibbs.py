"""Particle Gibbs (Andrieu, Doucet & Holenstein, "Particle Markov chain Monte Carlo methods", JRSS B 2010,
Sec. 2.4): conditional SMC around an SMC sampler.

Each MCMC step runs the sampler's Feynman–Kac model with particle 0 of every run pinned to the
current reference trajectory (its ancestor is always 0 and its moves are replaced by the
reference's states), then draws the new reference from the final weights and traces its lineage.
This is a valid MCMC kernel whose stationary law is the SMC target (for MCGDiff / TDS: the
posterior of the discretised prior), for any particle count >= 2; multinomial resampling is required.
``ancestor_sampling=True`` (default; PGAS, Lindsten, Jordan & Schön, JMLR 2014) redraws the pinned
particle's ancestor at every resampling step from ``w_k^i M_{k+1}(x_k^i, x_ref_{k+1})`` (MCGDiff: its
fully adapted proposal; TDS: prior transition over the twist), which breaks the path degeneracy that
otherwise keeps the early (high-noise) states of the reference and mixes slowly (measured: split
R-hat 1.25 after 150 draws x 128 chains on a d = 4 Gaussian without it; tests/test_particle_gibbs.py).
``pimh=True`` (default) follows every conditional sweep by a particle independent Metropolis-Hastings
move (PIMH, Andrieu, Doucet & Holenstein 2010, Sec. 2.4.1): a fresh unconditional run of the same SMC
(multinomial resampling at every step) proposes one of its particles, drawn by its final weights, and
is accepted with probability ``min(1, Z' / Z)``, ``Z`` the conditional sweep's own evidence estimate.
Both moves leave the extended target of the SMC invariant (the sweep's particle system and selected
index are a draw from it), so their composition does too. The conditional sweep alone leaves a mode only
when its fresh particles outweigh the reference there, and its chains keep their start's mode weights
for 40-330 sweeps on d = 8 mixtures (the slowest split's relaxation, below); the independent move
proposes a mode regardless of the current one, weighted by the evidence, and relaxes them in 1-10 (32
particles, 200 steps, acceptance 8-39 %; on 20 fresh d = 8, d_y = 2 mixtures inside the exact spread on 16
against 11 at equal cost, benchmarks/results/exactness_d8_dy2_holdout_particle_gibbs_pimh.md). It doubles
the cost of a sweep.
Invariance is checked against the closed form of the SMC's own target on a Gaussian prior.
Note: on the GMM benchmark schedule (decreasing betas, coarse near t = 0) that target is visibly
narrower than the exact posterior at 20-30 steps — a property of the discretised prior, not of PG.
``C`` chains run as one batch of ``C`` independent conditional-SMC runs. FPS-SMC and SMCDiff draw
auxiliary measurement trajectories at each run and are not supported. A plate of measurements is
refused (with the error naming the plate): loop over the measurements, or use the SMC sampler's
``draw`` / the kernels PnPDM and PMC, which batch plates.

Usable with ``pyro.infer.MCMC(ParticleGibbs(MCGDiff(model, particles=32)), num_samples=..., warmup_steps=0)``
(pass ``y=`` to ``mcmc.run``).
"""
from __future__ import annotations

import math
import time

import torch
from pyro.infer.mcmc.mcmc_kernel import MCMCKernel

from ..health import RunInterrupted
from ..smc.engine import run_smc, trace_lineage
from ..solver import Draws, OptionError, check_int, measure
from .auto_warmup import AutoWarmup, resolve_warmup
from .base import ChainResult, _kept_log_likelihoods, _log_likelihood

__all__ = ["ParticleGibbs", "AUTO_WARMUP", "RegionChangeWarning", "MAX_START_LEFT", "STARTS", "DRAW_WARMUP"]

#: ``warmup="auto"`` of :class:`ParticleGibbs`: a start-dependence test (level 0.05) and the chains' region
#: changes after 60 conditional sweeps, then after 120, 240, 480 and 960 until the test no longer rejects and
#: the changes leave at most :data:`MAX_START_LEFT` of the start (see :meth:`ParticleGibbs.run_chains`)
AUTO_WARMUP = AutoWarmup(first=60, max_warmup=960, alpha=0.05)
#: ``ParticleGibbs.draw``'s default warm-up in sweeps, with (``True``) and without (``False``) the independent
#: moves: equal network evaluations (a sweep with the move runs the sampler twice)
DRAW_WARMUP = {True: 30, False: 60}
#: warn when a start's region weights may keep more than this fraction of their excess after the warm-up
MAX_START_LEFT = 0.05
#: ``ParticleGibbs(start=...)``: ``"runs"``, one independent run of the sampler per chain (one particle drawn
#: from its final weights); ``"pooled"``, the chains' states drawn from the truncated evidence pool of those runs
STARTS = ("runs", "pooled")


class RegionChangeWarning(UserWarning):
    """ParticleGibbs' chains changed mode-like region too rarely in the warm-up to have forgotten the
    region weights of their start (``ParticleGibbs.run_chains``)."""


class _RegionTracker:
    """Counts the chains' changes of mode-like region, sweep by sweep: k-means centres (``regions``) fitted
    once on the chains' start, each sweep's states labelled by the nearest centre; the transitions between
    regions and the time spent in each are kept (in the warm-up and over the run)."""

    def __init__(self, start: torch.Tensor, regions: int = 4, seed: int = 17):
        from ...diagnostics import kmeans_centres

        flat = start.reshape(start.shape[0], -1).to(torch.float64)
        self.centres = kmeans_centres(flat, min(regions, flat.shape[0]), 25, torch.Generator().manual_seed(seed))
        self.label = self._labels(start)
        k = self.centres.shape[0]
        self.trans = torch.zeros(k, k, dtype=torch.float64)  # from-region x to-region counts
        self.occ = torch.zeros(k, dtype=torch.float64)  # chain-sweeps per region
        self.sweeps, self.warm = 0, 0
        self.warm_trans, self.warm_occ = self.trans.clone(), self.occ.clone()

    def _labels(self, x):
        return torch.cdist(x.reshape(x.shape[0], -1).to(torch.float64), self.centres.to(x.device)).argmin(1).cpu()

    def update(self, x):
        new = self._labels(x)
        k = self.centres.shape[0]
        self.trans += torch.bincount(self.label * k + new, minlength=k * k).reshape(k, k).to(torch.float64)
        self.occ += torch.bincount(new, minlength=k).to(torch.float64)
        self.sweeps += 1
        self.label = new

    @property
    def changes(self) -> int:
        return int(self.trans.sum() - self.trans.diagonal().sum())

    def end_warmup(self):
        """Mark the end of the warm-up: the sweeps and counts so far are the warm-up's."""
        self.warm, self.warm_trans, self.warm_occ = self.sweeps, self.trans.clone(), self.occ.clone()

    @staticmethod
    def slowest_split(trans: torch.Tensor, occ: torch.Tensor) -> dict:
        """The two-group split of the regions that relaxes slowest: for every split ``(S, S^c)`` with time
        in both, a two-state chain with ``r`` crossings per chain and sweep and a fraction ``p`` of the
        time in ``S`` has ``a + b = r / (2 p (1 - p))`` (``p a = (1 - p) b = r / 2`` in balance); its
        start excess decays as ``exp(-t (a + b))``. Splitting a mode between regions makes changes that
        move no mode weight; the slowest split is the one that separates the modes."""
        k, n = trans.shape[0], float(occ.sum())
        best = {"split": None, "time_in_split": float("nan"), "crossings": 0.0, "relax_rate": math.inf}
        if n == 0:
            return best
        for mask in range(1, 2 ** (k - 1)):  # region k-1 always in S^c: each split once
            s = torch.tensor([(mask >> i) & 1 == 1 for i in range(k)])
            p = float(occ[s].sum()) / n
            if p <= 0.0 or p >= 1.0:
                continue
            r = float(trans[s][:, ~s].sum() + trans[~s][:, s].sum()) / n  # per chain-sweep
            rate = r / (2.0 * p * (1.0 - p))
            if rate < best["relax_rate"]:
                best = {"split": [i for i in range(k) if (mask >> i) & 1], "time_in_split": p,
                        "crossings": r, "relax_rate": rate}
        return best

    def start_left(self, trans=None, occ=None, sweeps=None) -> float:
        """``exp(-sweeps x (a + b))`` of the slowest split (by default over all sweeps so far; 0 where no split
        has time on both sides)."""
        trans = self.trans if trans is None else trans
        occ = self.occ if occ is None else occ
        sweeps = self.sweeps if sweeps is None else sweeps
        rate = self.slowest_split(trans, occ)["relax_rate"]
        return 0.0 if math.isinf(rate) else math.exp(-sweeps * rate)

    def summary(self, chains: int) -> dict:
        """``warmup_per_chain``: region changes per chain in the warm-up; ``rate``: per chain and sweep over
        the whole run; ``slowest``: the warm-up's slowest split (:meth:`slowest_split`) with its relaxation
        time ``relaxation = 1 / (a + b)`` in sweeps; ``start_left = exp(-warmup x (a + b))``, what a
        two-state chain keeps of its start's excess weight in that split after the warm-up."""
        wc = float(self.warm_trans.sum() - self.warm_trans.diagonal().sum())
        slow = self.slowest_split(self.warm_trans, self.warm_occ)
        slow["relaxation"] = 1.0 / slow["relax_rate"] if slow["relax_rate"] > 0 else math.inf
        return {"regions": int(self.centres.shape[0]), "warmup": self.warm, "warmup_per_chain": wc / chains,
                "rate": self.changes / (chains * max(self.sweeps, 1)), "slowest": slow,
                "start_left": self.start_left(self.warm_trans, self.warm_occ, self.warm)}


class ParticleGibbs(MCMCKernel):
    """Particle Gibbs around an SMC sampler: a ``pyro.infer.MCMC`` kernel whose every step is one
    conditional-SMC sweep of the sampler's Feynman–Kac model (see the module docstring).

    It wraps a configured sampler rather than a model, so it is not in the solver registry; it offers
    the same three entry points as the diffusion kernels: ``pyro.infer.MCMC(ParticleGibbs(...))``,
    :meth:`run_chains` (a :class:`~ppl_diffusion.inference.kernels.base.ChainResult`) and :meth:`draw`
    (a :class:`~ppl_diffusion.inference.solver.Draws`).

    Args:
        sampler: an :class:`~ppl_diffusion.inference.smc.MCGDiff` or
            :class:`~ppl_diffusion.inference.smc.TDS` with ``particles >= 2`` (its resampling is set to
            multinomial at every step, which conditional SMC requires; FPS-SMC and SMCDiff redraw
            auxiliary trajectories and are refused).
        chains: vectorised chains advanced as ONE batch of conditional-SMC runs inside a single Pyro
            chain (unlike ``pyro.infer.MCMC(num_chains=...)``, which runs separate kernels); under
            ``pyro.infer.MCMC`` with ``chains > 1`` each Pyro draw holds all of them, ``(chains, *event)``.
        generator: random generator of the sweeps (``None``: torch's global one).
        ancestor_sampling: redraw the pinned particle's ancestor at each resampling step (PGAS;
            needs ``MCGDiff(final_correction=False)``).
        start: where the chains start (:data:`STARTS`): ``"runs"``, one unconditional run of the sampler per
            chain and one particle drawn from its final weights, so the start carries the independent-run bias
            (a few chains in components the posterior does not hold, which a sweep leaves only when its fresh
            particles find a better mode); ``"pooled"``, the same runs' particles weighted by the runs' evidence
            (truncated at ``1 / sqrt(chains)`` per run) and resampled, so several chains may share a start
            (with one chain the two are the same law).
        pimh: follow each conditional sweep by a particle independent Metropolis-Hastings move (a fresh
            unconditional run proposes a particle, accepted with probability ``min(1, Z' / Z)``; see the
            module docstring): mixes between modes in a few sweeps where the conditional sweep alone takes
            tens to hundreds, at twice the network evaluations per sweep. Its acceptance rate is in
            ``extra["pimh"]`` (``draw``) / ``.pimh`` (``run_chains``); it falls as the variance of the
            runs' log-evidence grows (raise ``particles``).
    """

    def __init__(self, sampler, chains: int = 1, generator: torch.Generator | None = None,
                 ancestor_sampling: bool = True, start: str = "runs", pimh: bool = True):
        from ..smc.fps import FPSSMC
        from ..smc.smcdiff import SMCDiff

        if isinstance(sampler, (FPSSMC, SMCDiff)):
            raise ValueError("ParticleGibbs: FPS-SMC / SMCDiff redraw auxiliary trajectories; use MCGDiff or TDS")
        if sampler.particles < 2:
            raise ValueError(f"ParticleGibbs: needs particles >= 2, got {sampler.particles}")
        from ..problem import Problem

        structure = Problem.from_model(sampler.model, prior_site=sampler.prior_site, allow_unobserved=True)
        if structure.plates:  # conditional SMC pins one reference path per run; not laid out per measurement
            raise structure.plate_error("ParticleGibbs")
        # the chains start from ONE unconditional run of the sampler as configured (its own resampling
        # scheme and ESS threshold: systematic at ESS < N/2 by default, which keeps the mixture's mode
        # weights, where resampling at every step misweights them in a single run: measured on a d = 8
        # mixture, component-weight TV 0.48 against 0.010); the conditional sweeps then resample
        # multinomially at every step, as conditional SMC requires
        self._start = (sampler.resampling, sampler.ess_threshold)
        sampler.resampling, sampler.ess_threshold = "multinomial", 1.0
        self.sampler, self.generator = sampler, generator
        self.chains = check_int("chains", chains, "ParticleGibbs")
        if start not in STARTS:
            raise OptionError(f"ParticleGibbs: start must be one of {STARTS}, got {start!r}")
        self.start = start
        self.ancestor_sampling = bool(ancestor_sampling)
        self.pimh = bool(pimh)
        self._pimh_accepted = self._pimh_proposed = 0
        if self.ancestor_sampling and getattr(sampler, "final_correction", False):
            raise ValueError("ParticleGibbs: ancestor sampling needs MCGDiff(final_correction=False)")
        self.model = sampler.model
        self.transforms = {}
        self._reference = None
        self._x = None
        self._args, self._kwargs = (), {}
        self._fk = None
        self._problem = None

    def _sweep(self, reference):
        scheme, threshold = self._start if reference is None else ("multinomial", 1.0)
        res = run_smc(self._fk, self.chains, self.sampler.particles, scheme, threshold, self.generator,
                      reference=reference, keep_history=True,
                      ancestor_sampling=self.ancestor_sampling and reference is not None)
        if reference is None and self.start == "pooled":
            return self._pooled_start(res)
        traj, x = self._select(res)
        if reference is not None and self.pimh:
            traj, x = self._independent_move(res, traj, x)
        return traj, x

    def _select(self, res):
        """One particle per run drawn by the final weights, and its trajectory."""
        j = torch.multinomial(res.weights.cpu(), 1, generator=self.generator).flatten().to(res.weights.device)
        rows = torch.arange(res.weights.shape[0], device=j.device)
        return trace_lineage(res, j), res.particles[rows, j]

    def _independent_move(self, res, traj, x):
        """The PIMH move after a conditional sweep ``res`` (Andrieu, Doucet & Holenstein 2010, Sec. 2.4.1):
        a fresh unconditional run of the same SMC (multinomial resampling at every step, as the sweep)
        proposes one of its particles by the final weights; chain ``c`` takes it with probability
        ``min(1, Z'_c / Z_c)``, ``Z_c`` the sweep's evidence estimate (a NaN ratio rejects)."""
        fresh = run_smc(self._fk, self.chains, self.sampler.particles, "multinomial", 1.0, self.generator,
                        reference=None, keep_history=True)
        traj_f, x_f = self._select(fresh)
        log_ratio = (fresh.log_evidence - res.log_evidence).to(torch.float64)
        dev = "cpu" if self.generator is None else self.generator.device
        u = torch.rand(self.chains, generator=self.generator, dtype=torch.float64, device=dev).to(log_ratio.device)
        take = u.log() < torch.nan_to_num(log_ratio, nan=-math.inf)
        self._pimh_accepted += int(take.sum())
        self._pimh_proposed += self.chains

        def pick(a, b):
            return torch.where(take.to(a.device).view(-1, *([1] * (a.dim() - 1))), b, a)

        return [pick(a, b) for a, b in zip(traj, traj_f)], pick(x, x_f)

    def pimh_acceptance(self) -> float | None:
        """The fraction of PIMH moves accepted since :meth:`setup` (``None`` when none was proposed)."""
        return self._pimh_accepted / self._pimh_proposed if self._pimh_proposed else None

    def _pooled_start(self, res):
        """The chains' start drawn from the truncated evidence pool of the ``chains`` unconditional runs
        (:func:`~ppl_diffusion.inference.smc.evidence.pooled_log_weights`, run weights capped at
        ``1 / sqrt(chains)``; systematic resampling over all runs' particles, order shuffled)."""
        from ..smc.engine import systematic_resample
        from ..smc.evidence import pooled_log_weights

        C, N = res.log_weights.shape
        lw = pooled_log_weights(res, "truncated").reshape(1, C * N)
        idx = systematic_resample(lw, C, self.generator)[0]
        dev = "cpu" if self.generator is None else self.generator.device
        idx = idx[torch.randperm(C, generator=self.generator, device=dev).to(idx.device)]
        rows, j = idx // N, idx % N
        return trace_lineage(res, j, rows), res.particles[rows, j]

    def setup(self, warmup_steps, *args, **kwargs):
        self._args, self._kwargs = args, kwargs
        problem = self.sampler.problem(*args, **kwargs)
        if problem.plates:
            raise problem.plate_error("ParticleGibbs")
        self._problem = problem
        self._pimh_accepted = self._pimh_proposed = 0
        self._fk = self.sampler.fk_model(problem)
        with torch.no_grad():
            self._reference, self._x = self._sweep(None)

    @property
    def initial_params(self):
        return {"x": self._x if self.chains > 1 else self._x[0]}

    @initial_params.setter
    def initial_params(self, params):
        pass

    def sample(self, params):
        with torch.no_grad():
            self._reference, self._x = self._sweep(self._reference)
        return {"x": self._x if self.chains > 1 else self._x[0]}

    def run_chains(self, *args, num_samples: int = 100, warmup_steps: int | str | AutoWarmup = 0, thin: int = 1,
                   progress: bool = False, **kwargs) -> ChainResult:
        """Run the ``self.chains`` chains as ONE batch (one conditional-SMC run per chain per iteration):
        ``warmup_steps`` discarded iterations after the initial (unconditional) SMC draw, then
        ``num_samples * thin`` iterations keeping every ``thin``-th. Returns a
        :class:`~ppl_diffusion.inference.kernels.base.ChainResult` (samples ``(chain, draw, *event)``,
        ``.to_inference_data()`` with chain/draw dims; ``nfe_per_iteration``: network evaluations per
        chain and iteration, i.e. particles x network steps, twice that with the independent move); stats
        ``moved`` (the draw differs from the previous one); ``.pimh``: the independent moves' acceptance.

        ``warmup_steps="auto"`` (or an :class:`~.auto_warmup.AutoWarmup`; for this kernel ``"auto"`` is
        :data:`AUTO_WARMUP`, checkpoints 60, 120, 240, 480, 960 sweeps) sweeps until the chains have
        forgotten their start: at each checkpoint the chains' current states are tested against their
        starting states (:func:`~.mode_check.start_dependence` at the setting's ``alpha``), and the warm-up
        ends at the first checkpoint where the test does not reject AND the chains' changes of region so far
        leave at most :data:`MAX_START_LEFT` of the start (``start_left`` below: the test compares where
        the chains are with where they started, and a small excess of mode weight left in the start's regions
        passes it at 200 chains). The start is one independent SMC
        run per chain, whose mode weights carry the independent-run bias; a chain still in the region its run
        put it in keeps that bias. Each checkpoint's test is in ``.warmup_checks`` (``at``: the sweeps run
        so far; ``ok``: the test's verdict; ``start_left``; ``settled``: both held), the sweeps used in
        ``.warmup``. It needs ``AutoWarmup.min_chains`` chains or more.

        With 2 chains or more every sweep also counts the chains' changes of mode-like region (4 k-means
        centres fitted on the start): ``.region_changes`` holds the changes per chain in the warm-up
        (``warmup_per_chain``), the rate per chain and sweep, and ``start_left = exp(-2 x warmup_per_chain)``,
        the most of the start's excess weight in a region a two-region chain with that many changes keeps;
        above :data:`MAX_START_LEFT` a :class:`RegionChangeWarning` gives the warm-up that rate would need (a lower
        bound: a longer warm-up can measure a slower rate, as the chains still at their start are the slowest)
        (measured: 32 particles at 200 steps change mode 0.012-0.014 times per chain and sweep on a d = 8,
        d_y = 2 two-mode posterior, a relaxation time of about 35 sweeps;
        benchmarks/results/particle_gibbs_target_steps200.md). Ctrl-C
        raises :class:`~ppl_diffusion.inference.health.RunInterrupted` whose ``.partial`` holds the draws
        kept so far."""
        num_samples = check_int("num_samples", num_samples, "ParticleGibbs")
        thin = check_int("thin", thin, "ParticleGibbs")
        warmup = resolve_warmup(warmup_steps, "ParticleGibbs", chains=self.chains, auto=AUTO_WARMUP)
        auto = isinstance(warmup, AutoWarmup)
        t0 = time.perf_counter()
        self.setup(warmup.first if auto else warmup, *args, **kwargs)
        start = self._x.clone()
        tracker = _RegionTracker(start) if self.chains >= 2 else None
        evals0 = self._problem.denoiser.sample_evals
        keep, moved, checks = [], [], []
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=(warmup.first if auto else warmup) + num_samples * thin, desc="particle_gibbs")
        k, warm = 0, None if auto else warmup
        try:
            with torch.no_grad():
                stops = warmup.checkpoints() if auto else [warmup]
                for j, stop in enumerate(stops):
                    while k < stop:
                        self._reference, self._x = self._sweep(self._reference)
                        k += 1
                        if tracker is not None:
                            tracker.update(self._x)
                        if bar is not None:
                            bar.update(1)
                    if not auto:
                        break
                    check = self._start_dependence(start, self._x, warmup.alpha, warmup.regions, seed=k)
                    left = tracker.start_left()  # the region changes so far
                    checks.append({**check, "at": k, "start_left": left,
                                   "settled": bool(check["ok"]) and left <= MAX_START_LEFT})
                    if checks[-1]["settled"]:
                        break
                    if bar is not None and j + 1 < len(stops):
                        bar.total += stops[j + 1] - stop
                        bar.refresh()
                warm = k
                if tracker is not None:
                    tracker.end_warmup()
                prev = self._x
                for i in range(num_samples * thin):
                    self._reference, self._x = self._sweep(self._reference)
                    k += 1
                    if tracker is not None:
                        tracker.update(self._x)
                    if i % thin == thin - 1:
                        keep.append(self._x.clone())
                        moved.append((self._x != prev).flatten(1).any(1))
                    prev = self._x
                    if bar is not None:
                        bar.update(1)
        except KeyboardInterrupt:
            part = self._result(keep, moved, evals0, k, t0) if keep else None
            if part is not None:
                part.warmup, part.warmup_checks, part.interrupted = warm, checks, True
            raise RunInterrupted(f"ParticleGibbs({self.sampler.name}): interrupted after {k} conditional sweeps "
                                 f"with {len(keep)} draws per chain kept; .partial holds them (a ChainResult, "
                                 "interrupted=True)", partial=part, step=k) from None
        finally:
            if bar is not None:
                bar.close()
        res = self._result(keep, moved, evals0, k, t0)
        res.warmup, res.warmup_checks = warm, checks
        if self.chains >= 2:  # the first kept draws against the start (one unconditional run per chain)
            capped = auto and bool(checks) and not checks[-1]["ok"]  # warmup="auto" stopped at its cap
            res.start_check = self._start_check(start, res.samples[:, 0], warm + thin, capped)
            res.region_changes = self._region_check(tracker.summary(self.chains))
        res.convergence = self._mixing_check(res.samples)
        res.pimh = self._pimh_summary()
        return res

    def _pimh_summary(self) -> dict | None:
        if not self.pimh:
            return None
        return {"acceptance": self.pimh_acceptance(), "proposed": self._pimh_proposed}

    def _result(self, keep: list, moved: list, evals0: int, sweeps: int, t0: float) -> ChainResult:
        """The kept draws as a :class:`ChainResult` (``sweeps``: the conditional sweeps run)."""
        nfe = (self._problem.denoiser.sample_evals - evals0) / (self.chains * max(sweeps, 1))
        return ChainResult(torch.stack(keep, 1), {"moved": torch.stack(moved, 1)}, nfe_per_iteration=float(nfe),
                           seconds=time.perf_counter() - t0, site=self._problem.prior_site,
                           observation=self._problem.observation)

    def _start_dependence(self, start, x, alpha: float, regions: int = 4, seed: int = 17) -> dict:
        """:func:`~.mode_check.start_dependence` of the states ``x`` on the chains' ``start``, with the
        log-likelihood test where the likelihood has a closed value."""
        from .mode_check import start_dependence

        problem = self._problem
        has_ll = _log_likelihood(problem, start[:1]) is not None  # else the region test alone
        return start_dependence(start, x, (lambda z: _log_likelihood(problem, z)) if has_ll else None,
                                regions=regions, alpha=alpha, generator=torch.Generator().manual_seed(seed))

    def _mixing_check(self, samples: torch.Tensor):
        """:func:`~.mode_check.mixing_check` of the kept draws ``(chain, draw, *event)`` (4 or more per chain)."""
        from .mode_check import mixing_check

        C, S = samples.shape[:2]
        if C < 2 or S < 4:
            return None
        ll = _kept_log_likelihoods(self._problem, samples.unbind(1))
        return mixing_check(f"ParticleGibbs({self.sampler.name})", samples, None if ll is None else ll.T,
                            advice="Raise warmup (conditional sweeps) or thin, or the sampler's particles "
                                   f"(now {self.sampler.particles}).")

    def _start_check(self, start, first, sweeps: int, capped: bool = False) -> dict:
        """:func:`~.mode_check.start_dependence` of the first kept draws on the chains' start, with a
        :class:`~.mode_check.StartDependenceWarning` when they still depend on it (``capped``: an automatic
        warm-up ran to its cap, so more sweeps are the weaker remedy)."""
        import warnings

        from .auto_warmup import _caller_level
        from .mode_check import StartDependenceWarning

        check = self._start_dependence(start, first, alpha=0.01)
        if not check["ok"]:
            warnings.warn(
                f"ParticleGibbs({self.sampler.name}): after {sweeps} conditional sweep{'' if sweeps == 1 else 's'} "
                f"{check['flags'][0]}. "
                "The chains start from independent runs of the sampler and have not forgotten them, so the draws "
                "may keep those runs' mode weights (the independent-run bias). "
                + ("warmup='auto' ran to its cap with the chains still tied to their start: raise the sampler's "
                   f"particles (now {self.sampler.particles}; a sweep moves a chain to another mode only when its "
                   "fresh particles find that mode), or weight independent runs by their " if capped else
                   "Raise warmup (or thin, or use warmup='auto'), raise the sampler's particles (now "
                   f"{self.sampler.particles}), or weight independent runs by their ")
                + "evidence instead (the sampler's draw(pooled='truncated'))" + self._pimh_advice() + ".",
                StartDependenceWarning, stacklevel=_caller_level())
        return check

    def _pimh_advice(self) -> str:
        """What the independent moves did (or that they are off), for the warnings."""
        if not self.pimh:
            return "; pimh=True adds an independent move between modes each sweep"
        rate = self.pimh_acceptance()
        if rate is None:
            return ""
        return (f"; the independent (PIMH) moves were accepted {rate:.1%} of the time, which more particles "
                "raise (a lower variance of the runs' log-evidence)")

    def _region_check(self, rc: dict) -> dict:
        """Warn (:class:`RegionChangeWarning`) when the chains changed region too rarely in the warm-up:
        ``rc["start_left"] > MAX_START_LEFT``."""
        import warnings

        from .auto_warmup import _caller_level

        if rc["start_left"] > MAX_START_LEFT:
            slow = rc["slowest"]
            tau = slow["relaxation"]
            need = math.ceil(-math.log(MAX_START_LEFT) * tau) if math.isfinite(tau) else None
            where = ("" if slow["split"] is None else
                     f"; the slowest split of the {rc['regions']} k-means regions (regions {slow['split']}, "
                     f"{slow['time_in_split']:.0%} of the time) was crossed {slow['crossings']:.4f} times per chain "
                     + (f"and sweep, a relaxation time of about {tau:.0f} sweeps" if need is not None else
                        "and sweep: never"))
            warnings.warn(
                f"ParticleGibbs({self.sampler.name}): in {rc['warmup']} warm-up sweeps a chain changed mode-like "
                f"region {rc['warmup_per_chain']:.2f} times on average{where}; up to {rc['start_left']:.0%} of the "
                "start's excess weight across that split may be left, i.e. of the independent-run bias of the "
                "sampler's runs. "
                + (f"Raise warmup to at least {need} sweeps (a lower bound: the chains that have not moved are the "
                   "slowest, so a longer warm-up can measure a longer relaxation)" if need is not None else
                   "The chains never changed region between its groups: raise warmup")
                + f" or the sampler's particles (now {self.sampler.particles}; a sweep leaves a mode only when its "
                "fresh particles find another" + self._pimh_advice() + ").", RegionChangeWarning,
                stacklevel=_caller_level())
        return rc

    def draw(self, num_samples: int, *args, warmup: int | str | AutoWarmup | None = None, thin: int = 1,
             generator: torch.Generator | None = None, **kwargs) -> Draws:
        """Posterior draws from the ``self.chains`` vectorised chains: ``ceil(num_samples / chains)``
        draws per chain (``chains x ceil(num_samples / chains) >= num_samples`` in all, ``(chain, draw,
        *event)``) after ``warmup`` discarded iterations (default ``None``: :data:`DRAW_WARMUP` sweeps, 30 with
        the independent moves, which cost two runs each, 60 without: the same network evaluations; with them
        16 of 20 fresh d = 8 mixtures inside the exact spread on all three statistics, see the module docstring.
        Without them, the chains
        start from independent runs of the sampler, whose mode weights carry the independent-run bias;
        measured with MCGDiff, 32 particles, 200 chains on 20 d = 8 mixtures: inside the exact spread on
        all three statistics 7/20 after 10 sweeps, 12/20 after 60,
        benchmarks/results/exactness_d8_dy2_particle_gibbs_warmup60.md; at d = 80 32 particles are too few: the
        chains keep their starting runs' mode weights, 9/20 inside, 600 sweeps do not mend it, and 128 particles
        are inside on 15/20, as exact draws would be (P = 0.49),
        benchmarks/results/exactness_d80_dy2_particle_gibbs_*.md;
        the start check below says which case a run is in; ``warmup="auto"`` sweeps until the chains no
        longer depend on their start, see :meth:`run_chains`). ``generator`` replaces the kernel's for
        this call. ``nfe_per_sample``: every network evaluation of the call (the initial unconditional
        sweep, burn-in and thinning included) divided by the draws; ``stats``: ``moved``;
        ``extra["result"]``: the ChainResult; ``extra["warmup"]``: the sweeps discarded;
        ``extra["warmup_checks"]``: ``warmup="auto"``'s tests; ``extra["start_check"]``: whether the first
        draws still depend on the chains' start (:func:`~.mode_check.start_dependence`; a
        :class:`~.mode_check.StartDependenceWarning` when they do); ``extra["region_changes"]``: the chains'
        changes of mode-like region (see :meth:`run_chains`; a :class:`RegionChangeWarning` when too few);
        ``extra["pimh"]``: the independent moves' ``acceptance`` and ``proposed`` (``None`` with ``pimh=False``)."""
        n = check_int("num_samples", num_samples, "ParticleGibbs")
        per_chain = -(-n // self.chains)
        if warmup is None:
            warmup = DRAW_WARMUP[self.pimh]
        problem = self.sampler.problem(*args, **kwargs)
        saved = self.generator
        if generator is not None:
            self.generator = generator
        try:
            with measure(problem.denoiser) as meter:
                res = self.run_chains(*args, num_samples=per_chain, warmup_steps=warmup, thin=thin,
                                      progress=self.sampler.progress, **kwargs)
        finally:
            self.generator = saved
        return Draws(res.samples, meter.evals / (self.chains * per_chain), meter.seconds,
                     f"particle_gibbs({self.sampler.name})", "kernel", dict(res.stats),
                     {"result": res, "warmup": res.warmup, "warmup_checks": res.warmup_checks,
                      "start_check": res.start_check, "region_changes": res.region_changes,
                      "convergence": res.convergence, "pimh": res.pimh},
                     problem.prior_site, problem.observation)

    def diagnostics(self):
        rate = self.pimh_acceptance()
        return {"divergences": [], "acceptance rate": 1.0 if rate is None else rate}

    def logging(self):
        return {}
