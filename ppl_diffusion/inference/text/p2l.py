"""P2L, "Prompt-tuning latent diffusion models for inverse problems" (Chung, Ye, Milanfar & Delbracio,
2023; survey eqs. 3.83-3.86 of Daras et al. 2024).

The prompt embedding is a variable: at each step ``t -> s``

1. **prompt update**: ``prompt_steps`` Adam steps (lr ``prompt_lr``) on the embedding ``c`` (``(L, d)``,
   one per draw, started at the prompt of the prior) minimising ``||y - A Dec(D(z_t, t, c))||^2`` with
   the *conditional* denoiser (guidance 1 on ``c``);
2. **sampling**: ``z0_hat`` = the guided estimate with ``(null, c*)`` at the prior's guidance weight,
   ``z'_s = DDIM_eta(z_t, z0_hat)``;
3. **latent DPS**: ``z_s = z'_s - zeta grad_{z_t} ||y - A Dec(z0_hat)||``;
4. **projection** (the paper's Algorithm; every ``project_every`` steps, 0 = never):
   ``x* = argmin ||y - A x||^2 + lam ||x - Dec(z0_hat)||^2`` (CG), ``z0_hat <- Enc(x*)`` and
   ``z_s = alpha_s z0_hat + sigma_s eps_hat`` (the DPS move of that step is replaced).

P2L is empirical Bayes on the prompt in spirit: the prompt drifts towards embeddings that explain ``y``.
``Draws.extra["prompt_trajectory"]`` holds the embeddings after each step ``(steps, n, L, d)``.
Defaults: lr 1e-4, one Adam step per diffusion step (the reimplementation in the TReg code), projection
with ``lam = 1e-4`` every step. A guidance weight of exactly 1 in the prior means the tuned ``c`` alone
(the official reimplementation's ``w = 1`` uses the null prompt only; we do not copy that).

Cost per step: ``prompt_steps + 1`` (w = 1) or ``prompt_steps + 2`` network passes, as many decoder
passes with their backward, an encoder pass and ``cg_iters`` (A, A^T) pairs on projection steps.
"""
from __future__ import annotations

import torch

from ..problem import Problem
from ..sampler import ddim_coefficients
from ..solver import check_int, check_number
from .base import TextSolver, data_consistency, guided, residual_norm

__all__ = ["P2L"]


class P2L(TextSolver):
    """P2L (see the module docstring).

    Args:
        model: Pyro model whose prior site is ``text_prior.condition(prompt, guidance)``, with a
            GaussianMeasurement of a linear operator.
        prompt_steps: Adam steps on the prompt embedding per diffusion step (K; 0 freezes the prompt).
        prompt_lr: Adam learning rate of the prompt embedding.
        zeta: latent-DPS step size (unit weight in the reference code).
        project_every: projection period in steps (0: no projection).
        lam: weight of the proximity term of the projection.
        cg_iters: conjugate-gradient iterations of the projection.
        steps: reverse-diffusion steps.
        eta: DDIM noise (0: deterministic DDIM).
        grid: time grid.
        form: data-fit form; P2L uses the residual norm (``"auto"`` or ``"norm"``).
        prior_site: name of the prior site when the model has several.
        progress: show a progress bar (unused: the loop is short).
    """

    name = "P2L"

    def __init__(self, model, *, prompt_steps: int = 1, prompt_lr: float = 1e-4, zeta: float = 1.0,
                 project_every: int = 1, lam: float = 1e-4, cg_iters: int = 5, steps: int = 200, eta: float = 0.0,
                 grid: str = "uniform", form: str = "auto", prior_site: str | None = None, progress: bool = False):
        self.prompt_steps = check_int("prompt_steps", prompt_steps, self.name, 0)
        self.prompt_lr = check_number("prompt_lr", prompt_lr, self.name, low=0.0)
        self.zeta = check_number("zeta", zeta, self.name, low=0.0)
        self.project_every = check_int("project_every", project_every, self.name, 0)
        self.lam = check_number("lam", lam, self.name, low=0.0)
        self.cg_iters = check_int("cg_iters", cg_iters, self.name)
        super().__init__(model, steps=steps, eta=eta, grid=grid, form=form, prior_site=prior_site, progress=progress)

    def run(self, problem: Problem, n: int, generator=None) -> torch.Tensor:
        pd = self.prompted(problem)
        text, w = pd.text, pd.guidance
        ae = problem.prior.autoencoder
        times, alphas, sigmas = self.coefficients(problem)
        z = self.initial_state(problem, n, generator)
        dt = z.dtype
        c = pd.embedding.to(dt).expand((n,) + tuple(pd.embedding.shape)).clone().requires_grad_(True)
        null = pd.null.to(dt)
        opt = torch.optim.Adam([c], lr=self.prompt_lr) if self.prompt_steps and self.prompt_lr > 0 else None
        traj = []
        for i in range(self.steps):
            t = times[i].to(dt)
            a_t, s_t, a_s, s_s = alphas[i], sigmas[i], alphas[i + 1], sigmas[i + 1]
            if opt is not None:
                for _ in range(self.prompt_steps):
                    x0c = text.forward_embedded(z, t, c)
                    loss = (residual_norm(problem, ae.decode(x0c)) ** 2).sum()
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
            cs = c.detach()
            traj.append(cs.clone())
            zt = z.detach().requires_grad_(True)
            with torch.enable_grad():
                x0 = guided(text, zt, t, cs, null, w)
                eps = (zt - a_t * x0) / s_t
                (grad,) = torch.autograd.grad(residual_norm(problem, ae.decode(x0)).sum(), zt)
            x0, eps = x0.detach(), eps.detach()
            c_eps, c_noise = ddim_coefficients(a_t, s_t, a_s, s_s, self.eta)
            noise = c_noise * torch.randn(z.shape, generator=generator, dtype=dt) if float(c_noise) > 0 else 0.0
            if self.project_every and i % self.project_every == 0:
                with torch.no_grad():
                    x0 = ae.encode(data_consistency(problem, ae.decode(x0), self.lam, self.cg_iters))
                z = a_s * x0 + c_eps * eps + noise
            else:
                z = a_s * x0 + c_eps * eps + noise - self.zeta * grad
            z = z.detach()
        self._stats = {"prompt_trajectory": torch.stack(traj), "prompt_final": c.detach()}
        return z
