"""One ArviZ convention for every family: posterior, pointwise log-likelihood, posterior predictive.

Every result converts to ``InferenceData`` with the same groups and dims:

* ``posterior``: the prior site ``x`` as ``(chain, draw, channel, row, col)`` for images (``dim`` for
  vectors; a plate of measurements adds ``measurement`` after ``draw``), jointly inferred latent
  sites beside it;
* ``log_likelihood``: POINTWISE ``log p(y_i | x)`` per observed element, ``(chain, draw, *y dims)``
  (``y_channel, y_row, y_col`` for image measurements), so that ``az.loo`` / ``az.waic`` /
  ``az.compare`` treat each measured pixel as an observation;
* ``posterior_predictive``: one replicated measurement ``y_rep ~ p(y | x)`` per draw, same dims
  (``az.plot_ppc``);
* ``observed_data``: ``y``;
* ``sample_stats``: the family's per-draw statistics; SMC adds its weights (below).

Sources (:func:`convert`, also reached through ``ppl_diffusion.to_inference_data(obj)``):

* a :class:`~ppl_diffusion.inference.solver.Draws` (any solver's ``draw()``);
* an :class:`~ppl_diffusion.inference.smc.result.SMCResult`: each of the ``R`` independent runs is
  one CHAIN (so R-hat and ESS are defined with ``R >= 2``), its draws are ``N`` multinomial draws by
  the run's weights; ``sample_stats`` keep the weights (``log_weight``, ``(chain, particle)``,
  normalised), which particle each draw is (``particle_index``), and per run ``log_evidence``,
  ``final_ess``, ``ess_history`` / ``resampled`` (``(chain, step)``);
* a ``pyro.infer.MCMC`` run of one of our kernels (``az.from_pyro`` names the image dims
  ``x_dim_0..2``; pass ``dims={"x": ["channel", "row", "col"]}`` to it, or use this).

The predictive groups need the model: a ``Draws`` / ``SMCResult`` made by a solver carries its
problem (model and measurement); otherwise pass ``model=`` and the model's arguments (``y=y``).
They cost one trace of the model with ``x`` at all draws at once (no network call).
"""
from __future__ import annotations

import torch

__all__ = ["convert", "pointwise_log_likelihood", "predictive_groups", "smc_inference_data"]


def _pointwise(fn, value: torch.Tensor) -> torch.Tensor:
    """Elementwise log-density of ``value`` (event dims kept) where the distribution allows it."""
    from torch.distributions import Independent

    from .models.measurement import GaussianMeasurement

    base = fn
    for _ in range(10):
        if isinstance(base, GaussianMeasurement):
            if bool((base.scale.detach() == 0).any()):
                raise ValueError("the log-likelihood of a noiseless measurement (noise_std=0) is not defined")
            scale = base.noise_std if base.is_scalar_noise else base._scale_b()
            return torch.distributions.Normal(base.loc, scale).log_prob(value)
        if isinstance(base, Independent) or type(base).__name__ in ("Independent", "ExpandedDistribution"):
            base = base.base_dist
            continue
        break
    return base.log_prob(value)


