"""Consistency models (Song, Dhariwal, Chen, Sutskever, "Consistency models", ICML 2023).

A consistency function maps any point of a probability-flow ODE trajectory to its origin: in VE
coordinates ``x_sigma = x0 + sigma * eps`` (``sigma`` = the library's ``rho = sigma_t / alpha_t``),
``f(x_sigma, sigma) = x_{sigma_min}`` for every ``sigma`` on the trajectory. Sampling is one call,
``x = f(sigma_max * z, sigma_max)`` with ``z ~ N(0, I)``.

Parametrisation. The paper (its Eq. 7 and Appendix C) writes ``f = c_skip(sigma) x + c_out(sigma) F(x, sigma)``
with ``c_skip = sigma_d^2 / ((sigma - sigma_min)^2 + sigma_d^2)`` so that ``f(x, sigma_min) = x``.
Here the free network is an x0-predicting denoiser ``D_theta`` and

    f(x, sigma) = c_skip(sigma) x + (1 - c_skip(sigma)) D_theta(x, sigma),

which keeps the boundary condition exactly (``1 - c_skip`` vanishes at ``sigma_min``) and lets
``D_theta`` start from the teacher diffusion model's own network, in the teacher's input and time
conventions (:class:`UNetX0`). This is our design choice, not the paper's ``c_out``.

With that start, the constants matter. ``D(x, sigma) = x - sigma * eps(...)`` multiplies the
network's error by ``sigma``, so the teacher's one-step estimate at ``sigma = 80`` is pixel noise;
and with ``sigma_data = 0.5`` the initial ``f = c_skip x + (1 - c_skip) D`` keeps about half of the
noisy input at ``sigma ~ 0.5``, so early distillation targets carry that noise. The shipped
``digits_cm`` therefore uses ``sigma_max = 10`` and ``sigma_data = 0.05`` (the teacher's Heun ODE
started at ``10 z`` is as good as the one started at ``80 z``; measurements in
:mod:`ppl_diffusion.training.consistency`). Both constants are read from ``consistency.json``.

:func:`gaussian_consistency` is the closed-form consistency function of a Gaussian prior
``N(mu, C)`` (the probability-flow ODE of a Gaussian is linear):
``f(x, sigma) = mu + (C + sigma_min^2 I)^{1/2} (C + sigma^2 I)^{-1/2} (x - mu)``.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from pyro.distributions import TorchDistribution
from torch import nn
from torch.distributions import constraints

__all__ = ["karras_sigmas", "c_skip", "ConsistencyModel", "ConsistencyPrior", "UNetX0", "AffineTable",
           "gaussian_consistency", "gaussian_consistency_model",
           "save_consistency", "load_consistency", "CONSISTENCY_DIR"]

CONSISTENCY_DIR = Path(__file__).resolve().parent.parent / "weights"


def karras_sigmas(n: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0,
                  dtype=torch.float64) -> torch.Tensor:
    """The ``n``-point Karras et al. (2022, Eq. 5) grid, DESCENDING from ``sigma_max`` to ``sigma_min``."""
    i = torch.arange(n, dtype=torch.float64) / max(n - 1, 1)
    s = (sigma_max ** (1 / rho) + i * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return s.to(dtype)


def c_skip(sigma, sigma_min: float, sigma_data: float):
    """``sigma_d^2 / ((sigma - sigma_min)^2 + sigma_d^2)`` (consistency models, Appendix C)."""
    return sigma_data**2 / ((sigma - sigma_min) ** 2 + sigma_data**2)


class ConsistencyModel(nn.Module):
    """``f(x, sigma) = c_skip x + (1 - c_skip) net(x, sigma)`` on VE inputs ``x = x0 + sigma * eps``.

    Args:
        net: module ``net(x, sigma) -> x0`` estimate (``sigma`` a tensor of shape ``(batch,)``).
        event_shape: shape of one sample.
        sigma_min, sigma_max, sigma_data: the consistency-model constants (paper: 0.002, 80, 0.5).
        clip_x0: clip ``net``'s x0 estimate to [-1, 1] (data in [-1, 1]; at ``sigma = 80`` an epsilon
            network's x0 estimate ``x - sigma eps_hat`` amplifies its error 80-fold).
    """

    def __init__(self, net: nn.Module, event_shape, sigma_min: float = 0.002, sigma_max: float = 80.0,
                 sigma_data: float = 0.5, clip_x0: bool = False):
        super().__init__()
        self.net = net
        self.clip_x0 = bool(clip_x0)
        self.event_shape = torch.Size(event_shape)
        self.sigma_min, self.sigma_max, self.sigma_data = float(sigma_min), float(sigma_max), float(sigma_data)
        self.nfe = 0
        self.sample_evals = 0

    def forward(self, x: torch.Tensor, sigma) -> torch.Tensor:
        ne = len(self.event_shape)
        batch = x.shape[: x.dim() - ne]
        flat = x.reshape((-1,) + tuple(self.event_shape))
        s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
        s = s.expand(batch).reshape(-1) if s.dim() else s.expand(flat.shape[0])
        self.nfe += 1
        self.sample_evals += flat.shape[0]
        cs = c_skip(s, self.sigma_min, self.sigma_data).reshape((-1,) + (1,) * ne)
        d = self.net(flat, s)
        if self.clip_x0:
            d = d.clamp(-1.0, 1.0)
        return (cs * flat + (1 - cs) * d).reshape(x.shape)

    def sample(self, n: int, generator: torch.Generator | None = None, steps: int = 1, dtype=None) -> torch.Tensor:
        """``n`` samples: ``f(sigma_max z, sigma_max)`` and, for ``steps > 1``, the paper's multistep
        sampler (Algorithm 1) re-noising to ``steps - 1`` Karras levels between ``sigma_max`` and ``sigma_min``."""
        ref = next(iter(list(self.parameters()) + list(self.buffers())))
        dtype, dev = dtype or ref.dtype, ref.device
        with torch.no_grad():
            z = torch.randn((n,) + tuple(self.event_shape), generator=generator, dtype=dtype, device=dev)
            x = self(self.sigma_max * z, self.sigma_max)
            for s in karras_sigmas(steps + 1, self.sigma_min, self.sigma_max)[1:-1].tolist():
                z = torch.randn(x.shape, generator=generator, dtype=dtype, device=dev)
                x = self(x + math.sqrt(max(s**2 - self.sigma_min**2, 0.0)) * z, s)
        return x

    def prior(self, steps: int = 1) -> ConsistencyPrior:
        """This model as a Pyro distribution (its ``sample`` is :meth:`sample`)."""
        return ConsistencyPrior(self, steps)


class ConsistencyPrior(TorchDistribution):
    """A :class:`ConsistencyModel`'s sampler as a Pyro distribution (``log_prob`` is not available)."""

    arg_constraints: dict = {}
    has_rsample = False

    def __init__(self, model: ConsistencyModel, steps: int = 1, batch_shape=torch.Size(), validate_args=None):
        self.model, self.steps = model, int(steps)
        super().__init__(torch.Size(batch_shape), model.event_shape, validate_args=False)

    @property
    def support(self):
        return constraints.independent(constraints.real, len(self.event_shape))

    def sample(self, sample_shape=torch.Size(), generator=None):
        shape = torch.Size(sample_shape) + self.batch_shape
        n = int(torch.Size(shape).numel())
        return self.model.sample(n, generator, self.steps).reshape(shape + self.event_shape)

    def log_prob(self, x):
        raise NotImplementedError("a consistency model has no tractable density; use it as a generator "
                                  "(ppl_diffusion.inference.optimise.ConsistentCSGM)")


