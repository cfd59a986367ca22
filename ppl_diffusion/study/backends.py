"""Where the cells run: in this process (default, no Ray needed) or as Ray tasks.

Both backends call :func:`~ppl_diffusion.study.cell.run_cell` with the same cell values and the same
number of torch threads, so they compute the same numbers; the driver writes each result as it
arrives (:class:`~ppl_diffusion.study.store.Store`).

Ray: ``address=None`` starts a local Ray on this machine with ``workers * cpus_per_task`` CPUs (and
shuts it down at the end); an address (``"auto"``, ``"ray://host:10001"``) joins an existing cluster.
If Ray is already initialised in this process, that session is used as it is. Each task asks for
``cpus_per_task`` CPUs and ``gpus_per_task`` GPUs; a task whose worker died is retried
``max_retries`` times by Ray, then the cell is reported as failed. A solver error is not retried (it
would fail again): it comes back as the cell's ``failed`` row. The prior is loaded once per worker
process (the per-process cache of :mod:`~ppl_diffusion.study.cell`), not per task.
"""
from __future__ import annotations

from collections.abc import Callable

from .cell import CellResult, run_cell
from .spec import Cell, Study

__all__ = ["BACKENDS", "run_inprocess", "run_ray"]

BACKENDS = ("inprocess", "ray")


def run_inprocess(cells: list[Cell], study: Study, on_result: Callable, fault=None) -> None:
    threads = max(1, int(study.cpus_per_task))
    for cell in cells:
        on_result(cell, run_cell(cell, threads=threads, fault=fault))


def _ray_task(cell: Cell, threads: int, fault) -> CellResult:
    return run_cell(cell, threads=threads, fault=fault)


def _failed(cell: Cell, err: BaseException) -> CellResult:
    msg = f"{type(err).__name__}: {str(err).strip().splitlines()[-1] if str(err).strip() else ''}"
    return CellResult({"cell_id": cell.cell_id, "measurement": cell.measurement, "method": cell.method,
                       "setting": cell.setting, "seed": cell.seed, "solver": cell.name, "samples": cell.samples,
                       "status": "failed", "error": msg[:500]})


def import_ray():
    try:
        import ray
    except ImportError as e:
        raise ValueError("backend='ray' needs Ray: pip install 'ppl-diffusion[ray]' (or pip install ray)") from e
    return ray


def run_ray(cells: list[Cell], study: Study, on_result: Callable, address: str | None = None,
            workers: int | None = None, fault=None, max_in_flight: int | None = None) -> None:
    """Run ``cells`` as Ray tasks; ``on_result(cell, result)`` is called in the driver as each ends.

    ``max_in_flight`` bounds the submitted, unfinished tasks (default: 4 per cluster CPU slot), so the
    driver's memory and the work lost on an interrupt stay bounded for any number of cells.
    On ``KeyboardInterrupt`` the unfinished tasks are cancelled and the interrupt is raised again."""
    import os

    ray = import_ray()
    started = False
    if not ray.is_initialized():
        kw = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
        if address is None:
            kw["num_cpus"] = max(1, int(workers or os.cpu_count() or 1)) * max(1, int(study.cpus_per_task))
        ray.init(address=address, **kw)
        started = True
    try:
        slots = max(1, int(ray.cluster_resources().get("CPU", 1) // max(study.cpus_per_task, 1e-9)))
        limit = int(max_in_flight or 4 * slots)
        remote = ray.remote(_ray_task).options(num_cpus=study.cpus_per_task, num_gpus=study.gpus_per_task,
                                               max_retries=int(study.max_retries), retry_exceptions=False)
        threads = max(1, int(study.cpus_per_task))
        todo = list(cells)
        pending: dict = {}
        try:
            while todo or pending:
                while todo and len(pending) < limit:
                    cell = todo.pop(0)
                    pending[remote.remote(cell, threads, fault)] = cell
                done, _ = ray.wait(list(pending), num_returns=1)
                cell = pending.pop(done[0])
                try:
                    res = ray.get(done[0])
                except Exception as e:  # worker died more than max_retries times, or a Ray error
                    res = _failed(cell, e)
                on_result(cell, res)
        except BaseException:
            for ref in pending:
                # forced: a KeyboardInterrupt delivered into a running task can land inside an import and
                # leave the worker broken for later tasks; killing it costs one prior load on restart
                ray.cancel(ref, force=True)
            raise
    finally:
        if started:
            ray.shutdown()
