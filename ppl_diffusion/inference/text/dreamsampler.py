"""DreamSampler, "Unifying diffusion sampling and score distillation for image manipulation" (Kim,
Park & Ye, ECCV 2024), its text-guided inpainting sampler (``dream_inpaint`` of the official code).

The source estimate uses the prior's own prompt and guidance (``prior.condition(...)``; the null
prompt for an unconditioned prior); ``target_prompt`` is the text of the edited region, a latent mask
``region`` (1 = keep the data-consistent estimate, 0 = text-guided). Every ``distill_every``-th step
before ``distill_until * steps`` is a **distillation step** ``t -> s`` (with ``abar_t = alpha_t^2``):

1. ``z0_u``, ``eps_u`` from the source; ``z0_c`` = the conditional estimate at the target prompt;
2. ``z0y = Enc(argmin ||y - A x||^2 + lam ||x - Dec(z0_u)||^2)`` (``cg_iters`` CG iterations);
3. ``z0 = abar_t z0y + (1 - abar_t) z0_u``;
4. ``z0 <- m z0 + (1 - m) ((1 - abar_t) z0 + abar_t z0_c)``;
5. ``z_s = alpha_s z0 + sigma_s (sigma_t eps_u + alpha_t xi)`` (the current ``t`` in the mixing, as
   in the code).

The other steps are latent DPS steps: ``z_s = alpha_s z0_u + sigma_s eps_u - zeta alpha_s
grad_{z_t} ||y - A Dec(z0_u)||``. The start ``z_T`` is the deterministic DDIM inversion of
``Enc(A^T y)`` with the source estimate (``init="inversion"``, the code's choice, ``steps`` extra
network passes) or a prior draw (``init="prior"``). One region only (the code allows several). The
code's ``cfg_guidance`` argument is unused by ``dream_inpaint``; there is no such option here.

Cost: distillation steps 2 network passes (+1 with a guided source), a decoder and an encoder pass
and ``cg_iters`` (A, A^T) pairs; DPS steps 1 (or 2) network passes and a backward pass through the
network and the decoder.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..problem import Problem
from ..solver import check_choice, check_int, check_number
from .base import TextSolver, data_consistency, guided, residual_norm

__all__ = ["DreamSampler", "latent_region"]


def latent_region(problem: Problem, latent_shape) -> torch.Tensor:
    """The latent mask of an inpainting measurement: 1 where the latent cell's pixels are mostly
    observed (average-pooled mask >= 1/2), 0 under the hole. Non-spatial latents: all 0 (the whole
    latent is text-guided)."""
    op = problem.gaussian("DreamSampler").operator
    mask = getattr(op, "mask", None)
    if mask is None or len(latent_shape) != 3 or mask.dim() < 2:
        return torch.zeros(tuple(latent_shape), dtype=problem.dtype)
    m = mask.to(problem.dtype).reshape((-1,) + tuple(mask.shape[-2:]))[:1][None]
    pooled = F.adaptive_avg_pool2d(m, tuple(latent_shape[-2:]))[0, 0]
    return (pooled >= 0.5).to(problem.dtype).expand(tuple(latent_shape)).clone()


class DreamSampler(TextSolver):
    """DreamSampler text-guided inpainting (see the module docstring).

    Args:
        model: Pyro model whose prior site is a text-conditioned LatentDiffusionPrior (its prompt is the
            source), with a GaussianMeasurement of a linear operator.
        target_prompt: text of the edited region (``None``: the prior's prompt).
        region: latent mask (1 keep, 0 text-guided), ``None`` = from the inpainting mask (see
            :func:`latent_region`).
        zeta: step size of the DPS steps (times alpha_s).
        lam: weight of the proximity term of the data-consistency solve.
        cg_iters: conjugate-gradient iterations of that solve.
        distill_every: period of the distillation steps (0: DPS steps only).
        distill_until: distillation steps only before this fraction of the run.
        init: ``"inversion"`` (DDIM inversion of Enc(A^T y)) or ``"prior"``.
        steps: reverse-diffusion steps.
        eta: unused (DreamSampler's steps are deterministic except the xi of step 5).
        grid: time grid.
        form: data-fit form (unused).
        prior_site: name of the prior site when the model has several.
        progress: show a progress bar (unused).
    """

    name = "DreamSampler"

    def __init__(self, model, *, target_prompt: str | None = None, region=None, zeta: float = 1.0,
                 lam: float = 1e-4, cg_iters: int = 10, distill_every: int = 3, distill_until: float = 0.85,
                 init: str = "inversion", steps: int = 200, eta: float = 0.0, grid: str = "uniform",
                 form: str = "auto", prior_site: str | None = None, progress: bool = False):
        self.target_prompt = target_prompt
        self.region = region
        self.zeta = check_number("zeta", zeta, "DreamSampler", low=0.0)
        self.lam = check_number("lam", lam, "DreamSampler", low=0.0)
        self.cg_iters = check_int("cg_iters", cg_iters, "DreamSampler")
        self.distill_every = check_int("distill_every", distill_every, "DreamSampler", 0)
        self.distill_until = check_number("distill_until", distill_until, "DreamSampler", 0.0, 1.0)
        self.init = check_choice("init", init, ("inversion", "prior"), "DreamSampler")
        super().__init__(model, steps=steps, eta=eta, grid=grid, form=form, prior_site=prior_site, progress=progress)

    def _invert(self, problem, source, times, alphas, sigmas, n):
        """Deterministic DDIM inversion of ``Enc(A^T y)`` up the grid; the noise estimate of a step is
        taken at its lower time (at its upper time when the lower one is 0)."""
        g = problem.gaussian("DreamSampler")
        ae = problem.prior.autoencoder
        with torch.no_grad():
            x = g.operator.adjoint(g.y.to(problem.dtype))
            z = ae.encode(x.expand((n,) + tuple(problem.event_shape)).contiguous())
            for i in range(self.steps, 0, -1):
                j = i if float(times[i]) > 0 else i - 1
                eps = (z - alphas[j] * source(z, times[j].to(z.dtype))) / sigmas[j]
                x0 = (z - sigmas[i] * eps) / alphas[i]
                z = alphas[i - 1] * x0 + sigmas[i - 1] * eps
        return z

    def run(self, problem: Problem, n: int, generator=None) -> torch.Tensor:
        pd = self.prompted(problem)
        text, w = pd.text, pd.guidance
        ae = problem.prior.autoencoder
        times, alphas, sigmas = self.coefficients(problem)
        dt = problem.dtype
        src_c, null = pd.embedding.to(dt), pd.null.to(dt)
        tgt = src_c if self.target_prompt is None else text.embed(self.target_prompt).detach().to(dt)

        def source(z, t):
            return guided(text, z, t, src_c, null, w)

        if self.init == "inversion":
            z = self._invert(problem, source, times, alphas, sigmas, n)
        else:
            z = self.initial_state(problem, n, generator)
        lshape = tuple(problem.prior.latent_shape)
        m = latent_region(problem, lshape) if self.region is None else torch.as_tensor(self.region, dtype=dt)
        distilled = 0
        for i in range(self.steps):
            t = times[i].to(dt)
            a_t, s_t, a_s, s_s = alphas[i], sigmas[i], alphas[i + 1], sigmas[i + 1]
            if self.distill_every and i % self.distill_every == 0 and i < self.distill_until * self.steps:
                with torch.no_grad():
                    x0u = source(z, t)
                    eps_u = (z - a_t * x0u) / s_t
                    x0c = text.forward_embedded(z, t, tgt)
                    z0y = ae.encode(data_consistency(problem, ae.decode(x0u), self.lam, self.cg_iters))
                    ab = a_t**2
                    zh = ab * z0y + (1 - ab) * x0u
                    zh = m * zh + (1 - m) * ((1 - ab) * zh + ab * x0c)
                    xi = torch.randn(z.shape, generator=generator, dtype=dt)
                    z = a_s * zh + s_s * (s_t * eps_u + a_t * xi)
                distilled += 1
            else:
                zt = z.detach().requires_grad_(True)
                with torch.enable_grad():
                    x0u = source(zt, t)
                    (grad,) = torch.autograd.grad(residual_norm(problem, ae.decode(x0u)).sum(), zt)
                eps_u = (zt - a_t * x0u) / s_t
                z = (a_s * x0u + s_s * eps_u - self.zeta * a_s * grad).detach()
        self._stats = {"distillation_steps": distilled, "region": m}
        return z
