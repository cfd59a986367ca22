"""``DiffusionPrior``: a pre-trained diffusion model as a Pyro distribution.

* ``sample()`` runs the reverse diffusion (DDPM = DDIM with ``eta = 1``, or DDIM with any ``eta``)
  batched over ``sample_shape + batch_shape``;
* ``log_prob(x)`` integrates the probability-flow ODE. In VE coordinates ``x~ = x_t / alpha`` with
  ``u = log rho`` the ODE is ``dx~/du = x~ - D(x~, e^u)`` and
  ``log p_0(x) = log pi(x~_1) + int div(x~ - D) du`` with the sampler's reference
  ``pi = N(0, (1 + rho_1^2) I)`` (or the exact noised marginal when the denoiser knows it, as the
  Gaussian-mixture denoiser does) (fixed-step RK4 from
  ``rho(t0)`` to ``rho(1)``). The divergence is exact (one batched VJP per coordinate block) in
  small dimensions and a Hutchinson estimate (Rademacher probes) otherwise; differentiable in x;
* ``elbo(x)`` is the continuous-time denoising lower bound (Song et al. 2021; Kingma et al. 2021)
  with ``lambda = log SNR`` drawn uniformly (importance weights ``g^2 / sigma^2``), one network call
  per draw — the prior term of Efficient Score Prior (Feng & Bouman 2024).
"""
from __future__ import annotations

import math

import torch
from pyro.distributions import TorchDistribution
from torch.distributions import constraints

from ..denoisers import Denoiser
from ..schedules import time_grid
from .probe import called_from_pyro_trace, in_predictive_probe

__all__ = ["DiffusionPrior", "TraceLogProbError", "TRACE_LOG_PROB"]

#: what :meth:`DiffusionPrior.log_prob` does when Pyro's trace machinery calls it
TRACE_LOG_PROB = ("error", "elbo", "ode")


class TraceLogProbError(RuntimeError):
    """Pyro's trace machinery (``Trace_ELBO``, HMC) asked a DiffusionPrior for its exact density
    with ``trace_log_prob="error"`` (the message names the ways forward)."""


