"""Uncertainty-quantification studies: a grid of measurements x methods x settings x seeds, each cell
solved through the solver contract (:func:`~ppl_diffusion.methods.run_method`) and scored (PSNR / SSIM,
coverage at several levels, sliced Wasserstein to the exact posterior of GMM problems); in this process
or on Ray; resumable; merged into one InferenceData, a tidy table and calibration figures.

    from ppl_diffusion.study import Study, run_study
    study = Study(methods={"ddrm": {"steps": 50}, "mcgdiff": {"steps": 40, "particles": 32}},
                  problem={"kind": "image", "prior": "digits", "operator": "sr", "op_args": {"factor": 2},
                           "noise_std": 0.05}, measurements=6, samples=16)
    res = run_study(study, "out/uq")                 # or backend="ray" (address=None: a local Ray)
    res.table; res.inference_data                    # pandas table; posterior.x (chain, draw, measurement, ...)

A re-run with the same output folder skips the finished cells (see :mod:`~ppl_diffusion.study.store`).
"""
from __future__ import annotations

from collections.abc import Callable

from .backends import BACKENDS, run_inprocess, run_ray
from .cell import LEVELS, run_cell
from .results import StudyResult
from .spec import Cell, Study, load_study
from .store import COLUMNS, Store

__all__ = ["Study", "Cell", "load_study", "run_study", "run_cell", "StudyResult", "Store", "COLUMNS", "LEVELS",
           "BACKENDS"]


def run_study(study: Study, out, *, backend: str = "inprocess", address: str | None = None,
              workers: int | None = None, progress: bool = False, merge: bool = True,
              callback: Callable | None = None, fault: dict | None = None) -> StudyResult:
    """Run the cells of ``study`` that ``out`` does not hold yet, writing each as it finishes.

    Args:
        study: the grid (:class:`Study`, or a path to a TOML / JSON study file).
        out: output folder; a re-run with the same folder skips finished cells and re-runs failed ones.
        backend: ``"inprocess"`` (default; no Ray) or ``"ray"``.
        address: Ray only: ``None`` starts a local Ray on this machine, ``"auto"`` or
            ``"ray://host:10001"`` joins a running cluster.
        workers: Ray only, local Ray: CPU slots (default: the machine's CPU count).
        progress: a progress bar over the cells.
        merge: build the merged InferenceData, ``study.nc``, ``calibration.png``, ``summary.md``.
        callback: ``callback(cell, row)`` in this process after each cell is written (raise
            ``KeyboardInterrupt`` to stop; the finished cells are kept).
        fault: test hook, see :func:`ppl_diffusion.study.cell._inject`.
    Returns:
        :class:`StudyResult`. A failing cell is in ``result.failed`` (with its error), not raised.
    """
    if not isinstance(study, Study):
        study = load_study(study)
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    store = Store(out, study)
    cells = study.cells()
    done = store.finished()
    todo = [c for c in cells if c.cell_id not in done]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(cells), initial=len(cells) - len(todo), desc=f"study {study.name}", unit="cell")

    def on_result(cell, res):
        store.write(res, cell)
        if bar is not None:
            bar.update(1)
            if res.row["status"] != "ok":
                bar.write(f"cell {cell.cell_id} failed: {res.row['error']}")
        if callback is not None:
            callback(cell, res.row)

    try:
        if backend == "ray":
            run_ray(todo, study, on_result, address=address, workers=workers, fault=fault)
        else:
            run_inprocess(todo, study, on_result, fault=fault)
    finally:
        if bar is not None:
            bar.close()
    from .results import _table

    last = store.last_rows()
    table = _table([last[c.cell_id] for c in cells if c.cell_id in last])
    res = StudyResult(out, study, table, ran=len(todo), skipped=len(cells) - len(todo))
    return res.finish() if merge else res
