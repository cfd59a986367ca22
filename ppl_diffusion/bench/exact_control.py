"""The exact control as a distribution: how many of a table's problems a sampler indistinguishable
from exact draws would have inside the exact spread, and whether a sampler's count is below that.

:mod:`ppl_diffusion.bench.exactness` judges each problem against the spread of 20 fixed sets of exact
draws. A further set of exact draws is then inside with a probability ``p_i`` of its own on each
problem (for one statistic about ``19.05 / 21`` on average, the chance that a 21st exchangeable value
lies below the interpolated 95 % point of 20; for coverage's two-sided range about ``18.05 / 21``),
and ``p_i`` varies from problem to problem with where the 20 sets happened to fall. One control set
per problem is one draw of a count with a spread of about +-2 on 20 problems; this module estimates
each ``p_i`` from ``reps`` control sets, so the count of a sampler indistinguishable from exact draws
has the Poisson-binomial distribution of the ``p_i`` (computed exactly), and a sampler's count ``k``
reads against it as ``P(control count <= k)``: below 0.05, the sampler is distinguishable from exact
draws on those problems at the 5 % level; otherwise the table cannot tell it apart.

    OMP_NUM_THREADS=1 python benchmarks/exactness.py control --d 80 --dys 2,8 --problems 20 --samples 100 \\
        --control-reps 200 --against benchmarks/results/exactness_d80_dy2_pnpdm_chains100.md
"""
from __future__ import annotations

import re
import time

import torch

from .exactness import FAMILIES, Reference, exact_spread, exactness_problem, score, verdict
from .report import RESULTS_DIR, MarkdownTable, write_result

__all__ = ["control_rates", "poisson_binomial", "count_pvalue", "read_verdicts", "run_control"]

STATS = ("sw", "tv", "cov", "all")


def _seed(d: int, d_y: int, i: int) -> int:
    """The control sets' seed: apart from the reference's (70,000 + i), the spread's (80,000 + i) and the
    table's single control set (90,000 + i)."""
    return 2_000_000 + 10_007 * d + 101 * d_y + i


def control_rates(d: int, d_y: int, seeds, n: int, reps: int = 200, sets: int = 20, families=FAMILIES) -> list:
    """Per problem (``seeds``, families cycled as in the exactness tables), the fraction of ``reps`` sets
    of ``n`` exact draws inside the exact spread of ``sets`` sets on each statistic and on all three:
    ``[{"label", "sw", "tv", "cov", "all"}]``."""
    if reps < 2:
        raise ValueError(f"reps must be >= 2, got {reps}")
    out = []
    for i in seeds:
        fam = families[i % len(families)]
        pb = exactness_problem(fam, d, d_y, seed=i)
        ref = Reference.build(pb, seed=i)
        spread = exact_spread(ref, n, sets, seed=i)
        g = torch.Generator().manual_seed(_seed(d, d_y, i))
        hits = dict.fromkeys(STATS, 0)
        for _ in range(reps):
            v = verdict(score(pb.posterior.sample(n, generator=g), ref), spread)
            for k in STATS:
                hits[k] += bool(v[k])
        out.append({"label": f"({fam}, {d}, {d_y}, {i})", **{k: hits[k] / reps for k in STATS}})
    return out


def poisson_binomial(p) -> torch.Tensor:
    """The distribution ``(len(p) + 1,)`` of the number of successes of independent trials with success
    probabilities ``p`` (exact, by adding one trial at a time)."""
    pmf = torch.ones(1, dtype=torch.float64)
    for q in torch.as_tensor(p, dtype=torch.float64).reshape(-1).tolist():
        pmf = torch.cat([pmf * (1 - q), pmf.new_zeros(1)]) + torch.cat([pmf.new_zeros(1), pmf * q])
    return pmf


def count_pvalue(k: int, p) -> float:
    """``P(C <= k)`` for ``C`` Poisson-binomial with probabilities ``p``: how often an exact sampler's count
    would be as low as ``k``."""
    return float(poisson_binomial(p)[: int(k) + 1].sum().clamp(max=1.0))


def _lower_point(p, level: float = 0.05) -> int:
    """The smallest count ``k`` with ``P(C <= k) >= level``."""
    cdf = torch.cumsum(poisson_binomial(p), 0)
    return int(torch.nonzero(cdf >= level)[0])