def predictive_groups(problem, samples: torch.Tensor, theta: dict | None = None,
                      generator: torch.Generator | None = None) -> dict:
    """``{"log_likelihood": {name: (C, S, *obs)}, "posterior_predictive": {...}, "observed_data": {...}}``
    for draws ``samples`` ``(C, S, *plate_shape, *event)`` of ``problem``'s prior site (one batched
    trace of the model; free latent sites at their draws ``theta`` ``name -> (C, S, *site_shape)``).
    Empty groups when the problem has free latent sites and no draws of them."""
    import pyro.poutine as poutine

    from .inference.problem import _StubPrior

    C, S = samples.shape[:2]
    n = C * S
    rest = tuple(problem.plate_shape) + tuple(problem.event_shape)
    data = dict(problem.latent_values)
    data[problem.prior_site] = samples.reshape((n,) + rest).to(problem.dtype)
    missing = [k for k in problem.free_latents if not theta or k not in theta]
    if missing:
        return {}
    for k in problem.free_latents:
        v = torch.as_tensor(theta[k])
        own = tuple(torch.as_tensor(problem.latent[k]["value"]).shape)
        data[k] = v.reshape((n,) + (1,) * max(len(problem.plate_shape) - len(own), 0) + own)
    with torch.no_grad(), poutine.block(), _StubPrior(data):
        tr = poutine.trace(problem.model).get_trace(*problem.args, **problem.kwargs)
    ll, pp, obs = {}, {}, {}
    for name in problem.observed:
        site = tr.nodes[name]
        y = torch.as_tensor(site["value"])
        lp = _pointwise(site["fn"], y)
        if lp.numel() == n * y.numel():
            lp = lp.reshape((C, S) + tuple(y.shape))
        elif lp.numel() == n:  # a likelihood without elementwise terms: one value per draw
            lp = lp.reshape(C, S)
        else:
            raise ValueError(f"cannot batch the likelihood of site {name!r} over {n} draws (shape {tuple(lp.shape)})")
        g = torch.Generator(device=y.device).manual_seed(0) if generator is None else generator
        state = torch.get_rng_state()
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=g)))
        try:
            rep = site["fn"].sample()
        finally:
            torch.set_rng_state(state)
        rep = rep.expand((n,) + tuple(y.shape)) if rep.numel() != n * y.numel() else rep
        ll[name] = lp.double()
        pp[name] = rep.reshape((C, S) + tuple(y.shape))
        obs[name] = y
    return {"log_likelihood": ll, "posterior_predictive": pp, "observed_data": obs}


def pointwise_log_likelihood(model, samples: torch.Tensor, *args, prior_site: str | None = None, **kwargs) -> dict:
    """``name -> (chain, draw, *y.shape)`` pointwise log-likelihood of draws ``samples``
    ``(chain, draw, *event)`` under ``model(*args, **kwargs)`` (e.g. ``y=y``)."""
    from .inference.problem import Problem

    problem = Problem.from_model(model, *args, prior_site=prior_site, **kwargs)
    return predictive_groups(problem, samples).get("log_likelihood", {})


def _dims(site: str, ndim_event: int, plate_dims: tuple, y: dict) -> dict:
    from .diagnostics import _event_dim_names

    dims = {site: ["chain", "draw", *plate_dims] + _event_dim_names(site, ndim_event, True, None)}
    p = len(plate_dims)
    for name, v in y.items():
        ev = [*plate_dims] + _event_dim_names(name, v.dim() - p, False, None)
        dims[name] = ev
    return dims


def _with_groups(post: dict, site: str, problem, plate_dims: tuple, stats=None, theta=None, attrs=None,
                 extra_dims: dict | None = None, predictive: bool = True, **kwargs):
    """``to_inference_data`` with the predictive groups of ``problem`` (when it has a measurement)."""
    from .diagnostics import to_inference_data

    x = post[site]
    groups = {}
    if predictive and problem is not None and problem.observation is not None:
        groups = predictive_groups(problem, x, theta)
    obs = groups.get("observed_data") or ({"y": problem.observation}
                                          if problem is not None and problem.observation is not None else {})
    nev = x.dim() - 2 - len(plate_dims)
    dims = _dims(site, nev, plate_dims, obs)
    ydims = {k: v for k, v in dims.items() if k != site}
    full = {site: dims[site]}
    for group in ("log_likelihood", "posterior_predictive"):
        for name, v in (groups.get(group) or {}).items():
            full[name] = ["chain", "draw"] + (ydims[name] if v.dim() > 2 else [])
    full.update(extra_dims or {})
    full.update(kwargs.pop("dims", None) or {})
    obs_dims = {k: v for k, v in ydims.items()}
    # observed data and the draws' groups share names (y): to_inference_data reads one dims dict,
    # so the observed dims go through their own call below
    idata = to_inference_data(post, sample_stats=stats or None, var_name=site,
                              log_likelihood=groups.get("log_likelihood") or None,
                              posterior_predictive=groups.get("posterior_predictive") or None,
                              dims=full, attrs=attrs, **kwargs)
    if obs:
        from .diagnostics import _dataset

        idata.add_groups(observed_data=_dataset({k: v.detach().cpu().numpy() for k, v in obs.items()},
                                                obs_dims, kwargs.get("coords"), {}, "observed_data"))
    return idata


