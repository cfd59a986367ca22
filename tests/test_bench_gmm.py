"""The GMM benchmark harness: every registered solver through the registry and draw(), the same
numbers as before the registry (pinned values), one run_benchmark behind the script and the CLI."""
import pytest
import torch

from ppl_diffusion.bench import gmm as G
from ppl_diffusion.inference.registry import SOLVERS


#: families whose priors are not pixel-space GMMs: measured against their own exact problems
#: (E2: a linear autoencoder over a latent GMM; E3: a prompt-weighted latent GMM)
OWN_EXACT_BENCH = {"latent": "ppl_diffusion.bench.latent_e2", "text": "ppl_diffusion.bench.text_e3"}


def test_every_registered_solver_has_a_benchmark_entry():
    import importlib

    solvers = G.available_solvers()
    own = {n for n, info in SOLVERS.items() if info.family in OWN_EXACT_BENCH}
    assert set(SOLVERS) - own <= set(solvers)
    for name in own:  # each one has a row in its family's exact benchmark
        configs = importlib.import_module(OWN_EXACT_BENCH[SOLVERS[name].family]).CONFIGS
        assert any(cfg[0] == name for cfg in configs.values()), name
    assert solvers["prior"].target == "prior" and solvers["prior"].solver is None
    assert solvers["pmc_red"].solver == "pmc" and solvers["pmc_red"].family == "kernel"
    for name, spec in solvers.items():
        if spec.solver is not None:
            assert spec.family == SOLVERS[spec.solver].family, name


def test_unknown_solver():
    with pytest.raises(ValueError, match="unknown solver 'nosuch'"):
        G.run_gmm("nosuch", n_problems=1)


# values measured with the harness before the registry (same seeds): (max-sliced W, floor, NFE / sample)
PINNED = {"ddrm": (19.23971470702653, 2.175146217529108, 20.0),
          "prior": (5.102554150003179, 3.3343243026811114, 20.0),
          "mcgdiff": (10.38571557670429, 1.60878489677558, 176.0)}


@pytest.mark.parametrize("name", sorted(PINNED))
def test_same_numbers_as_before(name):
    # the grid and step variance of then
    opts = {"particles": 8, "tail_steps": 0, "grid": "alpha", "reverse_variance": "ddpm"} if name == "mcgdiff" else None
    r = G.run_gmm(name, d=8, d_y=2, steps=20, n_problems=1, n_samples=200, n_ref=1000, options=opts)
    value, floor, nfe = PINNED[name]
    assert r.values[0] == pytest.approx(value, rel=1e-9) and r.floors[0] == pytest.approx(floor, rel=1e-9)
    assert r.nfe == nfe


def test_kernel_nfe_counts_every_chain_iteration():
    from ppl_diffusion.models.gmm import gmm_benchmark_problem
    from ppl_diffusion.schedules import VPSchedule

    pb = gmm_benchmark_problem(8, 2, seed=3)
    # num_grid=100: the grid the NFE count below was measured on
    out = G.run_solver("pnpdm", pb, pb.model(VPSchedule.gmm_benchmark()), 50, 10, None,
                       torch.Generator().manual_seed(5), chains=7, thin=2, num_grid=100)
    # 7 chains x ceil(50 / 7) = 56 draws, the first 50 kept; 10 + 8 x 2 = 26 iterations per chain
    assert out.samples.shape == (50, 8)
    assert {k: out.extra[k] for k in ("chains", "thin", "iterations", "warmup")} == \
        {"chains": 7, "thin": 2, "iterations": 26, "warmup": 10}
    assert out.extra["convergence"]["rhat_regions"].shape == (4,)  # the run's mixing check, 8 draws per chain
    assert out.nfe_per_sample == pytest.approx(189.56)  # measured before the registry
    # warmup=auto: the iterations and the NFE charge the warm-up the chains chose
    auto = G.run_solver("pnpdm", pb, pb.model(VPSchedule.gmm_benchmark()), 64, 10, None,
                        torch.Generator().manual_seed(5), chains=16, thin=2, replicas=2, rho_max=2.0, num_grid=20,
                        warmup="auto")
    assert auto.extra["warmup"] >= 200 and auto.extra["iterations"] == auto.extra["warmup"] + 4 * 2


def test_kernel_warmup_options_set_the_automatic_warm_ups_cap_and_first_checkpoint():
    from ppl_diffusion.inference.kernels import AutoWarmup

    _, run, _ = G._kernel_call()(20, None, {"warmup": "auto", "max_warmup": 6400})
    assert run["warmup"] == AutoWarmup(max_warmup=6400)
    _, run, _ = G._kernel_call()(20, None, {"warmup": "auto", "warmup_first": 200, "max_warmup": 800})
    assert run["warmup"] == AutoWarmup(first=200, max_warmup=800)
    with pytest.raises(ValueError, match="pass warmup=auto, got warmup=300"):
        G._kernel_call()(20, None, {"warmup": 300, "max_warmup": 400})


def test_run_benchmark_writes_one_file_per_solver(tmp_path, capsys):
    text = G.run_benchmark("quick", ["ddrm", "ddnm"], problems=1, samples=50, dys=[1], out=str(tmp_path),
                           command="test")
    assert "| ddrm | 8 | 1 | 100 |" in text and "| ddnm | 8 | 1 | 100 |" in text
    assert (tmp_path / "gmm_quick_ddrm.md").is_file() and (tmp_path / "gmm_quick_ddnm.md").is_file()
    with pytest.raises(ValueError, match="unknown setting"):
        G.run_benchmark("nosuch", ["ddrm"])
    with pytest.raises(ValueError, match="solver is required"):
        G.run_benchmark("b", [])
