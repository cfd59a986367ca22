"""Plotting helpers: figures are written, panels carry the right content."""
import numpy as np
import pytest
import torch

from ppl_diffusion import plotting as P
from ppl_diffusion.models import operators as O


def _samples(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    truth = torch.rand(1, 8, 8, generator=g) * 2 - 1
    return truth + 0.1 * torch.randn(n, 1, 8, 8, generator=g), truth


def test_posterior_grid_png(tmp_path):
    s, t = _samples()
    op = O.Inpainting.random((1, 8, 8), 0.5, generator=torch.Generator().manual_seed(0))
    rows = [dict(samples=s, truth=t, y=op(t), operator=op, label="a"), dict(samples=s[None], truth=t, label="b")]
    P.posterior_grid(rows, path=tmp_path / "g.png", title="t")
    from PIL import Image

    im = Image.open(tmp_path / "g.png")
    assert im.size[0] > im.size[1] > 100  # 2 rows x 8 panels


def test_panels_content():
    s, t = _samples()
    panels = P.posterior_row_images(s, t, n_samples_shown=2)
    names = [p[0] for p in panels]
    assert names == ["truth", "posterior mean", "posterior std", "sample 1", "sample 2", "|mean - truth|"]
    np.testing.assert_allclose(panels[1][1], s.mean(0)[0].double().numpy(), atol=1e-6)
    np.testing.assert_allclose(panels[2][1], s.std(0)[0].double().numpy(), atol=1e-6)
    np.testing.assert_allclose(panels[-1][1], (s.mean(0) - t).abs()[0].double().numpy(), atol=1e-6)


def test_measurement_images():
    x = torch.arange(64.0).reshape(1, 8, 8) / 64
    op = O.Inpainting.random((1, 8, 8), 0.5, generator=torch.Generator().manual_seed(0))
    img, label = P.measurement_image(op(x), op, (1, 8, 8))
    assert np.isnan(img).sum() == 32 and "observed" in label
    sr = O.SuperResolution(2, (1, 8, 8))
    img, label = P.measurement_image(sr(x), sr, (1, 8, 8))
    assert img.shape == (8, 8) and img[0, 0] == img[1, 1] and "enlarged" in label
    pr = O.PhaseRetrieval((1, 8, 8))
    img, label = P.measurement_image(pr(x), pr, (1, 8, 8))
    assert img.shape == (16, 16) and "log" in label


def test_uncertainty_map_and_traces(tmp_path):
    from ppl_diffusion.diagnostics import to_inference_data
    from ppl_diffusion.metrics import std_error_correlation

    s, t = _samples()
    fig = P.uncertainty_map(s, t)
    assert f"{float(std_error_correlation(s, t)):.2f}" in fig._suptitle.get_text()
    ll = torch.randn(2, 5, 3, dtype=torch.float64)
    idata = to_inference_data(torch.randn(2, 5, 1, 4, 4), log_likelihood={"y": ll},
                              dims={"y": ["chain", "draw", "image"]})
    P.plot_scalar_traces(idata, ["y"], path=tmp_path / "tr.png")
    assert (tmp_path / "tr.png").stat().st_size > 1000
    fig = P.plot_scalar_traces(idata, ["y"])  # labelled axes, one line per chain
    ax = fig.axes
    assert ax[0].get_xlabel() == "log p(y | x)" and ax[1].get_xlabel() == "draw"
    assert len(ax[1].get_lines()) == idata.log_likelihood.sizes["chain"]
    with pytest.raises(ValueError, match="no group"):
        P.plot_scalar_traces(idata, group="prior")
