"""ppl-diffusion command line: subcommands end-to-end on a tiny random prior, and clear errors with
exit code 2 on bad input."""
import json

import numpy as np
import pytest
import torch

from ppl_diffusion.cli import main


def make_tiny_prior_folder(folder, size=16, n_heldout=6, seed=0):
    from ppl_diffusion.compat import ensure_diffusers_importable

    ensure_diffusers_importable()
    from diffusers import UNet2DModel

    from ppl_diffusion.models.zoo import save_unet

    torch.manual_seed(seed)
    unet = UNet2DModel(sample_size=size, in_channels=1, out_channels=1, block_out_channels=(16, 32),
                       layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=8)
    cfg = {"num_train_timesteps": 1000, "beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02,
           "prediction_type": "epsilon"}
    save_unet(unet, cfg, folder)
    u = torch.linspace(-1, 1, size)
    imgs = torch.stack([0.8 * torch.sin((2 + k) * u)[:, None] * torch.cos((1 + k) * u)[None, :]
                        for k in range(n_heldout)])[:, None]
    np.save(folder / "heldout.npy", imgs.numpy().astype(np.float32))
    return folder


@pytest.fixture(scope="module")
def prior_dir(tmp_path_factory):
    return make_tiny_prior_folder(tmp_path_factory.mktemp("prior") / "tiny")


@pytest.fixture(scope="module")
def image_npy(prior_dir, tmp_path_factory):
    p = tmp_path_factory.mktemp("img") / "x.npy"
    np.save(p, np.load(prior_dir / "heldout.npy")[0])
    return p


