"""The main job (``ppl-diffusion demo``) and the building blocks shared with ``ppl-diffusion solve``.

* :func:`make_operator` — an operator by name with parameters (``inpainting``, ``box``, ``sr``,
  ``blur``, ``phase``, ``identity``, ``cs``, ``mri``);
* :func:`make_model` — the Pyro model ``x ~ DiffusionPrior; y ~ GaussianMeasurement(A, x, sigma_y)``;
* :data:`METHODS` / :func:`run_method` — every solver of the library by name, run the way its family
  runs (guide ``.sample``, ``REDDiff.run`` through SVI, vectorised MCMC chains, batched SMC runs),
  returning samples ``(chain, draw, *event)``, per-sample network evaluations and wall time;
* :func:`evaluate` — PSNR / SSIM of the posterior mean, coverage of 90 % pixel intervals,
  correlation of the posterior std with ``|error|``;
* :func:`run_demo` — the report: five tasks on held-out images of a shipped prior, one method per
  family, PNG grids, netCDF InferenceData and ``summary.md`` / ``summary.csv``.
"""
from __future__ import annotations

import csv
import json
import math
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable

import numpy as np
import torch

__all__ = ["OPERATORS", "METHODS", "make_operator", "make_model", "run_method", "MethodResult", "evaluate",
           "run_demo", "DEMO_TASKS", "demo_config"]


def ensure_diffusers_importable() -> None:
    """Work around a broken optional torchvision (e.g. a CUDA build next to a CPU torch, which
    raises ``operator torchvision::nms does not exist`` on import): diffusers imports torchvision
    whenever it is installed, and the UNet does not need it, so tell diffusers it is absent."""
    try:
        import torchvision  # noqa: F401
    except Exception:
        try:
            import diffusers.utils.import_utils as iu

            iu._torchvision_available = False
        except Exception:  # pragma: no cover
            pass


# ---------------------------------------------------------------------------------------------
# operators by name
# ---------------------------------------------------------------------------------------------
OPERATORS = {
    "inpainting": "random pixel inpainting; args: missing=0.5 (fraction of pixels removed), seed=0",
    "box": "box inpainting; args: top, left, height, width (default: a centred box of half the side)",
    "sr": "super-resolution by block averaging; args: factor=2",
    "blur": "Gaussian deblurring (periodic FFT blur); args: sigma=1.0, size (odd kernel size, default 4*sigma+1)",
    "phase": "Fourier phase retrieval y = |FFT(pad(x))|; args: oversampling=2.0",
    "identity": "denoising (y = x + noise); no args",
    "cs": "compressed sensing with a Gaussian matrix; args: m (measurements, default d/4), seed=0",
    "mri": "Cartesian MRI (subsampled Fourier rows); args: acceleration=4, center_fraction=0.08, seed=0",
}
_ALIASES = {"random": "inpainting", "inpaint": "inpainting", "super_resolution": "sr", "superres": "sr",
            "deblur": "blur", "phase_retrieval": "phase", "denoise": "identity", "denoising": "identity",
            "compressed_sensing": "cs"}


def parse_op_args(items) -> dict:
    """``["factor=2", "sigma=1.5"]`` or ``"factor=2,sigma=1.5"`` -> ``{"factor": 2, "sigma": 1.5}``."""
    if items is None:
        return {}
    if isinstance(items, dict):
        return dict(items)
    if isinstance(items, str):
        items = [items]
    out = {}
    for item in items:
        for part in str(item).split(","):
            part = part.strip()
            if not part:
                continue
            if "=" not in part:
                raise ValueError(f"--op-args: expected key=value, got {part!r}")
            k, v = part.split("=", 1)
            try:
                out[k.strip()] = json.loads(v)
            except json.JSONDecodeError:
                out[k.strip()] = v
    return out


