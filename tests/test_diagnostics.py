"""Diagnostics: R-hat / ESS maps against ArviZ, InferenceData conversion, summaries, calibration."""
import time

import arviz as az
import numpy as np
import pytest
import torch

from ppl_diffusion import diagnostics as D

F64 = torch.float64


def ar1(shape, phi, seed=0, offsets=0.0):
    """AR(1) chains (chain, draw, *event) with stationary N(0, 1) marginals (+ per-chain offsets)."""
    rng = np.random.default_rng(seed)
    x = np.empty(shape)
    x[:, 0] = rng.standard_normal((shape[0],) + shape[2:])
    for t in range(1, shape[1]):
        x[:, t] = phi * x[:, t - 1] + np.sqrt(1 - phi**2) * rng.standard_normal((shape[0],) + shape[2:])
    return x + offsets * np.arange(shape[0]).reshape(-1, *([1] * (len(shape) - 1)))


def arviz_maps(x):
    ds = az.convert_to_dataset(x)
    return az.rhat(ds)["x"].values, az.ess(ds, method="bulk")["x"].values


@pytest.mark.parametrize(
    "shape,phi,discretise",
    [
        ((4, 200, 3, 4, 4), 0.5, False),  # image event
        ((4, 200, 3, 4, 4), 0.9, True),  # ties -> average ranks
        ((3, 101, 100), -0.4, False),  # odd draws (middle draw dropped), anti-correlated
        ((2, 9, 60), 0.2, False),  # very short chains
    ],
)
def test_rhat_ess_match_arviz(shape, phi, discretise):
    x = ar1(shape, phi, offsets=0.2)
    if discretise:
        x = np.round(2 * x) / 2
    r_ref, e_ref = arviz_maps(x)
    r, e = D.rhat(x), D.ess_bulk(torch.from_numpy(x))
    assert r.shape == shape[2:] and e.shape == shape[2:] and r.dtype == F64
    np.testing.assert_allclose(r.numpy(), r_ref, rtol=1e-6)
    np.testing.assert_allclose(e.numpy(), e_ref, rtol=1e-6)
    r2, e2 = D.rhat_ess(x, chunk_size=7)  # blocks give the same maps
    np.testing.assert_allclose(r2.numpy(), r.numpy(), rtol=1e-12)
    np.testing.assert_allclose(e2.numpy(), e.numpy(), rtol=1e-12)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_rhat_ess_edge_cases_follow_arviz():
    x = ar1((4, 50, 4), 0.3)
    x[:, :, 0] = 1.0  # constant coordinate
    x[1, 7, 1] = np.nan  # NaN coordinate
    r_ref, e_ref = arviz_maps(x)
    r, e = D.rhat_ess(x)
    np.testing.assert_allclose(r.numpy(), r_ref, rtol=1e-6)  # NaNs in the same places
    np.testing.assert_allclose(e.numpy(), e_ref, rtol=1e-6)
    assert e[0].item() == 200.0 and np.isnan(e[1].item())
    # one chain: R-hat undefined (NaN) as in ArviZ, ESS fine
    assert torch.isnan(D.rhat(x[:1, :, 2:])).all()
    assert torch.isfinite(D.ess_bulk(x[:1, :, 2:])).all()
    # fewer than 4 draws: NaN
    assert torch.isnan(D.ess_bulk(x[:, :3, 2:])).all()
    with pytest.raises(ValueError, match="samples"):
        D.rhat(np.zeros(5))
    with pytest.raises(ValueError, match="chunk_size"):
        D.ess_bulk(x, chunk_size=0)


def test_rhat_detects_a_stuck_chain():
    x = ar1((4, 200, 2, 3, 3), 0.5)
    x[0, :, 0] += 3.0  # chain 0 sits elsewhere on channel 0
    r = D.rhat(x)
    assert (r[0] > 1.2).all() and (r[1] < 1.05).all()


@pytest.mark.slow
def test_maps_speed_image_posterior():
    x = torch.from_numpy(ar1((4, 500, 3, 64, 64), 0.7))
    D.rhat_ess(x[:, :, :1, :4, :4])
    t0 = time.perf_counter()
    r, e = D.rhat_ess(x)
    elapsed = time.perf_counter() - t0
    assert r.shape == (3, 64, 64) and torch.isfinite(e).all()
    assert elapsed < 10.0, elapsed  # benchmarks/diagnostics_speed.py prints the real number