def read_verdicts(path: str):
    """From an exactness table (or a merged one, or rows copied from a run's log under its command line): its
    samples per problem, and ``{method: {problem label: {"sw", "tv", "cov", "all"}}}`` from its per-problem
    rows."""
    text = open(path).read()
    m = re.search(r"(\d+) samples per problem", text) or re.search(r"--samples (\d+)", text)
    if m is None:
        raise ValueError(f"{path}: neither 'N samples per problem' nor '--samples N' in it (not an exactness table?)")
    rows = {}
    for line in text.splitlines():
        c = [v.strip() for v in line.strip().strip("|").split("|")]
        if len(c) < 8 or not re.fullmatch(r"\(\w+, \d+, \d+, \d+\)", c[0]):
            continue
        flags = c[7].split("/")
        if len(flags) != 3 or not set(flags) <= {"in", "OUT"}:
            continue
        v = {k: f == "in" for k, f in zip(("sw", "tv", "cov"), flags)}
        v["all"] = all(v.values())
        rows.setdefault(c[2], {})[c[0]] = v
    return int(m.group(1)), rows


def run_control(d: int, dys, n_problems: int, n_samples: int, reps: int = 200, sets: int = 20, families=FAMILIES,
                first_problem: int = 0, against=(), out=RESULTS_DIR, name: str | None = None, cmd: str = ""):
    """The control's table (see the module docstring): per problem its inside rates, per ``d_y`` the control
    count's mean, sd and 5 % point, and each method row of the tables ``against`` read against the control
    on the problems they share (tables of another sample size are refused)."""
    tables = {path: read_verdicts(path) for path in against}  # read first: a bad table fails before the runs
    for path, (n, _) in tables.items():
        if n != n_samples:
            raise ValueError(f"{path}: {n} samples per problem, the control was run with {n_samples}")
    t0 = time.perf_counter()
    by_dy = {d_y: control_rates(d, d_y, range(first_problem, first_problem + n_problems), n_samples, reps, sets,
                                families) for d_y in dys}
    rates = {r["label"]: r for rs in by_dy.values() for r in rs}
    sec = time.perf_counter() - t0
    summary = MarkdownTable("d_y", "problems", "expected inside SW", "inside TV", "inside coverage",
                            "inside all three (sd)", "5 % point of all three")
    for d_y, rs in by_dy.items():
        p = [r["all"] for r in rs]
        sd = sum(q * (1 - q) for q in p) ** 0.5
        summary.add(d_y, len(rs), *(f"{sum(r[k] for r in rs):.1f}" for k in ("sw", "tv", "cov")),
                    f"{sum(p):.1f} ({sd:.1f})", _lower_point(p))
    per = MarkdownTable("problem (family, d, d_y, seed)", "P(inside SW)", "P(inside TV)", "P(inside coverage)",
                        "P(inside all three)")
    for r in rates.values():
        per.add(r["label"], *(f"{r[k]:.2f}" for k in STATS))
    body = [str(summary), str(per)]
    if against:
        tab = MarkdownTable("table", "method", "problems", "inside all three", "control: expected (5 % point)",
                            "P(control <= count)", "per statistic: count, P(control <= count)", "reading")
        for path, (_, methods) in tables.items():
            for method, vs in methods.items():
                shared = [lab for lab in vs if lab in rates]
                if not shared:
                    continue
                stats = []
                for k in ("sw", "tv", "cov"):
                    cnt = sum(vs[lab][k] for lab in shared)
                    stats.append(f"{k} {cnt}, {count_pvalue(cnt, [rates[lab][k] for lab in shared]):.2f}")
                p = [rates[lab]["all"] for lab in shared]
                k_all = sum(vs[lab]["all"] for lab in shared)
                pv = count_pvalue(k_all, p)
                tab.add(path.rsplit("/", 1)[-1], method, len(shared), k_all, f"{sum(p):.1f} ({_lower_point(p)})",
                        f"{pv:.3f}", "; ".join(stats), "below exact (5 %)" if pv < 0.05 else "indistinguishable")
        body.append(str(tab))
    notes = (f"d = {d}, {n_samples} draws per set, problems {first_problem}-{first_problem + n_problems - 1} (families "
             f"{', '.join(families)} cycled over seeds, as in the exactness tables), each judged against the same "
             f"{sets} exact sets as there; {reps} further exact sets per problem give P(inside) ({sec:.0f} s). The "
             "control count of a table is Poisson-binomial in these probabilities; its 5 % point is the smallest "
             "count k with P(count <= k) >= 0.05. P(control <= count): how often an exact sampler would score as "
             "low as the method's count on the problems it shares with this control; 'below exact (5 %)' when "
             "under 0.05. The probabilities carry Monte Carlo error of sd <= 0.5 / sqrt(reps) each.")
    name = name or f"exactness_d{d}_control_distribution"
    write_result(out, name, f"Exact control as a distribution (GMM families, d = {d})", cmd, "\n\n".join(body), notes)
    return rates