def make_operator(name: str, shape, dtype=torch.float32, **args):
    """An operator by name (see :data:`OPERATORS`) for images of ``shape`` ``(C, H, W)``."""
    from .models import operators as O

    key = _ALIASES.get(str(name).lower(), str(name).lower())
    if key not in OPERATORS:
        raise ValueError(f"unknown operator {name!r}; choose one of {', '.join(OPERATORS)}")
    shape = tuple(int(s) for s in shape)
    args = dict(args)
    allowed = {"inpainting": {"missing", "seed"}, "box": {"top", "left", "height", "width"}, "sr": {"factor"},
               "blur": {"sigma", "size"}, "phase": {"oversampling"}, "identity": set(), "cs": {"m", "seed"},
               "mri": {"acceleration", "center_fraction", "seed"}}[key]
    unknown = set(args) - allowed
    if unknown:
        raise ValueError(f"operator {key!r}: unknown arguments {sorted(unknown)}; allowed: {sorted(allowed) or 'none'}")
    H, W = shape[-2:]
    if key == "inpainting":
        g = torch.Generator().manual_seed(int(args.get("seed", 0)))
        return O.Inpainting.random(shape, float(args.get("missing", 0.5)), generator=g, dtype=dtype)
    if key == "box":
        h, w = int(args.get("height", H // 2)), int(args.get("width", W // 2))
        top, left = int(args.get("top", (H - h) // 2)), int(args.get("left", (W - w) // 2))
        return O.Inpainting.box(shape, top, left, h, w, dtype=dtype)
    if key == "sr":
        f = int(args.get("factor", 2))
        if f < 1 or H % f or W % f:
            raise ValueError(f"operator 'sr': factor {f} must divide the image size {H}x{W}")
        return O.SuperResolution(f, shape, dtype=dtype)
    if key == "blur":
        kw = {"size": int(args["size"])} if "size" in args else {}
        return O.Blur.gaussian(shape, float(args.get("sigma", 1.0)), dtype=dtype, **kw)
    if key == "phase":
        return O.PhaseRetrieval(shape, oversampling=float(args.get("oversampling", 2.0)))
    if key == "identity":
        return O.Identity(shape, dtype=dtype)
    if key == "cs":
        g = torch.Generator().manual_seed(int(args.get("seed", 0)))
        d = math.prod(shape)
        return O.CompressedSensing(int(args.get("m", d // 4)), shape, generator=g, dtype=dtype)
    g = torch.Generator().manual_seed(int(args.get("seed", 0)))
    return O.MRI.cartesian(shape, acceleration=float(args.get("acceleration", 4.0)),
                           center_fraction=float(args.get("center_fraction", 0.08)), generator=g, dtype=dtype)


def make_model(prior, operator, noise_std: float):
    """The Pyro model ``x ~ prior; y ~ GaussianMeasurement(operator, x, noise_std)``."""
    import pyro

    from .models.measurement import GaussianMeasurement

    def model(y=None):
        x = pyro.sample("x", prior)
        return pyro.sample("y", GaussianMeasurement(operator, x, noise_std), obs=y)

    return model


# ---------------------------------------------------------------------------------------------
# methods by name
# ---------------------------------------------------------------------------------------------
@dataclass
class MethodSpec:
    family: str                      # "guide", "variational", "kernel", "smc"
    loader: Callable                 # () -> class
    doc: str
    needs_linear: bool = True


def _cls(module: str, name: str):
    def load():
        import importlib

        return getattr(importlib.import_module(f"ppl_diffusion.inference.{module}"), name)
    return load


METHODS: dict[str, MethodSpec] = {
    # explicit approximations (Pyro guides)
    "dps": MethodSpec("guide", _cls("guides", "DPS"), "DPS (Chung et al. 2023): any differentiable likelihood", False),
    "pigdm": MethodSpec("guide", _cls("guides", "PiGDM"), "PiGDM (Song et al. 2023): linear Gaussian"),
    "mmps": MethodSpec("guide", _cls("guides", "MMPS"), "MMPS (Rozet et al. 2024): Gaussian likelihood", False),
    "mcg": MethodSpec("guide", _cls("guides", "MCG"), "MCG (Chung et al. 2022): linear Gaussian"),
    "score_ald": MethodSpec("guide", _cls("guides", "ScoreALD"), "Score-ALD (Jalal et al. 2021): linear Gaussian"),
    "snips": MethodSpec("guide", _cls("guides", "SNIPS"), "SNIPS (Kawar et al. 2021): operator with an SVD"),
    "ddrm": MethodSpec("guide", _cls("guides", "DDRM"), "DDRM (Kawar et al. 2022): operator with an SVD"),
    "ddnm": MethodSpec("guide", _cls("guides", "DDNM"), "DDNM (Wang et al. 2023): linear operator"),
    "ddnm_plus": MethodSpec("guide", _cls("guides", "DDNMPlus"), "DDNM+ (Wang et al. 2023): operator with an SVD"),
    "dds": MethodSpec("guide", _cls("guides", "DDS"), "DDS (Chung et al. 2024): linear operator (CG)"),
    "diffpir": MethodSpec("guide", _cls("guides", "DiffPIR"), "DiffPIR (Zhu et al. 2023): operator with a prox"),
    "repaint": MethodSpec("guide", _cls("guides", "RePaint"), "RePaint (Lugmayr et al. 2022): inpainting only"),
    "ilvr": MethodSpec("guide", _cls("guides", "ILVR"), "ILVR (Choi et al. 2021): linear operator"),
    "score_sde": MethodSpec("guide", _cls("guides", "ScoreSDE"), "Score-SDE PC (Song et al. 2021): operator with an SVD"),
    "ks": MethodSpec("guide", _cls("guides", "KadkhodaieSimoncelli"),
                     "Kadkhodaie & Simoncelli (2021): operator with an SVD"),
    # variational
    "red_diff": MethodSpec("variational", _cls("variational", "REDDiff"),
                           "RED-Diff (Mardani et al. 2024) via SVI; samples from its Gaussian q (learn_scale)", False),
    # MCMC kernels
    "pnpdm": MethodSpec("kernel", _cls("kernels", "PnPDM"), "PnP-DM split Gibbs (Wu et al. 2024): any likelihood", False),
    "pmc": MethodSpec("kernel", _cls("kernels", "PMC"), "Plug-and-play Monte Carlo (Sun et al. 2023)", False),
    # SMC
    "mcgdiff": MethodSpec("smc", _cls("smc", "MCGDiff"), "MCGDiff (Cardoso et al. 2024): operator with an SVD"),
    "tds": MethodSpec("smc", _cls("smc", "TDS"), "TDS (Wu et al. 2023): differentiable likelihood", False),
    "fps": MethodSpec("smc", _cls("smc", "FPS"), "FPS (Dou & Song 2024): linear Gaussian"),
    "fps_smc": MethodSpec("smc", _cls("smc", "FPSSMC"), "FPS-SMC (Dou & Song 2024): linear Gaussian"),
    "smcdiff": MethodSpec("smc", _cls("smc", "SMCDiff"), "SMCDiff (Trippe et al. 2023): inpainting"),
}
_METHOD_ALIASES = {"reddiff": "red_diff", "red-diff": "red_diff", "pnp-dm": "pnpdm", "pnp_dm": "pnpdm",
                   "ddnm+": "ddnm_plus", "score-ald": "score_ald", "scoreald": "score_ald", "pigdm": "pigdm",
                   "kadkhodaie_simoncelli": "ks", "fps-smc": "fps_smc"}


def method_key(name: str) -> str:
    key = _METHOD_ALIASES.get(str(name).lower(), str(name).lower())
    if key not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    return key


def available_methods() -> dict:
    """``{name: family}`` of the methods whose module imports in this installation."""
    out = {}
    for k, spec in METHODS.items():
        try:
            spec.loader()
            out[k] = spec.family
        except (ImportError, AttributeError):
            pass
    return out


@dataclass
class MethodResult:
    samples: torch.Tensor            # (chain, draw, *event)
    nfe_per_sample: float
    seconds: float
    method: str
    family: str
    stats: dict = field(default_factory=dict)  # name -> (chain, draw) tensors
    options: dict = field(default_factory=dict)

    def flat(self) -> torch.Tensor:
        return self.samples.reshape((-1,) + tuple(self.samples.shape[2:]))


def run_method(name: str, model, y: torch.Tensor, num_samples: int = 8, generator: torch.Generator | None = None,
               options: dict | None = None, progress: bool = False) -> MethodResult:
    """Run the solver ``name`` on ``model`` conditioned on ``y``; ``options`` go to its constructor,
    except these run-level keys: kernels ``chains`` (default: ``num_samples // 2``), ``warmup``
    (burn-in iterations, 20), ``thin`` (1); SMC ``independent`` (True: one run per sample); RED-Diff
    always uses ``learn_scale=True`` unless told otherwise, and its ``num_samples`` draws come from
    the fitted Gaussian.
    """
    import pyro

    from .inference.problem import Problem

    key = method_key(name)
    spec = METHODS[key]
    try:
        cls = spec.loader()
    except (ImportError, AttributeError) as e:
        raise ValueError(f"method {key!r} is not available in this installation ({e})") from e
    n = int(num_samples)
    if n < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    opts = dict(options or {})
    used = dict(opts)
    den = Problem.from_model(model, y=y).denoiser
    den.reset_nfe()
    t0 = time.perf_counter()
    stats = {}
    try:
        if spec.family == "guide":
            solver = cls(model, progress=progress, **opts)
            x = solver.sample(n, y=y, generator=generator)
            samples = x.detach()[None]
            nfe = float(den.nfe)  # one batched call per step serves every sample
        elif spec.family == "variational":
            pyro.clear_param_store()
            opts.setdefault("learn_scale", True)
            solver = cls(model, generator=generator, progress=progress, **opts)
            mu, trace = solver.run(y=y)
            if solver.learn_scale:
                scale = pyro.param(solver.scale_name).detach()
                eps = torch.randn((n,) + tuple(mu.shape), generator=generator, dtype=mu.dtype, device=mu.device)
                x = mu + scale * eps
            else:
                x = mu.expand((n,) + tuple(mu.shape)).clone()
            samples = x[None]
            nfe = float(den.nfe) / n  # one optimisation serves all draws
            stats["final_loss"] = float(trace[-1]) if len(trace) else float("nan")
        elif spec.family == "kernel":
            chains = int(opts.pop("chains", max(1, n // 2)))
            warmup = int(opts.pop("warmup", 20))
            thin = int(opts.pop("thin", 1))
            per_chain = -(-n // chains)
            kernel = cls(model, **opts)
            res = kernel.run_chains(y=y, num_chains=chains, num_samples=per_chain, warmup_steps=warmup, thin=thin,
                                    generator=generator, progress=progress)
            samples = res.samples.detach()
            iters = warmup + per_chain * thin
            nfe = float(res.nfe_per_iteration) * iters * chains / samples[0].shape[0] / chains
            for k, v in res.stats.items():
                v = torch.as_tensor(v)
                if v.shape[:2] == samples.shape[:2]:
                    stats[k] = v
        elif spec.family == "smc":
            independent = bool(opts.pop("independent", True))
            sampler = cls(model, progress=progress, **opts)
            runs = n if independent else 1
            res = sampler.run(y=y, runs=runs, generator=generator)
            samples = res.resample(n, generator).detach()[None]
            per_particle = res.extra.get("particle_nfe") or sampler.steps
            nfe = float(sampler.particles * per_particle * runs / n)
            stats["log_evidence"] = res.log_evidence.detach().to(torch.float64).reshape(-1)[:1].expand(1, 1)
        else:  # pragma: no cover
            raise AssertionError(spec.family)
    except TypeError as e:  # unknown keyword options
        raise ValueError(f"method {key!r}: bad options {sorted(used)} ({e})") from e
    seconds = time.perf_counter() - t0
    if not torch.isfinite(samples).all():
        bad = int((~torch.isfinite(samples)).flatten(2).any(-1).sum())
        raise FloatingPointError(f"method {key!r}: {bad} samples are not finite; try more steps or smaller step sizes")
    return MethodResult(samples, nfe, seconds, key, spec.family, stats, used)


# ---------------------------------------------------------------------------------------------
# metrics
# ---------------------------------------------------------------------------------------------
def evaluate(samples: torch.Tensor, truth: torch.Tensor, level: float = 0.9) -> dict:
    """PSNR / SSIM of the posterior mean (images in [-1, 1]), coverage of the ``level`` equal-tailed
    pixel intervals, and correlation of the pixel std with ``|mean - truth|``."""
    from .metrics import coverage, psnr, ssim, std_error_correlation

    s = samples.reshape((-1,) + tuple(truth.shape)).to(torch.float64)
    t = truth.to(torch.float64)
    mean = s.mean(0)
    out = {"psnr": float(psnr(mean, t)), "ssim": float(ssim(mean, t))}
    if s.shape[0] >= 2:
        out["coverage90"] = float(coverage(s, t, level=level))
        c = std_error_correlation(s, t)
        out["std_err_corr"] = float(c) if torch.isfinite(c) else float("nan")
    else:
        out["coverage90"] = out["std_err_corr"] = float("nan")
    return out


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


def demo_config(fast: bool = False) -> dict:
    """Methods and their settings per task. ``fast``: a seconds-scale version for CI.

    Linear tasks: DDRM (guide), RED-Diff (variational), MCGDiff (SMC); phase retrieval (nonlinear):
    DPS (guide), RED-Diff, PnP-DM (MCMC with Langevin likelihood steps). The budgets are set so the
    full demo (3 images x 5 tasks x 3 methods, 16 draws each) finishes in < 10 minutes on 2 CPU cores."""
    if fast:
        lin = {"ddrm": {"steps": 4}, "red_diff": {"steps": 10, "lr": 0.1},
               "mcgdiff": {"steps": 4, "particles": 4}}
        phase = {"dps": {"steps": 4}, "red_diff": {"steps": 10, "lr": 0.1},
                 "pnpdm": {"rho0": 0.5, "rho_min": 0.3, "num_grid": 10, "langevin_steps": 5,
                           "warmup": 1, "chains": 2}}
        return {"samples": 4, "images": 1, "lin": lin, "phase": phase}
    lin = {"ddrm": {"steps": 50},
           "red_diff": {"steps": 200, "lr": 0.02},
           "mcgdiff": {"steps": 30, "particles": 4}}  # one independent run per draw (a single run's
    # resampled particles collapse onto one lineage: zero posterior std)
    phase = {"dps": {"steps": 100, "zeta": 1.0},
             "red_diff": {"steps": 200, "lr": 0.02},
             "pnpdm": {"rho0": 2.0, "decay": 0.8, "rho_min": 0.3, "num_grid": 40, "langevin_steps": 50,
                       "langevin_step": 1e-4, "warmup": 9, "chains": 8, "thin": 1}}
    return {"samples": 16, "images": 3, "lin": lin, "phase": phase}


def _fmt(v, nd=2):
    if isinstance(v, float):
        if math.isnan(v):
            return "n/a"
        return f"{v:.{nd}f}"
    return str(v)


def run_demo(out="report", prior="digits", fast: bool = False, images: int | None = None, seed: int = 0,
             samples: int | None = None, noise_std: float = 0.05, tasks=None, methods_override: dict | None = None,
             progress: bool = True, threads: int | None = None, log=print) -> dict:
    """Run the demo and write the report folder ``out``; returns ``{"rows": [...], "seconds": ...}``."""
    from tqdm.auto import tqdm

    from .diagnostics import to_inference_data
    from .inference.problem import Problem
    from .models.zoo import heldout_images, load_prior
    from .plotting import plot_scalar_traces, posterior_grid

    ensure_diffusers_importable()
    if threads is not None:
        torch.set_num_threads(int(threads))
    t_start = time.perf_counter()
    cfg = demo_config(fast)
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
        if t not in DEMO_TASKS:
            raise ValueError(f"unknown demo task {t!r}; choose from {', '.join(DEMO_TASKS)}")
    avail = available_methods()
    jobs = []
    for task in tasks:
        opname, opargs = DEMO_TASKS[task]
        mcfg = cfg["phase"] if opname == "phase" else cfg["lin"]
        for m, mopts in mcfg.items():
            if m in avail:
                jobs.append((task, m, mopts))
    rows = []
    g_master = torch.Generator().manual_seed(int(seed))
    bar = tqdm(total=len(jobs) * n_img, desc="demo", disable=not progress, unit="solve")
    by_task: dict = {}
    for task, m, mopts in jobs:
        opname, opargs = DEMO_TASKS[task]
        op = make_operator(opname, shape, **opargs)
        model = make_model(pr, op, noise_std)
        sam, ys, lls, nfes, secs = [], [], [], [], []
        for i in range(n_img):
            gi = torch.Generator().manual_seed(int(seed) * 1000 + i)  # same y for every method
            y = op(truths[i]) + noise_std * torch.randn(op.out_shape, generator=gi)
            bar.set_postfix_str(f"{task} / {m} / image {i}")
            g = torch.Generator().manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=g_master)))
            res = run_method(m, model, y, n_s, generator=g, options=mopts, progress=False)
            x = res.samples.to(torch.float32)
            met = evaluate(res.flat(), truths[i])
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
        obs_dims = [f"y_dim_{k}" for k in range(len(op.out_shape))]
        idata = to_inference_data(
            {"x": post}, observed_data={"y_observed": yy}, log_likelihood={"y": ll},
            dims={"x": ["chain", "draw", "image", *ev], "y_observed": ["image", *obs_dims],
                  "y": ["chain", "draw", "image"]},
            coords={"image": [int(j) for j in idx]},
            attrs={"task": task, "method": m, "prior": str(prior), "noise_std": noise_std,
                   "operator": opname, "operator_args": json.dumps(opargs), "options": json.dumps(mopts),
                   "nfe_per_sample": float(np.mean(nfes)), "seconds": float(np.sum(secs))})
        idata.to_netcdf(str(out / "netcdf" / f"{task}_{m}.nc"))
        if m == jobs[0][1] and task == jobs[0][0]:  # one ArviZ trace figure for the first solve
            try:
                plot_scalar_traces(idata, ["y"], group="log_likelihood", path=out / "figures" / f"loglik_trace_{task}_{m}.png")
            except Exception as e:  # pragma: no cover - plotting must not sink the report
                log(f"(log-likelihood trace figure skipped: {e})")
    bar.close()
    for task, rws in by_task.items():
        rws = sorted(rws, key=lambda r: r["label"])
        posterior_grid(rws, path=out / "figures" / f"{task}.png",
                       title=f"{task}: {DEMO_TASKS[task][0]} {json.dumps(DEMO_TASKS[task][1]) if DEMO_TASKS[task][1] else ''}, "
                             f"sigma_y={noise_std}, prior={prior}")
    seconds = time.perf_counter() - t_start
    _write_summary(out, rows, seconds, dict(prior=str(prior), fast=fast, images=[int(j) for j in idx], samples=n_s,
                                             noise_std=noise_std, seed=seed, config=cfg))
    return {"rows": rows, "seconds": seconds, "out": str(out)}


def _write_summary(out: Path, rows: list, seconds: float, meta: dict) -> None:
    keys = ["task", "operator", "method", "family", "image", "psnr", "ssim", "coverage90", "std_err_corr", "nfe", "seconds"]
    with open(out / "summary.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{r[k]:.6g}" if isinstance(r[k], float) else r[k]) for k in keys})
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
        "",
        "| task | method | family | PSNR | SSIM | coverage 90% | corr(std, err) | NFE/draw | time (s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (task, m), rs in groups.items():
        def mean(k):
            v = [r[k] for r in rs if not (isinstance(r[k], float) and math.isnan(r[k]))]
            return float(np.mean(v)) if v else float("nan")
        lines.append(f"| {task} | {m} | {rs[0]['family']} | {_fmt(mean('psnr'))} | {_fmt(mean('ssim'), 3)} | "
                     f"{_fmt(mean('coverage90'), 3)} | {_fmt(mean('std_err_corr'), 2)} | {_fmt(mean('nfe'), 0)} | "
                     f"{_fmt(mean('seconds'), 1)} |")
    lines += ["", "Settings: `" + json.dumps(meta["config"]) + "`", "",
              "Figures: `figures/<task>.png` (truth, measurement, posterior mean, std, 3 draws, |error|); "
              "InferenceData: `netcdf/<task>_<method>.nc`.", ""]
    (out / "summary.md").write_text("\n".join(lines))
