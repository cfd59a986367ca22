"""ppl_diffusion.study on a local Ray with 2 CPU slots (one Ray session for the module): the same numbers
as the in-process backend for the same seeds, the prior loaded once per worker, a killed worker retried
then reported per cell, an interrupted study resumed to the same final table. Skipped without Ray
(pip install 'ppl-diffusion[ray]')."""
import numpy as np
import pytest

ray = pytest.importorskip("ray")

from ppl_diffusion.study import Study, run_study  # noqa: E402

METRICS = ["psnr", "ssim", "coverage50", "coverage90", "rmse", "mean_std", "std_err_corr", "sw", "sw_floor",
           "nfe_per_sample"]


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def gmm_study(**kw):
    return Study(**{"methods": {"ddrm": {"steps": 10}, "mcgdiff": {"steps": 10, "particles": 8}},
                    "problem": {"kind": "gmm", "d": 8, "d_y": 2}, "measurements": 2, "samples": 16, **kw})


def same(a, b):
    a, b = a.set_index("cell_id"), b.set_index("cell_id")
    assert list(a.index) == list(b.index)
    assert list(a["status"]) == list(b["status"]), (list(a["error"]), list(b["error"]))
    np.testing.assert_array_equal(a[METRICS].to_numpy(), b[METRICS].to_numpy(),
                                  err_msg=f"{a[METRICS].to_string()}\n{b[METRICS].to_string()}\n{b['worker']}")


def test_ray_equals_inprocess_and_loads_the_prior_once_per_worker(tmp_path):
    from ppl_diffusion.models.zoo import list_priors

    if "digits" not in list_priors():
        pytest.skip("needs the shipped digits prior")
    st = Study(methods={"ddrm": {"steps": 3}, "mcgdiff": {"steps": 3, "particles": 4}},
               problem={"kind": "image", "prior": "digits", "operator": "sr", "op_args": {"factor": 2}},
               measurements=3, samples=4)
    a = run_study(st, tmp_path / "local")
    b = run_study(st, tmp_path / "ray", backend="ray")
    assert (b.table["status"] == "ok").all() and len(b.table) == 6
    same(a.table, b.table)
    np.testing.assert_array_equal(a.inference_data.posterior["x"].values, b.inference_data.posterior["x"].values)
    loads = b.table.groupby("worker")["prior_load_s"].apply(lambda s: int((s > 0).sum()))
    assert (loads == 1).all()  # every worker process loaded the prior once, in its first cell


def test_ray_killed_worker_is_retried_then_reported(tmp_path):
    st = gmm_study()
    ref = run_study(st, tmp_path / "ref", merge=False).table
    # the worker running m0_ddrm dies once: Ray retries the task, the study ends as if nothing happened
    res = run_study(st, tmp_path / "once", backend="ray", merge=False,
                    fault={"match": "m0_ddrm", "action": "exit", "once": str(tmp_path)})
    same(ref, res.table)
    # a cell whose worker always dies: reported after max_retries, the other cells finish
    res = run_study(gmm_study(max_retries=1), tmp_path / "always", backend="ray", merge=False,
                    fault={"match": "m1_mcgdiff", "action": "exit"})
    bad = res.failed
    assert list(bad["method"]) == ["mcgdiff"] and list(bad["measurement"]) == [1]
    assert bad["error"].iloc[0] and "injected" not in bad["error"].iloc[0]  # a Ray error: the worker died
    assert (res.table["status"] == "ok").sum() == len(res.table) - 1


def test_ray_interrupt_and_resume(tmp_path):
    st = gmm_study()
    ref = run_study(st, tmp_path / "ref", merge=False).table

    def stop(cell, row):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_study(st, tmp_path / "run", backend="ray", callback=stop, merge=False)
    res = run_study(st, tmp_path / "run", backend="ray")
    assert res.skipped == 1 and res.ran == len(ref) - 1
    same(ref, res.table)
    assert res.inference_data.posterior["x"].sizes["measurement"] == 2
