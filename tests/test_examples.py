"""Every script in examples/ runs as shipped in fast mode (PPL_FAST=1). They run in this process
(runpy) so that the heavy imports are paid once. Without the shipped digits prior they run on a
tiny random prior (PPL_PRIOR), which checks the plumbing only."""
import os
import runpy
import sys
from pathlib import Path

import pytest

from .test_cli import make_tiny_prior_folder

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SCRIPTS = sorted(p.name for p in EXAMPLES.glob("*.py") if not p.name.startswith("_"))


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from ppl_diffusion.models.zoo import list_priors

    old = dict(os.environ)
    os.environ["PPL_FAST"] = "1"
    os.environ["PPL_EXAMPLES_OUT"] = str(tmp_path_factory.mktemp("examples_out"))
    if "digits" not in list_priors():
        os.environ["PPL_PRIOR"] = str(make_tiny_prior_folder(tmp_path_factory.mktemp("prior") / "tiny"))
    sys.path.insert(0, str(EXAMPLES))
    yield Path(os.environ["PPL_EXAMPLES_OUT"])
    sys.path.remove(str(EXAMPLES))
    os.environ.clear()
    os.environ.update(old)


def test_all_families_have_an_example():
    assert {"guide_dps.py", "variational_red_diff.py", "mcmc_pnpdm.py", "smc_mcgdiff.py", "uq_study.py"} <= set(SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_example_runs(script, env, monkeypatch):
    monkeypatch.setattr(sys, "argv", [script, "--fast"])
    runpy.run_path(str(EXAMPLES / script), run_name="__main__")
    stem = script[:-3]
    out = env / stem
    assert out.is_dir() and any(out.iterdir()), f"{script} wrote nothing to {out}"