def draws_inference_data(d, predictive: bool = True, **kwargs):
    """:class:`Draws` -> ``InferenceData`` with the conventions of this module."""
    C, S = d.samples.shape[:2]
    stats = {k: torch.as_tensor(v) for k, v in d.stats.items() if tuple(torch.as_tensor(v).shape[:2]) == (C, S)}
    post = {d.site: d.samples}
    theta = {}
    for name, v in (d.extra.get("theta") or {}).items():  # jointly inferred latent sites
        v = torch.as_tensor(v)
        if tuple(v.shape[:2]) == (C, S):
            post[name] = v
            theta[name] = v
    problem = getattr(d, "problem", None)
    if problem is None and d.observation is not None:
        problem = _ObservationOnly(d.observation)
    attrs = {"method": d.method, "family": d.family, "nfe_per_sample": float(d.nfe_per_sample)}
    attrs.update(kwargs.pop("attrs", None) or {})
    return _with_groups(post, d.site, problem, tuple(d.plate_dims), stats=stats, theta=theta, attrs=attrs,
                        predictive=predictive and not isinstance(problem, _ObservationOnly), **kwargs)


class _ObservationOnly:
    """A stand-in problem that only knows the measurement (no model: no predictive groups)."""

    def __init__(self, y):
        self.observation = y


def smc_inference_data(res, model=None, *args, n: int | None = None, generator: torch.Generator | None = None,
                       predictive: bool = True, **kwargs):
    """:class:`SMCResult` -> ``InferenceData``: run = chain, ``n`` (default ``N``) multinomial draws
    per run by its weights, the weights and per-run diagnostics in ``sample_stats``. A plate of ``B``
    measurements (run ``i * B + b`` on measurement ``b``): ``(chain, draw, measurement, *event)``."""
    from .inference.problem import Problem

    idx_kwargs = {k: kwargs.pop(k) for k in ("dims", "coords", "attrs") if k in kwargs}
    problem = None
    if model is not None:
        problem = Problem.from_model(model, *args, **kwargs)
    elif args or kwargs:
        raise ValueError("model arguments (e.g. y=y) given without model=")
    else:
        problem = res.extra.get("problem")
    RB, N = res.log_weights.shape
    B = int(res.extra.get("measurements", 1))
    R = RB // B
    n = N if n is None else int(n)
    w = res.weights
    idx = torch.multinomial(w.cpu(), n, replacement=True, generator=generator).to(w.device)  # (RB, n)
    x = res.particles[torch.arange(RB, device=w.device)[:, None], idx]  # (RB, n, *event)
    ev = tuple(res.particles.shape[2:])
    plate_dims = ()
    logw = torch.log_softmax(res.log_weights, -1)
    stats = {"particle_index": idx, "log_weight": logw, "log_evidence": res.log_evidence, "final_ess": res.ess,
             "ess_history": res.ess_history, "resampled": res.resampled}
    if B > 1:
        x = x.reshape((R, B, n) + ev).transpose(1, 2)
        plate_dims = ("measurement",)
        stats = {"particle_index": idx.reshape(R, B, n).transpose(1, 2),
                 "log_weight": logw.reshape(R, B, N).transpose(1, 2),
                 "log_evidence": res.log_evidence.reshape(R, B), "final_ess": res.ess.reshape(R, B),
                 "ess_history": res.ess_history.reshape(R, B, -1), "resampled": res.resampled.reshape(R, B, -1)}
    m = list(plate_dims)
    sdims = {"particle_index": ["chain", "draw", *m], "log_weight": ["chain", "particle", *m],
             "log_evidence": ["chain", *m], "final_ess": ["chain", *m], "ess_history": ["chain", *m, "step"],
             "resampled": ["chain", *m, "step"]}
    site = problem.prior_site if problem is not None else "x"
    attrs = {"method": res.method, "family": "smc", "nfe": int(res.nfe), "num_runs": R,
             "num_particles": N, "weighted": "draws resampled by the run's weights; weights in sample_stats"}
    attrs.update(idx_kwargs.pop("attrs", None) or {})
    return _with_groups({site: x}, site, problem, plate_dims, stats=stats, attrs=attrs,
                        extra_dims=sdims, predictive=predictive, **idx_kwargs)


