"""The main job, ``ppl-diffusion demo``: five tasks on held-out images of a shipped prior, one method
per family, PNG grids, netCDF InferenceData and ``summary.md`` / ``summary.csv``. An opt-in sixth
task, ``blind_deblur`` (``--tasks blind_deblur``), blurs by an unknown 7x7 kernel and runs the blind
solvers (:mod:`ppl_diffusion.blind_tasks`); its figures show the estimated kernels beside the true ones.

Its building blocks live in modules of their own and stay importable from here:

* :mod:`ppl_diffusion.tasks` — :func:`make_operator` (an operator by name with parameters),
  :func:`make_model` (the Pyro model ``x ~ prior; y ~ GaussianMeasurement(A, x, sigma_y)``);
* :mod:`ppl_diffusion.methods` — :func:`run_method`: any registered solver by name through its
  ``draw()``, returning its ``Draws``;
* :mod:`ppl_diffusion.evaluation` — :func:`evaluate`: PSNR / SSIM of the posterior mean, coverage
  of 90 % pixel intervals, correlation of the posterior std with ``|error|``.
"""
from __future__ import annotations

import csv
import json
import math
import platform
import time
from pathlib import Path

import numpy as np
import torch

from .compat import ensure_diffusers_importable
from .evaluation import CALIBRATION, coverage_flag, evaluate, expected_coverage
from .methods import METHOD_DEFAULTS, MethodResult, available_methods, method_key, run_method
from .tasks import OPERATORS, make_model, make_operator, parse_op_args

__all__ = ["OPERATORS", "make_operator", "make_model", "parse_op_args", "run_method", "MethodResult",
           "METHOD_DEFAULTS", "method_key", "available_methods", "evaluate", "ensure_diffusers_importable",
           "run_demo", "DEMO_TASKS", "OPT_IN_TASKS", "demo_config"]


# ---------------------------------------------------------------------------------------------
# the demo job
# ---------------------------------------------------------------------------------------------
#: task -> (operator name, operator args)
DEMO_TASKS = {
    "inpainting": ("inpainting", {"missing": 0.7, "seed": 0}),
    "box": ("box", {}),
    "sr2": ("sr", {"factor": 2}),
    "deblur": ("blur", {"sigma": 1.0}),
    "phase": ("phase", {"oversampling": 2.0}),
}
#: tasks run only when asked for (``--tasks blind_deblur``): task -> (kind, arguments). ``blind_deblur``:
#: a circular blur by an unknown 7x7 kernel from our generator (``family``, seeded per image), the
#: shipped ``kernels`` prior on it, the blind solvers of ``demo_config()["blind"]``. Not in the default
#: run: on digits it took 51 CPU-s on one thread (the five default tasks: 81), a third BlindDPS (16
#: draws), two thirds Blind RED-Diff (16 restarts).
OPT_IN_TASKS = {
    "blind_deblur": ("blind_deblur", {"family": "mixed"}),
}


