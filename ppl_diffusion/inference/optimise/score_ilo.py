"""Score-ILO (Daras, Dagan, Dimakis, Daskalakis, "Score-guided intermediate layer optimization: fast
Langevin mixing for inverse problems", ICML 2022; official code giannisdaras/sgilo).

Intermediate Layer Optimisation (ILO, Daras et al. ICML 2021) splits a generator ``G = G2 o G1`` and
fits, in rounds, first the input ``z`` through ``G`` and then the intermediate layer ``h = G1(z)``
through ``G2`` alone, whose range is larger than ``G``'s. Score-ILO adds a score model on each
variable: after every Adam step on the data misfit the variable ``v`` is pulled by a few steps of a
predictor-corrector sampler run at a FIXED small diffusion time (sgilo's "hot" sampler)::

    x = clamp(G_r(v), -1, 1);  L = mean |A x - y|^2            (MSE weight 1.0 in the code)
    Delta = PC_t(v) - v                                         (score pull, computed at the pre-step v)
    v <- Adam(v, grad L);  v <- v + tau * Delta + s * xi        (tau: latent/gen_temperature, s: *_noise_temp)
    z <- projection of z on the sphere of radius sqrt(dim)     (z rounds; project_latent in the code)

``PC_t`` (sgilo ``score/samplers.py``, ``hot_pc_sampler`` with ``corrector='ald'`` and
``predictor='euler_maruyama'``) on the normalised variable ``u``, ``hot_steps`` times at ``t = 0.01``:
the corrector ``u += eps_c s(u)`` with ``eps_c = 2 alpha_k (snr sigma_t)^2``, then the Euler-Maruyama
step of the reverse VP SDE ``u += dt beta_t (u / 2 + s(u))`` with ``dt = 1 / T``; it returns the last
mean. ``s = (alpha_t D(u, t) - u) / sigma_t^2`` is the score of the denoiser ``D``. Constants of the
official config (``configs/solve_inverse.yaml``, ``configs/trained_networks/*.yaml``): Adam lr 0.05,
300 steps per round, tau = 0.1, noise 0.025, snr 1e-4 (latent) / 0.005 (layer 3), hot_steps 1 / 5.

Here the generator is the decoder of a latent autoencoder (the model's LatentDiffusionPrior),
split by :func:`ppl_diffusion.models.ilo.split_generator`: two rounds, ``z`` through the whole
decoder with the latent prior's own latent denoiser as the score model (sgilo's latent network; our
``z`` is already standardised by ``s_f``), then ``h`` through ``G2`` with an
:class:`~ppl_diffusion.models.ilo.IntermediateScore` (default the shipped ``digits-latent-ilo``,
trained on ``G1(Enc(x))`` of training digits). This is "Score-ILO on a VAE decoder", not a GAN.

MAP mode (``noise=0``, the default): no noise anywhere. Then with plain gradient descent
(``optimizer="sgd"``) and ``hot_steps=1`` a fixed point of the h round is, up to O(eps_c dt beta), a
stationary point of ``MSE(h) - tau / (lr c^2) [(dt beta + eps_c) log p_t(u) + dt beta |u|^2 / 4]``
(``c = dh/du``), a MAP objective whose prior weight is set by ``tau / lr``, not by the noise level:
the method is not calibrated. With ``noise > 0`` (the paper's posterior sampling, 0.025 in the
code) the PC sampler's own noise is on as well; the draws are a heuristic, not posterior samples.

Each draw is one random restart (``z ~ N(0, I)``, projected; the code starts StyleGAN's latent at
all ones, one start per image); the objective each reached is in ``sample_stats``. Dropped from the
code's loss: LPIPS (no offline weights) and the StyleGAN-specific geocross term.
Cost per iteration: one generator forward / backward and ``2 hot_steps`` score-model
calls (counted in ``nfe_per_sample``; the decoder passes in ``extra["decoder_evals_per_sample"]``).
"""
from __future__ import annotations

import math

import torch

from ...models.autoencoder import KLAutoencoder
from ...models.ilo import IntermediateScore, load_ilo_score, split_generator
from ..problem import Problem
from ..solver import Draws, OptionError, check_int, check_number, measure
from .base import InputOptimiser, _Step

__all__ = ["ScoreILO", "score_pull"]


def score_pull(denoiser, v: torch.Tensor, t: float, *, hot_steps: int = 1, snr: float = 1e-4,
               to_unit=None, from_unit=None, noise: bool = False, generator=None) -> torch.Tensor:
    """``PC_t(v) - v``: sgilo's hot predictor-corrector at the fixed time ``t`` on ``u = to_unit(v)``
    (see the module docstring), mapped back by ``from_unit``. No noise unless ``noise``."""
    sched = denoiser.schedule
    T = getattr(sched, "num_train_timesteps", 1000)
    tt = torch.as_tensor(float(t), dtype=torch.float64)
    sigma = float(sched.sigma(tt))
    beta = -2.0 * float(sched.dlog_alpha_dt(tt))
    dt = 1.0 / T
    eps_c = 2.0 * (1.0 - beta / T) * (snr * sigma) ** 2  # alpha_k = 1 - beta_k with beta_k = beta_t / T
    t_net = torch.as_tensor(float(t), dtype=v.dtype, device=v.device)
    u = to_unit(v) if to_unit is not None else v
    u_mean = u
    for _ in range(hot_steps):
        u_mean = u + eps_c * denoiser.score(u, t_net)
        u = u_mean + (math.sqrt(2 * eps_c) * _noise(u, generator) if noise else 0.0)
        u_mean = u + dt * beta * (0.5 * u + denoiser.score(u, t_net))
        u = u_mean + (math.sqrt(beta * dt) * _noise(u, generator) if noise else 0.0)
    out = from_unit(u_mean) if from_unit is not None else u_mean
    return out - v


