"""One cell of a study: build the model, run the solver through :func:`~ppl_diffusion.methods.run_method`
(the registry's solver and its ``draw()``), score the draws.

Priors and held-out images are cached per process (:data:`_CACHE`): the in-process backend loads a
prior once per study, and each Ray worker process once for all the tasks it runs (Ray reuses its
worker processes). :func:`run_cell` never raises for a failing solver: the error is the cell's
result (``status = "failed"``), so one bad cell does not end a study.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from .spec import Cell

__all__ = ["LEVELS", "CellResult", "run_cell", "build_measurement", "score"]

#: nominal levels of the equal-tailed intervals whose coverage every cell records
LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
#: draws of the exact posterior used as the sliced-Wasserstein reference (GMM problems)
SW_REFERENCE = 1000

_CACHE: dict = {}


def coverage_column(level: float) -> str:
    return f"coverage{round(100 * level):02d}"


@dataclass
class CellResult:
    """What a task sends back: the table row and the arrays of the cell's netCDF (empty on failure)."""

    row: dict
    arrays: dict = field(default_factory=dict)


def _cached(key, make):
    hit = key in _CACHE
    if not hit:
        _CACHE[key] = make()
    return _CACHE[key], hit


def build_measurement(problem: dict, index: int):
    """``(model, y, x_true, exact_posterior or None, seconds spent loading)`` of measurement ``index``."""
    t0 = time.perf_counter()
    if problem["kind"] == "gmm":
        from ..models.gmm import gmm_benchmark_problem

        pb, _ = _cached(("gmm", problem["d"], problem["d_y"], index),
                        lambda: gmm_benchmark_problem(int(problem["d"]), int(problem["d_y"]), seed=int(index)))
        return pb.model(), pb.y, pb.x_true, pb.posterior, 0.0
    from ..compat import ensure_diffusers_importable
    from ..models.zoo import heldout_images, load_prior
    from ..tasks import make_model, make_operator

    ensure_diffusers_importable()
    name = str(problem["prior"])
    pk = dict(problem.get("prior_kwargs") or {})
    dev = str(problem.get("device") or "cpu")
    prior, hit = _cached(("prior", name, dev, json.dumps(pk, sort_keys=True)),
                         lambda: load_prior(name, device=None if dev == "cpu" else dev, **pk))
    images, _ = _cached(("heldout", name), lambda: heldout_images(name))
    load_s = 0.0 if hit else time.perf_counter() - t0
    if not 0 <= index < len(images):
        raise ValueError(f"measurement {index}: the prior {name!r} has {len(images)} held-out images")
    x_true = images[index]
    A = make_operator(problem["operator"], tuple(prior.event_shape), **dict(problem.get("op_args") or {}))
    sigma = float(problem["noise_std"])
    g = torch.Generator().manual_seed(int(index))
    y = A(x_true) + sigma * torch.randn(A.out_shape, generator=g)  # drawn on the CPU: the same y on any device
    if dev != "cpu":  # the solver runs where the prior's weights are
        A, y = A.to(device=dev), y.to(dev)
    return make_model(prior, A, sigma), y, x_true, None, load_s


def score(samples: torch.Tensor, x_true: torch.Tensor, posterior=None, seed: int = 0, image: bool = True) -> dict:
    """Metrics of the pooled draws ``(n, *event)``: coverage of the equal-tailed intervals at every
    level of :data:`LEVELS`, RMSE of the posterior mean, mean posterior std, corr(std, |error|);
    PSNR / SSIM for images; for an exact ``posterior`` (a :class:`GaussianMixture`) the sliced
    Wasserstein distance (500 directions) to :data:`SW_REFERENCE` exact draws and the same distance
    for ``n`` exact draws (the Monte Carlo floor a perfect sampler reaches)."""
    from ..evaluation import evaluate
    from ..metrics import coverage, sliced_wasserstein, std_error_correlation

    s = samples.to(torch.float64)
    t = x_true.to(torch.float64)
    mean = s.mean(0)
    out = {coverage_column(a): float(coverage(s, t, level=a)) for a in LEVELS}
    out["rmse"] = float((mean - t).pow(2).mean().sqrt())
    out["mean_std"] = float(s.std(0).mean())
    c = std_error_correlation(s, t)
    out["std_err_corr"] = float(c) if torch.isfinite(c) else math.nan
    out["psnr"] = out["ssim"] = out["sw"] = out["sw_floor"] = math.nan
    if image:
        m = evaluate(s, t)
        out["psnr"], out["ssim"] = m["psnr"], m["ssim"]
    if posterior is not None:
        g = torch.Generator().manual_seed(10_007 + int(seed))
        ref = posterior.sample(SW_REFERENCE, generator=g)
        flat = s.reshape(s.shape[0], -1)
        out["sw"] = float(sliced_wasserstein(flat, ref, n_projections=500, generator=g))
        exact = posterior.sample(flat.shape[0], generator=g)
        out["sw_floor"] = float(sliced_wasserstein(exact, ref, n_projections=500, generator=g))
    return out


