"""The one solver contract: explicit keyword options with defaults, listed in the docstring, and a
ValueError naming an unknown option and the valid ones."""
import inspect

import pyro
import pytest
import torch

from ppl_diffusion.inference.registry import SOLVERS, get_solver
from ppl_diffusion.models import GaussianMeasurement
from ppl_diffusion.models.gmm import gmm_benchmark_problem
from ppl_diffusion.models.operators import Inpainting
from ppl_diffusion.schedules import VPSchedule

GUIDES = sorted(name for name, info in SOLVERS.items() if info.family == "guide")


@pytest.fixture(scope="module")
def guide_models():
    """``{kind: (model, y)}``: an exact-GMM model with an SVD operator, and one with a mask."""
    pb = gmm_benchmark_problem(8, 2, seed=0)
    sched = VPSchedule.gmm_benchmark("mcgdiff")
    prior = pb.prior.diffusion_prior(sched)
    mask = Inpainting(torch.tensor([True, False] * 4))

    def mask_model(y=None):
        x = pyro.sample("x", prior)
        return pyro.sample("y", GaussianMeasurement(mask, x, 0.1), obs=y)

    return {"svd": (pb.model(sched), pb.y), "mask": (mask_model, mask(pb.x_true))}


def _model(guide_models, name):
    return guide_models["mask" if get_solver(name).needs == "mask" else "svd"]


@pytest.mark.parametrize("name", GUIDES)
def test_every_guide_lists_and_rejects_options(guide_models, name):
    cls = get_solver(name).load()
    model, _ = _model(guide_models, name)
    params = inspect.signature(cls).parameters
    assert list(params)[0] == "model"
    assert not any(p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL) for p in params.values()), name
    options = {n: p for n, p in params.items() if n != "model"}
    assert {"steps", "eta", "grid", "prior_site", "progress"} <= set(options), name
    for opt, p in options.items():
        assert p.default is not p.empty, f"{name}: option {opt} has no default"
        assert p.kind is p.KEYWORD_ONLY, f"{name}: option {opt} is not keyword-only"
        assert f"{opt}:" in cls.__doc__, f"{name}: option {opt} missing from the Args docstring"
    assert cls.options() == {n: p.default for n, p in options.items()}
    guide = cls(model)
    for opt, p in options.items():
        if opt not in ("prior_site", "progress"):
            assert getattr(guide, opt) == p.default, (name, opt)
    with pytest.raises(ValueError, match="bogus") as err:
        cls(model, bogus=1)
    assert "steps" in str(err.value) and "valid options" in str(err.value)
    with pytest.raises(ValueError, match="steps"):
        cls(model, steps=0)


@pytest.mark.parametrize("name", GUIDES)
def test_every_guide_draws(guide_models, name):
    """``draw`` returns ``(chain, draw, *event)`` samples with their cost."""
    cls = get_solver(name).load()
    model, y = _model(guide_models, name)
    options = {"max_iters": 20} if name == "ks" else {"steps": 4}
    out = cls(model, **options).draw(3, y=y, generator=torch.Generator().manual_seed(0))
    assert out.samples.shape == (1, 3, 8) and torch.isfinite(out.samples).all()
    assert out.family == "guide" and out.nfe_per_sample > 0
