"""One result from the cells: the tidy table, one merged InferenceData, the calibration figures.

The merged ``InferenceData`` has ``posterior.x`` with dims ``(chain, draw, measurement, method,
setting, seed, *event)``, ``observed_data.y`` ``(measurement, setting, *y_event)`` (``y_<setting>``
``(measurement, *y_event)`` when the settings' measurements differ in shape) and
``constant_data.x_true`` ``(measurement, setting, *event)``. When the cells differ in their
``(chain, draw)`` shape (a kernel with 4 chains beside a guide with one), every cell's draws are pooled
into one chain, and cells with fewer draws are padded with NaN (``attrs["pooled_chains"] = 1``).
Cells that failed or did not run are NaN.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .cell import LEVELS, coverage_column
from .spec import Study

__all__ = ["StudyResult", "merge_cells", "calibration_figure", "summary_table"]

_NUMERIC = ["measurement", "seed", "samples", "psnr", "ssim", *(coverage_column(a) for a in LEVELS), "rmse",
            "mean_std", "std_err_corr", "sw", "sw_floor", "nfe_per_sample", "seconds", "wall_s", "prior_load_s"]


def _table(rows: list[dict]):
    import pandas as pd

    df = pd.DataFrame(rows)
    for c in _NUMERIC:
        if c in df:
            df[c] = pd.to_numeric(df[c], errors="coerce")
    return df


def _open_cell(path: Path) -> dict:
    import xarray as xr

    post = xr.load_dataset(path, group="posterior", engine="h5netcdf")  # read and closed
    obs = xr.load_dataset(path, group="observed_data", engine="h5netcdf")
    const = xr.load_dataset(path, group="constant_data", engine="h5netcdf")
    return {"x": post["x"].values, "y": obs["y"].values, "x_true": const["x_true"].values,
            "y_dims": list(obs["y"].dims), "x_dims": list(post["x"].dims[2:])}


def merge_cells(out, study: Study, table):
    """The merged ``InferenceData`` of the finished cells of ``study`` in ``out`` (see the module doc)."""
    import arviz as az
    import xarray as xr

    out = Path(out)
    ok = table[table["status"] == "ok"]
    M, K, L, R = study.measurements, list(study.methods), list(study.settings), study.seeds
    cells = {}
    for r in ok.itertuples():
        p = out / "cells" / f"{r.cell_id}.nc"
        if p.exists() and r.measurement in M and r.method in K and r.setting in L and r.seed in R:
            cells[(int(r.measurement), r.method, r.setting, int(r.seed))] = _open_cell(p)
    if not cells:
        raise ValueError(f"no finished cells of this study in {out}")
    shapes = {c["x"].shape[:2] for c in cells.values()}
    pooled = len(shapes) > 1
    if pooled:
        for c in cells.values():
            c["x"] = c["x"].reshape((1, -1) + c["x"].shape[2:])
    C = max(c["x"].shape[0] for c in cells.values())
    S = max(c["x"].shape[1] for c in cells.values())
    first = next(iter(cells.values()))
    ev = first["x"].shape[2:]
    x = np.full((C, S, len(M), len(K), len(L), len(R)) + ev, np.nan, dtype=np.float64)
    y_shape = {s: c["y"].shape for (_, _, s, _), c in cells.items()}
    same_y = len(set(y_shape.values())) == 1
    ys = {s: np.full((len(M),) + y_shape[s], np.nan) for s in y_shape}
    xt = np.full((len(M), len(L)) + ev, np.nan)
    for (m, k, s, r), c in cells.items():
        i, j, l_, q = M.index(m), K.index(k), L.index(s), R.index(r)
        x[: c["x"].shape[0], : c["x"].shape[1], i, j, l_, q] = c["x"]
        xt[i, l_] = c["x_true"]
        ys[s][i] = c["y"]
    coords = {"measurement": M, "method": K, "setting": L, "seed": R}
    grid = ["measurement", "method", "setting", "seed"]
    post = xr.Dataset({"x": (["chain", "draw", *grid, *first["x_dims"]], x)},
                      coords={"chain": np.arange(C), "draw": np.arange(S), **coords})
    groups = {"posterior": post,
              "constant_data": xr.Dataset({"x_true": (["measurement", "setting", *first["x_dims"]], xt)},
                                          coords={"measurement": M, "setting": L})}
    if same_y:  # one y (measurement, setting, *y_event)
        y = np.stack([ys[s] if s in ys else np.full_like(next(iter(ys.values())), np.nan) for s in L], 1)
        obs = {"y": (["measurement", "setting", *first["y_dims"]], y)}
    else:  # the settings measure differently (another operator, d_y): one y_<setting> each
        obs = {f"y_{s}": (["measurement", *(f"y_{s}_dim_{i}" for i in range(v.ndim - 1))], v) for s, v in ys.items()}
    groups["observed_data"] = xr.Dataset(obs, coords={"measurement": M})
    idata = az.InferenceData(**groups)
    idata.posterior.attrs.update(study=study.name, pooled_chains=int(pooled), cells=len(cells))
    return idata


def summary_table(table) -> str:
    """Markdown: per setting and method, the mean over cells of the main metrics."""
    cols = [("psnr", "PSNR", ".2f"), ("ssim", "SSIM", ".3f"), ("coverage50", "cov 50%", ".3f"),
            ("coverage90", "cov 90%", ".3f"), ("rmse", "RMSE", ".4f"), ("mean_std", "mean std", ".4f"),
            ("std_err_corr", "corr(std,err)", ".2f"), ("sw", "SW", ".3f"), ("sw_floor", "SW floor", ".3f"),
            ("nfe_per_sample", "NFE/draw", ".0f"), ("seconds", "s/cell", ".2f")]
    ok = table[table["status"] == "ok"]
    cols = [c for c in cols if c[0] in ok and ok[c[0]].notna().any()]
    lines = ["| setting | method | cells ok | failed | " + " | ".join(c[1] for c in cols) + " |",
             "|---|---|---|---|" + "---|" * len(cols)]
    for (s, m), g in table.groupby(["setting", "method"], sort=False):
        go = g[g["status"] == "ok"]
        vals = []
        for c, _, f in cols:
            v = go[c].mean() if len(go) else math.nan
            vals.append("-" if not np.isfinite(v) else format(v, f))
        lines.append(f"| {s} | {m} | {len(go)} | {len(g) - len(go)} | " + " | ".join(vals) + " |")
    return "\n".join(lines)


def calibration_figure(idata, table, path, bins: int = 10):
    """Two panels: coverage of the equal-tailed intervals against the nominal level per method (mean
    over cells, +- 1 standard error), and the binned ``|posterior mean - truth|`` against the
    posterior std per method (pixels / coordinates pooled over cells; the dashed line
    ``sqrt(2/pi) * std`` is where a calibrated Gaussian posterior lies)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = table[table["status"] == "ok"]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4.2))
    levels = np.array(LEVELS)
    a1.plot([0, 1], [0, 1], "k--", lw=1, label="calibrated")
    multi = ok["setting"].nunique() > 1
    x = idata.posterior["x"]
    xt = idata.constant_data["x_true"]
    for (m, s), g in ok.groupby(["method", "setting"], sort=False):
        lab = f"{m} ({s})" if multi else m
        cov = g[[coverage_column(a) for a in LEVELS]].to_numpy(dtype=float)
        mu, se = np.nanmean(cov, 0), np.nanstd(cov, 0) / math.sqrt(max(1, len(cov)))
        line = a1.errorbar(levels, mu, yerr=se, marker="o", ms=3, capsize=2, label=lab)
        xs = x.sel({"method": m, "setting": s}).values  # (C, S, M, R, *event)
        flat = xs.reshape((-1,) + xs.shape[2:])
        with np.errstate(invalid="ignore"):
            mean, std = np.nanmean(flat, 0), np.nanstd(flat, 0, ddof=1)
        truth = xt.sel({"setting": s}).values[:, None]  # (M, 1, *event) against (M, R, *event)
        err = np.abs(mean - truth)
        keep = np.isfinite(err) & np.isfinite(std)
        sd, er = std[keep].ravel(), err[keep].ravel()
        if sd.size >= bins:
            edges = np.quantile(sd, np.linspace(0, 1, bins + 1))
            idx = np.clip(np.searchsorted(edges, sd, side="right") - 1, 0, bins - 1)
            bx = np.array([sd[idx == b].mean() if (idx == b).any() else np.nan for b in range(bins)])
            by = np.array([er[idx == b].mean() if (idx == b).any() else np.nan for b in range(bins)])
            a2.plot(bx, by, marker="o", ms=3, color=line[0].get_color(), label=lab)
    lim = a2.get_xlim()[1] if a2.lines else 1.0
    a2.plot([0, lim], [0, math.sqrt(2 / math.pi) * lim], "k--", lw=1, label="calibrated (Gaussian)")
    a1.set(xlabel="nominal level", ylabel="coverage of the equal-tailed interval", title="coverage vs nominal")
    a2.set(xlabel="posterior std (binned)", ylabel="mean |posterior mean - truth|", title="error vs posterior std")
    a1.legend(fontsize=7)
    a2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