def demo_config(fast: bool = False) -> dict:
    """Methods and their settings per task. ``fast``: a seconds-scale version for CI.

    Linear tasks: DDRM (guide), RED-Diff (variational), MCGDiff (SMC); phase retrieval (nonlinear):
    DPS (guide), RED-Diff, PnP-DM (MCMC with Langevin likelihood steps); the opt-in blind deblurring
    (``blind``): BlindDPS (guide) and Blind RED-Diff (variational, point estimates). The full demo (3 images x 5
    tasks x 3 methods, 16 draws each) takes 60 s wall / 57 CPU-seconds on one torch thread (measured
    2026-12-01 on a quiet 2-core machine, MCGDiff with its Analytic-DPM step variance; 88 s on 2026-11-30;
    18 minutes of wall time on the same machine shared with ~18 busy processes)."""
    if fast:
        lin = {"ddrm": {"steps": 4}, "red_diff": {"steps": 10, "lr": 0.1},
               "mcgdiff": {"steps": 4, "particles": 4}}
        phase = {"dps": {"steps": 4}, "red_diff": {"steps": 10, "lr": 0.1},
                 "pnpdm": {"rho0": 0.5, "rho_min": 0.3, "num_grid": 10, "langevin_steps": 5,
                           "warmup": 1, "chains": 2}}
        return {"samples": 4, "images": 1, "lin": lin, "phase": phase,
                "blind": {"blind_dps": {"steps": 4}, "blind_red_diff": {"steps": 10}}}
    lin = {"ddrm": {"steps": 50},
           "red_diff": {"steps": 200, "lr": 0.1},  # + paper_balance="auto" (METHOD_DEFAULTS): see REDDiff
           "mcgdiff": {"steps": 30, "particles": 4, "grid": "alpha"}}  # one independent run per draw (a
    # single run's resampled particles collapse onto one lineage: zero posterior std); the official grid
    # keeps the measured demo (the library's default, 200 steps on the alpha_log grid, is the calibrated one)
    phase = {"dps": {"steps": 100, "zeta": 1.0},
             "red_diff": {"steps": 200, "lr": 0.1},
             "pnpdm": {"rho0": 2.0, "decay": 0.8, "rho_min": 0.3, "num_grid": 40, "langevin_steps": 50,
                       "langevin_step": 1e-4, "warmup": 9, "chains": 4, "thin": 1}}  # rho_min at k = 9;
    # 4 chains x 4 draws: split R-hat / ESS defined (8 x 2 left them NaN), and fewer chain-iterations
    blind = {"blind_dps": {"steps": 100}, "blind_red_diff": {"steps": 300}}  # 16 restarts = 16 "draws"
    return {"samples": 16, "images": 3, "lin": lin, "phase": phase, "blind": blind}


def latent_demo_config(fast: bool = False) -> dict:
    """Methods of the demo on a latent prior (``--prior digits-latent``): Latent DPS and MPGD on every
    task (PSLD would refuse the blur and phase retrieval; see ``docs/latent.md`` for all five)."""
    if fast:
        lin = {"latent_dps": {"steps": 4}, "mpgd": {"steps": 4}}
        return {"samples": 4, "images": 1, "lin": lin, "phase": {"latent_dps": {"steps": 4}}}
    lin = {"latent_dps": {"steps": 100}, "mpgd": {"steps": 100}}
    return {"samples": 16, "images": 3, "lin": lin, "phase": {"latent_dps": {"steps": 100}}}


def _fmt(v, nd=2):
    if isinstance(v, float):
        if math.isnan(v):
            return "n/a"
        return f"{v:.{nd}f}"
    return str(v)


def _latent_folder(prior):
    """The folder of ``prior`` when it is a latent diffusion prior (has ``vae/``), else ``None``."""
    from .models.zoo import prior_folder

    try:
        folder = prior_folder(prior)
    except ValueError:
        return None
    return folder if (folder / "vae").is_dir() else None


