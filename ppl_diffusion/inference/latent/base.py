"""Base class of the latent-diffusion solvers: the diffusion runs on ``z`` (the scaled latent of a
:class:`~ppl_diffusion.models.latent.LatentDiffusionPrior`), the likelihood is evaluated on
``x = Dec(z)``, and the draws returned are images ``x`` (their latents in ``Draws.extra["latents"]``).

The reverse-diffusion loop is the library's (:func:`~ppl_diffusion.inference.sampler.reverse_diffusion`)
run with the latent denoiser; each method is a :class:`~ppl_diffusion.inference.sampler.Hook` on it.
Cost: ``Draws.nfe_per_sample`` counts latent-denoiser evaluations per draw;
``extra["decoder_evals_per_sample"]`` / ``extra["encoder_evals_per_sample"]`` count the
autoencoder's (the final decoding included), and ``extra["network_calls_per_sample"]`` is their sum.
"""
from __future__ import annotations

import math

import torch
from pyro.poutine.runtime import get_plates

from ...schedules import GRID_KINDS, time_grid
from ..likelihood import per_sample_sq_norm
from ..problem import Problem
from ..sampler import Hook, reverse_diffusion, terminal_noise
from ..solver import Draws, Solver, check_choice, check_int, check_number, measure

__all__ = ["LatentSolver", "data_fit"]


def data_fit(problem: Problem, x: torch.Tensor, form: str) -> torch.Tensor:
    """Per-sample data-fit term to minimise: ``||y - A(x)||`` (``"norm"``), its square (``"sqnorm"``)
    or ``-log p(y | x)`` (``"loglik"``, any Pyro likelihood)."""
    if form == "loglik":
        return -problem.log_likelihood(x)
    g = problem.gaussian("the norm form")
    sq = per_sample_sq_norm(g.y - g.operator(x))
    return sq if form == "sqnorm" else torch.sqrt(sq.clamp(min=torch.finfo(sq.dtype).tiny))


class LatentSolver(Solver):
    """Base class (see the module docstring). Subclasses declare their options, call
    ``super().__init__`` and implement :meth:`make_hook` (or override :meth:`run`)."""

    name = "latent"
    family = "latent"
    latent_prior = True
    requires = ("likelihood",)

    def __init__(self, model, *, steps: int = 100, eta: float = 0.0, grid: str = "uniform", form: str = "auto",
                 prior_site: str | None = None, progress: bool = False):
        self.steps = check_int("steps", steps, self.name)
        self.eta = check_number("eta", eta, self.name, 0.0, 1.0)
        self.grid = check_choice("grid", grid, GRID_KINDS, self.name)
        self.form = check_choice("form", form, ("auto", "norm", "loglik"), self.name)
        self.setup_solver(model, prior_site, progress)

    def check(self, problem: Problem) -> None:
        super().check(problem)
        if self.form == "norm":
            problem.gaussian(self.name + " (form='norm')")

    # -- helpers for the hooks ----------------------------------------------------------
    def fit_form(self, problem: Problem) -> str:
        if self.form != "auto":
            return self.form
        return "norm" if problem.is_gaussian else "loglik"

    def times(self, problem: Problem) -> torch.Tensor:
        return time_grid(problem.prior.schedule, self.steps, self.grid)

    def initial_state(self, problem: Problem, n: int, generator) -> torch.Tensor:
        shape = (n,) + tuple(problem.prior.latent_shape)
        return terminal_noise(problem.prior.latent, shape, generator, problem.dtype, problem.device)

    def make_hook(self, problem: Problem, n: int) -> Hook:  # pragma: no cover - abstract
        raise NotImplementedError

    def run(self, problem: Problem, n: int, generator=None) -> torch.Tensor:
        """``n`` latent draws: the latent reverse diffusion with this method's hook."""
        hook = self.make_hook(problem, n)
        z = self.initial_state(problem, n, generator)
        return reverse_diffusion(problem.prior.latent_denoiser, z, self.times(problem), eta=self.eta, hook=hook,
                                 generator=generator, progress=self.progress, desc=self.name)

    # -- user API ------------------------------------------------------------------------
    def draw(self, num_samples: int, *args, generator: torch.Generator | None = None, **kwargs) -> Draws:
        """``num_samples`` draws of ``x`` (one batched run) with their cost (see the module docstring)."""
        n = check_int("num_samples", num_samples, self.name)
        problem = self.problem(*args, **kwargs)
        ae = problem.prior.autoencoder
        dec0, enc0 = ae.decoder_evals, ae.encoder_evals
        with measure(problem.prior.latent_denoiser) as meter:
            z = self.run(problem, n, generator).detach()
            with torch.no_grad():
                x = ae.decode(z)
        dec, enc = (ae.decoder_evals - dec0) / n, (ae.encoder_evals - enc0) / n
        nfe = meter.evals / n
        extra = {"latents": z[None], "decoder_evals_per_sample": dec, "encoder_evals_per_sample": enc,
                 "network_calls_per_sample": nfe + dec + enc}
        return self._draws(x[None], meter, problem, n, extra=extra, nfe_per_sample=nfe)

    def sample(self, num_samples: int, *args, generator: torch.Generator | None = None, **kwargs) -> torch.Tensor:
        """``num_samples`` draws of ``x``, ``(num_samples, *image_shape)``."""
        return self.draw(num_samples, *args, generator=generator, **kwargs).samples[0]

    def __call__(self, *args, **kwargs):
        """Pyro guide: sample the prior site with as many draws as the enclosing plates ask for
        (``Predictive(model, guide=solver, num_samples=16, parallel=True)``)."""
        plates = [f for f in get_plates() if f.size is not None]
        n = int(math.prod(f.size for f in plates)) if plates else 1
        problem = self.problem(*args, **kwargs)
        with torch.enable_grad():
            z = self.run(problem, n, None).detach()
        from ..guides.base import sample_prior_site

        return sample_prior_site(problem, problem.prior.autoencoder.decode(z), plates)