class StudyResult:
    """What :func:`~ppl_diffusion.study.run_study` returns: ``table`` (pandas, one row per cell of
    the study, the last result of each), ``ran`` / ``skipped`` (cells run now / found finished),
    ``failed`` (the failed rows), ``out`` (the folder) and, unless ``merge=False``,
    ``inference_data`` (the merged InferenceData, also in ``OUT/study.nc``) with the figure
    ``OUT/calibration.png``, ``OUT/summary.md`` and the tidy ``OUT/table.csv``."""

    def __init__(self, out, study: Study, table, ran: int, skipped: int):
        self.out, self.study, self.table, self.ran, self.skipped = Path(out), study, table, ran, skipped
        self.inference_data = None

    @property
    def failed(self):
        return self.table[self.table["status"] != "ok"]

    def finish(self) -> StudyResult:
        """Write ``table.csv`` and ``summary.md``; when cells finished, ``study.nc`` and ``calibration.png``."""
        self.table.to_csv(self.out / "table.csv", index=False)
        text = f"# Study {self.study.name}\n\n{summary_table(self.table)}\n"
        if len(self.failed):
            text += "\nFailed cells:\n\n" + "\n".join(f"- {r.cell_id}: {r.error}" for r in self.failed.itertuples())
            text += "\n"
        (self.out / "summary.md").write_text(text)
        if (self.table["status"] == "ok").any():
            self.inference_data = merge_cells(self.out, self.study, self.table)
            self.inference_data.to_netcdf(str(self.out / "study.nc"))
            calibration_figure(self.inference_data, self.table, self.out / "calibration.png")
        return self

    def __repr__(self) -> str:
        return (f"StudyResult({self.study.name!r}: {len(self.table)} cells, ran {self.ran}, skipped {self.skipped}, "
                f"failed {len(self.failed)}, out={str(self.out)!r})")