def run_demo(out="report", prior="digits", fast: bool = False, images: int | None = None, seed: int = 0,
             samples: int | None = None, noise_std: float = 0.05, tasks=None, methods_override: dict | None = None,
             progress: bool = True, threads: int | None = None, log=print) -> dict:
    """Run the demo and write the report folder ``out``; returns ``{"rows": [...], "seconds": ...}``."""
    from tqdm.auto import tqdm

    from .diagnostics import to_inference_data
    from .inference.problem import Problem
    from .models.zoo import heldout_images, load_prior
    from .blind_tasks import add_true_kernel, kernel_metrics
    from .plotting import kernel_grid, plot_scalar_traces, posterior_grid

    ensure_diffusers_importable()
    if threads is not None:
        torch.set_num_threads(int(threads))
    t_start = time.perf_counter()
    cfg = demo_config(fast)
    if _latent_folder(prior) is not None:  # a latent diffusion prior: the latent solvers
        cfg = latent_demo_config(fast)
    if methods_override:
        cfg.update(methods_override)
    n_img = int(images if images is not None else cfg["images"])
    n_s = int(samples if samples is not None else cfg["samples"])
    if n_img < 1 or n_s < 2:
        raise ValueError(f"need images >= 1 and samples >= 2, got images={n_img}, samples={n_s}")
    # both the prior and the held-out images are checked before any work
    pr = load_prior(prior, steps=100)
    held = heldout_images(prior)
    if tuple(held.shape[1:]) != tuple(pr.event_shape):
        raise ValueError(f"held-out images of {prior!r} have shape {tuple(held.shape[1:])}, the prior "
                         f"{tuple(pr.event_shape)}")
    # a fixed, spread-out choice of held-out images
    idx = torch.linspace(0, held.shape[0] - 1, n_img + 2)[1:-1].round().long() if n_img < held.shape[0] else \
        torch.arange(held.shape[0])
    truths = held[idx].to(torch.float32)
    shape = tuple(pr.event_shape)
    out = Path(out)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    (out / "netcdf").mkdir(parents=True, exist_ok=True)
    tasks = list(tasks or DEMO_TASKS)
    for t in tasks:
        if t not in DEMO_TASKS and t not in OPT_IN_TASKS:
            raise ValueError(f"unknown demo task {t!r}; choose from {', '.join([*DEMO_TASKS, *OPT_IN_TASKS])}")
    blind = None
    if any(t in OPT_IN_TASKS for t in tasks):
        if "blind" not in cfg:
            raise ValueError(f"task blind_deblur needs a pixel-space prior (digits, patches): the blind solvers run "
                             f"a pixel diffusion; {prior!r} has no blind methods")
        from .blind_tasks import BlindDeblur

        blind = BlindDeblur(shape, noise_std, kernel_seed=1000 * int(seed), **OPT_IN_TASKS["blind_deblur"][1])
        k_prior_mean = blind.prior_mean(seed=seed)
    avail = available_methods()
    jobs = []
    for task in tasks:
        opname, opargs = DEMO_TASKS.get(task) or OPT_IN_TASKS[task]
        mcfg = cfg["blind"] if task in OPT_IN_TASKS else cfg["phase"] if opname == "phase" else cfg["lin"]
        for m, mopts in mcfg.items():
            if m in avail:
                jobs.append((task, m, mopts))
    rows = []
    g_master = torch.Generator().manual_seed(int(seed))
    bar = tqdm(total=len(jobs) * n_img, desc="demo", disable=not progress, unit="solve")
    by_task: dict = {}
    kernels_by_task: dict = {}
    for task, m, mopts in jobs:
        opname, opargs = DEMO_TASKS.get(task) or OPT_IN_TASKS[task]
        is_blind = task in OPT_IN_TASKS
        op = None if is_blind else make_operator(opname, shape, **opargs)
        model = blind.model(pr) if is_blind else make_model(pr, op, noise_std)
        sam, ys, lls, nfes, secs, kss, kts = [], [], [], [], [], [], []
        for i in range(n_img):
            gi = torch.Generator().manual_seed(int(seed) * 1000 + i)  # same y for every method
            if is_blind:  # the true kernel of image i: seed 1000 * seed + i, the same for every method
                k_true = blind.true_kernel(offset=i)
                y = blind.measure(truths[i], k_true, gi)
            else:
                y = op(truths[i]) + noise_std * torch.randn(op.out_shape, generator=gi)
            bar.set_postfix_str(f"{task} / {m} / image {i}")
            g = torch.Generator().manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=g_master)))
            res = run_method(m, model, y, n_s, generator=g, options=mopts, progress=False)
            x = res.samples.to(torch.float32)
            met = evaluate(res.flat(), truths[i])
            if is_blind:  # kernel draws paired with the images: the likelihood of each (x, k)
                kd = res.extra["theta"]["k"].to(torch.float32)  # (chain, draw, 7, 7)
                ll = blind.log_likelihood(res.flat(), kd.reshape((-1,) + tuple(kd.shape[2:])), y).reshape(x.shape[:2])
                met.update(kernel_metrics(kd, k_true, k_prior_mean))
                kss.append(kd), kts.append(k_true)
                kernels_by_task.setdefault(task, []).append(dict(kernels=kd, truth=k_true,
                                                                 label=f"#{int(idx[i])} {m}"))
            else:
                with torch.no_grad():
                    ll = Problem.from_model(model, y=y).log_likelihood(res.flat()).reshape(x.shape[:2])
            rows.append(dict(task=task, operator=opname, method=m, family=res.family, image=int(idx[i]),
                             **met, nfe=res.nfe_per_sample, seconds=res.seconds))
            sam.append(x), ys.append(y), lls.append(ll), nfes.append(res.nfe_per_sample), secs.append(res.seconds)
            by_task.setdefault(task, []).append(dict(samples=res.flat(), truth=truths[i], y=y, operator=op,
                                                     label=f"#{int(idx[i])} {m}", n_samples_shown=3))
            bar.update(1)
        # InferenceData of this task/method: images on their own dim
        post = torch.stack(sam, dim=2)                    # (chain, draw, image, *event)
        ll = torch.stack(lls, dim=2).to(torch.float64)    # (chain, draw, image)
        yy = torch.stack(ys, dim=0)                       # (image, *obs)
        ev = ["channel", "row", "col"][-len(shape):]
        obs_dims = [f"y_dim_{k}" for k in range(yy.dim() - 1)]
        posterior, dims = {"x": post}, {"x": ["chain", "draw", "image", *ev]}
        if is_blind:  # kernel draws (chain, draw, image, k_row, k_col)
            posterior["k"], dims["k"] = torch.stack(kss, dim=2), ["chain", "draw", "image", "k_row", "k_col"]
        idata = to_inference_data(
            posterior, observed_data={"y_observed": yy}, log_likelihood={"y": ll},
            dims={**dims, "y_observed": ["image", *obs_dims], "y": ["chain", "draw", "image"]},
            coords={"image": [int(j) for j in idx]},
            attrs={"task": task, "method": m, "prior": str(prior), "noise_std": noise_std,
                   "operator": opname, "operator_args": json.dumps(opargs), "options": json.dumps(mopts),
                   "nfe_per_sample": float(np.mean(nfes)), "seconds": float(np.sum(secs))})
        if is_blind:  # the true kernels, for comparison
            add_true_kernel(idata, torch.stack(kts), images=[int(j) for j in idx])
        idata.to_netcdf(str(out / "netcdf" / f"{task}_{m}.nc"))
        if m == jobs[0][1] and task == jobs[0][0]:  # one ArviZ trace figure for the first solve
            try:
                plot_scalar_traces(idata, ["y"], group="log_likelihood",
                                   path=out / "figures" / f"loglik_trace_{task}_{m}.png")
            except Exception as e:  # pragma: no cover - plotting must not sink the report
                log(f"(log-likelihood trace figure skipped: {e})")
    bar.close()
    for task, rws in by_task.items():
        rws = sorted(rws, key=lambda r: r["label"])
        opname, opargs = DEMO_TASKS.get(task) or OPT_IN_TASKS[task]
        what = f"unknown 7x7 kernel ({opargs['family']})" if task in OPT_IN_TASKS else \
            f"{opname} {json.dumps(opargs) if opargs else ''}"
        posterior_grid(rws, path=out / "figures" / f"{task}.png",
                       title=f"{task}: {what}, sigma_y={noise_std}, prior={prior}")
    for task, rws in kernels_by_task.items():
        kernel_grid(sorted(rws, key=lambda r: r["label"]), path=out / "figures" / f"{task}_kernels.png",
                    title=f"{task}: true and estimated 7x7 kernels, sigma_y={noise_std}, prior={prior}")
    seconds = time.perf_counter() - t_start
    if blind is None:
        cfg = {k: v for k, v in cfg.items() if k != "blind"}
    _write_summary(out, rows, seconds, dict(prior=str(prior), fast=fast, images=[int(j) for j in idx], samples=n_s,
                                             noise_std=noise_std, seed=seed, config=cfg))
    return {"rows": rows, "seconds": seconds, "out": str(out)}


