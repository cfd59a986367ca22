"""ArviZ conversion and image-aware MCMC diagnostics.

* :func:`to_inference_data` turns the output of any solver family (tensors or dicts of tensors with
  ``(chain, draw, *event)`` or ``(draw, *event)`` layout) into ``arviz.InferenceData`` with named
  event dimensions (``channel, row, col`` for images, ``dim`` for vectors).
* :func:`rhat` and :func:`ess_bulk` compute ArviZ's default rank-normalised split R-hat and bulk
  ESS (Vehtari et al. 2021) for *every* event coordinate at once (an R-hat map of an image), with
  sorting, FFT autocovariances and Geyer's initial monotone sequence vectorised over coordinates.
  They agree with ``arviz.rhat`` / ``arviz.ess(method="bulk")`` to rounding and are several times
  faster on images even on one core (``benchmarks/diagnostics_speed.py``; :func:`rhat_ess` shares
  the ranking between the two). On a CPU shared with other jobs, ``torch.set_num_threads(1)`` is
  usually faster than the default (OpenMP threads spin while their siblings are descheduled).
* :func:`summary` gives mean / sd / quantile / R-hat / ESS maps; :func:`calibration_coverage`
  checks credible intervals against the exact posterior.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from .metrics import _as_tensor, coverage, quantile

__all__ = [
    "to_inference_data",
    "rhat",
    "ess_bulk",
    "rhat_ess",
    "summary",
    "calibration_coverage",
    "kmeans_centres",
]


# --------------------------------------------------------------------------------------------
# rank-normalised R-hat and bulk ESS maps
# --------------------------------------------------------------------------------------------

_RESOLUTION = float(np.finfo(np.float64).resolution)  # ArviZ's constant-chain threshold (1e-15)


def _next_fast_len(n: int) -> int:
    """Smallest 2,3,5-smooth integer >= n (an efficient FFT length)."""
    best = 1 << max(0, (n - 1).bit_length())
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            k = p35
            while k < n:
                k *= 2
            best = min(best, k)
            p35 *= 3
        p5 *= 5
    return best


def _chains_draws_coords(samples, name: str = "samples") -> tuple[torch.Tensor, torch.Size]:
    """``(chain, draw, *event)`` -> float64 ``(P, chain, draw)`` (coordinates first) and event shape."""
    x = _as_tensor(samples, name)
    if x.ndim < 2:
        raise ValueError(f"{name}: expected shape (chain, draw, *event), got {tuple(x.shape)}")
    event = x.shape[2:]
    c, d = x.shape[:2]
    x = x.detach().to(torch.float64).reshape(c, d, -1).permute(2, 0, 1).contiguous()
    return x, event


def _split(x: torch.Tensor) -> torch.Tensor:
    """Split chains in halves (middle draw dropped for odd lengths): (P, C, D) -> (P, 2C, D//2)."""
    half = x.shape[-1] // 2
    return torch.cat([x[..., :half], x[..., x.shape[-1] - half :]], dim=-2)


def _z_scale(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank-normalise along the last axis (ArviZ's ``_z_scale``): average ranks ``r`` (ties share
    their mean rank), Blom's back-transform ``(r - 3/8) / (S + 1/4)``, then the normal quantile.
    Returns the z-values and the sorted values."""
    if v.device.type == "cpu":  # numpy's SIMD sort is several times faster than torch.sort on CPU
        idx = torch.from_numpy(np.argsort(v.numpy(), axis=-1))
        sv = v.gather(-1, idx)
    else:
        sv, idx = torch.sort(v, dim=-1)
    S = v.shape[-1]
    pos = torch.arange(S, device=v.device, dtype=torch.float64)
    z_sorted = torch.special.ndtri((pos + 0.625) / (S + 0.25)).expand_as(sv)  # rank r = pos + 1
    new = torch.ones_like(sv, dtype=torch.bool)  # first element of a run of equal values
    new[..., 1:] = sv[..., 1:] != sv[..., :-1]
    if not bool(new.all()):
        # ties: every run of equal values gets its mean rank. Only the tied elements are touched:
        # along their flat indices q (runs never cross rows, each starts with new=True) the run's
        # first / last flat index is a cumulative max / reversed cumulative min.
        end = torch.ones_like(new)  # last element of a run
        end[..., :-1] = new[..., 1:]
        q = (~(new & end)).reshape(-1).nonzero().squeeze(-1)
        new_q, end_q = new.reshape(-1)[q], end.reshape(-1)[q]
        first = torch.where(new_q, q, torch.zeros_like(q)).cummax(0).values
        big = torch.full_like(q, sv.numel())
        last = torch.where(end_q, q, big).flip(0).cummin(0).values.flip(0)
        rank = 0.5 * (first + last).to(torch.float64) - (q // S * S).to(torch.float64) + 1.0
        z_sorted = z_sorted.contiguous()
        z_sorted.view(-1)[q] = torch.special.ndtri((rank - 0.375) / (S + 0.25))
    z = torch.empty_like(v).scatter_(-1, idx, z_sorted)
    return z, sv


def _chain_moments(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-chain mean and unbiased variance of (P, M, N) z-scores (sum of squares: z is O(1))."""
    n = z.shape[-1]
    mean = z.mean(dim=-1)
    var = (z.square().sum(dim=-1) - n * mean.square()) / (n - 1)
    return mean, var


def _rhat_basic(mean: torch.Tensor, var: torch.Tensor, n: int) -> torch.Tensor:
    """Classic R-hat from per-chain means / variances (P, M) of chains of length n:
    ``sqrt((B/W + n - 1) / n)``, ``B = n var(means)``, ``W = mean(vars)``."""
    w = var.mean(dim=-1)
    b = n * mean.var(dim=-1)
    return torch.sqrt((b / w + n - 1) / n)


def _ess_geyer(z: torch.Tensor, chain_mean: torch.Tensor) -> torch.Tensor:
    """ESS of (P, M, N) chains with Geyer's initial monotone sequence, vectorised over P.

    Same estimator as ArviZ's ``_ess``: FFT autocovariances, ``rho_t = 1 - (W - mean acov_t) /
    var_plus``; pair sums ``P_j = rho_2j + rho_2j+1`` are kept up to the first non-positive one
    (``K`` pairs, at most ``(N - 3) // 2``), made monotone by a cumulative minimum, and
    ``tau = -1 + 2 sum_{j<K} min_{i<=j} P_i + rho_2K`` (the last term only when ArviZ keeps it).
    """
    P, M, N = z.shape
    nfft = _next_fast_len(2 * N)
    zc = z - chain_mean.unsqueeze(-1)
    f = torch.fft.rfft(zc, n=nfft, dim=-1)
    power = (f.real.square() + f.imag.square()).mean(dim=1)  # chain-averaged: one inverse FFT
    mean_acov = torch.fft.irfft(power, n=nfft, dim=-1)[..., :N] / N  # (P, N)
    mean_var = mean_acov[:, 0] * N / (N - 1.0)
    var_plus = mean_var * (N - 1.0) / N
    if M > 1:
        var_plus = var_plus + chain_mean.var(dim=-1)
    rho = 1.0 - (mean_var[:, None] - mean_acov) / var_plus[:, None]
    rho[:, 0] = 1.0
    i_max = max(0, (N - 3) // 2)
    pairs = rho[:, : 2 * (i_max + 1)].reshape(P, i_max + 1, 2).sum(-1)  # P_0 .. P_imax
    n_lead_pos = (~(pairs > 0)).to(torch.int64).cumsum(-1).eq(0).sum(-1)  # first non-positive pair
    k = n_lead_pos.clamp(max=i_max)
    mono = pairs.cummin(dim=-1).values
    csum = torch.cat([mono.new_zeros(P, 1), mono.cumsum(-1)], dim=-1)
    head = csum.gather(1, k[:, None])[:, 0]
    rho_2k = rho.gather(1, (2 * k)[:, None])[:, 0]
    pair_k = pairs.gather(1, k[:, None])[:, 0]
    last = torch.where((pair_k >= 0) | (rho_2k > 0), rho_2k, torch.zeros_like(rho_2k))
    total = M * N
    tau = (-1.0 + 2.0 * head + last).clamp(min=1.0 / math.log10(total))
    ess = total / tau
    constant = (z.amax(dim=(1, 2)) - z.amin(dim=(1, 2))) < _RESOLUTION
    return torch.where(constant, torch.full_like(ess, float(total)), ess)


def _maps_chunk(x: torch.Tensor, want_rhat: bool, want_ess: bool):
    """R-hat / ESS-bulk for a chunk (P, C, D) of coordinates."""
    P, C, D = x.shape
    s = _split(x)  # (P, M, N)
    M, N = s.shape[1:]
    flat = s.reshape(P, M * N)
    z, sv = _z_scale(flat)
    z = z.reshape(P, M, N)
    bad = torch.isnan(flat).any(-1)
    out_r = out_e = None
    if want_rhat:
        S = M * N
        med = 0.5 * (sv[:, (S - 1) // 2] + sv[:, S // 2])
        zf = _z_scale((flat - med[:, None]).abs())[0].reshape(P, M, N)
        out_r = torch.maximum(_rhat_basic(*_chain_moments(z), N), _rhat_basic(*_chain_moments(zf), N))
        if C < 2:
            out_r = torch.full_like(out_r, float("nan"))
        out_r = out_r.masked_fill(bad, float("nan"))
    if want_ess:
        out_e = _ess_geyer(z, z.mean(dim=-1)).masked_fill(bad, float("nan"))
    return out_r, out_e


def _maps(samples, want_rhat: bool, want_ess: bool, chunk_size: int | None):
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size: expected a positive integer or None, got {chunk_size}")
    x, event = _chains_draws_coords(samples)
    P = x.shape[0]
    if chunk_size is None:
        budget = 1 << (20 if x.device.type == "cpu" else 24)  # values per block (8 MB on CPU)
        chunk_size = max(1, budget // max(1, x.shape[1] * x.shape[2]))
    if P == 0 or x.shape[2] < 4:  # ArviZ: NaN with fewer than 4 draws
        nan = torch.full(event, float("nan"), dtype=torch.float64, device=x.device)
        return (nan if want_rhat else None), (nan.clone() if want_ess else None)
    rs, es = [], []
    # blocks of hundreds+ of coordinates, each fully vectorised (bounds memory; cache friendly)
    for start in range(0, P, chunk_size):
        r, e = _maps_chunk(x[start : start + chunk_size], want_rhat, want_ess)
        rs.append(r)
        es.append(e)
    r = torch.cat(rs).reshape(event) if want_rhat else None
    e = torch.cat(es).reshape(event) if want_ess else None
    return r, e


def rhat(samples, chunk_size: int | None = None) -> torch.Tensor:
    """Rank-normalised split R-hat map (Vehtari et al. 2021; ArviZ's default ``method="rank"``):
    the max of the bulk R-hat of the rank-normalised split chains and of the folded ones
    (``|x - median|``).

    ``samples``: ``(chain, draw, *event)`` tensor or array; returns a float64 map of shape
    ``event``. As in ArviZ, NaN where fewer than 2 chains or 4 draws, or the coordinate has NaNs.
    ``chunk_size`` bounds how many coordinates are processed together (default: blocks of ~1M
    values on CPU, ~16M on GPU; every block is vectorised over its coordinates).
    """
    return _maps(samples, True, False, chunk_size)[0]


def ess_bulk(samples, chunk_size: int | None = None) -> torch.Tensor:
    """Bulk effective sample size map (rank-normalised split chains, FFT autocovariance, Geyer's
    initial monotone sequence), equal to ``arviz.ess(method="bulk")`` per coordinate.

    ``samples``: ``(chain, draw, *event)``; returns a float64 map of shape ``event`` (NaN with
    fewer than 4 draws or NaNs in the coordinate; ``chain * draw`` for constant coordinates).
    """
    return _maps(samples, False, True, chunk_size)[1]


def rhat_ess(samples, chunk_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rhat(samples), ess_bulk(samples))`` sharing the ranking work (faster than two calls)."""
    return _maps(samples, True, True, chunk_size)


# --------------------------------------------------------------------------------------------
# InferenceData
# --------------------------------------------------------------------------------------------


def _to_numpy(v, name: str) -> np.ndarray:
    if isinstance(v, torch.Tensor):
        return v.detach().cpu().numpy()
    try:
        return np.asarray(v)
    except Exception as exc:  # pragma: no cover - defensive
        raise ValueError(f"{name}: expected a tensor or array, got {type(v).__name__}") from exc


def _as_dict(value, default_name: str, group: str) -> dict[str, np.ndarray]:
    if value is None:
        return {}
    if isinstance(value, Mapping):
        return {str(k): _to_numpy(v, f"{group}[{k!r}]") for k, v in value.items()}
    return {default_name: _to_numpy(value, group)}


def _event_dim_names(name: str, ndim: int, main: bool, image_dims: Sequence[str] | None) -> list[str]:
    """Names of the event dims: (channel, row, col) / (row, col) / (dim,) for the main variable,
    the same prefixed with ``<name>_`` for other variables, ``<name>_dim_i`` otherwise."""
    if main and image_dims is not None:
        if len(image_dims) != ndim:
            raise ValueError(f"image_dims: expected {ndim} names for the event of {name!r}, got {list(image_dims)}")
        return list(image_dims)
    base = {3: ["channel", "row", "col"], 2: ["row", "col"]}.get(ndim)
    if main:
        if base is not None:
            return base
        if ndim == 1:
            return ["dim"]
    elif base is not None:
        return [f"{name}_{b}" for b in base]
    return [f"{name}_dim_{i}" for i in range(ndim)]


def _dataset(data: dict, dims: dict, coords: Mapping | None, attrs: dict, group: str):
    import xarray as xr

    variables, all_coords = {}, {}
    for name, arr in data.items():
        d = dims[name]
        if len(d) != arr.ndim:
            raise ValueError(f"dims[{name!r}]: expected {arr.ndim} names for shape {arr.shape}, got {d}")
        variables[name] = (d, arr)
        for dim, size in zip(d, arr.shape):
            if coords is not None and dim in coords:
                all_coords[dim] = np.asarray(coords[dim])
            elif dim not in all_coords:
                all_coords[dim] = np.arange(size)
    try:
        return xr.Dataset(variables, coords=all_coords, attrs=dict(attrs))
    except ValueError as exc:
        raise ValueError(f"{group}: inconsistent dimension sizes ({exc}); name the dims explicitly with dims=") from exc


def to_inference_data(
    posterior,
    *,
    chain_dim: bool | None = True,
    event_ndim: int | None = None,
    sample_stats=None,
    observed_data=None,
    posterior_predictive=None,
    log_likelihood=None,
    var_name: str = "x",
    image_dims: Sequence[str] | None = None,
    dims: Mapping[str, Sequence[str]] | None = None,
    coords: Mapping[str, Sequence] | None = None,
    attrs: Mapping | None = None,
):
    """Build an ``arviz.InferenceData`` from any solver's output.

    A solver's result (a ``Draws``, an ``SMCResult``, a Pyro ``MCMC`` run) is converted by
    :func:`ppl_diffusion.idata.convert` (pointwise log-likelihood, posterior predictive, observed
    data, SMC runs as chains with their weights).

    Parameters
    ----------
    posterior : tensor / array or dict of them
        ``(chain, draw, *event)`` when ``chain_dim=True`` (default), ``(draw, *event)`` (one chain)
        when ``chain_dim=False``; ``chain_dim=None`` decides from ``event_ndim`` (or
        ``len(image_dims)``) of ``var_name``. A bare tensor is stored as ``var_name``.
    sample_stats : dict, optional
        Per-chain/draw arrays (log-weights, ESS history, log-evidence, ...), with the same chain
        convention. Dims: ``(chain, draw, <name>_dim_i...)`` when the shape starts with
        ``(chain, draw)``, ``(chain, <name>_dim_i...)`` when it starts with ``chain`` only.
    observed_data : tensor or dict, optional
        ``y`` without chain/draw dims (a bare tensor is named ``"y"``).
    posterior_predictive, log_likelihood : tensor or dict, optional
        ``(chain, draw, *obs_shape)``; a bare tensor takes the observed variable's name, and
        shares its dims.
    var_name : str
        The main latent (image or vector). Its event dims are ``("channel", "row", "col")`` for 3-D
        events, ``("row", "col")`` for 2-D, ``("dim",)`` for 1-D; other variables get the same
        names prefixed with ``<name>_`` (3-D / 2-D) or ``<name>_dim_i``.
    image_dims : sequence of str, optional
        Override the event dim names of ``var_name``.
    dims : dict, optional
        Full dim names (including ``chain``/``draw`` where present) for any variable, overriding
        the rules above.
    coords, attrs : dict, optional
        Coordinate values per dim name (default ``0..n-1``) and attributes for every group.
    """
    import arviz as az

    if not isinstance(posterior, (Mapping, torch.Tensor, np.ndarray)):
        from .idata import convert  # a Draws, an SMCResult or a Pyro MCMC run: the one convention

        given = {k: v for k, v in (("dims", dims), ("coords", coords), ("attrs", attrs)) if v is not None}
        converted = convert(posterior, **given)
        if converted is not None:
            return converted
    dims = dict(dims or {})
    post = _as_dict(posterior, var_name, "posterior")
    if not post:
        raise ValueError("posterior: expected a tensor or a non-empty dict of tensors")
    main = var_name if var_name in post else next(iter(post))
    if chain_dim is None:
        en = event_ndim if event_ndim is not None else (len(image_dims) if image_dims is not None else None)
        if en is None:
            raise ValueError("chain_dim: None (auto) needs event_ndim or image_dims to tell chains from draws")
        chain_dim = post[main].ndim == en + 2
    min_ndim = 2 if chain_dim else 1
    for k, v in post.items():
        if v.ndim < min_ndim:
            raise ValueError(
                f"posterior[{k!r}]: expected {'(chain, draw, *event)' if chain_dim else '(draw, *event)'}, "
                f"got shape {v.shape}"
            )

    def add_chain(d: dict) -> dict:
        return d if chain_dim else {k: v[None] for k, v in d.items()}

    post = add_chain(post)
    n_chain, n_draw = post[main].shape[:2]
    for k, v in post.items():
        if v.shape[:2] != (n_chain, n_draw):
            raise ValueError(f"posterior[{k!r}]: (chain, draw) = {v.shape[:2]} differs from {(n_chain, n_draw)}")

    obs = _as_dict(observed_data, "y", "observed_data")
    obs_name = next(iter(obs)) if len(obs) == 1 else "y"
    pp = add_chain(_as_dict(posterior_predictive, obs_name, "posterior_predictive"))
    ll = add_chain(_as_dict(log_likelihood, obs_name, "log_likelihood"))
    stats = sample_stats
    if stats is not None and not isinstance(stats, Mapping):
        raise ValueError("sample_stats: expected a dict of name -> array")
    stats = add_chain(_as_dict(stats, "stat", "sample_stats"))

    def draws_dims(group: str, data: dict) -> dict:
        out = {}
        for k, v in data.items():
            if k in dims:
                out[k] = list(dims[k])
                continue
            if v.ndim < 2 or v.shape[:2] != (n_chain, n_draw):
                raise ValueError(f"{group}[{k!r}]: expected leading (chain, draw) = {(n_chain, n_draw)}, got {v.shape}")
            out[k] = ["chain", "draw"] + _event_dim_names(k, v.ndim - 2, k == main, image_dims)
        return out

    def stats_dims(data: dict) -> dict:
        out = {}
        for k, v in data.items():
            if k in dims:
                out[k] = list(dims[k])
            elif v.ndim >= 2 and v.shape[:2] == (n_chain, n_draw):
                out[k] = ["chain", "draw"] + [f"{k}_dim_{i}" for i in range(v.ndim - 2)]
            elif v.ndim >= 1 and v.shape[0] == n_chain:
                out[k] = ["chain"] + [f"{k}_dim_{i}" for i in range(v.ndim - 1)]
            else:
                raise ValueError(
                    f"sample_stats[{k!r}]: expected a leading chain axis of size {n_chain}, got shape {v.shape}"
                )
        return out

    obs_dims = {k: list(dims[k]) if k in dims else _event_dim_names(k, v.ndim, k == main, image_dims)
                for k, v in obs.items()}
    base_attrs = az.data.base.make_attrs(attrs=dict(attrs or {}))
    base_attrs.setdefault("inference_library", "ppl_diffusion")
    groups = {"posterior": _dataset(post, draws_dims("posterior", post), coords, base_attrs, "posterior")}
    if stats:
        groups["sample_stats"] = _dataset(stats, stats_dims(stats), coords, base_attrs, "sample_stats")
    if pp:
        groups["posterior_predictive"] = _dataset(
            pp, draws_dims("posterior_predictive", pp), coords, base_attrs, "posterior_predictive"
        )
    if ll:
        groups["log_likelihood"] = _dataset(ll, draws_dims("log_likelihood", ll), coords, base_attrs, "log_likelihood")
    if obs:
        groups["observed_data"] = _dataset(obs, obs_dims, coords, base_attrs, "observed_data")
    return az.InferenceData(**groups)


# --------------------------------------------------------------------------------------------
# summaries and calibration
# --------------------------------------------------------------------------------------------


def summary(
    idata_or_samples,
    var_name: str | None = None,
    quantiles: Sequence[float] = (0.05, 0.5, 0.95),
    as_dataset: bool = False,
    chunk_size: int | None = None,
):
    """Mean / sd / quantile / R-hat / bulk-ESS maps of one variable.

    ``idata_or_samples`` is an ``InferenceData`` (``var_name`` of its posterior, default the first
    variable) or a ``(chain, draw, *event)`` tensor. Returns a dict ``{"mean", "sd", "q5", "q50",
    "q95", "rhat", "ess_bulk"}`` of float64 tensors of shape ``event`` (quantile keys follow
    ``quantiles``, e.g. 0.025 -> ``"q2.5"``), or an ``xarray.Dataset`` with the event dims when
    ``as_dataset=True``.
    """
    event_dims, event_coords = None, {}
    if hasattr(idata_or_samples, "posterior"):
        post = idata_or_samples.posterior
        if var_name is None:
            var_name = next(iter(post.data_vars))
        if var_name not in post:
            raise ValueError(f"var_name: {var_name!r} not in the posterior ({list(post.data_vars)})")
        da = post[var_name].transpose("chain", "draw", ...)
        event_dims = list(da.dims[2:])
        event_coords = {d: da[d].values for d in event_dims if d in da.coords}
        x = torch.from_numpy(np.ascontiguousarray(da.values)).to(torch.float64)
    else:
        x = _as_tensor(idata_or_samples, "idata_or_samples").to(torch.float64)
        if x.ndim < 2:
            raise ValueError(f"idata_or_samples: expected (chain, draw, *event), got {tuple(x.shape)}")
    pooled = x.reshape(-1, *x.shape[2:])
    out = {"mean": pooled.mean(0), "sd": pooled.std(0)}
    qs = quantile(pooled, list(quantiles), dim=0)
    for q, v in zip(quantiles, qs):
        out[f"q{100 * q:g}"] = v
    out["rhat"], out["ess_bulk"] = rhat_ess(x, chunk_size=chunk_size)
    if not as_dataset:
        return out
    import xarray as xr

    if event_dims is None:
        event_dims = _event_dim_names(var_name or "x", x.ndim - 2, True, None)
    return xr.Dataset({k: (event_dims, v.cpu().numpy()) for k, v in out.items()}, coords=event_coords)


def calibration_coverage(samples, reference, levels: Sequence[float] = (0.5, 0.8, 0.9, 0.95)) -> torch.Tensor:
    """Calibration of the equal-tailed marginal credible intervals of ``samples`` (n, *shape).

    ``reference`` is one of:

    * exact posterior samples ``(m, *shape)``: returns, per level, the exact posterior mass inside
      the intervals averaged over coordinates (estimated by the fraction of exact samples inside);
    * a callable ``cdf(values) -> probabilities`` (elementwise exact marginal CDF, values shaped
      ``(2, *shape)``): the same mass computed as ``cdf(hi) - cdf(lo)``;
    * a ground truth ``(*shape)``: the fraction of coordinates covered (:func:`metrics.coverage`).

    A calibrated sampler gives about ``levels``. Returns a tensor of shape ``(len(levels),)``.
    """
    x = _as_tensor(samples, "samples")
    if x.ndim < 1 or x.shape[0] < 2:
        raise ValueError(f"samples: expected (n >= 2, *shape), got {tuple(x.shape)}")
    lv = [float(v) for v in levels]
    if any(not 0.0 < v < 1.0 for v in lv):
        raise ValueError(f"levels: expected probabilities in (0, 1), got {lv}")
    if callable(reference):
        out = []
        for v in lv:  # a handful of levels, each vectorised over coordinates
            lohi = quantile(x, [(1 - v) / 2, (1 + v) / 2], dim=0)
            cdf = _as_tensor(reference(lohi), "reference(values)").to(x)
            out.append((cdf[1] - cdf[0]).mean())
        return torch.stack(out)
    ref = _as_tensor(reference, "reference").to(device=x.device, dtype=x.dtype)
    if ref.ndim == x.ndim - 1:
        return torch.stack([coverage(x, ref, level=v) for v in lv])
    if ref.ndim != x.ndim or ref.shape[1:] != x.shape[1:]:
        raise ValueError(
            f"reference: expected exact samples (m, {tuple(x.shape[1:])}) or a truth {tuple(x.shape[1:])}, "
            f"got {tuple(ref.shape)}"
        )
    out = []
    for v in lv:
        lo, hi = quantile(x, [(1 - v) / 2, (1 + v) / 2], dim=0)
        out.append(((ref >= lo) & (ref <= hi)).to(x.dtype).mean())
    return torch.stack(out)


def kmeans_centres(x: torch.Tensor, k: int = 4, iters: int = 25,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Lloyd's k-means centres ``(<= k, D)`` of the rows of ``x`` ``(n, D)`` (float64), k-means++ start
    (Arthur & Vassilvitskii, SODA 2007); fewer than ``k`` when the rows have fewer distinct points.
    Used to cut draws into mode-like regions (MCMC and SMC mode diagnostics)."""
    x = x.reshape(x.shape[0], -1).to(torch.float64)
    n = x.shape[0]
    k = max(1, min(int(k), n))
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    first = int(torch.randint(n, (1,), generator=g))
    centres = x[first:first + 1]
    for _ in range(k - 1):
        d2 = torch.cdist(x, centres).min(1).values ** 2
        if float(d2.sum()) <= 0:
            break
        j = int(torch.multinomial(d2 / d2.sum(), 1, generator=g))
        centres = torch.cat([centres, x[j:j + 1]])
    for _ in range(iters):
        lab = torch.cdist(x, centres).argmin(1)
        new = torch.stack([x[lab == c].mean(0) if bool((lab == c).any()) else centres[c]
                           for c in range(centres.shape[0])])
        if torch.allclose(new, centres):
            break
        centres = new
    return centres
