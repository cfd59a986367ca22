"""Before and after in one table: every exact sampler's exactness tables read against the exact control.

:mod:`ppl_diffusion.bench.exactness` judges a sampler per problem against the spread of 20 exact sample
sets; :mod:`ppl_diffusion.bench.exact_control` turns further exact sets into each problem's probability of
being inside, so that a table's count reads as ``P(an exact sampler scores as low)``. This module collects,
for each sampler and (d, d_y), the table of its first settings ("before") and of its current defaults or
stated compute ("after"), recounts their per-problem verdicts and reads each count against the control
files of the same sample size. Nothing here runs a sampler: the numbers come from the result files named in
:data:`ENTRIES`, so the summary cannot drift from them.

    python benchmarks/exactness.py summary --name exactness_summary
"""
from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass

from .exact_control import _lower_point, count_pvalue, read_verdicts
from .exactness import _without_draws
from .report import RESULTS_DIR, MarkdownTable, write_result

__all__ = ["Entry", "ENTRIES", "read_control", "summary_rows", "run_summary"]

_LABEL = re.compile(r"\((\w+), (\d+), (\d+), (\d+)\)")


@dataclass(frozen=True)
class Entry:
    """One row group of the summary: ``method`` (a method label as the table prints it; its ``draws=`` option
    is ignored, as in merged tables) in ``table`` (a file under the results folder), for the sampler
    ``sampler`` at ``stage`` (``before`` / ``after`` / ``option`` / ``holdout``), ``settings`` in words. One row per d_y
    found in the table."""

    sampler: str
    stage: str
    settings: str
    table: str
    method: str


_PNP = "pnpdm:replicas=12,rho0=20.0,rho_min=0.1,rho_max=20.0"
_PNP_NOW = ",warmup=auto,prior_solver=analytic"
_G100 = "100-point grid (the default until 2026-12-04)"  # PnP-DM's num_grid before 200
_G200 = "prior step on a 200-point grid (num_grid=200, the default since 2026-12-04)"
_THIN40 = "16 chains x 20 draws every 40 iterations (automatic warm-up)"
_MC_OLD = "100 steps, official grid, plug-in step variance, one draw per run"
_TDS_OLD = "isotropic twist, plug-in step variance, one draw per run"
_PG_OLD = "conditional sweeps alone (before the PIMH move; now pimh=False)"
_PG_PIMH = "30 sweeps each with the PIMH move (the default; the network evaluations of 60 without)"

