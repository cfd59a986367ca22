"""``ppl-diffusion`` command line: demo, solve, methods, train-prior, priors, benchmark.

Every subcommand exits 0 on success and 2 with a one-line ``error: ...`` on bad input (unknown
prior, method or operator, an image of the wrong size, bad options).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
from pathlib import Path

__all__ = ["main", "build_parser"]

_EPILOG = textwrap.dedent("""\
    first steps:
      ppl-diffusion demo                      # the full report in ./report (~90 s, 1 thread)
      ppl-diffusion demo --fast --out /tmp/r  # a seconds-scale version
      ppl-diffusion solve --image digit.png --operator sr --op-args factor=2 --method ddrm --out out/
      ppl-diffusion solve --image digit.png --task blind_deblur --method blind_dps --out out/  # unknown kernel
      ppl-diffusion priors                    # shipped priors
      ppl-diffusion methods                   # registered solvers (name, family, needs)
      ppl-diffusion solve --list              # methods and operators
      ppl-diffusion study study.toml --out out/uq   # a resumable UQ study (--backend ray)
    """)


def _threads(args):
    import torch

    if getattr(args, "threads", None):
        torch.set_num_threads(int(args.threads))


# ---------------------------------------------------------------------------------------------
# demo
# ---------------------------------------------------------------------------------------------
def _add_demo(sub):
    from .demo import demo_config

    full, fast = demo_config(), demo_config(fast=True)
    p = sub.add_parser(
        "demo", help="run the main demo and write a report folder",
        description="Solve five inverse problems (random and box inpainting, 2x super-resolution, Gaussian "
                    "deblurring, phase retrieval; sigma_y = 0.05 on [-1, 1]) on held-out images of a shipped "
                    "prior with one method per family (DDRM or DPS, RED-Diff, MCGDiff or PnP-DM). Writes "
                    "OUT/figures/<task>.png (truth, measurement, posterior mean, std, draws, |error|), "
                    "OUT/netcdf/<task>_<method>.nc (ArviZ InferenceData), OUT/summary.md and OUT/summary.csv "
                    "(PSNR, SSIM, 90 percent interval coverage, corr(std, |error|), NFE, time).")
    p.add_argument("--out", default="report", help="report folder (default ./report)")
    p.add_argument("--fast", action="store_true", help="seconds-scale settings (for CI; numbers not meaningful)")
    p.add_argument("--prior", default="digits", help="shipped prior name or diffusers folder with heldout.npy "
                                                      "(default digits)")
    p.add_argument("--images", type=int, default=None,
                   help=f"held-out images per task (default {full['images']}; {fast['images']} with --fast)")
    p.add_argument("--samples", type=int, default=None,
                   help=f"posterior draws per image (default {full['samples']}; {fast['samples']} with --fast)")
    p.add_argument("--tasks", default=None, help="comma-separated subset of: inpainting,box,sr2,deblur,phase "
                   "(default: all five), and the opt-in blind_deblur (an unknown 7x7 kernel: BlindDPS and Blind "
                   "RED-Diff, figures with the estimated kernels; about 50 CPU-s more on digits)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(args):
    from .demo import run_demo

    _threads(args)
    _check_out_dir(args.out, "--out")  # before any work
    tasks = [t.strip() for t in args.tasks.split(",")] if args.tasks else None
    res = run_demo(args.out, prior=args.prior, fast=args.fast, images=args.images, seed=args.seed,
                   samples=args.samples, tasks=tasks, progress=not args.no_progress)
    print(Path(args.out, "summary.md").read_text())
    print(f"report written to {args.out}/ in {res['seconds']:.0f} s")
    return 0


# ---------------------------------------------------------------------------------------------
# solve
# ---------------------------------------------------------------------------------------------
def _add_solve(sub):
    from .blind_tasks import BLIND_TASKS
    from .tasks import OPERATORS

    ops = "\n".join(f"  {k:<11} {v}" for k, v in OPERATORS.items())
    blind = "\n".join(f"  {k:<11} {v}" for k, v in BLIND_TASKS.items())
    p = sub.add_parser(
        "solve", help="sample the posterior for your own image or measurement",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.dedent("""\
            Posterior sampling for y = A(x) + sigma_y * noise with a diffusion prior.
            Give a ground-truth image (--image: PNG or .npy, values in [0, 255] / [0, 1] for PNG and
            [-1, 1] for .npy, of the prior's size) to simulate y, or a measurement (--measurement y.npy
            of the operator's output shape). Writes OUT/samples.npy (draws, C, H, W), OUT/mean.npy,
            OUT/std.npy, OUT/posterior.png, OUT/uncertainty.png (with --image), OUT/posterior.nc and
            OUT/result.json (metrics when the truth is known, NFE, time).
            --task blind_deblur instead of --operator: a blur by an UNKNOWN 7x7 kernel, inferred with the
            image by a blind solver (--method blind_dps, gibbs_ddrm or blind_red_diff) under the shipped
            'kernels' prior; with --image the true kernel comes from our seeded generator. Adds
            OUT/kernels.npy (draws, 7, 7), OUT/kernel_true.npy and OUT/kernels.png (true kernel,
            posterior-mean kernel, draws, std); posterior.nc holds x and k.
            """),
        epilog="operators (--operator NAME --op-args key=value,...):\n" + ops +
               "\n\nblind tasks (--task NAME --op-args key=value,...):\n" + blind +
               "\n\nmethods: see `ppl-diffusion methods`; --method-args takes a JSON object of the "
               "solver's options,\ne.g. --method ddrm --method-args '{\"steps\": 50}', --method pnpdm --method-args "
               "'{\"chains\": 4, \"warmup\": 20}'.")
    p.add_argument("--list", action="store_true", help="list methods (with what they need) and operators, then exit")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--image", help="ground-truth image (.png or .npy) to simulate the measurement from")
    src.add_argument("--measurement", help="measurement y as .npy (shape = the operator's output shape)")
    p.add_argument("--operator", default=None, help="forward operator (see below)")
    p.add_argument("--task", default=None, choices=["blind_deblur"],
                   help="a blind task instead of --operator: blind_deblur (unknown 7x7 kernel; see below)")
    p.add_argument("--op-args", action="append", default=None, help="operator parameters key=value[,key=value]")
    p.add_argument("--noise-std", type=float, default=0.05, help="sigma_y on the [-1, 1] scale (default 0.05)")
    p.add_argument("--method", default="dps",
                   help="registered solver name or alias, see `ppl-diffusion methods` (default dps)")
    p.add_argument("--method-args", default="{}", help="JSON object of solver options (default {})")
    p.add_argument("--samples", type=int, default=8, help="posterior draws (default 8)")
    p.add_argument("--prior", default="digits", help="shipped prior name, diffusers folder or hub id (default digits)")
    p.add_argument("--prompt", default=None, help="prompt of a text-conditioned prior (--prior digits-text), e.g. "
                   "'a handwritten digit seven'; the caption vocabulary only (no language understanding)")
    p.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance weight with --prompt "
                   "(default 1: the conditional model)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--out", default="out", help="output folder (default ./out)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--progress", action="store_true", help="show the solver's progress bar")
    p.set_defaults(func=_cmd_solve)


def _check_out_dir(path: str, flag: str) -> None:
    """ValueError (one line, before any work) unless ``path`` is, or can be created as, a writable folder."""
    p = Path(path)
    if p.exists():
        if not p.is_dir():
            raise ValueError(f"{flag} {path} exists and is not a folder")
        if not os.access(p, os.W_OK | os.X_OK):
            raise ValueError(f"{flag} {path} is not writable")
        return
    parent = p.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {path} cannot be created: {parent} is not a writable folder")


def _write_partial(out: str, exc) -> None:
    """Save the partial samples of an interrupted run as OUT/partial.npy (when there are any)."""
    from .inference.health import partial_samples

    x = partial_samples(getattr(exc, "partial", None))
    if x is None:
        return
    import numpy as np

    Path(out).mkdir(parents=True, exist_ok=True)
    np.save(Path(out) / "partial.npy", x.cpu().numpy().astype(np.float32))
    print(f"interrupted: the partial result {tuple(x.shape)} was written to {out}/partial.npy", file=sys.stderr)


def _read_image(path: str, shape):
    """An image file -> float32 tensor of ``shape`` (C, H, W) in [-1, 1]; ValueError on a mismatch."""
    import numpy as np
    import torch

    p = Path(path)
    if not p.is_file():
        raise ValueError(f"--image: no such file {path}")
    if p.suffix.lower() == ".npy":
        try:
            a = np.load(p, allow_pickle=False).astype(np.float32)
        except Exception as e:
            raise ValueError(f"--image: cannot read {path} as .npy ({e})") from e
    else:
        try:
            from PIL import Image

            im = Image.open(p)
            im = im.convert("L") if shape[0] == 1 else im.convert("RGB")
            a = np.asarray(im, dtype=np.float32) / 255.0 * 2.0 - 1.0
        except Exception as e:
            raise ValueError(f"--image: cannot read {path} as an image ({e})") from e
        if a.ndim == 3:
            a = np.moveaxis(a, -1, 0)
    if a.ndim == 2:
        a = a[None]
    if tuple(a.shape) != tuple(shape):
        raise ValueError(f"--image: {path} has shape {tuple(a.shape)} but the prior's images are {tuple(shape)} "
                         f"(C, H, W); resize it to {shape[-2]}x{shape[-1]} with {shape[0]} channel(s)")
    if not np.isfinite(a).all():
        raise ValueError(f"--image: {path} contains non-finite values")
    return torch.as_tensor(a)


def _cmd_solve(args):
    import numpy as np
    import torch

    from .compat import ensure_diffusers_importable
    from .blind_tasks import BlindDeblur, add_true_kernel, check_blind_method, kernel_metrics
    from .evaluation import CALIBRATION, coverage_flag, evaluate
    from .methods import method_key, run_method
    from .tasks import OPERATORS, make_model, make_operator, parse_op_args

    if args.list:
        print("methods (name, family, what it needs):")
        _print_methods(indent="  ")
        print("operators:")
        for k, v in OPERATORS.items():
            print(f"  {k:<11} {v}")
        return 0
    if args.operator is None and args.task is None:
        raise ValueError("--operator is required (e.g. --operator inpainting), or --task blind_deblur; see "
                         "`ppl-diffusion solve --help`")
    if args.operator is not None and args.task is not None:
        raise ValueError(f"--task {args.task} brings its own operator (a blur by an unknown kernel): drop --operator")
    if not args.image and not args.measurement:
        raise ValueError("give --image (ground truth to simulate y from) or --measurement (y as .npy)")
    key = method_key(args.method)  # unknown method -> error before loading anything
    check_blind_method(key, args.task is not None)
    try:
        opts = json.loads(args.method_args)
    except json.JSONDecodeError as e:
        raise ValueError(f"--method-args must be a JSON object, got {args.method_args!r} ({e})") from e
    if not isinstance(opts, dict):
        raise ValueError(f"--method-args must be a JSON object, got {args.method_args!r}")
    if args.samples < 1:
        raise ValueError(f"--samples must be >= 1, got {args.samples}")
    if args.noise_std < 0:
        raise ValueError(f"--noise-std must be >= 0, got {args.noise_std}")
    op_args = parse_op_args(args.op_args)
    _check_out_dir(args.out, "--out")  # before any work
    _threads(args)
    ensure_diffusers_importable()
    from .models.zoo import load_prior

    prior = load_prior(args.prior)
    if args.prompt is not None:
        if not hasattr(prior, "condition"):
            raise ValueError(f"--prompt needs a text-conditioned prior (e.g. --prior digits-text); {args.prior!r} "
                             "takes no prompt")
        prior = prior.condition(args.prompt, guidance=args.guidance)
    shape = tuple(prior.event_shape)
    blind = None
    if args.task is not None:  # blind_deblur: the operator KernelBlur(k) of an unknown kernel k
        unknown = set(op_args) - {"family", "kernel_seed", "kernel", "kernel_prior"}
        if unknown:
            raise ValueError(f"--task blind_deblur: unknown --op-args {sorted(unknown)}; allowed: family, kernel_seed, "
                             "kernel, kernel_prior")
        blind = BlindDeblur(shape, args.noise_std, **op_args)
        k_true = blind.true_kernel() if (args.image or blind.given is not None) else None
        op = blind.operator(k_true) if k_true is not None else None
    else:
        op = make_operator(args.operator, shape, **op_args)
    out_shape = shape if blind is not None else op.out_shape
    truth = None
    if args.image:
        truth = _read_image(args.image, shape)
        g = torch.Generator().manual_seed(args.seed + 7919)
        y = op(truth) + args.noise_std * torch.randn(out_shape, generator=g)
    else:
        try:
            y = torch.as_tensor(np.load(args.measurement, allow_pickle=False).astype(np.float32))
        except Exception as e:
            raise ValueError(f"--measurement: cannot read {args.measurement} as .npy ({e})") from e
        if tuple(y.shape) != tuple(out_shape):
            raise ValueError(f"--measurement: shape {tuple(y.shape)} does not match the operator's output "
                             f"shape {tuple(out_shape)}")
    model = blind.model(prior) if blind is not None else make_model(prior, op, args.noise_std)
    gen = torch.Generator().manual_seed(args.seed)
    try:
        res = run_method(key, model, y, args.samples, generator=gen, options=opts, progress=args.progress)
    except KeyboardInterrupt as exc:  # Ctrl-C: write what the run had (health.RunInterrupted.partial)
        _write_partial(args.out, exc)
        raise
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    flat = res.flat()
    np.save(out / "samples.npy", flat.numpy().astype(np.float32))
    np.save(out / "mean.npy", flat.mean(0).numpy().astype(np.float32))
    np.save(out / "std.npy", flat.std(0).numpy().astype(np.float32) if flat.shape[0] > 1 else
            np.zeros(shape, np.float32))
    np.save(out / "measurement.npy", y.numpy().astype(np.float32))
    from .diagnostics import to_inference_data
    from .inference.problem import Problem
    from .plotting import kernel_grid, posterior_grid, uncertainty_map

    post = {"x": res.samples}
    if blind is not None:  # kernel draws paired with the images
        post["k"] = res.extra["theta"]["k"].to(flat.dtype)
        kflat = post["k"].reshape((-1,) + tuple(post["k"].shape[2:]))
        np.save(out / "kernels.npy", kflat.numpy().astype(np.float32))
        ll = blind.log_likelihood(flat, kflat, y)
    else:
        with torch.no_grad():
            ll = Problem.from_model(model, y=y).log_likelihood(flat)
    ll = ll.reshape(res.samples.shape[:2])
    idata = to_inference_data(post, observed_data={"y": y}, log_likelihood={"y": ll.double()},
                              dims={"k": ["chain", "draw", "k_row", "k_col"]} if blind is not None else None,
                              attrs={"method": key, "operator": args.operator or args.task,
                                     "op_args": json.dumps(op_args),
                                     "prior": str(args.prior), "prompt": str(args.prompt or ""),
                                     "noise_std": args.noise_std, "seed": args.seed})
    if blind is not None and k_true is not None:
        add_true_kernel(idata, k_true)
    idata.to_netcdf(str(out / "posterior.nc"))
    posterior_grid([dict(samples=flat, truth=truth, y=y, operator=op, label=key, n_samples_shown=4)],
                   path=out / "posterior.png", title=f"{key} on {args.operator or args.task}")
    info = {"method": key, "family": res.family, "options": opts, "operator": args.operator or args.task,
            "op_args": op_args, "noise_std": args.noise_std, "samples": int(flat.shape[0]), "seed": args.seed,
            "nfe_per_sample": res.nfe_per_sample, "seconds": res.seconds}
    if truth is not None:
        if flat.shape[0] > 1:
            uncertainty_map(flat, truth, path=out / "uncertainty.png", title=key)
        info["metrics"] = evaluate(flat, truth)
    if blind is not None:
        if k_true is not None:
            np.save(out / "kernel_true.npy", k_true.numpy().astype(np.float32))
            info["kernel_metrics"] = kernel_metrics(kflat, k_true, blind.prior_mean(seed=args.seed))
            info["kernel_true"] = {"family": blind.family, "kernel_seed": blind.kernel_seed} if blind.given is None \
                else {"file": str(op_args["kernel"])}
        kernel_grid([dict(kernels=kflat, truth=k_true, label=key, n_draws_shown=4)], path=out / "kernels.png",
                    title=f"{key}: {'true and ' if k_true is not None else ''}estimated 7x7 kernels")
    (out / "result.json").write_text(json.dumps(info, indent=2) + "\n")
    msg = f"{key}: {flat.shape[0]} draws in {res.seconds:.1f} s ({res.nfe_per_sample:.0f} NFE/draw) -> {out}/"
    if truth is not None:
        m = info["metrics"]
        msg += f"; PSNR {m['psnr']:.2f} dB, SSIM {m['ssim']:.3f}, coverage90 {m['coverage90']:.2f}"
        if "kernel_metrics" in info:
            km = info["kernel_metrics"]
            msg += (f"; kernel MSE {km['kernel_mse']:.2e} (kernel prior's mean: "
                    f"{km['kernel_mse_prior_mean']:.2e})")
        flag = coverage_flag(m["coverage90"], int(flat.shape[0]))
        if flag:  # far from what exact draws would cover: say so, and what the family's intervals mean
            msg += (f" [{flag.upper()}: exact draws would cover {m['coverage90_exact']:.2f} with {flat.shape[0]} "
                    f"draws; {res.family}: {CALIBRATION.get(res.family, 'no calibration record')}]")
    print(msg)
    return 0


# ---------------------------------------------------------------------------------------------
# methods
# ---------------------------------------------------------------------------------------------
def _add_methods(sub):
    from .inference.registry import FAMILIES

    fams = "\n".join(f"  {k:<12} {v}" for k, v in FAMILIES.items())
    p = sub.add_parser("methods", help="list the registered solvers (name, family, needs, description)",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="The registered solvers: the names `solve --method` and `benchmark gmm --solver` "
                                   "take, the family each belongs to and what it needs from the problem.",
                       epilog="families:\n" + fams)
    p.add_argument("--family", choices=list(FAMILIES), default=None, help="only the solvers of this family")
    p.set_defaults(func=_cmd_methods)


def _print_methods(family: str | None = None, indent: str = "") -> None:
    from .inference.registry import SOLVERS, available_solvers

    avail = available_solvers()
    for info in SOLVERS.values():
        if family is not None and info.family != family:
            continue
        aliases = f" (also: {', '.join(info.aliases)})" if info.aliases else ""
        mark = "" if info.name in avail else "   [not available in this installation]"
        print(f"{indent}{info.name:<22} {info.family:<12} {info.needs:<11} {info.doc}{aliases}{mark}")


def _cmd_methods(args):
    print(f"{'name':<22} {'family':<12} {'needs':<11} description")
    _print_methods(args.family)
    return 0


# ---------------------------------------------------------------------------------------------
# train-prior, priors
# ---------------------------------------------------------------------------------------------
def _add_train(sub):
    p = sub.add_parser("train-prior", help="train a small diffusion prior on offline data (diffusers format)",
                       description="Train a diffusers UNet2DModel + DDPM scheduler on data bundled with "
                                   "scikit-learn / scikit-image and save it (config + safetensors, training.json, "
                                   "samples.png, heldout.npy). Load it with --prior OUT or load_prior(OUT).")
    try:
        from .training import add_train_arguments
    except ImportError as e:
        reason = str(e)
        p.set_defaults(func=lambda a: _unavailable(f"the training module is not available ({reason})"))
        return
    add_train_arguments(p)
    p.set_defaults(func=_cmd_train)


def _cmd_train(args):
    from .compat import ensure_diffusers_importable
    from .training import main_train

    ensure_diffusers_importable()
    return int(main_train(args) or 0)


def _add_priors(sub):
    p = sub.add_parser("priors", help="list the shipped priors", description="List the priors shipped with this "
                       "installation and where their weights are.")
    p.set_defaults(func=_cmd_priors)


def _cmd_priors(args):
    from .models import zoo

    have = set(zoo.list_priors())
    for name, desc in zoo.SHIPPED_PRIORS.items():
        state = "installed" if name in have else "MISSING"
        print(f"{name:<8} [{state}] {desc}\n         {zoo.WEIGHTS_DIR / name}")
    return 0


# ---------------------------------------------------------------------------------------------
# benchmark
# ---------------------------------------------------------------------------------------------
#: suite -> module with main(argv) (options passed with --extra)
_BENCH_MODULES = {"images": "ppl_diffusion.bench.images", "speed": "ppl_diffusion.bench.overhead",
                  "scaling": "ppl_diffusion.bench.scaling", "peers": "ppl_diffusion.bench.peers",
                  "kernels": "ppl_diffusion.bench.kernels", "smc": "ppl_diffusion.bench.smc",
                  "variational": "ppl_diffusion.bench.variational",
                  "diagnostics": "ppl_diffusion.bench.diagnostics_speed",
                  "match-times": "ppl_diffusion.bench.mcgdiff_match_times",
                  "latents": "ppl_diffusion.bench.latents", "latents-joint": "ppl_diffusion.bench.latents_joint",
                  "plates": "ppl_diffusion.bench.plates", "study-scaling": "ppl_diffusion.bench.study_scaling"}


def _add_benchmark(sub):
    from .bench.gmm import SETTINGS
    from .bench.report import RESULTS_DIR

    settings = "; ".join(f"'{k}': {v}" for k, v in SETTINGS.items() if k != "gaussian")
    suites = ["gmm", "gaussian", *_BENCH_MODULES]
    p = sub.add_parser(
        "benchmark", help="run a benchmark: " + ", ".join(suites),
        description="gmm: GMM posterior benchmark (exact posteriors, --setting), gaussian: the Gaussian closed-form "
                    "check, both by ppl_diffusion.bench.gmm.run_benchmark (as `python benchmarks/gmm.py`); images / "
                    "speed (cost of the Pyro layer) / scaling (SMC particles, guide batch) / peers (DeepInverse side "
                    "by side) / kernels / smc / variational / diagnostics (R-hat, ESS speed) / match-times (MCGDiff) / "
                    "latents (Gibbs, PMMH: an unknown noise level or gain, exact by quadrature) / latents-joint "
                    "(joint DPS, RED-Diff on theta) / plates (a plate of measurements against separate runs): "
                    "ppl_diffusion.bench.*, options passed with --extra, e.g. --extra='--help'. Each writes its "
                    "tables under --out.")
    p.add_argument("suite", choices=suites, help="which benchmark")
    p.add_argument("--solver", nargs="+", default=None,
                   help="registered solver name(s) (gmm / gaussian; required except for --setting floor); "
                        "see `ppl-diffusion methods`, plus the 'prior' baseline and 'pmc_red'")
    p.add_argument("--setting", default="quick", choices=[k for k in SETTINGS if k != "gaussian"],
                   help=f"gmm (default 'quick'): {settings}")
    p.add_argument("--problems", type=int, default=None, help="problems per d_y (gmm)")
    p.add_argument("--samples", type=int, default=None, help="posterior draws per problem (gmm)")
    p.add_argument("--dys", type=int, nargs="+", default=[1, 2, 4], help="measurement dimensions (gmm; default 1 2 4)")
    p.add_argument("--dims", type=int, nargs="+", default=[8, 80, 800], help="dimensions of --setting grid")
    p.add_argument("--schedule", default="mcgdiff", choices=["mcgdiff", "increasing", "linear"],
                   help="noise schedule of the GMM problems (default mcgdiff)")
    p.add_argument("--options", default="{}", help="JSON object of solver options (gmm / gaussian)")
    p.add_argument("--out", default=RESULTS_DIR,
                   help=f"output folder (default {RESULTS_DIR} under the current directory), a .md file, or - to "
                        "print only")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--extra", default="", help="arguments passed on to the module of the other suites, "
                                                "as one quoted string")
    p.set_defaults(func=_cmd_benchmark)


def _unavailable(msg):
    print(f"error: {msg}", file=sys.stderr)
    return 2


def _cmd_benchmark(args):
    import importlib
    import shlex

    _threads(args)
    if args.suite in _BENCH_MODULES:
        modname = _BENCH_MODULES[args.suite]
        try:
            mod = importlib.import_module(modname)
        except ModuleNotFoundError as e:
            if e.name == modname:
                return _unavailable(f"the '{args.suite}' benchmark is not available in this installation "
                                    f"({modname} is missing)")
            raise
        mod.main(["--out", args.out, *shlex.split(args.extra)])  # returns its results, not an exit code
        return 0
    return _run_gmm_bench(args)


def _run_gmm_bench(args):
    """``gmm`` / ``gaussian``: :func:`ppl_diffusion.bench.gmm.run_benchmark`, as ``benchmarks/gmm.py``."""
    import shlex

    from .bench.gmm import run_benchmark

    try:
        opts = json.loads(args.options)
    except json.JSONDecodeError as e:
        raise ValueError(f"--options must be a JSON object ({e})") from e
    if not isinstance(opts, dict):
        raise ValueError(f"--options must be a JSON object, got {args.options!r}")
    setting = "gaussian" if args.suite == "gaussian" else args.setting
    command = "ppl-diffusion " + shlex.join(getattr(args, "argv", None) or ["benchmark", args.suite])
    run_benchmark(setting, args.solver or [], problems=args.problems, samples=args.samples, dims=args.dims,
                  dys=args.dys, schedule=args.schedule, options=opts, out=args.out, command=command)
    return 0


# ---------------------------------------------------------------------------------------------
# study
# ---------------------------------------------------------------------------------------------
def _add_study(sub):
    from .study.cli import add_study_arguments

    p = sub.add_parser("study", help="an uncertainty-quantification study (measurements x methods x settings x "
                                     "seeds), in-process or on Ray, resumable",
                       description="Solve and score every cell of a study grid (PSNR / SSIM, interval coverage, "
                                   "sliced Wasserstein on GMM problems); each finished cell is written at once to "
                                   "OUT/cells/<cell>.nc and OUT/results.csv, a re-run skips them; at the end "
                                   "OUT/study.nc (one InferenceData), OUT/table.csv, OUT/summary.md and "
                                   "OUT/calibration.png. See docs/study.md.")
    add_study_arguments(p)
    p.set_defaults(func=_cmd_study)


def _cmd_study(args):
    from .study.cli import main_study

    return main_study(args)


# ---------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ppl-diffusion", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Bayesian inverse problems with pre-trained diffusion priors (Pyro + ArviZ). Run "
                    "`ppl-diffusion demo` first; `ppl-diffusion SUBCOMMAND --help` for the options.",
        epilog=_EPILOG)
    sub = parser.add_subparsers(dest="command", metavar="SUBCOMMAND")
    _add_demo(sub)
    _add_solve(sub)
    _add_methods(sub)
    _add_train(sub)
    _add_priors(sub)
    _add_benchmark(sub)
    _add_study(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args.argv = argv
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    if os.environ.get("PPL_DEBUG"):
        return int(args.func(args) or 0)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, FloatingPointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # pragma: no cover
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
