"""ppl_diffusion.study, in-process backend: the grid, the scores against exact posteriors, the merged
InferenceData, failures reported per cell, resume after a failure or an interrupt, the command line.
The Ray backend: tests/test_study_ray.py."""
import math

import numpy as np
import pytest
import torch

import ppl_diffusion.methods as methods_mod
from ppl_diffusion.study import COLUMNS, Study, load_study, run_study
from ppl_diffusion.study.cell import LEVELS, score

METRICS = ["coverage50", "coverage90", "rmse", "mean_std", "std_err_corr", "sw", "sw_floor", "nfe_per_sample"]


def gmm_study(**kw):
    return Study(**{"methods": {"ddrm": {"steps": 10}, "mcgdiff": {"steps": 10, "particles": 8}},
                    "problem": {"kind": "gmm", "d": 8, "d_y": 2}, "measurements": 2, "samples": 16,
                    "settings": {"dy2": {}, "dy4": {"d_y": 4}}, **kw})


@pytest.fixture
def count_calls(monkeypatch):
    calls = []
    real = methods_mod.run_method

    def counted(name, *a, **k):
        calls.append(name)
        return real(name, *a, **k)

    monkeypatch.setattr(methods_mod, "run_method", counted)
    return calls


def test_grid_toml_and_cell_ids(tmp_path):
    f = tmp_path / "s.toml"
    f.write_text('name = "t"\nmeasurements = "0-2"\nseeds = 2\nsamples = 4\n[problem]\nkind = "gmm"\nd = 4\n'
                 'd_y = 1\n[methods]\nddrm = { steps = 5 }\nfast = { method = "ddrm", steps = 2 }\n'
                 '[settings]\na = {}\nb = { d_y = 2, options = { eta = 0.5 } }\n[resources]\nmax_retries = 1\n')
    st = load_study(f)
    cells = st.cells()
    assert len(cells) == 3 * 2 * 2 * 2 and st.max_retries == 1
    assert len({c.cell_id for c in cells}) == len(cells)
    assert [c.cell_id for c in cells] == [c.cell_id for c in load_study(f).cells()]  # stable
    c = next(c for c in cells if c.method == "fast" and c.setting == "b")
    assert c.name == "ddrm" and c.options == {"steps": 2, "eta": 0.5} and c.problem["d_y"] == 2
    # a changed option is a new cell, not a reused result
    st2 = Study(methods={"ddrm": {"steps": 6}}, problem=st.problem, measurements=[0], samples=4)
    assert st2.cells()[0].cell_id != next(c for c in cells if c.method == "ddrm").cell_id
    y = tmp_path / "s.yaml"  # the same study in YAML
    y.write_text("name: t\nmeasurements: 0-2\nseeds: 2\nsamples: 4\nproblem: {kind: gmm, d: 4, d_y: 1}\n"
                 "methods: {ddrm: {steps: 5}, fast: {method: ddrm, steps: 2}}\n"
                 "settings: {a: {}, b: {d_y: 2, options: {eta: 0.5}}}\nresources: {max_retries: 1}\n")
    assert [c.cell_id for c in load_study(y).cells()] == [c.cell_id for c in cells]
    with pytest.raises(ValueError, match="unknown keys"):
        Study(methods={"ddrm": {}}, problem={"kind": "gmm", "sigma": 1})
    with pytest.raises(ValueError, match="no_such_method|unknown"):
        Study(methods={"no_such_method": {}})


def test_scores_of_exact_posterior_draws_are_calibrated():
    """Exact posterior draws of GMM problems (x* ~ prior, so x* ~ posterior given y): coverage at every
    level is the nominal level on average, and the sliced W of n exact draws is the floor's size."""
    from ppl_diffusion.models.gmm import gmm_benchmark_problem

    g = torch.Generator().manual_seed(0)
    rows = []
    for seed in range(40):
        pb = gmm_benchmark_problem(8, 2, seed=seed)
        exact = pb.posterior if seed < 6 else None  # SW on a few: it is the costly part
        rows.append(score(pb.posterior.sample(200, generator=g), pb.x_true, exact, seed=seed, image=False))
    for a in LEVELS:
        cov = np.mean([r[f"coverage{round(100 * a):02d}"] for r in rows])
        assert abs(cov - a) < 0.06, (a, cov)  # 320 coordinates; binomial sd <= 0.028
    ratio = np.mean([r["sw"] / r["sw_floor"] for r in rows[:6]])
    assert 0.8 < ratio < 1.25, ratio
    assert all(math.isnan(r["psnr"]) for r in rows)


