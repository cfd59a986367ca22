"""run_method: any registered solver by name through its draw(), run-level options told apart by the
draw signature, and the demo's building blocks still importable from ppl_diffusion.demo."""
import pytest
import torch

from ppl_diffusion.inference.solver import Draws
from ppl_diffusion.methods import METHOD_DEFAULTS, run_method, split_options
from ppl_diffusion.models.gmm import gmm_benchmark_problem
from ppl_diffusion.schedules import VPSchedule


@pytest.fixture(scope="module")
def gmm():
    pb = gmm_benchmark_problem(d=8, d_y=2, seed=0)
    return pb, pb.model(VPSchedule.gmm_benchmark())


def test_split_options_by_draw_signature():
    from ppl_diffusion.inference.registry import solver_class

    opts = {"chains": 3, "warmup": 2, "thin": 1, "num_grid": 5}
    ctor, run = split_options(solver_class("pnpdm"), opts)
    assert ctor == {"num_grid": 5} and run == {"chains": 3, "warmup": 2, "thin": 1}
    ctor, run = split_options(solver_class("mcgdiff"), {"particles": 4, "independent": False})
    assert ctor == {"particles": 4} and run == {"independent": False}
    ctor, run = split_options(solver_class("ddrm"), {"steps": 4, "eta": 0.5})
    assert ctor == {"steps": 4, "eta": 0.5} and run == {}


@pytest.mark.parametrize("name,options,shape", [
    ("ddrm", {"steps": 5}, (1, 6)),
    ("pnpdm", {"num_grid": 4, "warmup": 2, "chains": 2}, (2, 3)),
    ("mcgdiff", {"steps": 5, "particles": 4}, (1, 6)),
    ("red_diff", {"steps": 5}, (1, 6)),
])
def test_run_method_returns_the_solvers_draws(gmm, name, options, shape):
    pb, model = gmm
    res = run_method(name, model, pb.y, 6, generator=torch.Generator().manual_seed(0), options=options)
    assert isinstance(res, Draws) and tuple(res.samples.shape) == shape + (8,), res
    assert res.family in ("guide", "kernel", "smc", "variational") and res.nfe_per_sample > 0
    # the same call with the class's own draw gives the same samples (no wrapper arithmetic)
    from ppl_diffusion.inference.registry import solver_class

    cls = solver_class(name)
    ctor, run = split_options(cls, {**METHOD_DEFAULTS.get(name, {}), **options})
    if "progress" in cls.options():
        ctor["progress"] = False
    torch.manual_seed(0)
    direct = cls(model, **ctor).draw(6, y=pb.y, generator=torch.Generator().manual_seed(0), **run)
    torch.manual_seed(0)
    again = run_method(name, model, pb.y, 6, generator=torch.Generator().manual_seed(0), options=options)
    assert torch.equal(direct.samples, again.samples) and direct.nfe_per_sample == again.nfe_per_sample


def test_run_method_errors(gmm):
    pb, model = gmm
    with pytest.raises(ValueError, match="unknown method 'nosuch'"):
        run_method("nosuch", model, pb.y)
    with pytest.raises(ValueError, match="bogus"):
        run_method("ddrm", model, pb.y, 2, options={"bogus": 1})
    with pytest.raises(ValueError, match="num_samples"):
        run_method("ddrm", model, pb.y, 0)


def test_demo_reexports():
    import ppl_diffusion.demo as demo

    for name in ("OPERATORS", "make_operator", "make_model", "parse_op_args", "run_method", "MethodResult",
                 "evaluate", "ensure_diffusers_importable", "run_demo", "DEMO_TASKS", "demo_config"):
        assert hasattr(demo, name), name
    assert demo.MethodResult is Draws and not hasattr(demo, "METHODS")