#: The tables summarised: (sampler, stage, settings, table, method row).
ENTRIES = (
    # d = 8 (200 draws per problem; PnP-DM 320)
    Entry("MCGDiff", "before", f"64 particles, {_MC_OLD}", "exactness_d8_dy1_defaults.md",
          "mcgdiff:steps=100,tail_steps=0,draws=independent"),
    Entry("MCGDiff", "before", f"64 particles, {_MC_OLD}", "exactness_d8_dy2.md", "mcgdiff"),
    Entry("MCGDiff", "before", f"64 particles, {_MC_OLD}", "exactness_d8_dy4_defaults.md",
          "mcgdiff:steps=100,tail_steps=0,draws=independent"),
    Entry("MCGDiff", "after", "defaults (64 particles, 200 steps, alpha_log grid, Analytic-DPM step variance, one "
          "draw per run)", "exactness_d8_mcgdiff_analytic_table.md", "mcgdiff:draws=independent"),
    Entry("MCGDiff", "after", "256 particles, defaults otherwise (one draw per run)", "exactness_d8_mcgdiff_N256.md",
          "mcgdiff:particles=256"),
    Entry("MCGDiff", "after", "1,024 particles, defaults otherwise (one draw per run)",
          "exactness_d8_dy2_mcgdiff_N1024.md", "mcgdiff:particles=1024"),
    Entry("TDS", "before", f"64 particles, 200 steps, {_TDS_OLD}", "exactness_d8_dy1_defaults.md",
          "tds:particles=64,draws=independent"),
    Entry("TDS", "before", f"64 particles, 100 steps, {_TDS_OLD}", "exactness_d8_dy2.md", "tds:particles=64"),
    Entry("TDS", "before", f"64 particles, 200 steps, {_TDS_OLD}", "exactness_d8_dy4_defaults.md",
          "tds:particles=64,draws=independent"),
    Entry("TDS", "after", "defaults (16 particles, 200 steps, operator-aware twist, truncated evidence pool)",
          "exactness_d8_tds_twist_operator.md", "tds:twist_cov=operator,draws=all truncated"),
    Entry("PnP-DM", "before", "12 replicas, joint (x, z) swap, 200 burn-in, 16 chains x 20 draws",
          "exactness_d8_pnpdm_joint.md", f"{_PNP},chains=16,thin=10,swap=joint"),
    Entry("PnP-DM", "after", f"12 replicas, marginal swap, warmup=auto, analytic prior step, {_G100}, 16 chains",
          "exactness_d8_pnpdm_analytic_prior_step.md", f"{_PNP},chains=16,thin=10{_PNP_NOW}"),
    # d = 8 holdout: the defaults on 20 fresh problems per d_y (seeds 100-119), used in choosing no default but
    # PnP-DM's num_grid
    Entry("MCGDiff", "holdout", "defaults (64 particles, one draw per run), fresh seeds 100-119",
          "exactness_d8_holdout_mcgdiff.md", "mcgdiff:draws=independent"),
    Entry("TDS", "holdout", "defaults (16 particles, truncated pool), fresh seeds 100-119",
          "exactness_d8_holdout_tds.md", "tds:draws=all truncated"),
    Entry("TDS", "holdout", "16 particles, one draw per run, fresh seeds 100-119", "exactness_d8_holdout_tds.md",
          "tds:draws=all"),
    Entry("PnP-DM", "holdout", f"warmup=auto, analytic prior step, {_G100}, 16 chains, fresh seeds 100-119",
          "exactness_d8_holdout_pnpdm.md", f"{_PNP},chains=16,thin=10{_PNP_NOW}"),
    Entry("PnP-DM", "holdout", f"{_G100}, 100 chains x 4 draws every 10 iterations, fresh seeds 100-119",
          "exactness_d8_holdout_pnpdm_chains100.md", f"{_PNP},chains=100,thin=10{_PNP_NOW}"),
    Entry("PnP-DM", "holdout", f"{_THIN40}, 100-point grid, fresh seeds 100-119",
          "exactness_d8_dy1_holdout_pnpdm_thin40.md", f"{_PNP},chains=16,thin=40{_PNP_NOW}"),
    Entry("PnP-DM", "holdout", f"{_THIN40}, 100-point grid, fresh seeds 100-119",
          "exactness_d8_dy2_holdout_pnpdm_thin40.md", f"{_PNP},chains=16,thin=40{_PNP_NOW}"),
    Entry("PnP-DM", "holdout", f"{_THIN40}, {_G200}, fresh seeds 100-119",
          "exactness_d8_dy2_holdout_pnpdm_grid200_thin40.md",
          f"{_PNP},chains=16,thin=40{_PNP_NOW},num_grid=200"),
    Entry("PnP-DM", "holdout", f"{_THIN40}, {_G200}, fresh seeds 100-119",
          "exactness_d8_dy1_holdout_pnpdm_grid200_thin40.md",
          f"{_PNP},chains=16,thin=40{_PNP_NOW},num_grid=200"),
    Entry("PnP-DM", "holdout", "16 chains x 20 draws every 10 iterations after 800 warm-up, 100-point grid, "
          "fresh seeds 100-119",
          "exactness_d8_dy1_holdout_pnpdm_warmup800.md", f"{_PNP},chains=16,thin=10,warmup=800,prior_solver=analytic"),
    Entry("ParticleGibbs", "holdout", f"MCGDiff 32 particles, {_PG_PIMH}, 200 chains, fresh seeds 100-119",
          "exactness_d8_dy2_holdout_particle_gibbs_pimh.md", "particle_gibbs:particles=32,chains=200,warmup=30"),
    Entry("ParticleGibbs", "holdout", f"MCGDiff 32 particles, 60 sweeps, {_PG_OLD}, 200 chains, fresh seeds 100-119",
          "exactness_d8_dy2_holdout_particle_gibbs.md", "particle_gibbs:particles=32,chains=200,warmup=60"),
    Entry("ParticleGibbs", "holdout", f"MCGDiff 32 particles, warmup='auto' (60-960 sweeps), {_PG_OLD}, 200 chains, "
          "fresh seeds 100-119", "exactness_d8_dy2_holdout_particle_gibbs_auto.md",
          "particle_gibbs:particles=32,chains=200,warmup=auto"),
    Entry("ParticleGibbs", "holdout", f"MCGDiff 32 particles, 60 sweeps, {_PG_OLD}, 200 chains, start='pooled', "
          "fresh seeds 100-119", "exactness_d8_dy2_holdout_particle_gibbs_pooled.md",
          "particle_gibbs:particles=32,chains=200,warmup=60,start=pooled"),
    Entry("ParticleGibbs", "holdout", f"MCGDiff 32 particles, 240 sweeps, {_PG_OLD}, 200 chains, "
          "4 of the fresh problems",
          "exactness_d8_dy2_holdout_particle_gibbs_sweeps240.md", "particle_gibbs:particles=32,chains=200,warmup=240"),
    Entry("ParticleGibbs", "before", "MCGDiff 32 particles, plug-in step variance, 10 sweeps, 200 chains",
          "exactness_d8_dy2_particle_gibbs.md", "particle_gibbs:particles=32,chains=200,warmup=10"),
    Entry("ParticleGibbs", "after", f"MCGDiff 32 particles (its defaults otherwise), 60 sweeps, {_PG_OLD}, 200 chains",
          "exactness_d8_dy1_particle_gibbs.md", "particle_gibbs:particles=32,chains=200,warmup=60"),
    Entry("ParticleGibbs", "after", f"MCGDiff 32 particles (its defaults otherwise), {_PG_PIMH}, 200 chains",
          "exactness_d8_dy2_particle_gibbs_pimh.md", "particle_gibbs:particles=32,chains=200,warmup=30"),
    Entry("ParticleGibbs", "option", f"MCGDiff 32 particles (its defaults otherwise), 60 sweeps, {_PG_OLD}, 200 chains",
          "exactness_d8_dy2_particle_gibbs_analytic.md", "particle_gibbs:particles=32,chains=200,warmup=60"),
    Entry("ParticleGibbs", "option", f"MCGDiff 32 particles, 60 sweeps, {_PG_OLD}, 200 chains, start='pooled'",
          "exactness_d8_dy2_particle_gibbs_pooled.md", "particle_gibbs:particles=32,chains=200,warmup=60,start=pooled"),
    Entry("ParticleGibbs", "after", f"MCGDiff 32 particles (its defaults otherwise), 60 sweeps, {_PG_OLD}, 200 chains",
          "exactness_d8_dy4_particle_gibbs.md", "particle_gibbs:particles=32,chains=200,warmup=60"),
    Entry("ParticleGibbs", "after", f"MCGDiff 32 particles (its defaults otherwise), {_PG_PIMH}, 200 chains",
          "exactness_d8_dy4_particle_gibbs_pimh.md", "particle_gibbs:particles=32,chains=200,warmup=30"),
    Entry("ParticleGibbs", "after", f"MCGDiff 32 particles (its defaults otherwise), {_PG_PIMH}, 200 chains",
          "exactness_d8_dy1_particle_gibbs_pimh.md", "particle_gibbs:particles=32,chains=200,warmup=30"),
    # d = 80 (100 draws per problem; families cycled)
    Entry("MCGDiff", "before", f"64 particles, {_MC_OLD} (6 problems)", "exactness_d80_dy2.md", "mcgdiff"),
    Entry("MCGDiff", "before", "64 particles, 100 steps, official grid, plug-in step variance (6 problems)",
          "exactness_d80_dy8.md", "mcgdiff:draws=independent"),
    Entry("MCGDiff", "after", "256 particles, defaults otherwise (one draw per run)",
          "exactness_d80_dy2_N256_flag_20problems.md", "mcgdiff:particles=256"),
    Entry("MCGDiff", "option", "256 particles, draw(pooled='truncated')",
          "exactness_d80_dy2_N256_flag_20problems.md", "mcgdiff:particles=256 truncated"),
    Entry("MCGDiff", "after", "256 particles, defaults otherwise (one draw per run)",
          "exactness_d80_dy8_N256_flag_20problems.md", "mcgdiff:particles=256"),
    Entry("MCGDiff", "after", "1,024 particles, defaults otherwise (one draw per run)",
          "exactness_d80_dy8_N1024_20problems.md", "mcgdiff:particles=1024"),
    Entry("TDS", "before", f"64 particles, 200 steps, {_TDS_OLD}", "exactness_d80_dy2_tds64_20problems.md",
          "tds:particles=64"),
    Entry("TDS", "after", "defaults (16 particles, operator-aware twist, truncated pool)",
          "exactness_d80_dy2_tds_twist_operator.md", "tds truncated"),
    Entry("TDS", "after", "defaults (16 particles, operator-aware twist, truncated pool)",
          "exactness_d80_dy8_tds_twist_operator.md", "tds truncated"),
    Entry("TDS", "after", "64 particles, defaults otherwise", "exactness_d80_dy8_tds_twist_operator.md",
          "tds:particles=64 truncated"),
    Entry("PnP-DM", "before", "12 replicas, 200 burn-in, 10 chains x 10 draws", "exactness_d80_dy2_pnpdm.md",
          f"{_PNP},chains=10,thin=10"),
    Entry("PnP-DM", "before", "12 replicas, 200 burn-in, 100 chains x 1 draw", "exactness_d80_dy8_pnpdm_chains100.md",
          f"{_PNP},chains=100,thin=1"),
    Entry("PnP-DM", "after", f"warmup=auto, analytic prior step, {_G100}, 100 chains x 1 draw",
          "exactness_d80_dy2_pnpdm_analytic_prior_step.md", f"{_PNP},chains=100,thin=1{_PNP_NOW}"),
    Entry("PnP-DM", "after", "defaults (warmup=auto, analytic prior step, 200-point grid), 100 chains x 1 draw",
          "exactness_d80_dy2_pnpdm_grid200.md", f"{_PNP},chains=100,thin=1{_PNP_NOW},num_grid=200"),
    Entry("PnP-DM", "after", f"warmup=auto, analytic prior step, {_G100}, 100 chains x 1 draw",
          "exactness_d80_dy8_pnpdm_analytic_prior_step.md", f"{_PNP},chains=100,thin=1{_PNP_NOW}"),
    Entry("PnP-DM", "after", "defaults (warmup=auto, analytic prior step, 200-point grid), 100 chains x 1 draw",
          "exactness_d80_dy8_pnpdm_grid200.md", f"{_PNP},chains=100,thin=1{_PNP_NOW},num_grid=200"),
    Entry("ParticleGibbs", "before", f"MCGDiff 32 particles, 60 sweeps, {_PG_OLD}, 100 chains",
          "exactness_d80_dy2_particle_gibbs_20problems.md", "particle_gibbs:particles=32,chains=100,warmup=60"),
    Entry("ParticleGibbs", "after", f"MCGDiff 32 particles, {_PG_PIMH}, 100 chains",
          "exactness_d80_dy2_particle_gibbs_pimh.md", "particle_gibbs:particles=32,chains=100,warmup=30"),
    Entry("ParticleGibbs", "after", f"MCGDiff 128 particles, 60 sweeps, {_PG_OLD}, 100 chains",
          "exactness_d80_dy2_particle_gibbs_N128_20problems.md", "particle_gibbs:particles=128,chains=100,warmup=60"),
    Entry("ParticleGibbs", "after", f"MCGDiff 32 particles, {_PG_PIMH}, 100 chains",
          "exactness_d80_dy8_particle_gibbs_pimh.md", "particle_gibbs:particles=32,chains=100,warmup=30"),
    Entry("ParticleGibbs", "after", f"MCGDiff 128 particles, 60 sweeps, {_PG_OLD}, 100 chains",
          "exactness_d80_dy8_particle_gibbs_N128_20problems.md", "particle_gibbs:particles=128,chains=100,warmup=60"),
    # d = 80, the uneven family alone (seeds 0-19, then 20 fresh ones)
    Entry("MCGDiff", "after", "256 particles, one draw per run (uneven family)", "exactness_d80_dy2_uneven_N1024.md",
          "mcgdiff:particles=256,draws=all"),
    Entry("MCGDiff", "option", "256 particles, truncated pool (uneven family)", "exactness_d80_dy2_uneven_N1024.md",
          "mcgdiff:particles=256,draws=all truncated"),
    Entry("MCGDiff", "after", "1,024 particles, one draw per run (uneven family)", "exactness_d80_dy2_uneven_N1024.md",
          "mcgdiff:particles=1024,draws=all"),
    Entry("MCGDiff", "after", "256 particles, one draw per run (uneven, fresh seeds 20-39)",
          "exactness_d80_dy2_uneven_N256_fresh.md", "mcgdiff:particles=256,draws=all"),
    Entry("MCGDiff", "after", "1,024 particles, one draw per run (uneven, fresh seeds 20-39)",
          "exactness_d80_dy2_uneven_N1024_fresh.md", "mcgdiff:particles=1024,draws=all"),
    # d = 800, d_y = 2 (100 draws per problem; uneven family: minor modes up to 0.38 of the posterior)
    Entry("TDS", "after", "defaults (16 particles, operator-aware twist, truncated pool)",
          "exactness_d800_dy2_tds_20problems.md", "tds truncated"),
    Entry("TDS", "after", "64 particles, defaults otherwise", "exactness_d800_dy2_tds_20problems.md",
          "tds:particles=64 truncated"),
    Entry("TDS", "option", "64 particles, draw(pooled=True)", "exactness_d800_dy2_tds_20problems.md",
          "tds:particles=64 pooled"),
    Entry("MCGDiff", "after", "256 particles, defaults otherwise (one draw per run)",
          "exactness_d800_dy2_N256_20problems.md", "mcgdiff:particles=256"),
    Entry("MCGDiff", "option", "256 particles, draw(pooled='truncated')", "exactness_d800_dy2_N256_20problems.md",
          "mcgdiff:particles=256 truncated"),
    Entry("ParticleGibbs", "after", f"MCGDiff 32 particles, {_PG_PIMH}, 100 chains",
          "exactness_d800_dy2_particle_gibbs_pimh_20problems.md", "particle_gibbs:particles=32,chains=100,warmup=30"),
    Entry("PnP-DM", "after", "defaults (warmup=auto, analytic prior step, 200-point grid), 100 chains x 1 draw",
          "exactness_d800_dy2_pnpdm_20problems.md",
          f"{_PNP},chains=100,thin=1{_PNP_NOW},num_grid=200"),
    # d = 800, d_y = 8 (100 draws per problem; uneven family)
    Entry("MCGDiff", "before", "256 particles, 200 steps, plug-in step variance, one draw per run",
          "exactness_d800_dy8_N256_20problems.md", "mcgdiff:particles=256,draws=independent"),
    Entry("MCGDiff", "after", "256 particles, defaults otherwise", "exactness_d800_dy8_N256_analytic_20problems.md",
          "mcgdiff:particles=256,draws=independent"),
    Entry("MCGDiff", "after", "1,024 particles, defaults otherwise", "exactness_d800_dy8_N1024_20problems.md",
          "mcgdiff:particles=1024"),
    Entry("TDS", "after", "defaults (16 particles, operator-aware twist, truncated pool)",
          "exactness_d800_dy8_tds_20problems.md", "tds truncated"),
    Entry("TDS", "after", "64 particles, defaults otherwise", "exactness_d800_dy8_tds64_20problems.md",
          "tds:particles=64 truncated"),
    Entry("ParticleGibbs", "after", f"MCGDiff 32 particles, {_PG_PIMH}, 100 chains",
          "exactness_d800_dy8_particle_gibbs_pimh_20problems.md", "particle_gibbs:particles=32,chains=100,warmup=30"),
    Entry("PnP-DM", "before", "12 replicas, 200 burn-in, 100 chains x 1 draw", "exactness_d800_dy8_pnpdm_5problems.md",
          f"{_PNP},chains=100,thin=1"),
    Entry("PnP-DM", "after", f"warmup=auto, analytic prior step, {_G100}, 100 chains x 1 draw",
          "exactness_d800_dy8_pnpdm_analytic_prior_step_20problems.md", f"{_PNP},chains=100,thin=1{_PNP_NOW}"),
)


