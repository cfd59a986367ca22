"""A plate of measurements against separate runs, on the shipped digits prior.

``python benchmarks/plates.py`` puts ``B = 4`` held-out digits (``zoo.heldout_images('digits')[:4]``)
through one task of :func:`ppl_diffusion.bench.images.tasks` (default ``sr2``: 2x super-resolution by
block averaging, ``sigma_y = 0.05``) and solves them two ways with the same settings and seeds:

* ONE plated model, ``with pyro.plate("images", 4): x ~ prior; y ~ GaussianMeasurement(A, x, 0.05)``,
  ``y`` of shape ``(4, *out)``: one batched run (one network call per step for the whole plate);
* four separate runs of the plate-free model, one per measurement.

Per method (DPS, DDRM, MCGDiff, PnP-DM, RED-Diff; a method that refuses the plate is listed with its
error): the PSNR of the posterior mean of each measurement both ways, the wall time of the plate
against the four separate runs (constructor, tracing and draws included), and the network calls:
the plate's, one separate run's and the four's together, with the images per call.
"""
from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time

import pyro
import torch

from . import heldout, image_denoiser, set_threads
from .images import OPTIONS, tasks
from .report import MarkdownTable, add_out_argument, write_result

__all__ = ["METHODS", "plate_model", "single_model", "run_once", "bench_plates", "main"]

#: the methods of the table
METHODS = ("dps", "ddrm", "mcgdiff", "pnpdm", "red_diff")


def plate_model(prior, op, noise_std: float, B: int):
    """``B`` measurements in one plate around the prior and the likelihood."""
    from ..models import GaussianMeasurement

    def model(y=None):
        with pyro.plate("images", B):
            x = pyro.sample("x", prior)
            pyro.sample("y", GaussianMeasurement(op, x, noise_std), obs=y)

    return model


def single_model(prior, op, noise_std: float):
    from ..models import GaussianMeasurement

    def model(y=None):
        x = pyro.sample("x", prior)
        pyro.sample("y", GaussianMeasurement(op, x, noise_std), obs=y)

    return model


def run_once(method: str, model, y, n: int, seed: int, options: dict, den):
    """One :func:`ppl_diffusion.methods.run_method` call: ``(draws (n, *plate, *event), seconds,
    network calls, images evaluated)``; seconds include the constructor and the tracing."""
    from ..methods import run_method

    calls0, evals0 = den.nfe, den.sample_evals
    t0 = time.perf_counter()
    d = run_method(method, model, y, n, generator=torch.Generator().manual_seed(seed), options=options)
    secs = time.perf_counter() - t0
    x = d.samples.reshape((-1,) + tuple(d.samples.shape[2:]))[:n]  # (chain * draw, ...), first n draws
    return x, secs, den.nfe - calls0, den.sample_evals - evals0


