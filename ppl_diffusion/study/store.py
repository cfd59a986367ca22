"""The output folder of a study: one netCDF per finished cell and one row per cell result, written at once.

Layout::

    OUT/study.json          the study as run (the last run's)
    OUT/cells/<cell_id>.nc  InferenceData of each finished cell (written to a temporary name, then renamed)
    OUT/results.csv         one row per cell result, appended and flushed to disk as each cell ends;
                            a cell re-run after a failure appends a new row (the last row counts)

A cell is finished when its last row says ``ok`` and its netCDF exists; a re-run with the same folder
skips finished cells. A killed study loses at most the cells in flight (a torn last line is skipped).
"""
from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

from .cell import LEVELS, CellResult, cell_arrays_to_inference_data, coverage_column
from .spec import Cell, Study

__all__ = ["COLUMNS", "Store"]

COLUMNS = (["cell_id", "measurement", "method", "setting", "seed", "solver", "samples", "status", "psnr", "ssim"]
           + [coverage_column(a) for a in LEVELS]
           + ["rmse", "mean_std", "std_err_corr", "sw", "sw_floor", "nfe_per_sample", "seconds", "wall_s",
              "prior_load_s", "worker", "error"])


class Store:
    def __init__(self, out, study: Study):
        self.out = Path(out)
        self.cells_dir = self.out / "cells"
        self.cells_dir.mkdir(parents=True, exist_ok=True)
        self.results = self.out / "results.csv"
        if self.results.exists() and self.results.stat().st_size:
            with open(self.results, newline="") as f:
                header = next(csv.reader(f), [])
            if header != COLUMNS:
                raise ValueError(f"{self.results} was written with other columns; use a new output folder")
        (self.out / "study.json").write_text(json.dumps(study.to_dict(), indent=2, default=str) + "\n")

    def cell_path(self, cell_id: str) -> Path:
        return self.cells_dir / f"{cell_id}.nc"

    def rows(self) -> list[dict]:
        """Every complete row of ``results.csv`` in file order (a torn last line is skipped)."""
        if not self.results.exists():
            return []
        out = []
        with open(self.results, newline="") as f:
            for row in csv.DictReader(f):
                if row.get("error") is None or None in row:  # torn or malformed line
                    continue
                out.append(row)
        return out

    def last_rows(self) -> dict:
        """``{cell_id: last row}``."""
        return {r["cell_id"]: r for r in self.rows()}

    def finished(self) -> set:
        return {cid for cid, r in self.last_rows().items() if r["status"] == "ok" and self.cell_path(cid).exists()}

    def write(self, result: CellResult, cell: Cell) -> None:
        """The cell's netCDF (when it succeeded), then its row; both on disk when this returns."""
        row = result.row
        if row["status"] == "ok":
            path = self.cell_path(row["cell_id"])
            tmp = path.with_name(path.name + ".tmp")
            cell_arrays_to_inference_data(result, cell).to_netcdf(str(tmp))
            os.replace(tmp, path)
        new = not self.results.exists() or self.results.stat().st_size == 0
        torn = False
        if not new:  # a line torn by a kill has no newline: end it, so this row starts its own line
            with open(self.results, "rb") as f:
                f.seek(-1, os.SEEK_END)
                torn = f.read(1) != b"\n"
        with open(self.results, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
            if new:
                w.writeheader()
            if torn:
                f.write("\n")
            w.writerow({k: _fmt(row.get(k)) for k in COLUMNS})
            f.flush()
            os.fsync(f.fileno())


def _fmt(v):
    if v is None:
        return ""
    if isinstance(v, float):
        return "nan" if math.isnan(v) else repr(v)
    return str(v).replace("\n", " ")
