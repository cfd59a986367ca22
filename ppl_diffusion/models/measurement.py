"""``GaussianMeasurement``: ``y ~ N(A(x), noise_std^2 I)`` as a Pyro distribution that keeps the
operator and the noise level visible to solvers."""
from __future__ import annotations

import math

import torch
from pyro.distributions import TorchDistribution
from torch.distributions import constraints

__all__ = ["GaussianMeasurement"]


class GaussianMeasurement(TorchDistribution):
    """``y = A(x) + noise_std * n`` with ``n ~ N(0, I)``.

    ``x`` has shape ``(*batch, *operator.in_shape)``; the distribution has ``batch_shape = batch`` and
    ``event_shape = operator.out_shape``. ``noise_std`` is a non-negative float (0 = noiseless; then
    only sampling and the solvers that support noiseless problems work, not ``log_prob``).
    """

    arg_constraints: dict = {}
    support = constraints.real
    has_rsample = True

    def __init__(self, operator, x: torch.Tensor, noise_std, validate_args=None):
        from .operators import Operator

        if not isinstance(operator, Operator):
            raise ValueError(f"operator must be a ppl_diffusion Operator, got {type(operator).__name__}")
        noise = float(noise_std) if not isinstance(noise_std, torch.Tensor) or noise_std.numel() == 1 else None
        if noise is None:
            raise ValueError("noise_std must be a scalar")
        if not math.isfinite(noise) or noise < 0:
            raise ValueError(f"noise_std must be a finite number >= 0, got {noise}")
        operator.check_input(x)
        self.operator, self.x, self.noise_std = operator, x, noise
        n_in = len(operator.in_shape)
        batch_shape = x.shape[: x.dim() - n_in]
        super().__init__(batch_shape, torch.Size(operator.out_shape), validate_args=False)

    @property
    def loc(self) -> torch.Tensor:
        return self.operator(self.x)

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        x = self.x.expand(batch_shape + torch.Size(self.operator.in_shape))
        return GaussianMeasurement(self.operator, x, self.noise_std)

    def check_observation(self, y: torch.Tensor) -> torch.Tensor:
        """Validate an observation: shape ``(*, *out_shape)`` and finite values."""
        if not isinstance(y, torch.Tensor):
            raise ValueError(f"y must be a tensor, got {type(y).__name__}")
        self.operator.check_output(y)
        return y

    def rsample(self, sample_shape=torch.Size()):
        loc = self.loc
        shape = torch.Size(sample_shape) + loc.shape
        return loc.expand(shape) + self.noise_std * torch.randn(shape, dtype=loc.dtype, device=loc.device)

    def log_prob(self, y: torch.Tensor) -> torch.Tensor:
        if self.noise_std == 0:
            raise ValueError("log_prob of a noiseless GaussianMeasurement (noise_std=0) is not defined")
        self.check_observation(y)
        r = (y - self.loc) / self.noise_std
        n_out = len(self.event_shape)
        dims = tuple(range(-n_out, 0))
        m = float(torch.Size(self.event_shape).numel())
        return -0.5 * (r**2).sum(dims) - m * (math.log(self.noise_std) + 0.5 * math.log(2 * math.pi))