def bench_plates(methods, task: str, B: int, n: int, steps: int, seed: int, prior_name: str = "digits",
                 noise_std: float = 0.05, repeats: int = 1, out=None, cmd: str = "") -> str:
    from ..metrics import psnr
    from ..models import DiffusionPrior

    den, dlabel = image_denoiser(prior_name)
    x_true, ilabel = heldout(B)
    op = tasks(tuple(den.event_shape), seed=seed)[task]
    prior = DiffusionPrior(den, steps=10)
    g = torch.Generator().manual_seed(seed)
    Y = torch.stack([op(x) + noise_std * torch.randn(op.out_shape, generator=g, dtype=x.dtype) for x in x_true])
    plated, single = plate_model(prior, op, noise_std, B), single_model(prior, op, noise_std)
    # warm-up (first-call costs: allocator, autograd graphs) outside the timings
    run_once("ddrm", single, Y[0], 2, seed, {"steps": 2}, den)
    psnr_table = MarkdownTable("method", "measurement", "PSNR plate (dB)", "PSNR separate (dB)")
    cost = MarkdownTable("method", "options", "wall plate (s)", "wall 4 separate (s)", "separate / plate",
                         "network calls: plate / one separate run / 4 separate", "images per call: plate / separate",
                         "NFE / sample: plate / separate")
    refused = []
    for m in methods:
        from ..inference.registry import get_solver

        opts = dict(OPTIONS.get(m, {}))
        if get_solver(m).family in ("guide", "smc"):
            opts.setdefault("steps", steps)
        if get_solver(m).family == "smc":  # the one-off step-variance estimate (cached) outside the counts
            try:
                run_once(m, single, Y[0], 1, seed, opts, den)
            except ValueError:
                pass
        try:
            xp, tp, cp, ep = run_once(m, plated, Y, n, seed, opts, den)
        except ValueError as e:
            refused.append(f"- {m}: {e}")
            psnr_table.add(m, "all", "not run (see below)", "")
            continue
        sep = [run_once(m, single, Y[b], n, seed + 1 + b, opts, den) for b in range(B)]
        ts = sum(s[1] for s in sep)
        plate_times, sep_times = [tp], [ts]
        for _ in range(repeats - 1):  # the same calls again (same seeds and draws), alternating, for the timings
            plate_times.append(run_once(m, plated, Y, n, seed, opts, den)[1])
            sep_times.append(sum(run_once(m, single, Y[b], n, seed + 1 + b, opts, den)[1] for b in range(B)))
        tp, ts = statistics.median(plate_times), statistics.median(sep_times)
        for b in range(B):
            pp = float(psnr(xp[:, b].mean(0), x_true[b]))
            ps = float(psnr(sep[b][0].mean(0), x_true[b]))
            psnr_table.add(m, b, f"{pp:.2f}", f"{ps:.2f}")
        c1, cs = sep[0][2], sum(s[2] for s in sep)
        e1 = sep[0][3]
        cost.add(m, ", ".join(f"{k}={v}" for k, v in opts.items()) or "defaults", f"{tp:.2f}", f"{ts:.2f}",
                 f"{ts / tp:.2f}x", f"{cp} / {c1} / {cs}", f"{ep / max(cp, 1):.0f} / {e1 / max(c1, 1):.0f}",
                 f"{ep / (B * n):.0f} / {sum(s[3] for s in sep) / (B * n):.0f}")
    settings = (f"Denoiser: {dlabel}. Images: {ilabel}; task `{task}` "
                f"(`ppl_diffusion.bench.images.tasks`), sigma_y = {noise_std}; B = {B} measurements in one "
                f"`pyro.plate` against {B} separate runs of the plate-free model, {n} draws per measurement, "
                f"{steps} steps for the guides and MCGDiff, other options those of `benchmarks/images.py` "
                f"(`ppl_diffusion.bench.images.OPTIONS`; PnP-DM: its defaults, {max(1, n // 2)} chains per "
                f"measurement, 20 warm-up iterations); seed {seed} (run b of the separate runs: seed "
                f"{seed} + 1 + b), float32, {torch.get_num_threads()} torch thread(s) on CPU.")
    notes = f"""PSNR of the posterior mean of the draws of each measurement against its held-out image (data
range 2). Wall time: the whole `run_method` call (constructor, model tracing, draws), the plate against
the sum of the {B} separate runs, median of {repeats} repetition(s) (plate and separate runs alternating,
same seeds; the machine's other jobs make single timings noisy); the SMC samplers' one-off step-variance
estimate (Analytic-DPM, cached per prior) is made by a run before the timings and counts. Network
calls: the denoiser's `nfe`
(calls; a plate's call evaluates every measurement's samples at once); images per call: evaluated
images / calls. NFE / sample: evaluated images per draw of one measurement (the same both ways: a plate
batches the evaluations, it does not save any). The plate and the separate runs draw different random
numbers (one batch against {B}), so their PSNRs agree up to Monte Carlo noise.

Reading the wall times: on CPU with one torch thread a network call costs about its batch size times
a per-image cost that shrinks only slowly with the batch, so a plate saves the per-call overhead
(Python, tracing, a small batch's poor arithmetic efficiency): much where a separate run's calls are
small (the guides' {n} images, PnP-DM's {max(1, n // 2)} chains), nothing where they are already large
(MCGDiff: particles x draws images per call). On an accelerator (not measured here) a call's cost is
nearly flat in the batch up to the device's width, so the ratio should approach the {B}x fewer calls."""
    if refused:
        notes += "\n\nNot run (the error each method raised on the plated model):\n" + "\n".join(refused)
    body = settings + "\n\n" + str(cost) + "\n\n" + str(psnr_table)
    return write_result(out, "plates", "A plate of measurements against separate runs (digits prior)", cmd,
                        body, notes)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(prog="python benchmarks/plates.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", default=",".join(METHODS), help="registered method names, comma-separated")
    p.add_argument("--task", default="sr2", help="a task of ppl_diffusion.bench.images.tasks (sr2, inpaint_box, ...)")
    p.add_argument("--measurements", type=int, default=4)
    p.add_argument("--samples", type=int, default=8, help="draws per measurement")
    p.add_argument("--steps", type=int, default=50, help="steps of the guides and MCGDiff")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=3, help="timing repetitions (median reported)")
    p.add_argument("--prior", default="digits", choices=("digits", "tiny"),
                   help="the shipped digits prior, or a tiny random UNet (smoke tests)")
    add_out_argument(p, "plates")
    a = p.parse_args(argv)
    set_threads()
    cmd = shlex.join(["python", "benchmarks/plates.py"] + argv)
    text = bench_plates(a.methods.split(","), a.task, a.measurements, a.samples, a.steps, a.seed, a.prior,
                        repeats=a.repeats, out=a.out, cmd=cmd)
    print(text)
    return text


if __name__ == "__main__":  # pragma: no cover
    main()
