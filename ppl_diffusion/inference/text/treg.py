"""TReg, "Regularization by texts for latent diffusion inverse solvers" (Kim, Park, Chung & Ye,
ICLR 2025; Algorithm 1, with the schedule of the official code).

Every ``treg_every``-th step before ``treg_until * steps`` is a TReg step ``t -> s``:

1. ``z0_hat`` = the classifier-free guided estimate with the *current* null embedding ``u`` and the
   prompt ``c`` at the prior's guidance weight ``w``; ``eps_hat`` by Tweedie;
2. data consistency: ``x0y = argmin ||y - A x||^2 + lam ||x - Dec(z0_hat)||^2`` (``cg_iters`` CG
   iterations), ``z0y = Enc(x0y)``;
3. **adaptive negation** (``adaptive_negation``): ``null_steps`` Adam steps (lr ``null_lr``) on ``u``
   minimising ``mean_j <g(x0y), u_j>``, with ``g`` the unit-norm image feature of a CLIP-like model
   (width = the text width); ``u`` persists across steps (one per draw);
4. ``z0_bar = alpha_s^2 z0y + sigma_s^2 z0_hat``;
5. ``z_s = alpha_s z0_bar + sigma_s (sigma_s eps_hat + alpha_s xi)``, ``xi ~ N(0, I)``.

The other steps are guided DDIM steps. The result is the final ``z0``.

The adaptive-negation loss is linear in ``u``, so Adam moves each coordinate of ``u`` by about
``null_lr`` per iteration against ``sign(g)``, without bound over the run; the drift ``||u - u_0||``
per draw and the loss before / after are in ``Draws.extra`` (``null_drift``, ``an_loss``). With
``w = 1`` the guided estimate is the conditional one and ``u`` has no effect (standard semantics; the
official ``predict_noise`` at ``w = 1`` uses the null prompt only, which we do not copy).

Cost of a TReg step: 1 (w in {0, 1}) or 2 network passes, a decoder and an encoder pass, ``cg_iters``
(A, A^T) pairs, one CLIP image pass; other steps 1 or 2 network passes.
"""
from __future__ import annotations

import torch

from ..problem import Problem
from ..sampler import ddim_coefficients
from ..solver import check_int, check_number
from .base import TextSolver, data_consistency, guided

__all__ = ["TReg"]


class TReg(TextSolver):
    """TReg (see the module docstring).

    Args:
        model: Pyro model whose prior site is ``text_prior.condition(prompt, guidance)``, with a
            GaussianMeasurement of a linear operator.
        adaptive_negation: tune the null embedding against the CLIP-like image features (needs the
            text denoiser's ``clip`` or the ``clip`` option).
        null_lr: Adam learning rate of the null embedding.
        null_steps: Adam steps on the null embedding per TReg step.
        lam: weight of the proximity term of the data-consistency solve.
        cg_iters: conjugate-gradient iterations of that solve.
        treg_every: period of the TReg steps.
        treg_until: TReg steps only before this fraction of the run.
        clip: an image-text model with ``image_features(x)`` (default: the text denoiser's ``clip``).
        steps: reverse-diffusion steps.
        eta: DDIM noise of the plain steps.
        grid: time grid.
        form: data-fit form (unused; kept for the latent solver contract).
        prior_site: name of the prior site when the model has several.
        progress: show a progress bar (unused).
    """

    name = "TReg"

    def __init__(self, model, *, adaptive_negation: bool = True, null_lr: float = 8e-4, null_steps: int = 10,
                 lam: float = 1e-4, cg_iters: int = 5, treg_every: int = 3, treg_until: float = 0.85, clip=None,
                 steps: int = 100, eta: float = 0.0, grid: str = "uniform", form: str = "auto",
                 prior_site: str | None = None, progress: bool = False):
        self.adaptive_negation = bool(adaptive_negation)
        self.null_lr = check_number("null_lr", null_lr, "TReg", low=0.0)
        self.null_steps = check_int("null_steps", null_steps, "TReg", 0)
        self.lam = check_number("lam", lam, "TReg", low=0.0)
        self.cg_iters = check_int("cg_iters", cg_iters, "TReg")
        self.treg_every = check_int("treg_every", treg_every, "TReg")
        self.treg_until = check_number("treg_until", treg_until, "TReg", 0.0, 1.0)
        self.clip = clip
        super().__init__(model, steps=steps, eta=eta, grid=grid, form=form, prior_site=prior_site, progress=progress)

    def check(self, problem: Problem) -> None:
        super().check(problem)
        if self.adaptive_negation and self._clip(problem) is None:
            raise ValueError("TReg: adaptive_negation needs a CLIP-like model (image_features(x) of the text "
                             "width); pass clip=... or use a text prior that ships one (digits-text), or "
                             "adaptive_negation=False")

    def _clip(self, problem: Problem):
        return self.clip if self.clip is not None else getattr(self.prompted(problem).text, "clip", None)

    def run(self, problem: Problem, n: int, generator=None) -> torch.Tensor:
        pd = self.prompted(problem)
        text, w = pd.text, pd.guidance
        ae = problem.prior.autoencoder
        times, alphas, sigmas = self.coefficients(problem)
        z = self.initial_state(problem, n, generator)
        dt = z.dtype
        c = pd.embedding.to(dt)
        u0 = pd.null.to(dt).expand((n,) + tuple(pd.null.shape)).clone()
        u = u0.clone().requires_grad_(True)
        opt = torch.optim.Adam([u], lr=self.null_lr) if self.adaptive_negation and self.null_steps else None
        clip = self._clip(problem) if opt is not None else None
        an_first, an_last = None, None
        for i in range(self.steps):
            t = times[i].to(dt)
            a_t, s_t, a_s, s_s = alphas[i], sigmas[i], alphas[i + 1], sigmas[i + 1]
            with torch.no_grad():
                x0 = guided(text, z, t, c, u.detach(), w)
                eps = (z - a_t * x0) / s_t
                if i % self.treg_every == 0 and i < self.treg_until * self.steps:
                    x0y = data_consistency(problem, ae.decode(x0), self.lam, self.cg_iters)
                    z0y = ae.encode(x0y)
                    if opt is not None:
                        feats = clip.image_features(x0y).detach().to(dt)  # (n, d)
                        with torch.enable_grad():
                            for _ in range(self.null_steps):
                                loss = (u * feats[:, None, :]).sum(-1).mean(-1)  # mean_j <g, u_j> per draw
                                an_first = loss.detach() if an_first is None else an_first
                                opt.zero_grad()
                                loss.sum().backward()
                                opt.step()
                            an_last = (u.detach() * feats[:, None, :]).sum(-1).mean(-1)
                    zbar = a_s**2 * z0y + s_s**2 * x0
                    xi = torch.randn(z.shape, generator=generator, dtype=dt)
                    z = a_s * zbar + s_s * (s_s * eps + a_s * xi)
                else:
                    c_eps, c_noise = ddim_coefficients(a_t, s_t, a_s, s_s, self.eta)
                    z = a_s * x0 + c_eps * eps
                    if float(c_noise) > 0:
                        z = z + c_noise * torch.randn(z.shape, generator=generator, dtype=dt)
        drift = (u.detach() - u0).flatten(1).norm(dim=1)
        self._stats = {"null_drift": drift, "an_loss": (an_first, an_last), "null_final": u.detach()}
        return z.detach()
