"""The spectral (SVD) view of a linear-Gaussian problem, shared by the guides that work in the
singular basis of the operator (DDRM, DDNM+, RePaint, Score-SDE, Kadkhodaie-Simoncelli).

With ``A = U diag(s) V^T`` the measurement ``y = A x + sigma_y n`` reads, per coordinate of
``V^T x``, ``ybar_i = (U^T y)_i / s_i = (V^T x)_i + (sigma_y / s_i) n_i`` where ``s_i > 0``, and
says nothing about the others: the decomposition behind DDRM (Kawar et al., NeurIPS 2022)
and SNIPS (Kawar et al., NeurIPS 2021). An inpainting mask is the special case ``V = U = I`` (up
to a permutation) with ``s_i = 1`` on the known pixels.
"""
from __future__ import annotations

import torch

from ..models.operators import ZERO_SINGULAR_VALUE, nonzero_singular
from .problem import Problem

__all__ = ["SpectralView"]


class SpectralView:
    """Spectral coordinates of a linear-Gaussian problem with an SVD.

    ``fwd(x) = V^T x`` (``(B, D)``), ``inv(c) = V c``; ``obs`` marks the coordinates with a non-zero
    singular value (``s > rtol * max s``), ``s`` (``(D,)``, zero off ``obs``), ``ybar = U^T y / s`` on
    ``obs`` (0 elsewhere) and ``level = sigma_y / s`` (the noise level of ``ybar``; ``inf`` off ``obs``).
    ``rtol`` defaults to ``ppl_diffusion.models.operators.ZERO_SINGULAR_VALUE``.
    """

    def __init__(self, operator, y: torch.Tensor, noise_std: float, dtype, device,
                 rtol: float = ZERO_SINGULAR_VALUE):
        self.op = operator
        s = operator.singular_values.to(dtype=dtype, device=device)
        r = s.numel()
        D = operator.in_dim
        keep = nonzero_singular(s, rtol)
        s_safe = torch.where(keep, s, torch.ones_like(s))
        u = operator.Ut(y.to(dtype=dtype, device=device))[..., :r]
        self.obs = torch.zeros(D, dtype=torch.bool, device=device)
        self.obs[:r] = keep
        self.s = torch.zeros(D, dtype=dtype, device=device)
        self.s[:r] = torch.where(keep, s, torch.zeros_like(s))
        self.ybar = torch.zeros(u.shape[:-1] + (D,), dtype=dtype, device=device)
        self.ybar[..., :r] = torch.where(keep, u / s_safe, torch.zeros_like(u))
        self.noise_std = float(noise_std)
        lev = torch.full((D,), float("inf"), dtype=dtype, device=device)
        lev[:r] = torch.where(keep, self.noise_std / s_safe, torch.full_like(s, float("inf")))
        self.level = lev

    @classmethod
    def of(cls, problem: Problem, method: str = "this solver") -> SpectralView:
        """The view of ``problem`` (a ValueError naming ``method`` if its operator has no SVD)."""
        lg = problem.require_svd(method)
        return cls(lg.operator, lg.y, lg.noise_std, problem.dtype, problem.device)

    def fwd(self, x: torch.Tensor) -> torch.Tensor:
        return self.op.Vt(x)

    def inv(self, c: torch.Tensor) -> torch.Tensor:
        return self.op.V(c)

    def replace_known(self, x: torch.Tensor, alpha, sigma, generator=None) -> torch.Tensor:
        """``x`` with its observed coordinates replaced by the measurement noised to level
        ``(alpha, sigma)``: ``alpha ybar + sigma z`` (RePaint's and Score-SDE's replacement)."""
        c = self.fwd(x)
        z = torch.randn(c.shape, generator=generator, dtype=c.dtype, device=c.device)
        known = alpha * self.ybar + sigma * z
        return self.inv(torch.where(self.obs, known, c))