class UNetX0(nn.Module):
    """An x0 network in VE form from an epsilon-predicting diffusers ``UNet2DModel`` trained on a VP
    schedule (the shipped priors): ``D(x, sigma) = x - sigma * eps(x / sqrt(1 + sigma^2), k(sigma))``
    with ``k`` the model timestep at which the schedule's ``sigma_t / alpha_t`` equals ``sigma``."""

    def __init__(self, unet: nn.Module, schedule):
        super().__init__()
        self.unet, self.schedule = unet, schedule

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        s = sigma.to(torch.float64)
        k = self.schedule.model_timestep(self.schedule.t_of_rho(s)).to(torch.float32)
        sc = sigma.reshape((-1,) + (1,) * (x.dim() - 1)).to(x.dtype)
        eps = self.unet(x / torch.sqrt(1 + sc**2), k).sample.to(x.dtype)
        return x - sc * eps


class AffineTable(nn.Module):
    """``net(x, sigma_n) = a_n + B_n x / sqrt(sigma_n^2 + sigma_data^2)`` with one affine map per level of
    a fixed grid (a student that can represent the exact consistency function of a Gaussian prior at
    every grid level; tests). The input scaling is the paper's ``c_in``."""

    def __init__(self, sigmas: torch.Tensor, dim: int, sigma_data: float = 0.5, dtype=torch.float64):
        super().__init__()
        self.sigma_data = float(sigma_data)
        self.register_buffer("sigmas", torch.as_tensor(sigmas, dtype=dtype))
        self.a = nn.Parameter(torch.zeros(len(sigmas), dim, dtype=dtype))
        self.B = nn.Parameter(torch.zeros(len(sigmas), dim, dim, dtype=dtype))

    def forward(self, x, sigma):
        idx = (sigma.reshape(-1, 1).to(self.sigmas.dtype) - self.sigmas).abs().argmin(-1)
        c_in = 1 / torch.sqrt(self.sigmas[idx] ** 2 + self.sigma_data**2)
        return self.a[idx] + torch.einsum("nij,nj->ni", self.B[idx], x * c_in[:, None])