def test_help_exits_zero(capsys):
    for argv in (["--help"], ["demo", "--help"], ["solve", "--help"], ["train-prior", "--help"],
                 ["benchmark", "--help"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 0
    out = capsys.readouterr().out
    assert "ppl-diffusion demo" in out and "--operator" in out and "--dataset" in out


def test_no_subcommand_prints_help(capsys):
    assert main([]) == 2
    assert "SUBCOMMAND" in capsys.readouterr().out


def test_solve_denoising_end_to_end(prior_dir, image_npy, tmp_path, capsys):
    out = tmp_path / "o"
    rc = main(["solve", "--image", str(image_npy), "--operator", "identity", "--noise-std", "0.01",
               "--method", "ddnm", "--method-args", '{"steps": 5}', "--samples", "4", "--prior", str(prior_dir),
               "--seed", "1", "--out", str(out)])
    assert rc == 0
    for f in ("samples.npy", "mean.npy", "std.npy", "posterior.png", "uncertainty.png", "posterior.nc", "result.json"):
        assert (out / f).is_file(), f
    s = np.load(out / "samples.npy")
    assert s.shape == (4, 1, 16, 16) and np.isfinite(s).all()
    info = json.loads((out / "result.json").read_text())
    assert info["method"] == "ddnm" and info["nfe_per_sample"] == 5
    # denoising at sigma_y = 0.01: DDNM's range-null projection returns x = y whatever the (random)
    # prior, so the PSNR is that of y itself, 20 log10(2 / 0.01) = 46.0 dB in expectation
    # (measured 45.7 dB); bound 40 dB
    assert info["metrics"]["psnr"] > 40.0, info
    import arviz as az

    idata = az.from_netcdf(str(out / "posterior.nc"))
    assert idata.posterior["x"].shape == (1, 4, 1, 16, 16)
    assert idata.log_likelihood["y"].shape == (1, 4)


@pytest.mark.parametrize("method,args", [("red_diff", '{"steps": 3}'),
                                         ("pnpdm", '{"chains": 2, "warmup": 1, "num_grid": 6}'),
                                         ("mcgdiff", '{"steps": 3, "particles": 2}')])
def test_solve_each_family(prior_dir, image_npy, tmp_path, method, args):
    out = tmp_path / method
    rc = main(["solve", "--image", str(image_npy), "--operator", "box", "--method", method, "--method-args", args,
               "--samples", "4", "--prior", str(prior_dir), "--out", str(out)])
    assert rc == 0
    assert np.load(out / "samples.npy").shape == (4, 1, 16, 16)


def test_solve_from_measurement(prior_dir, tmp_path):
    y = np.zeros((1, 8, 8), np.float32)
    np.save(tmp_path / "y.npy", y)
    rc = main(["solve", "--measurement", str(tmp_path / "y.npy"), "--operator", "sr", "--op-args", "factor=2",
               "--method", "ddrm", "--method-args", '{"steps": 3}', "--samples", "2", "--prior", str(prior_dir),
               "--out", str(tmp_path / "o")])
    assert rc == 0 and (tmp_path / "o" / "samples.npy").is_file()


def _err(capsys, argv, *needles):
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, (argv, err)
    for n in needles:
        assert n in err, (n, err)


def test_bad_input(prior_dir, image_npy, tmp_path, capsys):
    base = ["solve", "--image", str(image_npy), "--prior", str(prior_dir), "--out", str(tmp_path / "o")]
    _err(capsys, base + ["--operator", "sr", "--method", "nosuch"], "unknown method 'nosuch'")
    _err(capsys, base + ["--operator", "nosuch", "--method", "ddrm"], "unknown operator 'nosuch'")
    _err(capsys, base + ["--operator", "sr", "--op-args", "factor=3", "--method", "ddrm"], "factor 3")
    _err(capsys, base + ["--operator", "sr", "--op-args", "bogus=1", "--method", "ddrm"], "unknown arguments")
    _err(capsys, base + ["--operator", "phase", "--method", "ddrm"], "linear")
    _err(capsys, base + ["--operator", "sr", "--method", "ddrm", "--method-args", "{bad"], "JSON")
    _err(capsys, base + ["--operator", "sr", "--method", "ddrm", "--method-args", '{"nosuch": 1}'], "nosuch")
    small = tmp_path / "small.npy"
    np.save(small, np.zeros((1, 8, 8), np.float32))
    _err(capsys, ["solve", "--image", str(small), "--operator", "sr", "--method", "ddrm", "--prior", str(prior_dir)],
         "shape (1, 8, 8)", "(1, 16, 16)")
    _err(capsys, ["solve", "--image", str(image_npy), "--operator", "sr", "--method", "ddrm", "--prior", "nosuchprior"],
         "unknown prior 'nosuchprior'")
    _err(capsys, ["demo", "--fast", "--prior", "nosuchprior", "--out", str(tmp_path / "r")], "unknown prior")
    # a pickle-only checkpoint and a corrupt safetensors file
    import shutil

    pk = tmp_path / "pickle_prior"
    shutil.copytree(prior_dir, pk)
    w = pk / "unet" / "diffusion_pytorch_model.safetensors"
    torch.save({"a": torch.zeros(1)}, pk / "unet" / "diffusion_pytorch_model.bin")
    w.unlink()
    _err(capsys, base[:3] + ["--prior", str(pk), "--operator", "sr", "--method", "ddrm"], "pickle")
    bad = tmp_path / "corrupt_prior"
    shutil.copytree(prior_dir, bad)
    (bad / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"not a safetensors file")
    _err(capsys, base[:3] + ["--prior", str(bad), "--operator", "sr", "--method", "ddrm"], "safetensors")


def test_solve_list(capsys):
    assert main(["solve", "--list"]) == 0
    out = capsys.readouterr().out
    assert "ddrm" in out and "red_diff" in out and "pnpdm" in out and "mcgdiff" in out and "phase" in out


def test_demo_fast(prior_dir, tmp_path, capsys):
    out = tmp_path / "report"
    rc = main(["demo", "--fast", "--prior", str(prior_dir), "--out", str(out), "--tasks", "box,phase",
               "--no-progress"])
    assert rc == 0
    assert (out / "figures" / "box.png").is_file() and (out / "figures" / "phase.png").is_file()
    for m in ("box_ddrm", "box_red_diff", "box_mcgdiff", "phase_dps", "phase_red_diff", "phase_pnpdm"):
        assert (out / "netcdf" / f"{m}.nc").is_file(), m
    md = (out / "summary.md").read_text()
    assert "| box | ddrm | guide |" in md and "| phase | pnpdm | kernel |" in md
    import csv

    rows = list(csv.DictReader(open(out / "summary.csv")))
    assert len(rows) == 6 and {r["method"] for r in rows} == {"ddrm", "red_diff", "mcgdiff", "dps", "pnpdm"}
    assert all(0.0 <= float(r["coverage90"]) <= 1.0 for r in rows)


def test_benchmark_subcommands(capsys):
    for suite in ("images", "speed", "scaling", "peers"):  # each maps to a module with main(argv)
        with pytest.raises(SystemExit) as e:
            main(["benchmark", suite, "--extra=--help"])
        assert e.value.code == 0
        assert "usage" in capsys.readouterr().out.lower()
    _err(capsys, ["benchmark", "gmm", "--solver", "nosuch"], "unknown solver 'nosuch'")
    # the gaussian suite: its help exits 0 and lists the suites; without / with an unknown --solver it
    # fails with exit code 2 and says why (a full run takes ~100 s: 2000 draws x 300 steps at d = 100)
    with pytest.raises(SystemExit) as e:
        main(["benchmark", "gaussian", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "usage: ppl-diffusion benchmark" in out and "gaussian" in out and "--solver" in out, out
    _err(capsys, ["benchmark", "gaussian"], "solver", "required")
    _err(capsys, ["benchmark", "gaussian", "--solver", "nosuch"], "unknown solver 'nosuch'")
    rc = main(["benchmark", "gmm", "--solver", "ddrm", "--problems", "1", "--samples", "100", "--out", "-"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "| ddrm | 8 | 1 | 100 |" in out


def test_train_prior_subcommand(tmp_path, capsys):
    rc = main(["train-prior", "--dataset", "digits", "--out", str(tmp_path / "p"), "--steps", "2",
               "--batch-size", "4", "--channels", "16,32", "--attention", "0,1", "--num-samples", "2",
               "--sample-steps", "2", "--quiet"])
    assert rc == 0
    from ppl_diffusion.models.zoo import load_prior

    prior = load_prior(str(tmp_path / "p"))
    assert tuple(prior.event_shape) == (1, 16, 16)


def test_methods_lists_the_registry(capsys):
    from ppl_diffusion.inference.registry import SOLVERS

    assert main(["methods"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for name, info in SOLVERS.items():
        row = [ln for ln in lines if ln.split()[:1] == [name]]
        assert len(row) == 1, (name, lines)
        assert row[0].split()[1] == info.family and info.needs in row[0] and info.doc in row[0], row
    assert main(["methods", "--family", "kernel"]) == 0
    names = [ln.split()[0] for ln in capsys.readouterr().out.splitlines()[1:]]
    assert names == [k for k, v in SOLVERS.items() if v.family == "kernel"], names
    # solve --method takes the registry's names and aliases
    from ppl_diffusion.methods import method_key

    assert method_key("DDNM+") == "ddnm_plus" and method_key("pnp-dm") == "pnpdm"


def test_help_states_real_defaults_and_choices(capsys):
    from ppl_diffusion.bench.gmm import SETTINGS
    from ppl_diffusion.demo import demo_config

    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert f"(default {demo_config()['images']}; {demo_config(fast=True)['images']} with --fast)" in out, out
    assert f"(default {demo_config()['samples']}; {demo_config(fast=True)['samples']} with --fast)" in out, out
    with pytest.raises(SystemExit):
        main(["benchmark", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    choices = [k for k in SETTINGS if k != "gaussian"]
    assert "--setting {" + ",".join(choices) + "}" in out, out
    assert "benchmarks/gmm.py --setting" not in out  # every setting it names is a choice


def test_train_prior_without_training_module(monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "ppl_diffusion.training", None)  # the import fails
    _err(capsys, ["train-prior"], "the training module is not available")


def test_benchmark_writes_where_asked(tmp_path, monkeypatch, capsys):
    argv = ["benchmark", "gmm", "--solver", "ddrm", "--problems", "1", "--samples", "50", "--dys", "1"]
    assert main(argv + ["--out", str(tmp_path / "here")]) == 0
    text = (tmp_path / "here" / "gmm_quick_ddrm.md").read_text()
    assert "| ddrm | 8 | 1 | 100 |" in text and "ppl-diffusion benchmark gmm --solver ddrm" in text
    monkeypatch.chdir(tmp_path)  # default: benchmarks/results under the current directory
    assert main(argv) == 0
    assert (tmp_path / "benchmarks" / "results" / "gmm_quick_ddrm.md").is_file()
    assert main(argv + ["--out", str(tmp_path / "one.md")]) == 0
    assert (tmp_path / "one.md").is_file()


def test_benchmarking_module_is_a_deprecated_shim():
    import importlib
    import sys

    sys.modules.pop("ppl_diffusion.benchmarking", None)
    with pytest.warns(DeprecationWarning, match="ppl_diffusion.bench"):
        B = importlib.import_module("ppl_diffusion.benchmarking")
    from ppl_diffusion.bench import gmm, report

    for name in ("run_gmm", "run_setting_b", "run_gaussian_check", "run_mode_weights", "format_table", "BenchRow",
                 "SolverOutput", "available_solvers"):
        assert getattr(B, name) is getattr(gmm, name), name
    for name in ("MarkdownTable", "write_table"):
        assert getattr(B, name) is getattr(report, name), name
    solvers = B.available_solvers()
    assert {"ddrm", "red_diff", "pnpdm", "mcgdiff", "prior", "pmc_red"} <= set(solvers)
    row = B.run_gmm("ddrm", d=8, d_y=2, steps=5, n_problems=1, n_samples=50, n_ref=200)
    assert row.solver == "ddrm" and row.nfe == 5 and len(row.values) == 1
