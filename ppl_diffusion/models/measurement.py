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
    ``event_shape = operator.out_shape``. ``noise_std`` is a non-negative number (0 = noiseless; then
    only sampling and the solvers that support noiseless problems work, not ``log_prob``) or a tensor:
    a scalar tensor keeps its gradient (an inferred ``sigma`` site), a tensor of shape broadcastable to
    ``x``'s batch shape holds one level per measurement / sample (solvers that need one number say so).
    """

    arg_constraints: dict = {}
    support = constraints.real
    has_rsample = True

    def __init__(self, operator, x: torch.Tensor, noise_std, validate_args=None):
        from .operators import Operator

        if not isinstance(operator, Operator):
            raise ValueError(f"operator must be a ppl_diffusion Operator, got {type(operator).__name__}")
        scale = noise_std
        if not isinstance(scale, torch.Tensor):
            scale = torch.tensor(float(noise_std), dtype=torch.float64)
        if scale.is_complex() or (not scale.requires_grad and (not bool(torch.isfinite(scale.detach()).all())
                                                                or bool((scale.detach() < 0).any()))):
            # a level that carries gradients is a latent site under inference (an HMC / NUTS proposal):
            # an overflow to inf or 0 there gets a non-finite log-density, which the kernel rejects
            raise ValueError(f"noise_std must be finite and >= 0, got {noise_std}")
        operator.check_input(x)
        n_in = len(operator.in_shape)
        x_batch = x.shape[: x.dim() - n_in]
        try:
            batch_shape = torch.broadcast_shapes(x_batch, scale.shape)
        except RuntimeError:
            raise ValueError(
                f"noise_std of shape {tuple(scale.shape)} does not broadcast against the batch shape "
                f"{tuple(x_batch)} of x: a tensor noise_std holds one level per measurement / sample "
                "(right-aligned with x's batch dims), not per pixel") from None
        self.operator, self.x = operator, x
        #: the noise level as a tensor (gradients kept: a latent ``sigma`` site may be inferred)
        self.scale = scale.to(dtype=x.dtype, device=x.device) if x.is_floating_point() else scale
        #: a Python float when the level is one number, else the (detached) tensor of levels
        self.noise_std = float(scale.detach()) if scale.numel() == 1 else scale.detach()
        super().__init__(batch_shape, torch.Size(operator.out_shape), validate_args=False)

    @property
    def is_scalar_noise(self) -> bool:
        return not isinstance(self.noise_std, torch.Tensor)

    def _scale_b(self) -> torch.Tensor:
        """``scale`` broadcastable against ``(*batch, *event)``."""
        return self.scale.reshape(tuple(self.scale.shape) + (1,) * len(self.event_shape))

    @property
    def loc(self) -> torch.Tensor:
        return self.operator(self.x)

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        x = self.x.expand(batch_shape + torch.Size(self.operator.in_shape))
        scale = self.scale if self.scale.numel() == 1 else self.scale.expand(batch_shape)
        return GaussianMeasurement(self.operator, x, scale)

    def check_observation(self, y: torch.Tensor) -> torch.Tensor:
        """Validate an observation: shape ``(*, *out_shape)`` and finite values."""
        if not isinstance(y, torch.Tensor):
            raise ValueError(f"y must be a tensor, got {type(y).__name__}")
        self.operator.check_output(y)
        return y

    def rsample(self, sample_shape=torch.Size()):
        loc = self.loc
        shape = torch.Size(sample_shape) + torch.broadcast_shapes(loc.shape, self.batch_shape + self.event_shape)
        z = torch.randn(shape, dtype=loc.dtype, device=loc.device)
        if self.is_scalar_noise and not self.scale.requires_grad:
            return loc.expand(shape) + self.noise_std * z
        return loc.expand(shape) + self._scale_b() * z

    def log_prob(self, y: torch.Tensor) -> torch.Tensor:
        if not self.scale.requires_grad and bool((self.scale.detach() == 0).any()):
            raise ValueError("log_prob of a noiseless GaussianMeasurement (noise_std=0) is not defined")
        self.check_observation(y)
        n_out = len(self.event_shape)
        dims = tuple(range(-n_out, 0))
        m = float(torch.Size(self.event_shape).numel())
        if self.is_scalar_noise and not self.scale.requires_grad:  # a fixed number: float arithmetic
            r = (y - self.loc) / self.noise_std
            return -0.5 * (r**2).sum(dims) - m * (math.log(self.noise_std) + 0.5 * math.log(2 * math.pi))
        r = (y - self.loc) / self._scale_b()
        return -0.5 * (r**2).sum(dims) - m * (torch.log(self.scale) + 0.5 * math.log(2 * math.pi))