def read_control(path: str) -> tuple[int, dict]:
    """From a control-distribution table (:func:`~ppl_diffusion.bench.exact_control.run_control`): its draws per
    set and ``{problem label: {"sw", "tv", "cov", "all"}}``, each problem's probability that a further set of
    exact draws is inside."""
    text = open(path).read()
    m = re.search(r"(\d+) draws per set", text)
    if m is None:
        raise ValueError(f"{path}: no 'N draws per set' in it (not a control-distribution table?)")
    rates = {}
    for line in text.splitlines():
        c = [v.strip() for v in line.strip().strip("|").split("|")]
        if len(c) == 5 and _LABEL.fullmatch(c[0]):
            rates[c[0]] = dict(zip(("sw", "tv", "cov", "all"), map(float, c[1:])))
    return int(m.group(1)), rates


def _controls(results: str) -> dict:
    """``{draws per set: {label: rates}}`` over every ``exactness_*control_distribution.md`` in ``results`` (in
    name order; a problem in two files keeps the first file's estimate of the same probabilities)."""
    out: dict = {}
    for path in sorted(glob.glob(os.path.join(results, "exactness_*control_distribution.md"))):
        n, rates = read_control(path)
        for lab, r in rates.items():
            out.setdefault(n, {}).setdefault(lab, r)
    return out