class DiffusionPrior(TorchDistribution):
    """A diffusion model prior over images / vectors of shape ``denoiser.event_shape``.

    Args:
        denoiser: any :class:`~ppl_diffusion.denoisers.Denoiser`.
        steps: reverse-diffusion steps used by :meth:`sample`.
        eta: DDIM-eta noise (1 = DDPM ancestral, 0 = deterministic DDIM).
        grid: time grid kind (``uniform``, ``quadratic``, ``edm``).
        rho_min: smallest noise level ``sigma/alpha`` of the ODE / ELBO integrals (``t0 = t(rho_min)``).
        ode_steps: RK4 steps of :meth:`log_prob`.
        exact_divergence_max_dim: use the exact divergence up to this dimension, Hutchinson above.
        hutchinson_probes: probes per divergence evaluation.
        progress: show a progress bar in :meth:`sample`.
        terminal: ``"auto"`` starts :meth:`sample` from the denoiser's exact noised marginal at
            ``t = 1`` when it has one (the Gaussian-mixture denoiser does; this is the same reference
            :meth:`log_prob` uses, so samples and densities describe one model), else from the
            reference ``N(0, sigma_1^2 I)``; ``"reference"`` always uses the latter.
        trace_log_prob: what ``log_prob`` does when Pyro's trace machinery asks for it
            (``Trace_ELBO`` and the other ELBOs, HMC / NUTS potentials, importance sampling):
            ``"error"`` (default) raises :class:`TraceLogProbError` at once, naming the cheap ways
            forward, because the exact density is a probability-flow ODE of ``4 * ode_steps``
            network calls (each ``d`` times wider with the exact divergence) plus its double
            backward, minutes per SVI step on a CPU; ``"elbo"`` returns the denoising lower bound
            :meth:`elbo` (one network call per point: ``Trace_ELBO`` then fits a lower bound of the
            ELBO, as Efficient Score Prior does); ``"ode"`` runs the exact ODE (a progress bar with
            ``progress=True``). Direct calls ``prior.log_prob(x)`` always run the ODE.
    """

    arg_constraints: dict = {}
    has_rsample = False

    @property
    def support(self):
        """Real values on the whole image event (event_dim = the number of event dims)."""
        return constraints.independent(constraints.real, len(self.event_shape))

    def __init__(self, denoiser: Denoiser, steps: int = 100, eta: float = 1.0, grid: str = "uniform",
                 rho_min: float = 1e-2, ode_steps: int = 100, exact_divergence_max_dim: int = 64,
                 hutchinson_probes: int = 4, progress: bool = False, terminal: str = "auto", batch_shape=torch.Size(),
                 validate_args=None, trace_log_prob: str = "error"):
        if not isinstance(denoiser, Denoiser):
            raise ValueError(f"denoiser must be a ppl_diffusion Denoiser, got {type(denoiser).__name__}")
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if not 0 <= eta <= 1:
            raise ValueError(f"eta must lie in [0, 1], got {eta}")
        self.denoiser = denoiser
        self.steps, self.eta, self.grid, self.rho_min = int(steps), float(eta), grid, float(rho_min)
        if self.rho_min <= 0:
            raise ValueError(f"rho_min must be > 0, got {rho_min}")
        self.ode_steps, self.exact_divergence_max_dim = int(ode_steps), int(exact_divergence_max_dim)
        self.hutchinson_probes, self.progress = int(hutchinson_probes), bool(progress)
        if terminal not in ("auto", "reference"):
            raise ValueError(f"terminal must be 'auto' or 'reference', got {terminal!r}")
        self.terminal = terminal
        if trace_log_prob not in TRACE_LOG_PROB:
            raise ValueError(f"trace_log_prob must be one of {TRACE_LOG_PROB}, got {trace_log_prob!r}")
        self.trace_log_prob = trace_log_prob
        super().__init__(torch.Size(batch_shape), denoiser.event_shape, validate_args=False)

    # ---------------------------------------------------------------------------------------
    @property
    def schedule(self):
        return self.denoiser.schedule

    def _options(self) -> dict:
        return dict(steps=self.steps, eta=self.eta, grid=self.grid, rho_min=self.rho_min, ode_steps=self.ode_steps,
                    exact_divergence_max_dim=self.exact_divergence_max_dim,
                    hutchinson_probes=self.hutchinson_probes, progress=self.progress,
                    terminal=self.terminal, trace_log_prob=self.trace_log_prob)

    def with_options(self, **kwargs) -> DiffusionPrior:
        opts = self._options()
        opts.update(kwargs)
        return DiffusionPrior(self.denoiser, batch_shape=self.batch_shape, **opts)

    def expand(self, batch_shape, _instance=None):
        return DiffusionPrior(self.denoiser, batch_shape=torch.Size(batch_shape), **self._options())

    def _reference(self):
        p = next(iter(self.denoiser.parameters()), None)
        if p is not None:
            return p.dtype, p.device
        gmm = getattr(self.denoiser, "gmm", None)
        if gmm is not None:
            return gmm.dtype, gmm.means.device
        return torch.get_default_dtype(), torch.device("cpu")

    def _check(self, x: torch.Tensor) -> None:
        ne = len(self.event_shape)
        if not isinstance(x, torch.Tensor) or x.dim() < ne or tuple(x.shape[x.dim() - ne:]) != tuple(self.event_shape):
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"DiffusionPrior expects values of shape (*batch, {tuple(self.event_shape)}), got {shape}")
        if not torch.isfinite(x).all():
            raise ValueError("DiffusionPrior.log_prob got NaN/Inf values")

    # ---------------------------------------------------------------------------------------
    def sample(self, sample_shape=torch.Size(), generator: torch.Generator | None = None,
               dtype=None, device=None) -> torch.Tensor:
        """Reverse diffusion: one batched run for all ``sample_shape + batch_shape`` draws."""
        from ..inference.sampler import reverse_diffusion, terminal_noise

        ref_dtype, ref_device = self._reference()
        dtype, device = dtype or ref_dtype, device or ref_device
        shape = torch.Size(sample_shape) + self.batch_shape + self.event_shape
        if in_predictive_probe():  # Predictive's shape-only runs: their values are discarded (models/probe.py)
            return torch.zeros(shape, dtype=dtype, device=device)
        times = time_grid(self.schedule, self.steps, self.grid)
        from ..memory import check_fits  # refuse a batch whose state cannot fit, before any work

        check_fits("DiffusionPrior.sample", int(shape[: len(shape) - len(self.event_shape)].numel()),
                   self.event_shape, dtype, device, den=self.denoiser)
        with torch.no_grad():
            x = terminal_noise(self, shape, generator, dtype, device)
            return reverse_diffusion(self.denoiser, x, times, eta=self.eta, generator=generator,
                                     progress=self.progress, desc="prior sample")

    # ---------------------------------------------------------------------------------------
    def _velocity_and_divergence(self, xt: torch.Tensor, rho: torch.Tensor, exact: bool,
                                 probes: int, generator, create_graph: bool):
        """``v = x~ - D(x~, rho)`` and ``div v`` (exact or Hutchinson with its per-point variance)."""
        d = int(torch.Size(self.event_shape).numel())
        batch = xt.shape[: xt.dim() - len(self.event_shape)]
        with torch.enable_grad():
            if exact:
                # one batched call: replicate each point d times and read the Jacobian diagonal
                xr = xt.detach().unsqueeze(0).expand((d,) + tuple(xt.shape)).clone() if not create_graph \
                    else xt.unsqueeze(0).expand((d,) + tuple(xt.shape))
                if not xr.requires_grad:
                    xr.requires_grad_(True)
                D = self.denoiser.denoise_ve(xr, rho)
                eye = torch.eye(d, dtype=xt.dtype, device=xt.device)
                eye = eye.reshape((d,) + (1,) * len(batch) + tuple(self.event_shape))
                (g,) = torch.autograd.grad((D * eye).sum(), xr, create_graph=create_graph)
                diag = (g * eye).reshape((d,) + tuple(batch) + (d,)).sum(-1).sum(0)  # sum_i dD_i/dx_i
                v = xt - D[0]
                return v, d - diag, torch.zeros_like(diag)
            xin = xt if create_graph else xt.detach().requires_grad_(True)
            if not xin.requires_grad:
                xin = xin.requires_grad_(True)
            xr = xin.unsqueeze(0).expand((probes,) + tuple(xin.shape))
            D = self.denoiser.denoise_ve(xr, rho)
            eps = torch.randint(0, 2, D.shape, generator=generator, device=D.device).to(D.dtype) * 2 - 1
            (g,) = torch.autograd.grad((D * eps).sum(), xr, create_graph=create_graph)
            est = (g * eps).reshape((probes,) + tuple(batch) + (d,)).sum(-1)  # v^T J v per probe
            tr = est.mean(0)
            var = est.var(0) / probes if probes > 1 else torch.zeros_like(tr)
            v = xt - D.mean(0) if create_graph else (xt - D[0]).detach()
            return v, d - tr, var

    def log_prob_with_error(self, x: torch.Tensor, exact: bool | None = None, probes: int | None = None,
                            steps: int | None = None, generator: torch.Generator | None = None):
        """``(log p(x), standard error)`` by the probability-flow ODE (see module docstring).

        The standard error is 0 with the exact divergence; with Hutchinson it is the propagated
        Monte Carlo error of the probes (RK4 weights squared times per-step probe variance)."""
        self._check(x)
        d = int(torch.Size(self.event_shape).numel())
        exact = d <= self.exact_divergence_max_dim if exact is None else exact
        probes = probes or self.hutchinson_probes
        n = steps or self.ode_steps
        create_graph = x.requires_grad
        sched = self.schedule
        rho0 = self.rho_min
        rho1 = float(sched.rho(torch.tensor(1.0, dtype=torch.float64)))
        u = torch.linspace(math.log(rho0), math.log(rho1), n + 1, dtype=torch.float64)
        xt = x
        logdet = torch.zeros(x.shape[: x.dim() - len(self.event_shape)], dtype=x.dtype, device=x.device)
        var = torch.zeros_like(logdet)
        from tqdm.auto import tqdm

        for k in tqdm(range(n), desc="prior log_prob (ODE)", disable=not self.progress, leave=False):
            h = float(u[k + 1] - u[k])
            um = 0.5 * (u[k] + u[k + 1])
            stages = []
            xs = xt
            for j, (uu, c) in enumerate([(u[k], 0.0), (um, 0.5), (um, 0.5), (u[k + 1], 1.0)]):
                if j > 0:
                    xs = xt + c * h * stages[-1][0]
                v, div, dvar = self._velocity_and_divergence(xs, torch.exp(uu).to(x.dtype), exact, probes,
                                                             generator, create_graph)
                if not create_graph:
                    v, div = v.detach(), div.detach()
                stages.append((v, div, dvar))
            w = (1 / 6, 1 / 3, 1 / 3, 1 / 6)
            xt = xt + h * sum(wi * s[0] for wi, s in zip(w, stages))
            logdet = logdet + h * sum(wi * s[1] for wi, s in zip(w, stages))
            var = var + h**2 * sum(wi**2 * s[2] for wi, s in zip(w, stages))
        exact_terminal = getattr(self.denoiser, "terminal_log_prob_ve", None)
        if exact_terminal is not None:  # exact denoisers (GMM) know their noised marginal
            log_ref = exact_terminal(xt, rho1)
        else:  # the sampler's reference N(0, sigma_1^2 I) in VP coordinates, seen in VE coordinates
            ref_var = 1.0 + rho1**2 if getattr(sched, "kind", "vp") == "vp" else rho1**2
            flat = xt.reshape(logdet.shape + (d,))
            log_ref = -0.5 * (flat**2).sum(-1) / ref_var - 0.5 * d * math.log(2 * math.pi * ref_var)
        return log_ref + logdet, torch.sqrt(var)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Probability-flow ODE log density, shape ``(*batch,)``; differentiable in ``x``. Called by
        Pyro's trace machinery (``Trace_ELBO``, HMC), it follows ``trace_log_prob`` (see the class)."""
        if self.trace_log_prob != "ode" and called_from_pyro_trace():
            if self.trace_log_prob == "elbo":
                return self.elbo(x)
            raise TraceLogProbError(self._trace_log_prob_message(x))
        return self.log_prob_with_error(x)[0]

    def _trace_log_prob_message(self, x: torch.Tensor) -> str:
        d = int(torch.Size(self.event_shape).numel())
        exact = d <= self.exact_divergence_max_dim
        per_call = f"{d} x (batch)" if exact else f"{self.hutchinson_probes} x (batch)"
        return (
            "Pyro's trace machinery (Trace_ELBO / another ELBO, an HMC or NUTS potential, importance sampling) "
            "asked DiffusionPrior.log_prob for the diffusion prior's exact density. That is a probability-flow "
            f"ODE: {4 * self.ode_steps} network calls of {per_call} images each, plus their double backward for "
            "a gradient (minutes per SVI step on a CPU), so it is refused here. Ways forward: "
            "(1) RED-Diff's own loss: red = REDDiff(model); SVI(model, red.guide, optim, loss=red.loss) "
            "(or red.run(y=y) / red.draw(n, y=y)); "
            "(2) the denoising lower bound prior.elbo(x) (one network call per point): train with "
            "EfficientScorePrior(model), or opt in with prior.with_options(trace_log_prob='elbo') in your model "
            "(Trace_ELBO then fits a lower bound of the ELBO); "
            "(3) the exact ODE at that cost: prior.with_options(trace_log_prob='ode', progress=True) "
            "(ScorePrior(model) trains this way with a flow guide).")

    # ---------------------------------------------------------------------------------------
    def elbo(self, x: torch.Tensor, n_samples: int = 1, generator: torch.Generator | None = None) -> torch.Tensor:
        """Denoising lower bound ``b(x) <= log p(x)`` (one network call per draw), shape ``(*batch,)``.

        ``b = -KL(q(x_1|x) || N(0, I)) - 1/2 (lam_max - lam_min) E_lam ||eps - eps_hat(x_lam)||^2
        + E log N(x; x_t0 / alpha_t0, rho_t0^2 I)`` with ``lam = log SNR ~ U[lam_min, lam_max]``."""
        self._check(x)
        sched = self.schedule
        d = int(torch.Size(self.event_shape).numel())
        ne = len(self.event_shape)
        batch = x.shape[: x.dim() - ne]
        t0 = sched.t_of_rho(torch.tensor(self.rho_min, dtype=torch.float64))
        t1 = torch.tensor(1.0, dtype=torch.float64)
        lam_max, lam_min = float(sched.log_snr(t0)), float(sched.log_snr(t1))
        xs = x.unsqueeze(0).expand((n_samples,) + tuple(x.shape))
        # stratified draws of lambda (same expectation, lower variance than i.i.d. draws)
        u = torch.rand((n_samples,) + tuple(batch), generator=generator, dtype=torch.float64, device=x.device)
        strata = torch.arange(n_samples, dtype=torch.float64, device=x.device).reshape((n_samples,) + (1,) * len(batch))
        lam = lam_min + (lam_max - lam_min) * (strata + u) / n_samples
        t = sched.t_of_rho(torch.exp(-0.5 * lam)).to(x.dtype)
        eps = torch.randn(xs.shape, generator=generator, dtype=x.dtype, device=x.device)
        tb = t.reshape(t.shape + (1,) * ne)
        a, s = sched.alpha(tb).to(x.dtype), sched.sigma(tb).to(x.dtype)
        x_t = a * xs + s * eps
        x0 = self.denoiser(x_t, t)
        eps_hat = (x_t - a * x0) / s
        diff = 0.5 * (lam_max - lam_min) * ((eps - eps_hat) ** 2).reshape((n_samples,) + tuple(batch) + (d,)).sum(-1)
        a1, s1 = float(sched.alpha(t1)), float(sched.sigma(t1))
        flat = x.reshape(tuple(batch) + (d,))
        if getattr(sched, "kind", "vp") == "vp":
            kl = 0.5 * ((s1**2 - 1 - 2 * math.log(s1)) * d + a1**2 * (flat**2).sum(-1))
        else:
            kl = 0.5 * (a1**2 * (flat**2).sum(-1) / s1**2)
        rho0 = self.rho_min
        recon = -0.5 * d * (math.log(2 * math.pi * rho0**2) + 1.0)
        return -kl - diff.mean(0) + recon