def gaussian_consistency(mean: torch.Tensor, cov: torch.Tensor, sigma_min: float = 0.002):
    """The exact consistency function ``f(x, sigma)`` of the prior ``N(mean, cov)`` (a closure)."""
    lam, U = torch.linalg.eigh(cov)

    def f(x, sigma):
        s = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, 1)
        scale = torch.sqrt((lam + sigma_min**2) / (lam + s**2))
        return mean + ((x - mean) @ U * scale) @ U.T

    return f


# -- the shipped consistency model ----------------------------------------------------------------
def save_consistency(model: ConsistencyModel, folder, record: dict) -> Path:
    """Write ``model`` (a :class:`UNetX0` consistency model) as ``unet/`` (diffusers, safetensors),
    ``consistency.json`` (constants and the teacher's scheduler config) and ``training.json``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.net.unet.save_pretrained(folder / "unet", safe_serialization=True)
    cfg = dict(sigma_min=model.sigma_min, sigma_max=model.sigma_max, sigma_data=model.sigma_data,
               clip_x0=model.clip_x0,
               parametrisation="f = c_skip x + (1 - c_skip) D(x, sigma); D from an epsilon UNet in VP form",
               teacher_scheduler=record.get("teacher_scheduler"))
    (folder / "consistency.json").write_text(json.dumps(cfg, indent=1) + "\n")
    (folder / "training.json").write_text(json.dumps(record, indent=1) + "\n")
    return folder


def load_consistency(name_or_path: str = "digits_cm", device=None, dtype=None) -> ConsistencyModel:
    """Load a consistency model: a shipped name (``"digits_cm"``: distilled from the ``digits`` prior)
    or a folder written by :func:`save_consistency`. Parameters come back frozen, in eval mode."""
    from diffusers import UNet2DModel

    from ..models.zoo import _load_state_dict, _read_json
    from ..schedules import VPSchedule

    folder = Path(name_or_path)
    if not folder.is_dir():
        folder = CONSISTENCY_DIR / str(name_or_path)
    if not (folder / "consistency.json").is_file():
        raise ValueError(f"no consistency model at {name_or_path!r} (looked for {folder}/consistency.json); "
                         "the shipped one is 'digits_cm' (python -m ppl_diffusion.training.consistency)")
    cfg = _read_json(folder / "consistency.json", "consistency config")
    unet = UNet2DModel.from_config(_read_json(folder / "unet" / "config.json", "UNet config"))
    unet.load_state_dict(_load_state_dict(folder / "unet" / "diffusion_pytorch_model.safetensors"), strict=True)
    unet.requires_grad_(False).eval()
    schedule = VPSchedule.from_scheduler_config(cfg["teacher_scheduler"])
    c, size = int(unet.config.in_channels), int(unet.config.sample_size)
    model = ConsistencyModel(UNetX0(unet, schedule), (c, size, size), cfg["sigma_min"], cfg["sigma_max"],
                             cfg["sigma_data"], clip_x0=bool(cfg.get("clip_x0", False)))
    if device is not None or dtype is not None:
        model.to(device=device, dtype=dtype)
    return model.eval()


class _ExactGaussianNet(nn.Module):
    """``net`` such that ``c_skip x + (1 - c_skip) net`` is the exact consistency function of ``N(mean, cov)``."""

    def __init__(self, mean, cov, sigma_min, sigma_data):
        super().__init__()
        self.f = gaussian_consistency(mean, cov, sigma_min)
        self.sigma_min, self.sigma_data = sigma_min, sigma_data
        self.register_buffer("anchor", torch.zeros(1, dtype=mean.dtype))  # gives the module a dtype

    def forward(self, x, sigma):
        cs = c_skip(sigma, self.sigma_min, self.sigma_data).reshape(-1, 1)
        return (self.f(x, sigma) - cs * x) / (1 - cs).clamp(min=1e-300)


def gaussian_consistency_model(mean: torch.Tensor, cov: torch.Tensor, sigma_min: float = 0.002,
                               sigma_max: float = 80.0, sigma_data: float = 0.5) -> ConsistencyModel:
    """A :class:`ConsistencyModel` that IS the exact consistency function of ``N(mean, cov)`` (tests, E4)."""
    return ConsistencyModel(_ExactGaussianNet(mean, cov, sigma_min, sigma_data), (mean.numel(),), sigma_min,
                            sigma_max, sigma_data)