def test_to_inference_data_image_posterior_and_arviz_summary():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 30, 3, 4, 4, generator=g, dtype=F64)
    y = torch.randn(3, 2, 2, generator=g, dtype=F64)
    idata = D.to_inference_data(
        x,
        sample_stats={
            "log_weights": torch.randn(2, 30, generator=g),
            "ess_history": torch.rand(2, 11, generator=g),
            "log_evidence": torch.randn(2, generator=g),
        },
        observed_data=y,
        posterior_predictive=torch.randn(2, 30, 3, 2, 2, generator=g),
        log_likelihood=torch.randn(2, 30, 3, 2, 2, generator=g),
        attrs={"solver": "test"},
    )
    assert isinstance(idata, az.InferenceData)
    assert idata.posterior["x"].dims == ("chain", "draw", "channel", "row", "col")
    assert idata.posterior["x"].shape == (2, 30, 3, 4, 4)
    np.testing.assert_array_equal(idata.posterior["x"].values, x.numpy())
    ss = idata.sample_stats
    assert ss["log_weights"].dims == ("chain", "draw")
    assert ss["ess_history"].dims == ("chain", "ess_history_dim_0")
    assert ss["log_evidence"].dims == ("chain",)
    assert idata.observed_data["y"].dims == ("y_channel", "y_row", "y_col")
    assert idata.posterior_predictive["y"].dims == ("chain", "draw", "y_channel", "y_row", "y_col")
    assert idata.log_likelihood["y"].dims == idata.posterior_predictive["y"].dims
    assert idata.posterior.attrs["solver"] == "test"
    assert idata.posterior.attrs["inference_library"] == "ppl_diffusion"
    table = az.summary(idata)
    assert len(table) == 48 and np.isfinite(table["r_hat"].values).all()


def test_to_inference_data_single_chain_dicts_and_overrides():
    draws = torch.randn(25, 6, dtype=F64)  # e.g. pyro Predictive output, no chain axis
    idata = D.to_inference_data(
        {"x": draws, "kernel": torch.rand(25, 3, 3)},
        chain_dim=False,
        sample_stats={"step_size": torch.rand(25)},
        coords={"dim": list("abcdef")},
        dims={"kernel": ["chain", "draw", "krow", "kcol"]},
    )
    post = idata.posterior
    assert post["x"].dims == ("chain", "draw", "dim") and post["x"].shape == (1, 25, 6)
    assert list(post["dim"].values) == list("abcdef")
    assert post["kernel"].dims == ("chain", "draw", "krow", "kcol")
    assert idata.sample_stats["step_size"].dims == ("chain", "draw")
    assert len(az.summary(idata, var_names=["x"])) == 6
    # chain_dim=None infers the layout from the event rank
    auto = D.to_inference_data(torch.randn(4, 10, 3, 5, 5), chain_dim=None, event_ndim=3)
    assert auto.posterior["x"].shape == (4, 10, 3, 5, 5)
    auto1 = D.to_inference_data(torch.randn(10, 3, 5, 5), chain_dim=None, image_dims=("c", "h", "w"))
    assert auto1.posterior["x"].dims == ("chain", "draw", "c", "h", "w")


def test_to_inference_data_bad_inputs():
    with pytest.raises(ValueError, match="chain_dim"):
        D.to_inference_data(torch.randn(4, 10, 3), chain_dim=None)
    with pytest.raises(ValueError, match="posterior"):
        D.to_inference_data({"x": torch.randn(2, 10, 3), "z": torch.randn(3, 10)})
    with pytest.raises(ValueError, match="sample_stats"):
        D.to_inference_data(torch.randn(2, 10, 3), sample_stats={"w": torch.randn(5)})
    with pytest.raises(ValueError, match="image_dims"):
        D.to_inference_data(torch.randn(2, 10, 3), image_dims=("a", "b"))


def test_summary_maps_and_dataset():
    x = ar1((4, 100, 2, 3), 0.3)
    s = D.summary(torch.from_numpy(x))
    assert set(s) == {"mean", "sd", "q5", "q50", "q95", "rhat", "ess_bulk"}
    pooled = x.reshape(-1, 2, 3)
    np.testing.assert_allclose(s["mean"].numpy(), pooled.mean(0), rtol=1e-12)
    np.testing.assert_allclose(s["q95"].numpy(), np.quantile(pooled, 0.95, axis=0), rtol=1e-12)
    r_ref, e_ref = arviz_maps(x)
    np.testing.assert_allclose(s["rhat"].numpy(), r_ref, rtol=1e-6)
    idata = D.to_inference_data(x)
    ds = D.summary(idata, as_dataset=True, quantiles=(0.025, 0.975))
    assert set(ds.data_vars) == {"mean", "sd", "q2.5", "q97.5", "rhat", "ess_bulk"}
    assert ds["ess_bulk"].dims == ("row", "col")
    np.testing.assert_allclose(ds["ess_bulk"].values, e_ref, rtol=1e-6)


def test_calibration_coverage_exact_sampler_is_calibrated():
    g = torch.Generator().manual_seed(0)
    samples = torch.randn(2000, 400, generator=g, dtype=F64) * 2 + 1
    exact = torch.randn(4000, 400, generator=g, dtype=F64) * 2 + 1
    levels = (0.5, 0.9)
    cal = D.calibration_coverage(samples, exact, levels)
    torch.testing.assert_close(cal, torch.tensor(levels, dtype=F64), atol=0.02, rtol=0)
    # exact marginal CDF instead of samples
    cdf = lambda v: torch.special.ndtr((v - 1) / 2)  # noqa: E731
    cal2 = D.calibration_coverage(samples, cdf, levels)
    torch.testing.assert_close(cal2, torch.tensor(levels, dtype=F64), atol=0.01, rtol=0)
    # an over-confident sampler (std 1 instead of 2) under-covers
    cal3 = D.calibration_coverage((samples - 1) / 2 + 1, cdf, levels)
    assert (cal3 < torch.tensor(levels, dtype=F64) - 0.1).all()
    # one ground truth: plain coverage per level
    assert D.calibration_coverage(samples, exact[0], levels).shape == (2,)
