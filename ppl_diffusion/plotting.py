"""Figures for posterior samples of images: grids, uncertainty maps and ArviZ scalar summaries.

Everything draws with matplotlib's non-interactive ``Agg`` backend (no display needed) and returns
the ``Figure``; pass ``path=`` to also save a PNG (the figure is then closed).

* :func:`posterior_row_images` — the panels of one posterior: truth, measurement, posterior mean,
  posterior std, a few samples, ``|mean - truth|``;
* :func:`posterior_grid` — one row per (image, method) of those panels, with shared colour scales;
* :func:`uncertainty_map` — std next to ``|error|`` with their correlation;
* :func:`measurement_image` — a displayable image of a measurement ``y`` for any operator;
* :func:`kernel_grid` — blind problems: the true kernel beside the posterior-mean kernel, a few
  kernel draws and the per-pixel kernel std, one row per posterior;
* :func:`plot_scalar_traces` — ArviZ ``plot_trace`` of scalar draws (e.g. per-image log-likelihood).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg", force=False)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

__all__ = ["to_display", "measurement_image", "posterior_row_images", "posterior_grid", "uncertainty_map",
           "kernel_row_images", "kernel_grid", "plot_scalar_traces",
           "save_figure"]


def _np(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)


def to_display(img) -> np.ndarray:
    """``(C, H, W)`` / ``(H, W)`` tensor or array -> ``(H, W)`` (1 channel) or ``(H, W, 3)`` numpy."""
    a = _np(img)
    if a.ndim == 3:
        if a.shape[0] == 1:
            return a[0]
        if a.shape[0] == 3:
            return np.moveaxis(a, 0, -1)
        return a.mean(0)
    if a.ndim == 2:
        return a
    if a.ndim == 1:
        n = int(math.isqrt(a.size))
        if n * n == a.size:
            return a.reshape(n, n)
        return a[None, :]
    raise ValueError(f"img: expected (C, H, W), (H, W) or a flat vector, got shape {a.shape}")


def measurement_image(y, operator=None, image_shape: Sequence[int] | None = None) -> tuple[np.ndarray, str]:
    """A displayable version of a measurement and a short label.

    * inpainting: the observed pixels with the missing ones as NaN (drawn in the 'bad' colour);
    * an output of the image's shape (blur, denoising): as is;
    * super-resolution: the low-resolution image, nearest-neighbour enlarged;
    * phase retrieval / anything else 2-D: ``log(1 + |y|)`` (Fourier magnitudes, centred).
    """
    a = _np(y)
    name = getattr(operator, "name", "") if operator is not None else ""
    mask = getattr(operator, "mask", None)
    if mask is not None:
        m = _np(mask).astype(bool)
        m = np.broadcast_to(m, a.shape)
        out = np.where(m, a, np.nan)
        return to_display(out), "measurement (observed pixels)"
    if image_shape is not None and tuple(a.shape) == tuple(image_shape):
        return to_display(a), "measurement"
    if image_shape is not None and a.ndim == len(image_shape) and a.ndim >= 2:
        H, W = image_shape[-2:]
        h, w = a.shape[-2:]
        if h <= H and w <= W and H % h == 0 and W % w == 0 and name != "phase_retrieval":
            up = np.repeat(np.repeat(a, H // h, axis=-2), W // w, axis=-1)
            return to_display(up), f"measurement ({h}x{w}, enlarged)"
    if a.ndim >= 2:
        mag = np.log1p(np.abs(a))
        mag = np.fft.fftshift(mag, axes=(-2, -1))
        return to_display(mag), "log(1+|y|) (centred)"
    return to_display(a), "measurement"


def posterior_row_images(samples, truth=None, y=None, operator=None, n_samples_shown: int = 3) -> list:
    """``[(title, image, kind)]`` panels of one posterior; ``kind`` in {'image', 'std', 'error', 'y'}.

    ``samples`` is ``(n, C, H, W)`` or ``(chain, draw, C, H, W)`` (chains are pooled)."""
    s = samples if isinstance(samples, torch.Tensor) else torch.as_tensor(np.asarray(samples))
    s = s.detach().to("cpu", torch.float64)
    if truth is not None:
        ev = tuple(torch.as_tensor(_np(truth)).shape)
        s = s.reshape((-1,) + ev)
    elif s.ndim == 5:
        s = s.reshape((-1,) + tuple(s.shape[2:]))
    mean = s.mean(0)
    std = s.std(0) if s.shape[0] > 1 else torch.zeros_like(mean)
    panels = []
    if truth is not None:
        panels.append(("truth", to_display(truth), "image"))
    if y is not None:
        img, label = measurement_image(y, operator, tuple(mean.shape))
        panels.append((label, img, "y"))
    panels.append(("posterior mean", to_display(mean), "image"))
    panels.append(("posterior std", to_display(std), "std"))
    for i in range(min(n_samples_shown, s.shape[0])):
        panels.append((f"sample {i + 1}", to_display(s[i]), "image"))
    if truth is not None:
        panels.append(("|mean - truth|", to_display((mean - torch.as_tensor(_np(truth))).abs()), "error"))
    return panels


def posterior_grid(rows: Sequence[dict], path=None, title: str | None = None, vmin: float = -1.0,
                   vmax: float = 1.0, cell: float = 1.35):
    """One figure row per posterior. Each ``row`` is a dict with ``samples`` and optionally
    ``truth``, ``y``, ``operator``, ``label`` (row title, e.g. ``"image 0 / DDRM"``) and
    ``n_samples_shown``. Images share ``[vmin, vmax]`` (grey); the std and ``|error|`` maps of a row
    share one colour scale (``magma``, 0 to the row's maximum, printed under the panels)."""
    panel_rows = [posterior_row_images(r["samples"], r.get("truth"), r.get("y"), r.get("operator"),
                                       r.get("n_samples_shown", 3)) for r in rows]
    if not panel_rows:
        raise ValueError("rows: need at least one posterior")
    # std and |error| share one colour scale per row (comparable within a posterior, readable across
    # methods of very different accuracy)
    umaxes = [max([float(np.nanmax(img)) for (_, img, k) in p if k in ("std", "error")] + [1e-6]) for p in panel_rows]
    cmap_img = plt.get_cmap("gray").with_extremes(bad="tab:blue")

    def draw(ax, r, name, img, kind):
        umax = umaxes[r]
        if kind == "image":
            ax.imshow(img, cmap=cmap_img, vmin=vmin, vmax=vmax, interpolation="nearest")
        elif kind == "y":
            finite = img[np.isfinite(img)]
            if "log" in name and finite.size:
                ax.imshow(img, cmap="viridis", interpolation="nearest")
            else:
                ax.imshow(img, cmap=cmap_img, vmin=vmin, vmax=vmax, interpolation="nearest")
        else:
            ax.imshow(img, cmap="magma", vmin=0.0, vmax=umax, interpolation="nearest")
        if kind in ("std", "error"):
            ax.set_xlabel(f"max {umax:.2f}", fontsize=6)

    return _panel_grid(panel_rows, rows, draw, cell, cell, title, path)


def _panel_grid(panel_rows: list, rows: Sequence[dict], draw, cell: float, row_height: float, title, path):
    """A figure of ``panel_rows`` (lists of ``(name, img, kind)``), one row each: ``draw(ax, r, name,
    img, kind)`` draws a panel; names head the first row, ``rows[r]["label"]`` labels row ``r``."""
    ncol = max(len(p) for p in panel_rows)
    figsize = (cell * ncol, row_height * len(panel_rows) + (0.4 if title else 0))
    fig, axes = plt.subplots(len(panel_rows), ncol, figsize=figsize, squeeze=False)
    for r, (panels, row) in enumerate(zip(panel_rows, rows)):
        for c in range(ncol):
            ax = axes[r, c]
            ax.set_xticks([]), ax.set_yticks([])
            if c >= len(panels):
                ax.axis("off")
                continue
            name, img, kind = panels[c]
            draw(ax, r, name, img, kind)
            if r == 0:
                ax.set_title(name, fontsize=7)
            if c == 0 and row.get("label"):
                ax.set_ylabel(row["label"], fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def uncertainty_map(samples, truth, path=None, title: str | None = None):
    """Posterior std and ``|mean - truth|`` side by side (same colour scale), with their Pearson
    correlation in the title."""
    from .metrics import std_error_correlation

    s = torch.as_tensor(_np(samples))
    t = torch.as_tensor(_np(truth))
    s = s.reshape((-1,) + tuple(t.shape))
    std, err = s.std(0), (s.mean(0) - t).abs()
    corr = float(std_error_correlation(s, t))
    vmax = float(max(std.max(), err.max(), 1e-6))
    fig, axes = plt.subplots(1, 2, figsize=(4.2, 2.3))
    for ax, img, name in zip(axes, (std, err), ("posterior std", "|mean - truth|")):
        im = ax.imshow(to_display(img), cmap="magma", vmin=0, vmax=vmax, interpolation="nearest")
        ax.set_title(name, fontsize=8)
        ax.set_xticks([]), ax.set_yticks([])
    fig.colorbar(im, ax=list(axes), fraction=0.046)
    fig.suptitle((title + " - " if title else "") + f"corr(std, |err|) = {corr:.2f}", fontsize=8)
    return save_figure(fig, path)


def kernel_row_images(kernels, truth=None, n_draws_shown: int = 3) -> list:
    """``[(title, kernel, kind)]`` panels of one kernel posterior; ``kind`` in {'kernel', 'std'}.

    ``kernels`` is ``(n, kh, kw)`` or ``(chain, draw, kh, kw)`` (chains are pooled)."""
    k = torch.as_tensor(_np(kernels))
    if k.ndim < 2:
        raise ValueError(f"kernels: expected (n, kh, kw) or (chain, draw, kh, kw), got shape {tuple(k.shape)}")
    k = k.reshape((-1,) + tuple(k.shape[-2:]))
    mean = k.mean(0)
    std = k.std(0) if k.shape[0] > 1 else torch.zeros_like(mean)
    panels = []
    if truth is not None:
        t = torch.as_tensor(_np(truth))
        if tuple(t.shape) != tuple(mean.shape):
            raise ValueError(f"truth: a kernel of shape {tuple(mean.shape)} expected, got {tuple(t.shape)}")
        panels.append(("true kernel", t.numpy(), "kernel"))
        panels.append((f"posterior mean\nMSE {float(((mean - t) ** 2).mean()):.1e}", mean.numpy(), "kernel"))
    else:
        panels.append(("posterior mean", mean.numpy(), "kernel"))
    for i in range(min(n_draws_shown, k.shape[0])):
        panels.append((f"draw {i + 1}", k[i].numpy(), "kernel"))
    panels.append(("kernel std", std.numpy(), "std"))
    return panels


def kernel_grid(rows: Sequence[dict], path=None, title: str | None = None, cell: float = 1.35):
    """Blind problems: one figure row per kernel posterior. Each ``row`` is a dict with ``kernels``
    (``(n, kh, kw)`` draws) and optionally ``truth`` (the true kernel), ``label`` and
    ``n_draws_shown`` (default 3). Panels: true kernel, posterior-mean kernel (with its MSE), draws,
    per-pixel std. The kernels of a row share one colour scale (``viridis``, 0 to the row's largest
    entry), the std its own (``magma``); both maxima are printed under the panels."""
    panel_rows = [kernel_row_images(r["kernels"], r.get("truth"), r.get("n_draws_shown", 3)) for r in rows]
    if not panel_rows:
        raise ValueError("rows: need at least one kernel posterior")
    # per row: the kernels share 0..their largest entry, the std its own scale
    vmax = [{k: max([float(np.nanmax(img)) for (_, img, kind) in panels if kind == k] + [1e-6])
             for k in ("kernel", "std")} for panels in panel_rows]

    def draw(ax, r, name, img, kind):
        ax.imshow(img, cmap="viridis" if kind == "kernel" else "magma", vmin=0.0, vmax=vmax[r][kind],
                  interpolation="nearest")
        ax.set_xlabel(f"max {vmax[r][kind]:.3f}", fontsize=6)
        if "MSE" in name:  # its own MSE on every row
            ax.set_title(name, fontsize=7)

    return _panel_grid(panel_rows, rows, draw, cell, cell + 0.25, title, path)


def plot_scalar_traces(idata, var_names: Sequence[str] | None = None, group: str = "log_likelihood",
                       path=None, compact: bool = False):
    """ArviZ ``plot_trace`` of scalar quantities, by default the per-image log-likelihood of each
    draw stored in ``idata.log_likelihood`` (dims ``chain, draw[, image]``). Works on any group
    holding ``(chain, draw, ...)`` variables (``posterior``, ``sample_stats``, ...).

    One row per variable and coordinate (``compact=False``, default), one line per CHAIN in each
    (a guide or SMC result has one chain: one line); axes labelled (value / density, draw / value)."""
    import arviz as az

    if not hasattr(idata, group):
        raise ValueError(f"idata has no group {group!r}; groups: {list(idata.groups())}")
    data = getattr(idata, group)
    names = list(var_names) if var_names is not None else list(data.data_vars)
    if not names:
        raise ValueError(f"idata.{group} holds no variables")
    axes = np.atleast_2d(np.asarray(az.plot_trace(data, var_names=names, compact=compact, show=False)))
    what = {"log_likelihood": "log p(y | x)", "posterior": "value", "sample_stats": "value"}.get(group, "value")
    n_chain = int(data.sizes.get("chain", 1))
    for row in axes:
        row[0].set_xlabel(what)
        row[0].set_ylabel("density")
        if len(row) > 1:
            row[1].set_xlabel("draw")
            row[1].set_ylabel(what)
            row[1].set_title(f"{row[1].get_title()}  ({n_chain} chain{'s' if n_chain != 1 else ''}: one line each)",
                             fontsize="small")
    fig = axes.flat[0].figure
    fig.tight_layout()
    return save_figure(fig, path)


def save_figure(fig, path=None):
    """Save ``fig`` as PNG at ``path`` (creating the folder) and close it; return ``fig``."""
    if path is not None:
        from pathlib import Path

        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(p, dpi=110)
        plt.close(fig)
    return fig