def mcmc_inference_data(mcmc, model=None, *args, predictive: bool = True, **kwargs):
    """A ``pyro.infer.MCMC`` run (of our kernels, or any kernel on a diffusion-prior model) ->
    ``InferenceData`` with this module's dims; the model and its arguments default to the run's."""
    from .inference.problem import Problem

    idx_kwargs = {k: kwargs.pop(k) for k in ("dims", "coords", "attrs") if k in kwargs}
    kernel = mcmc.kernel
    model = model or getattr(kernel, "model", None)
    model = getattr(model, "__wrapped__", model)
    if model is None:
        raise ValueError("cannot find the model of this MCMC run: pass model=")
    if not args and not kwargs:
        args, kwargs = tuple(getattr(mcmc, "_args", ())), dict(getattr(mcmc, "_kwargs", {}))
    problem = Problem.from_model(model, *args, prior_site=getattr(kernel, "prior_site", None), **kwargs)
    samples = mcmc.get_samples(group_by_chain=True)
    site = problem.prior_site
    post = {k: v for k, v in samples.items()}
    theta = {k: v for k, v in samples.items() if k != site}
    C, S = samples[site].shape[:2]
    diverging = torch.zeros(C, S, dtype=torch.bool)
    try:
        div = mcmc.diagnostics().get("divergences", {})
    except Exception:  # pragma: no cover - a kernel without diagnostics
        div = {}
    for c in range(C):  # indices of kept draws (Pyro kernels count them after warm-up)
        for i in div.get(f"chain {c}", []):
            if 0 <= int(i) < S:
                diverging[c, int(i)] = True
    stats = {"diverging": diverging}
    plates = tuple(f.name for f in problem.plates)
    plate_dims = ("measurement",) if len(plates) == 1 else plates
    return _with_groups(post, site, problem, plate_dims, stats=stats, theta=theta,
                        attrs={"inference_library": "pyro", **(idx_kwargs.pop("attrs", None) or {})},
                        predictive=predictive, **idx_kwargs)


def convert(obj, *args, **kwargs):
    """``InferenceData`` from a ``Draws``, an ``SMCResult``, a kernel's ``ChainResult`` or a Pyro
    ``MCMC`` run (see the module docstring); ``None`` for anything else (plain tensors / dicts go
    through :func:`ppl_diffusion.diagnostics.to_inference_data`)."""
    from .inference.smc.result import SMCResult
    from .inference.solver import Draws

    if isinstance(obj, Draws):
        return draws_inference_data(obj, **kwargs)
    if isinstance(obj, SMCResult):
        return smc_inference_data(obj, *args, **kwargs)
    try:
        from pyro.infer import MCMC
    except ImportError:  # pragma: no cover
        MCMC = ()
    if isinstance(obj, MCMC):
        return mcmc_inference_data(obj, *args, **kwargs)
    return None
