"""The before/after summary recounts the linked tables and reads the counts against the control."""
import itertools
import math
import os

import pytest

from ppl_diffusion.bench.exactness_summary import ENTRIES, Entry, read_control, summary_rows
from ppl_diffusion.bench.report import RESULTS_DIR

HERE = os.path.dirname(__file__)
RESULTS = os.path.join(HERE, "..", RESULTS_DIR)

P_ALL = {"(fullcov, 80, 2, 0)": 0.7, "(uneven, 80, 2, 1)": 0.9, "(spectrum, 80, 2, 2)": 0.6}


def _control(folder, n=100):
    rows = "\n".join(f"| {lab} | 0.9 | 0.9 | 0.8 | {p} |" for lab, p in P_ALL.items())
    text = ("# control\n\n| problem (family, d, d_y, seed) | P(inside SW) | P(inside TV) | P(inside coverage) | "
            f"P(inside all three) |\n|---|---|---|---|---|\n{rows}\n\nd = 80, {n} draws per set, problems 0-2\n")
    (folder / "exactness_d80_control_distribution.md").write_text(text)


def _table(folder, name, rows, summary=""):
    body = "\n".join(f"| {lab} | 0.1 | {m} | 0.1 / 0.2 | 0.0 / 0.1 | {cov} [0.87, 0.89] | 0.1 | {v} | - | 1.0 |"
                     for lab, m, cov, v in rows)
    (folder / name).write_text(f"# t\n\n{summary}\n\n{body}\n\nd = 80, 200 steps, 100 samples per problem\n")


def _brute_p(k, p):
    """P(count <= k) by enumerating every outcome of the independent problems."""
    total = 0.0
    for outcome in itertools.product((0, 1), repeat=len(p)):
        if sum(outcome) <= k:
            total += math.prod(q if o else 1 - q for o, q in zip(outcome, p))
    return total


def test_counts_expected_and_pvalue_against_enumeration(tmp_path):
    _control(tmp_path)
    labs = list(P_ALL)
    # two parts of a merged table spell the draws option differently: they are one method
    _table(tmp_path, "t.md", [(labs[0], "mcgdiff:particles=256", 0.880, "in/in/in"),
                              (labs[1], "mcgdiff:particles=256,draws=independent", 0.870, "in/OUT/in"),
                              (labs[2], "mcgdiff:particles=256", 0.890, "OUT/in/OUT"),
                              (labs[0], "mcgdiff:particles=256 truncated", 0.5, "OUT/OUT/OUT")],
           summary="| method | d_y | problems |\n|---|---|---|\n| mcgdiff:particles=256 | 2 | 3 | 2/3 | 2/3 | 2/3 | "
                   "1/3 | 0.880 (0.882) |")
    (row,) = summary_rows([Entry("MCGDiff", "after", "N = 256", "t.md", "mcgdiff:particles=256,draws=both")],
                          str(tmp_path))
    assert (row["problems"], row["sw"], row["tv"], row["cov"], row["all"]) == (3, 2, 2, 2, 1)
    assert row["expected"] == pytest.approx(0.7 + 0.9 + 0.6)
    assert row["P"] == pytest.approx(_brute_p(1, [0.7, 0.9, 0.6]), abs=1e-12)
    assert row["mean_cov"] == pytest.approx((0.880 + 0.870 + 0.890) / 3)
    assert row["exact_cov"] == "0.882"
    assert (row["d"], row["d_y"], row["n"]) == (80, 2, 100)


def test_control_of_another_sample_size_is_not_used(tmp_path):
    _control(tmp_path, n=200)  # the table has 100 samples per problem
    _table(tmp_path, "t.md", [(lab, "tds", 0.88, "in/in/in") for lab in P_ALL])
    (row,) = summary_rows([Entry("TDS", "after", "x", "t.md", "tds")], str(tmp_path))
    assert row["all"] == 3 and row["expected"] is None and row["P"] is None


def test_missing_method_and_duplicated_problem_are_refused(tmp_path):
    _control(tmp_path)
    lab = next(iter(P_ALL))
    _table(tmp_path, "t.md", [(lab, "tds", 0.88, "in/in/in"), (lab, "tds,draws=both", 0.88, "in/in/in")])
    with pytest.raises(ValueError, match="no method row matches 'pnpdm'"):
        summary_rows([Entry("PnP-DM", "after", "x", "t.md", "pnpdm")], str(tmp_path))
    with pytest.raises(ValueError, match="twice"):
        summary_rows([Entry("TDS", "after", "x", "t.md", "tds")], str(tmp_path))


def test_read_control_refuses_other_files(tmp_path):
    (tmp_path / "x.md").write_text("| a | b |\n")
    with pytest.raises(ValueError, match="draws per set"):
        read_control(str(tmp_path / "x.md"))


def test_shipped_entries_resolve_against_the_shipped_tables():
    rows = summary_rows(ENTRIES, RESULTS)
    assert len(rows) >= len(ENTRIES)
    for r in rows:  # every row has its control (same sample size) and a count within its problems
        assert r["P"] is not None, (r["entry"].table, r["d_y"])
        assert 0 <= r["all"] <= min(r["sw"], r["tv"], r["cov"]) <= r["problems"]
