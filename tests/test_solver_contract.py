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

    from ppl_diffusion.models.blind import blind_gmm_problem

    blind = blind_gmm_problem(seed=0, grid_size=128, schedule=sched)  # an operator parameter "phi"
    return {"svd": (pb.model(sched), pb.y), "mask": (mask_model, mask(pb.x_true)), "blind": (blind.model, blind.y)}


#: the blind solvers infer an operator parameter and refuse a model without one (tests/test_blind.py)
BLIND = ("blind_dps", "gibbs_ddrm", "blind_red_diff")


def _model(guide_models, name):
    if name in BLIND:
        return guide_models["blind"]
    return guide_models["mask" if get_solver(name).needs == "mask" else "svd"]


def _args_section(doc: str) -> str:
    return doc[doc.index("Args:"):]


def _checked_options(cls, name, required) -> dict:
    """The constructor's options after checking the contract: ``model`` first, no ``*args`` /
    ``**kwargs``, every option keyword-only with a default and named in the Args docstring, and
    ``cls.options()`` equal to the signature's defaults."""
    import re

    params = inspect.signature(cls).parameters
    assert list(params)[0] == "model"
    assert not any(p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL) for p in params.values()), name
    options = {n: p for n, p in params.items() if n != "model"}
    assert required <= set(options), name
    args = _args_section(cls.__doc__)
    for opt, p in options.items():
        assert p.default is not p.empty, f"{name}: option {opt} has no default"
        assert p.kind is p.KEYWORD_ONLY, f"{name}: option {opt} is not keyword-only"
        assert re.search(rf"\b{opt}\b", args), f"{name}: option {opt} missing from the Args docstring"
    assert cls.options() == {n: p.default for n, p in options.items()}
    return options


@pytest.mark.parametrize("name", GUIDES)
def test_every_guide_lists_and_rejects_options(guide_models, name):
    cls = get_solver(name).load()
    model, _ = _model(guide_models, name)
    options = _checked_options(cls, name, {"steps", "eta", "grid", "prior_site", "progress"})
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


# -- the other families: SMC samplers, MCMC kernels, variational solvers ----------------------
OTHERS = sorted(name for name, info in SOLVERS.items() if info.family in ("smc", "kernel", "variational"))

#: small constructor options and draw() arguments per solver (fast runs on the d = 8 GMM)
_SMALL = {
    "mcgdiff": (dict(particles=4, steps=4), {}), "tds": (dict(particles=4, steps=4), {}),
    "fps": (dict(steps=4), {}), "fps_smc": (dict(particles=4, steps=4), {}),
    "smcdiff": (dict(particles=4, steps=4), {}),
    "pnpdm": (dict(rho0=1.0, num_grid=10), dict(chains=2, warmup=2, thin=2)),
    "pmc": (dict(sigma0=1.0), dict(chains=2, warmup=2, thin=2)),
    "red_diff": (dict(steps=5, learn_scale=True, progress=False), {}),
    "score_prior": (dict(n_layers=1, hidden=(8,), num_particles=2, ode_steps=1, steps=2, progress=False), {}),
    "efficient_score_prior": (dict(n_layers=1, hidden=(8,), num_particles=2, steps=2, progress=False), {}),
    "blind_red_diff": (dict(steps=5, theta_reg="prior"), {}),
}


@pytest.mark.parametrize("name", OTHERS)
def test_every_other_solver_lists_and_rejects_options(guide_models, name):
    cls = get_solver(name).load()
    model, _ = _model(guide_models, name)
    _checked_options(cls, name, {"prior_site", "progress"})
    with pytest.raises(ValueError, match="bogus") as err:
        cls(model, bogus=1)
    assert "valid options" in str(err.value) and "prior_site" in str(err.value)


@pytest.mark.parametrize("name", OTHERS)
def test_every_other_solver_draws_with_its_family_cost(guide_models, name):
    """``draw`` on the exact GMM problem: ``(chain, draw, *event)`` samples and the family's NFE formula
    (SMC: particles x network steps x runs / draws; kernels: evaluations per chain-iteration x
    iterations / draws per chain; RED-Diff: evaluations of the whole fit; score priors: train_nfe),
    each checked against the denoiser's own counts."""
    from ppl_diffusion.inference.problem import Problem
    from ppl_diffusion.inference.solver import Draws

    info = get_solver(name)
    cls = info.load()
    model, y = _model(guide_models, name)
    options, draw_args = _SMALL[name]
    pyro.clear_param_store()
    solver = cls(model, **options)
    den = Problem.from_model(model, y=y).denoiser
    evals0, calls0 = den.sample_evals, den.nfe
    n = 5
    out = solver.draw(n, y=y, generator=torch.Generator().manual_seed(0), **draw_args)
    evals, calls = den.sample_evals - evals0, den.nfe - calls0
    assert isinstance(out, Draws) and out.family == info.family and torch.isfinite(out.samples).all()
    if info.family == "smc":
        res = out.extra["result"]
        assert out.samples.shape == (1, n, 8) and res.num_runs == n
        assert out.nfe_per_sample == solver.particles * res.extra["particle_nfe"] * n / n
        # the call also made the one-off step-variance estimate (Analytic-DPM; 0 for FPS, SMCDiff), reported apart
        assert out.extra["variance_evals"] == res.extra["variance_evals"]
        # measured single-sample evaluations per draw
        assert out.nfe_per_sample == (evals - out.extra.get("variance_evals", 0)) / n
        assert out.extra["log_evidence"].shape == (n,) and out.extra["ess"].shape == (n,)
        g = torch.Generator().manual_seed(0)
        assert torch.equal(solver.sample(n, y=y, generator=g), out.samples[0])  # same seed, same draws
    elif info.family == "kernel":
        chains, per_chain = draw_args["chains"], -(-n // draw_args["chains"])
        res = out.extra["result"]
        assert out.samples.shape == (chains, per_chain, 8)
        iters = draw_args["warmup"] + per_chain * draw_args["thin"]
        assert out.nfe_per_sample == pytest.approx(res.nfe_per_iteration * iters / per_chain)
        assert out.nfe_per_sample == pytest.approx(evals / (chains * per_chain))
        assert out.stats and all(tuple(v.shape) == (chains, per_chain) for v in out.stats.values())
    elif name == "red_diff":
        assert out.samples.shape == (1, n, 8) and out.nfe_per_sample == evals == 5  # the whole fit
        assert len(out.extra["loss_trace"]) == 5 and out.extra["stopped_reason"] is None
        assert float(out.samples[0].std(0).min()) > 0  # learn_scale: draws from q, not mu repeated
    elif name == "blind_red_diff":  # n restarts in one batch, one network evaluation per step each
        assert out.samples.shape == (1, n, 8) and out.nfe_per_sample == evals / n == 5
        assert out.extra["theta"]["phi"].shape == (1, n, 1)
    else:
        assert out.samples.shape == (1, n, 8) and out.nfe_per_sample == solver.train_nfe == calls
        assert out.extra["train_nfe"] == calls and out.extra["train_evals"] == evals