def _coverage(path: str, method: str, d_y: int, labels) -> tuple[float, str]:
    """The method's mean 90 % coverage over ``labels`` (its per-problem rows) and the exact sets' mean from the
    table's summary row ("-" where the table does not give it)."""
    cov, exact = [], "-"
    for line in open(path).read().splitlines():
        c = [v.strip() for v in line.strip().strip("|").split("|")]
        if len(c) >= 8 and c[0] in labels and _without_draws(c[2]) == method:
            cov.append(float(c[5].split()[0]))
        elif len(c) >= 8 and _without_draws(c[0]) == method and c[1] == str(d_y) and c[2].isdigit():
            m = re.search(r"\(([\d.]+)\)", c[7])
            exact = m.group(1) if m else exact
    return sum(cov) / len(cov), exact


def summary_rows(entries=ENTRIES, results: str = RESULTS_DIR) -> list[dict]:
    """One dict per entry and d_y: the counts inside SW / TV / coverage / all three, the control's expected count,
    its 5 % point and ``P(control <= count)`` (``None`` where the control lacks a problem), the mean 90 % coverage
    (``mean_cov``) and the exact sets' (``exact_cov``, a string)."""
    controls = _controls(results)
    rows = []
    for e in entries:
        path = os.path.join(results, e.table)
        n, methods = read_verdicts(path)
        method = _without_draws(e.method)
        verdicts = {}  # a merged table's parts may spell the draws option differently: join them as merge does
        for m in (m for m in methods if _without_draws(m) == method):
            if twice := sorted(verdicts.keys() & methods[m].keys()):
                raise ValueError(f"{e.table}: problems {twice} twice for {method!r}")
            verdicts.update(methods[m])
        if not verdicts:
            raise ValueError(f"{e.table}: no method row matches {e.method!r} (rows: {sorted(methods)})")
        by_dy: dict = {}
        for lab, v in verdicts.items():
            fam, d, d_y, seed = _LABEL.fullmatch(lab).groups()
            by_dy.setdefault((int(d), int(d_y)), {})[lab] = v
        for (d, d_y), vs in sorted(by_dy.items()):
            rates = controls.get(n, {})
            known = all(lab in rates for lab in vs)
            p = [rates[lab]["all"] for lab in vs] if known else None
            k = {s: sum(v[s] for v in vs.values()) for s in ("sw", "tv", "cov", "all")}
            cov, exact_cov = _coverage(path, method, d_y, vs)
            rows.append({"entry": e, "d": d, "d_y": d_y, "n": n, "problems": len(vs), **k,
                         "expected": sum(p) if p else None, "point": _lower_point(p) if p else None,
                         "P": count_pvalue(k["all"], p) if p else None, "mean_cov": cov, "exact_cov": exact_cov})
    return rows


