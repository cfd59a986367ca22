"""ppl_diffusion: Bayesian inverse problems with diffusion-model priors, native to Pyro and ArviZ."""
from .schedules import VPSchedule, VESchedule, EDMSchedule, time_grid
from .denoisers import Denoiser, UNetDenoiser, CallableDenoiser
from .models import DiffusionPrior, GaussianMeasurement, GaussianMixture
from .inference.problem import Problem

__version__ = "0.1.0"


def load_prior(name_or_path="digits", **kwargs):
    """Load a shipped prior by name, a local diffusers folder, or a hub id (see ``models.zoo``)."""
    from .models.zoo import load_prior as _load

    return _load(name_or_path, **kwargs)


def to_inference_data(obj, *args, **kwargs):
    """Convert solver output to ArviZ ``InferenceData``: a ``Draws``, an ``SMCResult`` or a Pyro
    ``MCMC`` run (``to_inference_data(result, model, y=y)`` adds the predictive groups where the
    result does not carry its model; see ``ppl_diffusion.idata``), or tensors / dicts of them
    (``ppl_diffusion.diagnostics.to_inference_data``)."""
    from .diagnostics import to_inference_data as _to
    from .idata import convert

    out = convert(obj, *args, **kwargs)
    return out if out is not None else _to(obj, *args, **kwargs)


__all__ = ["VPSchedule", "VESchedule", "EDMSchedule", "time_grid", "Denoiser", "UNetDenoiser",
           "CallableDenoiser", "DiffusionPrior", "GaussianMeasurement", "GaussianMixture", "Problem",
           "load_prior", "to_inference_data"]
