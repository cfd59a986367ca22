"""The optimise-the-input solvers (DMPlug, SHRED, Consistent-CSGM) on held-out digits, beside DPS and
DDRM, on the tasks of :mod:`.images` (sigma_y = 0.05): random inpainting (70 % missing), 2x
super-resolution, Gaussian deblur, and phase retrieval (DMPlug only: any differentiable likelihood).

These solvers return point estimates, one per random restart. Per (method, task), averaged over the
images: PSNR / SSIM of the restart with the smallest objective (selected WITHOUT the ground truth),
the mean PSNR over restarts and the spread (std over restarts) of the PSNR, the network calls per
restart (forward; those of DMPlug and Consistent-CSGM also have a backward pass), seconds per image.
DPS and DDRM rows: the posterior mean of as many draws as restarts, and the per-draw PSNR spread.

    python benchmarks/optimise_images.py [--images 2] [--restarts 3] [--methods dmplug,shred,dps,ddrm]
"""
from __future__ import annotations

import argparse
import shlex
import sys

import pyro
import torch

from . import heldout, image_denoiser, set_threads
from .images import tasks
from .report import MarkdownTable, add_out_argument, write_result

__all__ = ["OPTIONS", "TASKS", "draw_summary", "run", "main"]

TASKS = ("inpaint_random70", "sr2", "deblur_gauss", "phase_retrieval")
#: constructor options per method (iterations cut from the papers' thousands to CPU size)
OPTIONS = {
    "dmplug": dict(iterations=150, lr=1e-2),
    "shred": dict(iterations=60, lr=1e-2),
    "consistent_csgm": dict(iterations=150, lr=1e-2),
    "dps": dict(steps=50),
    "ddrm": dict(steps=50),
}
#: methods run on phase retrieval (the others need a linear operator, or are not run there to save time)
PHASE_METHODS = ("dmplug", "dps")


def draw_summary(res, x: torch.Tensor, point: bool) -> tuple[float, float, float, float]:
    """``(PSNR, SSIM, mean PSNR, PSNR std)`` of one image's draws ``res`` against ``x``: the first two of the
    restart with the smallest ``res.stats["objective"]`` (``point``: chosen without the ground truth) or
    of the posterior mean of the draws; the last two over the single draws."""
    from ..metrics import psnr, ssim

    d = res.flat().reshape((-1,) + tuple(x.shape))
    p = torch.stack([psnr(di, x) for di in d])
    est = d[int(res.stats["objective"].reshape(-1).argmin())] if point else d.mean(0)
    return float(psnr(est, x)), float(ssim(est[None], x[None]).mean()), float(p.mean()), float(p.std())


def run(methods, n_images: int = 2, restarts: int = 3, seed: int = 0, noise_std: float = 0.05, out=None,
        cmd: str = "", name: str = "optimise_images") -> str:
    from ..inference.registry import get_solver
    from ..methods import run_method
    from ..models import DiffusionPrior, GaussianMeasurement

    den, label = image_denoiser("digits")
    xs, xlabel = heldout(n_images)
    ops = tasks()
    table = MarkdownTable("method", "task", "PSNR (best objective)", "SSIM (best objective)", "PSNR mean over draws",
                          "PSNR std over draws", "network calls / draw", "s / image")
    for task in TASKS:
        op = ops[task]
        prior = DiffusionPrior(den, steps=10)

        def model(y=None, prior=prior, op=op):
            x = pyro.sample("x", prior)
            return pyro.sample("y", GaussianMeasurement(op, x, noise_std), obs=y)

        for method in methods:
            if task == "phase_retrieval" and method not in PHASE_METHODS:
                continue
            point = get_solver(method).family == "optimisation"
            g = torch.Generator().manual_seed(seed)
            best, mean, spread, best_ssim, secs, nfe = [], [], [], [], [], 0.0
            for x in xs:
                y = op(x) + noise_std * torch.randn(op.out_shape, generator=g, dtype=x.dtype)
                res = run_method(method, model, y, restarts, generator=g, options=OPTIONS.get(method, {}))
                for acc, v in zip((best, best_ssim, mean, spread), draw_summary(res, x, point)):
                    acc.append(v)
                secs.append(res.seconds)
                nfe = res.nfe_per_sample

            def avg(v):
                return sum(v) / len(v)

            table.add(method + ("" if point else " (posterior mean)"), task, f"{avg(best):.2f}",
                      f"{avg(best_ssim):.3f}", f"{avg(mean):.2f}", f"{avg(spread):.2f}", f"{nfe:g}", f"{avg(secs):.1f}")
    notes = (f"Prior: {label}. Images: {xlabel}; sigma_y = {noise_std}; {restarts} restarts (or draws) per image, "
             f"seed {seed}. Options: {OPTIONS}. The optimisation methods' draws are restarts (point estimates): "
             "'best objective' is the restart with the smallest data misfit, chosen without the ground truth; the "
             "PSNR std over restarts is NOT a posterior spread. For DPS / DDRM the first two columns are the "
             "posterior mean of the draws. Network calls per draw: forward evaluations of one restart's whole fit "
             "(DMPlug: 3 per iteration plus as many backward passes; SHRED: 10 per iteration, no backward pass "
             "through the network with its straight-through gradient; Consistent-CSGM: 1 per iteration plus "
             "backward). Wall time on 2 CPU cores shared with other jobs, 1 torch thread (noisy).")
    if "consistent_csgm" in methods:
        notes += " " + _consistency_note()
    return write_result(out, name, "Optimise-the-input solvers on held-out digits", cmd, str(table), notes)


def _consistency_note() -> str:
    """Which consistency model Consistent-CSGM used (the shipped ``digits_cm``, from its training.json: a
    distillation record, or a consistency-training record with the distillation it started from in
    ``init_training``)."""
    import json

    from ..models.consistency import CONSISTENCY_DIR

    rec = json.loads((CONSISTENCY_DIR / "digits_cm" / "training.json").read_text())
    stages = [rec["init_training"], rec] if "init_training" in rec else [rec]
    how = " then ".join(
        f"{st.get('steps_done', st['steps'])} {'consistency-training' if 'teacher' not in st else 'distillation'} steps"
        for st in stages)
    return (f"Consistent-CSGM's generator: the shipped consistency model 'digits_cm' ({rec['parameters']} parameters, "
            f"sigma_max {rec.get('sigma_max', 80.0):g}, {how} of batch {rec['batch_size']}; "
            "ppl_diffusion/weights/digits_cm/training.json).")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(prog="python benchmarks/optimise_images.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", default="dmplug,shred,consistent_csgm,dps,ddrm")
    p.add_argument("--images", type=int, default=2)
    p.add_argument("--restarts", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default="optimise_images", help="name of the table file (<name>.md)")
    p.add_argument("--cm-steps", type=int, default=None, help="Consistent-CSGM's cm_steps (default: its own)")
    add_out_argument(p, "optimise_images")
    a = p.parse_args(argv)
    set_threads()
    if a.cm_steps is not None:
        OPTIONS["consistent_csgm"]["cm_steps"] = a.cm_steps
    text = run(a.methods.split(","), a.images, a.restarts, a.seed, out=a.out, name=a.name,
               cmd=shlex.join(["python", "benchmarks/optimise_images.py"] + argv))
    print(text)
    return text


if __name__ == "__main__":  # pragma: no cover
    main()