def run_summary(entries=ENTRIES, results: str = RESULTS_DIR, out=RESULTS_DIR, name: str = "exactness_summary",
                cmd: str = ""):
    """Write the summary table (see the module docstring)."""
    rows = summary_rows(entries, results)
    table = MarkdownTable("d", "d_y", "sampler", "stage", "settings", "problems", "inside SW", "inside TV",
                          "inside coverage", "inside all three", "exact draws expect (5 % point)",
                          "P(exact <= count)", "mean 90 % coverage (exact sets')", "table")
    order = {"before": 0, "after": 1, "option": 2, "holdout": 3}
    rows.sort(key=lambda r: (r["d"], r["entry"].table.find("uneven") >= 0, r["d_y"], r["entry"].sampler,
                             order.get(r["entry"].stage, 3)))
    for r in rows:
        e, m = r["entry"], r["problems"]
        exp = f"{r['expected']:.1f} ({r['point']})" if r["expected"] is not None else "-"
        pv = f"{r['P']:.3f}" if r["P"] is not None else "-"
        table.add(r["d"], r["d_y"], e.sampler, e.stage, e.settings, m, *(f"{r[s]}/{m}" for s in ("sw", "tv", "cov")),
                  f"**{r['all']}/{m}**", exp, pv, f"{r['mean_cov']:.3f} ({r['exact_cov']})", f"[{e.table}]({e.table})")
    notes = ("Counts recomputed from the per-problem verdicts of each linked table (inside: SW and component TV at "
             "most the 95 % point of 20 exact sets of the same size on the same problem, 90 % coverage within their "
             "2.5-97.5 % range). Exact draws expect: the mean of the count a sampler indistinguishable from exact "
             "draws would score on the same problems (the sum of each problem's probability of a further exact set "
             "being inside all three, from the exactness_*control_distribution.md files of the same sample size), "
             "with its 5 % point; P(exact <= count): how often exact draws score as low (below 0.05: the sampler is "
             "distinguishable from exact draws on those problems). before: the settings of the first measurement; "
             "after: the defaults now, or the stated compute; option: a documented non-default draw; holdout: the "
             "defaults on 20 fresh problems per d_y (seeds 100-119) that no default was chosen on (but PnP-DM's "
             "num_grid=200, chosen on them and on d = 80, d_y = 2). Families "
             "cycled over seeds (fullcov, uneven, spectrum) except the rows of uneven tables and d = 800 (uneven "
             "family). Issue 17's outside measurement, for comparison: 2 of 41 runs inside on all three.")
    return write_result(out, name, "Exactness before and after: each exact sampler against exact draws", cmd,
                        str(table), notes)