def _inject(fault: dict | None, cell_id: str, attempt_marker: str) -> None:
    """Test hook: ``{"match": substring of the cell id, "action": "raise" | "interrupt" | "exit",
    "once": folder}`` makes matching cells fail (``exit`` kills the worker process, as a crash would);
    with ``once`` each matching cell fails only on its first attempt."""
    if not fault or fault.get("match", "") not in cell_id:
        return
    if fault.get("once"):
        marker = os.path.join(fault["once"], attempt_marker)
        if os.path.exists(marker):
            return
        open(marker, "w").close()
    action = fault.get("action", "raise")
    if action == "exit":
        os._exit(17)
    if action == "interrupt":
        raise KeyboardInterrupt(f"injected interrupt in {cell_id}")
    raise RuntimeError(f"injected failure in {cell_id}")


def run_cell(cell: Cell, threads: int = 1, fault: dict | None = None) -> CellResult:
    """Run one cell on ``threads`` torch threads and return its :class:`CellResult`.

    The row holds the cell's keys, ``status`` (``ok`` / ``failed``), ``error``, the metrics of
    :func:`score`, ``nfe_per_sample``, ``seconds`` (the solver's), ``prior_load_s`` (0 when the
    process had the prior cached) and ``worker`` (the process id)."""
    from ..methods import run_method

    cid = cell.cell_id
    row = {"cell_id": cid, "measurement": cell.measurement, "method": cell.method, "setting": cell.setting,
           "seed": cell.seed, "solver": cell.name, "samples": cell.samples, "status": "failed", "error": "",
           "worker": os.getpid()}
    old = torch.get_num_threads()
    torch.set_num_threads(max(1, int(threads)))
    t0 = time.perf_counter()
    try:
        _inject(fault, cid, cid + ".fault")
        model, y, x_true, posterior, load_s = build_measurement(cell.problem, cell.measurement)
        row["prior_load_s"] = load_s
        gen = torch.Generator().manual_seed(cell.solver_seed())
        draws = run_method(cell.name, model, y, cell.samples, generator=gen, options=dict(cell.options))
        flat = draws.flat().detach().cpu()
        row.update(score(flat, x_true, posterior, seed=cell.seed, image=cell.problem["kind"] == "image"))
        row.update(status="ok", nfe_per_sample=float(draws.nfe_per_sample), seconds=float(draws.seconds))
        arrays = {"x": draws.samples.detach().cpu().numpy(), "y": y.detach().cpu().numpy(),
                  "x_true": x_true.detach().cpu().numpy()}
        return CellResult(row, arrays)
    except Exception as e:  # a failing cell is a result, not a crashed study
        row["error"] = f"{type(e).__name__}: {e}"[:500]
        return CellResult(row)
    finally:
        row["wall_s"] = time.perf_counter() - t0
        torch.set_num_threads(old)


def cell_arrays_to_inference_data(result: CellResult, cell: Cell):
    """The cell's ArviZ ``InferenceData``: ``posterior.x`` (chain, draw, *event), ``observed_data.y``,
    ``constant_data.x_true``, and the row as attributes."""
    import xarray as xr

    from ..diagnostics import _event_dim_names, to_inference_data

    a = result.arrays
    attrs = {k: (json.dumps(v) if isinstance(v, dict) else v) for k, v in result.row.items()
             if v is not None and not (isinstance(v, float) and math.isnan(v))}
    attrs.update(options=json.dumps(cell.options, sort_keys=True), problem=json.dumps(cell.problem, sort_keys=True))
    idata = to_inference_data({"x": np.array(a["x"])}, observed_data={"y": np.array(a["y"])},
                              attrs=attrs)
    names = _event_dim_names("x", np.ndim(a["x_true"]), True, None)
    idata.add_groups(constant_data=xr.Dataset({"x_true": (names, np.asarray(a["x_true"]))}))
    return idata