def _write_summary(out: Path, rows: list, seconds: float, meta: dict) -> None:
    keys = ["task", "operator", "method", "family", "image", "psnr", "ssim", "coverage90", "std_err_corr", "nfe",
            "seconds"]
    kernel_keys = ["kernel_mse", "kernel_mse_prior_mean", "kernel_rank"]
    blind_rows = [r for r in rows if "kernel_mse" in r]
    if blind_rows:  # the blind task: its kernel metrics (empty on the other tasks)
        keys = keys + kernel_keys
    with open(out / "summary.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys, restval="")
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{r[k]:.6g}" if isinstance(r[k], float) else r[k]) for k in keys if k in r})
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["task"], r["method"]), []).append(r)
    lines = [
        "# ppl-diffusion demo",
        "",
        f"Prior `{meta['prior']}`, held-out images {meta['images']}, sigma_y = {meta['noise_std']} on [-1, 1], "
        f"{meta['samples']} posterior draws per image, seed {meta['seed']}{' (--fast)' if meta['fast'] else ''}.",
        f"Total run time {seconds:.0f} s on {torch.get_num_threads()} CPU thread(s) "
        f"({platform.processor() or platform.machine()}, torch {torch.__version__}).",
        "",
        "PSNR / SSIM of the posterior mean; coverage = fraction of pixels inside the 90 % equal-tailed "
        "pixel interval; corr = Pearson correlation of the pixel std with |mean - truth|; NFE = network "
        "evaluations per posterior draw; time = seconds per image (all draws). Means over images.",
        f"Exact posterior draws would cover {expected_coverage(meta['samples']):.2f} with {meta['samples']} draws "
        "(not 0.90: the sample quantiles of a few draws are narrower); **flag** marks a coverage more than 0.1 "
        "from that on the known truth (over-confident: intervals too narrow; under-confident: too wide).",
        "",
        "| task | method | family | PSNR | SSIM | coverage 90% | flag | corr(std, err) | NFE/draw | time (s) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    def mean(rs, k):
        v = [r[k] for r in rs if not (isinstance(r[k], float) and math.isnan(r[k]))]
        return float(np.mean(v)) if v else float("nan")

    flagged = []
    for (task, m), rs in groups.items():
        flag = coverage_flag(mean(rs, "coverage90"), meta["samples"])
        if flag:
            flagged.append(f"{task} / {m}")
        lines.append(f"| {task} | {m} | {rs[0]['family']} | {_fmt(mean(rs, 'psnr'))} | "
                     f"{_fmt(mean(rs, 'ssim'), 3)} | {_fmt(mean(rs, 'coverage90'), 3)} | {flag or 'ok'} | "
                     f"{_fmt(mean(rs, 'std_err_corr'), 2)} | {_fmt(mean(rs, 'nfe'), 0)} | "
                     f"{_fmt(mean(rs, 'seconds'), 1)} |")
    families = sorted({r["family"] for r in rows})
    lines += ["", "**Which intervals to trust.** " + (f"Flagged (coverage far from what exact draws give): "
                                                      f"{', '.join(flagged)}. " if flagged else "No cell flagged. ")
              + "Calibration by family (measured on exact posteriors): "
              + "; ".join(f"{f}: {CALIBRATION[f]}" for f in families if f in CALIBRATION)
              + ". A demo cell uses few draws and little compute, so even the exact families are only "
                "approximately calibrated here."]
    if blind_rows:
        lines += ["", "**Blind deblurring: the kernel.** Kernel MSE of the posterior-mean kernel against the true "
                  "kernel, beside that of the kernel prior's mean (64 prior draws: what the data should beat); "
                  "rank = fraction of kernel draws farther from their mean than the true kernel (about 0.5 when "
                  "the true kernel looks like a draw; near 0: it lies outside the draws, which are then "
                  "over-confident; near 1: it is closer to their mean than the draws). Means over images; "
                  "`figures/blind_deblur_kernels.png` shows them.", "",
                  "| method | kernel MSE (x1e4) | prior-mean MSE (x1e4) | true-kernel rank |", "|---|---|---|---|"]
        for m in dict.fromkeys(r["method"] for r in blind_rows):
            rs = [r for r in blind_rows if r["method"] == m]
            lines.append(f"| {m} | {1e4 * mean(rs, 'kernel_mse'):.2f} | {1e4 * mean(rs, 'kernel_mse_prior_mean'):.2f} "
                         f"| {_fmt(mean(rs, 'kernel_rank'))} |")
    lines += ["", "Settings: `" + json.dumps(meta["config"]) + "`", "",
              "Figures: `figures/<task>.png` (truth, measurement, posterior mean, std, 3 draws, |error|); "
              "InferenceData: `netcdf/<task>_<method>.nc`.", ""]
    (out / "summary.md").write_text("\n".join(lines))