def _noise(like: torch.Tensor, generator) -> torch.Tensor:
    return torch.randn(like.shape, generator=generator, dtype=like.dtype, device=like.device)


class ScoreILO(InputOptimiser):
    """Score-guided intermediate layer optimisation through the split decoder of a latent prior.

    Args:
        model: Pyro model with a LatentDiffusionPrior site (its autoencoder is the generator: a
            diffusers AutoencoderKL decoder, or an AffineAutoencoder for the exact check) and a
            differentiable likelihood (a GaussianMeasurement for ``loss="mse"``).
        score_model: the score model on the intermediate layer ``h``: an
            :class:`~ppl_diffusion.models.ilo.IntermediateScore`, a name / folder for
            :func:`~ppl_diffusion.models.ilo.load_ilo_score` (default the shipped
            ``"digits-latent-ilo"``, trained on ``digits-latent``'s mid-block layer), or None (only with
            ``h_temperature=0``: plain ILO in the h round).
        layer: the split point of the decoder (default: the score model's layer, else ``"mid_block"``).
        z_steps: iterations of the z round (through the whole decoder; code: 300).
        h_steps: iterations of the h round (through G2; code: 300).
        lr: Adam learning rate (code: 0.05).
        optimizer: "adam" (code) or "sgd" (plain gradient descent; the exact check's fixed point).
        z_temperature: tau of the pull of the latent prior's score on z (code: 0.1).
        h_temperature: tau of the pull of the layer score model on h (code: 0.1).
        noise: std of the noise added to the variable each iteration, and switch of the PC sampler's
            own noise (code: 0.025); 0 is MAP mode (default).
        score_t: the fixed diffusion time of the pull (code: 0.01 of the VP SDE, = our t on the
            1000-step linear schedule).
        hot_steps: predictor-corrector steps per pull (code: 1 for the latent, 5 for layer 3).
        snr: the corrector's signal-to-noise ratio (code: 1e-4 latent, 0.005 layer 3).
        sphere: project z on the sphere of radius sqrt(dim) after every z step (code: project_latent).
        clamp: clamp the generator output to [-1, 1] (code: yes; off for data outside [-1, 1]).
        loss: "mse" (the code's mean squared residual; needs a GaussianMeasurement) or "nll" (``-log p(y | x)``).
        init: initial latents ``(restarts, *latent_shape)`` or ``(*latent_shape)``; None draws N(0, I).
        prior_site: name of the latent-prior site when the model has several.
        generator: random generator of the initial latents and of the noise (``draw(generator=)`` overrides it).
        progress: unused (kept for the shared contract).
    """

    name = "score_ilo"
    latent_prior = True

    def __init__(self, model, *, score_model="digits-latent-ilo", layer: str | None = None, z_steps: int = 300,
                 h_steps: int = 300, lr: float = 0.05, optimizer: str = "adam", z_temperature: float = 0.1,
                 h_temperature: float = 0.1, noise: float = 0.0, score_t: float = 0.01, hot_steps: int = 1,
                 snr: float = 1e-4, sphere: bool = True, clamp: bool = True, loss: str = "mse", init=None,
                 prior_site: str | None = None, generator: torch.Generator | None = None, progress: bool = False):
        structure = self.setup_solver(model, prior_site, progress)
        m = type(self).name
        self.z_steps = check_int("z_steps", z_steps, m, minimum=0)
        self.h_steps = check_int("h_steps", h_steps, m, minimum=0)
        if self.z_steps + self.h_steps == 0:
            raise OptionError(f"{m}: z_steps + h_steps must be positive")
        self.z_temperature = check_number("z_temperature", z_temperature, m, low=0.0)
        self.h_temperature = check_number("h_temperature", h_temperature, m, low=0.0)
        self.noise = check_number("noise", noise, m, low=0.0)
        self.score_t = check_number("score_t", score_t, m, low=0.0, high=1.0, low_open=True)
        self.hot_steps = check_int("hot_steps", hot_steps, m)
        self.snr = check_number("snr", snr, m, low=0.0)
        self.sphere, self.clamp = bool(sphere), bool(clamp)
        self._set_fit(structure, optimizer=optimizer, lr=lr, loss=loss, init=init, generator=generator)
        self.score_model, self.layer = score_model, layer
        hs = score_model
        if hs is None:
            if self.h_temperature > 0 and self.h_steps > 0:
                raise OptionError(f"{m}: score_model=None (no score model on the layer) needs h_temperature=0 "
                                  "(plain ILO in the h round)")
        elif not isinstance(hs, IntermediateScore):
            hs = load_ilo_score(hs)
        ae = structure.prior.autoencoder
        if layer is None and hs is not None and isinstance(ae, KLAutoencoder):
            layer = hs.layer  # split where the score model was trained
        try:
            self.split = split_generator(ae, layer)
        except ValueError as e:
            raise ValueError(f"{m}: the prior site {structure.prior_site!r} has no generator to split ({e})") from e
        if hs is not None:
            hs.check(self.split, m)
        self.h_score = hs

    def latent_shape(self, problem: Problem) -> tuple:
        return tuple(problem.prior.latent_shape)

    def _generate(self, v: torch.Tensor, stage: str) -> torch.Tensor:
        x = self.split(v) if stage == "z" else self.split.g2(v)
        return x.clamp(-1.0, 1.0) if self.clamp else x

    def generate(self, problem: Problem, z: torch.Tensor) -> torch.Tensor:
        return self._generate(z, "z")

    def _round(self, problem: Problem, v: torch.Tensor, stage: str, steps: int, gen, trace: list) -> torch.Tensor:
        if stage == "z":
            den, tau, to_u, from_u = problem.prior.latent_denoiser, self.z_temperature, None, None
        else:
            hs = self.h_score
            den = hs.denoiser if hs is not None else None
            tau = self.h_temperature
            to_u, from_u = (hs.to_unit, hs.from_unit) if hs is not None else (None, None)
        v = v.detach().clone().requires_grad_(True)
        step = _Step(self.optimizer, self.lr)
        for k in range(steps):
            obj = self.objective(problem, self._generate(v, stage))
            (grad,) = torch.autograd.grad(obj.sum(), v)
            if not torch.isfinite(obj).all():
                raise FloatingPointError(f"{self.name}: the objective became non-finite at iteration {k} of the "
                                         f"{stage} round; lower lr")
            with torch.no_grad():
                delta = score_pull(den, v, self.score_t, hot_steps=self.hot_steps, snr=self.snr, to_unit=to_u,
                                   from_unit=from_u, noise=self.noise > 0, generator=gen) if tau > 0 else 0.0
                step(v, grad)
                v.add_(tau * delta)
                if self.noise > 0:
                    v.add_(self.noise * _noise(v, gen))
                if stage == "z" and self.sphere:
                    v.copy_(self._project(v))
            trace.append(obj.detach())
        return v.detach()

    def optimise(self, problem: Problem, n: int, generator=None) -> dict:
        """Both rounds on ``n`` restarts at once; returns ``x``, ``objective``, ``z``, ``h``, ``trace``."""
        trace: list = []
        z = self._round(problem, self._initial(problem, n, generator), "z", self.z_steps, generator, trace)
        with torch.no_grad():
            h = self.split.g1(z)
        h = self._round(problem, h, "h", self.h_steps, generator, trace)
        with torch.no_grad():
            x = self._generate(h, "h")
            obj = self.objective(problem, x)
        return dict(x=x, objective=obj, z=z, h=h, trace=torch.stack(trace) if trace else torch.zeros(0, n))

    def draw(self, num_samples: int, *args, generator: torch.Generator | None = None, **kwargs) -> Draws:
        """``num_samples`` random restarts (point estimates in MAP mode, ``noise=0``).

        ``Draws.samples`` ``(1, restarts, *event)``; ``stats["objective"]`` the final data misfit of each
        restart; ``extra``: ``objective_trace`` ``(z_steps + h_steps, restarts)``, ``z``, ``h`` (the
        fitted layer), ``point_estimate``, ``decoder_evals_per_sample`` (G2 passes, each G pass counted
        once), ``network_calls_per_sample`` (score-model + decoder calls). ``nfe_per_sample`` counts
        the score-model calls (latent denoiser and layer score model)."""
        n = check_int("num_samples", num_samples, type(self).name)
        problem = self.problem(*args, **kwargs)
        gen = generator if generator is not None else self.generator
        hden = self.h_score.denoiser if self.h_score is not None else None
        h0 = hden.sample_evals if hden is not None else 0
        g0 = self.split.g2_evals
        with measure(problem.prior.latent_denoiser) as meter:
            with torch.enable_grad():
                out = self.optimise(problem, n, gen)
        score_calls = (meter.evals + ((hden.sample_evals - h0) if hden is not None else 0)) / n
        dec = (self.split.g2_evals - g0) / n
        stats = {"objective": out["objective"][None],
                 "iteration": torch.full((1, n), float(self.z_steps + self.h_steps), dtype=torch.float64)}
        extra = {"objective_trace": out["trace"], "z": out["z"], "h": out["h"], "point_estimate": self.noise == 0,
                 "decoder_evals_per_sample": dec, "network_calls_per_sample": score_calls + dec,
                 "layer": self.split.layer}
        return self._draws(out["x"][None], meter, problem, n, stats=stats, extra=extra, nfe_per_sample=score_calls)