def test_study_merged_inference_data_and_failures(tmp_path):
    st = gmm_study(methods={"ddrm": {"steps": 10}, "mcgdiff": {"steps": 10, "particles": 8},
                            "broken": {"method": "ddrm", "eta": 7.0}})
    res = run_study(st, tmp_path / "s")
    assert len(res.table) == 2 * 3 * 2 and list(res.table.columns) == COLUMNS
    failed = res.failed
    assert len(failed) == 4 and set(failed["method"]) == {"broken"}
    assert failed["error"].str.contains("eta").all()
    post = res.inference_data.posterior["x"]
    assert post.dims[:6] == ("chain", "draw", "measurement", "method", "setting", "seed")
    assert post.sizes["measurement"] == 2 and list(post["method"].values) == ["ddrm", "mcgdiff", "broken"]
    assert list(post["setting"].values) == ["dy2", "dy4"]
    assert np.isnan(post.sel({"method": "broken"}).values).all()
    # the table's scores are those of the stored draws
    ok = res.table[res.table["status"] == "ok"]
    r = ok.iloc[3]
    x = post.sel({"measurement": r.measurement, "method": r.method, "setting": r.setting, "seed": r.seed}).values
    xt = res.inference_data.constant_data["x_true"].sel({"measurement": r.measurement, "setting": r.setting}).values
    from ppl_diffusion.metrics import coverage

    flat = torch.as_tensor(x.reshape(-1, x.shape[-1]))
    assert float(coverage(flat, torch.as_tensor(xt), level=0.9)) == pytest.approx(r.coverage90)
    obs = res.inference_data.observed_data  # d_y differs between the settings: one y per setting
    assert obs["y_dy2"].shape == (2, 2) and obs["y_dy4"].shape == (2, 4)
    for f in ("study.nc", "table.csv", "summary.md", "calibration.png", "results.csv", "study.json"):
        assert (tmp_path / "s" / f).is_file()
    assert "broken" in (tmp_path / "s" / "summary.md").read_text()


def test_resume_after_failure_and_interrupt(tmp_path, count_calls):
    st = gmm_study()
    ref = run_study(st, tmp_path / "ref", merge=False).table
    n = len(ref)
    assert len(count_calls) == n == 8
    count_calls.clear()
    out = tmp_path / "run"
    # a cell raising (once), then an interrupt from the driver after two more cells
    seen = []

    def stop(cell, row):
        seen.append(row["status"])
        if len(seen) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_study(st, out, callback=stop, fault={"match": "m0_mcgdiff_dy2", "action": "raise", "once": str(tmp_path)})
    assert seen == ["ok", "failed", "ok"]
    assert len(count_calls) == 2  # the failed cell never reached the solver
    count_calls.clear()
    # an interrupt inside a cell (in flight): that cell is lost, the finished ones are kept
    with pytest.raises(KeyboardInterrupt):
        run_study(st, out, fault={"match": "m1_ddrm_dy2", "action": "interrupt", "once": str(tmp_path)})
    assert len(count_calls) == 2  # the failed cell (m0_mcgdiff_dy2) again and m0_mcgdiff_dy4
    count_calls.clear()
    with open(out / "results.csv", "a") as f:  # a row torn by a kill while it was written
        f.write("m1_mcgdiff_dy4_s0_0123abcd,1,mcgdiff,dy4,0,mcg")
    res = run_study(st, out, merge=False)
    assert res.skipped + res.ran == n and len(count_calls) == res.ran < n
    a = ref.set_index("cell_id")[METRICS]
    b = res.table.set_index("cell_id")[METRICS]
    assert list(a.index) == list(b.index) and (res.table["status"] == "ok").all()
    np.testing.assert_array_equal(a.to_numpy(), b.to_numpy())
    count_calls.clear()
    again = run_study(st, out, merge=False)
    assert again.ran == 0 and count_calls == []


def test_image_study_and_command_line(tmp_path, capsys):
    from ppl_diffusion.cli import main
    from ppl_diffusion.models.zoo import list_priors

    if "digits" not in list_priors():
        pytest.skip("needs the shipped digits prior")
    out = tmp_path / "img"
    rc = main(["study", "--methods", "ddrm", "--method-args", '{"ddrm": {"steps": 3}}', "--measurements", "2",
               "--samples", "4", "--operator", "sr", "--op-args", "factor=2", "--out", str(out), "--no-progress"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "PSNR" in text and "ran 2 cells" in text
    import xarray as xr

    post = xr.load_dataset(out / "study.nc", group="posterior")
    assert post["x"].dims == ("chain", "draw", "measurement", "method", "setting", "seed", "channel", "row", "col")
    y = xr.load_dataset(out / "study.nc", group="observed_data")["y"]
    assert y.dims == ("measurement", "setting", "y_channel", "y_row", "y_col")
    assert y.shape[:2] == (2, 1) and 2 * y.shape[-1] == post["x"].shape[-1]  # 2x super-resolution
    assert main(["study", "--methods", "ddrm", "--method-args", '{"ddrm": {"steps": 3}}', "--measurements", "2",
                 "--samples", "4", "--op-args", "factor=2", "--out", str(out), "--no-progress"]) == 0
    assert "ran 0 cells, skipped 2" in capsys.readouterr().out
    assert main(["study", "--out", str(out)]) == 2  # no methods: a one-line error
    assert main(["study", "--example"]) == 0 and "[methods]" in capsys.readouterr().out
