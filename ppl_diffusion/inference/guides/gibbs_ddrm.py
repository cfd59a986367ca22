"""GibbsDDRM (Murata, Saito, Lai, Takida, Uesaka, Mitsufuji, Ermon, "GibbsDDRM: a partially
collapsed Gibbs sampler for solving blind inverse problems with denoising diffusion restoration",
ICML 2023): DDRM steps for the image in the SVD of the current operator, Langevin steps for the
operator parameter, alternated as a partially collapsed Gibbs sweep (Algorithm 1 of the paper, with
the constants of the official code).

x-update (VE form: ``xbar = V_phi^T (x_t / alpha_t)``, ``ubar = U_phi^T y``, ``rho_s`` the next level;
``s`` the singular values of the current operator, one set per sample)::

    null (s = 0):           xbar0 + sqrt(rho_s^2 - (eta_D rho_s)^2) epsbar + eta_D rho_s z
    less noisy (s rho_s < sigma_y):
                            xbar0 + eta_A rho_s epsbar + eta_C rho_s (ubar - s xbar0) / sigma_y
                                  + rho_s sqrt(1 - eta_A^2 - eta_C^2 - 2 eta_A eta_C r) z
    noisier:                eta_B ubar / s + (1 - eta_B) xbar0 + sqrt(rho_s^2 - eta_B^2 sigma_y^2 / s^2) z

with ``r = |<epsbar_S, res_S>| / (||epsbar_S|| ||res_S||)`` over the less noisy set, per sample, and
``x_s = alpha_s V_phi xbar_s``; the start is DDRM's, conditioned on y.

phi-update, for ``t <= theta_start`` (the last 70 % of the steps in the paper), ``sweeps`` times per
step: ``x0' = D(x_s, s)`` (one more network call), then ``langevin_steps`` unadjusted Langevin steps
on the operator parameter; then the SVD is rebuilt for the new phi and the x-update is redone from the
same ``(x_t, x0_hat, eps_hat)``. Two targets:

* ``theta_prior="l1"`` (the paper's kernel prior, for a kernel site whose prior has no density, e.g. a
  diffusion prior): ``log p(y | x0', k) - l1 ||k||_1`` for a kernel on the simplex. The measurement
  mean is linear in the kernel, ``A(x0') k``, so the target is an exact quadratic in ``k``; it is
  built once per sweep (``H = A^T A / sigma_y^2``, ``b = A^T y / sigma_y^2``: one operator call on
  ``D`` unit kernels per sample, ``D = kh kw``) and the Langevin steps cost a ``D x D`` product each.
  Step ``lr / L``, ``L`` the largest curvature of the quadratic on the sum-zero subspace (the
  step-size-free form of the paper's ``ell``, which does not transfer across image sizes), and after
  every step the Euclidean projection onto the simplex (projected Langevin, Bubeck, Eldan and Lehec,
  "Sampling from a log-concave distribution with projected Langevin Monte Carlo", DCG 2018) with
  ``nonnegative=True`` (default); the paper's code only divides by the sum (``nonnegative=False``).
  On the simplex ``||k||_1 = 1``: the l1 term only acts without the projection.
* ``theta_prior="model"``: ``log p(y | x0', phi) + log p(phi)`` of the site's own Pyro prior, by
  autograd through the model, with the scale-free step ``lr / h``, ``h`` the diagonal curvature of the
  target at the sweep's start (one backward pass per parameter entry).

Why the simplex matters (measured on held-out digits; ``tests/test_blind.py``): given the true digit,
a 7x7 kernel's least-squares estimate is about as far from the truth as a flat kernel (the digit has
almost no energy at the frequencies that pin the kernel's high-frequency part), while the
simplex-constrained estimate is within 0.2-4e-4 mean squared error. Without the projection the
sampled kernels carry negative, high-frequency parts and x is over-sharpened (14-17 dB, against
26-31 dB now; ``blind_images.md``). Deviations: the kernel updates start at t = 0.2 with ``"l1"``
(fitted to the blurry ``x0'`` of t = 0.7, the paper's start, the kernel locks in wrong: 17-20 dB);
the paper runs 500 Langevin steps 3 times per step, the default is 500 x 1 (``"l1"``) and 50 x 1
(``"model"``).

Needs: a ``GaussianMeasurement`` whose operator, built by the model from the parameter, is a
:class:`~ppl_diffusion.models.operators.KernelBlur` (its FFT-SVD is rebuilt for every sample's
kernel). Refused at construction otherwise, naming the site.
"""
from __future__ import annotations

import torch

from ...models.operators import KernelBlur
from ...models.operators.base import ZERO_SINGULAR_VALUE
from ...models.operators.kernel_blur import project_simplex
from ..blind import ThetaRecord, measurement_at, operator_site, site_density
from ..problem import Problem
from ..sampler import terminal_noise
from ..solver import check_choice, check_int, check_number
from .base import DiffusionGuide

__all__ = ["GibbsDDRM"]

THETA_PRIORS = ("model", "l1")
THETA_INITS = ("gaussian", "prior")


def centred_gaussian_kernel(size, dtype=torch.float64, device=None) -> torch.Tensor:
    """An isotropic Gaussian kernel of shape ``size = (kh, kw)``, std ``max(kh, kw) / 7`` px (1 px for
    7x7), centred at ``(kh // 2, kw // 2)`` (``KernelBlur``'s centre), on the simplex."""
    kh, kw = size
    s = max(kh, kw) / 7.0
    r = torch.arange(kh, dtype=dtype, device=device) - kh // 2
    c = torch.arange(kw, dtype=dtype, device=device) - kw // 2
    k = torch.exp(-(r[:, None] ** 2 + c[None, :] ** 2) / (2 * s**2))
    return k / k.sum()


class GibbsDDRM(DiffusionGuide):
    """GibbsDDRM (see the module docstring).

    Args:
        steps: diffusion steps (uniform grid; the paper uses 100 over 1000).
        eta: the guide-wide DDIM-eta; here an alias of ``eta_d`` (the null-space noise), used when
            ``eta_d`` keeps its default.
        eta_a, eta_b, eta_c, eta_d: the four eta of the x-update (official code: 0, 0.9, 0.8, 0.8).
        theta_start: the phi-update runs for ``t <= theta_start`` (time in [0, 1]; paper 0.7, the default
            with ``"model"``; default 0.2 with ``"l1"``: the kernel conditional given ``x0'`` is narrow,
            and fitted to the blurry ``x0'`` of earlier times it locks in a wrong kernel -- measured on
            held-out digits, ``blind_images.md``).
        sweeps: phi-updates (each followed by a redone x-update) per step (paper 3).
        langevin_steps: Langevin steps per phi-update (paper 500; default 500 with ``"l1"``, 50 with
            ``"model"``).
        langevin_lr: Langevin step as a fraction of ``1 / L`` (``"l1"``, default 1) or of the inverse
            diagonal curvature (``"model"``, default 0.1).
        theta_prior: ``"model"`` (the site's own prior density) or ``"l1"`` (``-l1 ||phi||_1`` and
            normalisation to sum one, the paper's kernel prior).
        l1: weight of the l1 prior (paper: 1000 on 64x64 kernels).
        nonnegative: with ``theta_prior="l1"``, project the kernel onto the simplex after every step
            (default); ``False``: only divide by its sum, as the paper's code does (measured on held-out
            digits: the kernel spreads into negative, high-frequency parts, 14-17 dB; ``blind_images.md``).
        theta_init: the parameter's start: ``"gaussian"`` (a centred isotropic Gaussian kernel, std
            ``size / 7`` px, for a ``(kh, kw)`` site; other sites start from a prior draw) or
            ``"prior"`` (a draw of the site's prior). Default: ``"gaussian"`` with ``"l1"`` (the
            paper's code starts from a broad centred blob), ``"prior"`` with ``"model"``. Measured on
            held-out digits (scratch runs, 8 cells, 8 draws): 27.7 dB mean from the Gaussian, 26.7 from
            prior draws, 24.7 from a flat kernel; in ``blind_images.md`` / ``blind_images_patches.md``
            the change moved the cells by -1.9 to +0.9 dB (within the spread between images).
        theta_site: the operator-parameter site (default: the one free latent site).
        grid, prior_site, progress: as for every guide.
    """

    name = "gibbs_ddrm"
    requires = ("gaussian",)
    infers_latents = True
    supports_plates = False

    def __init__(self, model, *, steps: int = 100, eta: float = 0.8, eta_a: float = 0.0, eta_b: float = 0.9,
                 eta_c: float = 0.8, eta_d: float = 0.8, theta_start: float | None = None, sweeps: int = 1,
                 langevin_steps: int | None = None, langevin_lr: float | None = None, theta_prior: str = "model",
                 l1: float = 0.0, nonnegative: bool = True, theta_init: str | None = None,
                 theta_site: str | None = None, grid: str = "uniform", prior_site: str | None = None,
                 progress: bool = False):
        if eta_d == 0.8 and eta != 0.8:  # the guide-wide eta sets the null-space noise unless eta_d is given
            eta_d = eta
        for k, v in (("eta_a", eta_a), ("eta_b", eta_b), ("eta_c", eta_c), ("eta_d", eta_d)):
            setattr(self, k, check_number(k, v, self.name, 0.0, 1.0))
        if eta_a**2 + eta_c**2 > 1:
            raise ValueError(f"{self.name}: eta_a^2 + eta_c^2 must be <= 1, got {eta_a**2 + eta_c**2:.3g}")
        self.sweeps = check_int("sweeps", sweeps, self.name, minimum=0)
        self.theta_prior = check_choice("theta_prior", theta_prior, THETA_PRIORS, self.name)
        # None: the default of the theta_prior mode (the attributes keep what was given)
        l1_mode = self.theta_prior == "l1"
        self.theta_start, self.langevin_steps, self.langevin_lr = theta_start, langevin_steps, langevin_lr
        self._theta_start = check_number("theta_start", (0.2 if l1_mode else 0.7) if theta_start is None
                                         else theta_start, self.name, 0.0, 1.0)
        self._langevin_steps = check_int("langevin_steps", (500 if l1_mode else 50) if langevin_steps is None
                                         else langevin_steps, self.name)
        self.theta_init = theta_init
        self._theta_init = check_choice("theta_init", ("gaussian" if l1_mode else "prior") if theta_init is None
                                        else theta_init, THETA_INITS, self.name)
        self._langevin_lr = check_number("langevin_lr", (1.0 if l1_mode else 0.1) if langevin_lr is None
                                         else langevin_lr, self.name, low=0.0, low_open=True)
        self.l1 = check_number("l1", l1, self.name, low=0.0)
        self.nonnegative = bool(nonnegative)
        self.theta_site = theta_site
        super().__init__(model, steps=steps, eta=eta_d, grid=grid, prior_site=prior_site, progress=progress)
        self._check_structure(Problem.from_model(model, prior_site=prior_site, allow_unobserved=True))

    def _check_structure(self, problem: Problem):
        site, fn = operator_site(problem, self.name, self.theta_site)
        value = torch.as_tensor(problem.latent[site]["value"]).detach()
        if self.theta_prior == "model":
            try:
                site_density(fn, value, self.name, site)
            except ValueError as e:
                raise ValueError(f"{e}; use theta_prior='l1' (the paper's l1 kernel prior)") from None
        x = torch.zeros((1,) + tuple(problem.event_shape), dtype=problem.dtype, device=problem.device)
        op = measurement_at(problem, site, value.unsqueeze(0), x).operator
        if not isinstance(op, KernelBlur):
            raise ValueError(f"{self.name}: the operator built from site {site!r} is a {type(op).__name__}; "
                             "GibbsDDRM rebuilds an FFT-SVD per sample and needs a KernelBlur (circular blur "
                             "with a kernel tensor). Use blind_dps or blind_red_diff for other operators.")
        return site, fn

    # -- pieces ---------------------------------------------------------------------------
    def _spectral(self, problem, site, phi, x):
        g = measurement_at(problem, site, phi, x)
        sp = g.operator.spectral()
        if sp.s.shape[0] != x.shape[0]:
            raise ValueError(f"{self.name}: the model built {sp.s.shape[0]} kernels for {x.shape[0]} samples; the "
                             f"operator must take one parameter per sample (KernelBlur(k) with k of shape (n, kh, kw))")
        return sp, float(g.noise_std)

    def _x_update(self, sp, sigma, ybar, x0, eps, rho_s, generator):
        s = sp.s.to(x0)
        zero = s <= ZERO_SINGULAR_VALUE * s.amax(-1, keepdim=True)
        xb0, eb = sp.Vt(x0), sp.Vt(eps)
        z = torch.randn(xb0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
        safe = torch.where(zero, torch.ones_like(s), s)
        noisier = ~zero & (s * rho_s >= sigma)
        less = ~zero & ~noisier
        res = torch.where(less, (ybar - s * xb0) / sigma, torch.zeros_like(s))
        el = torch.where(less, eb, torch.zeros_like(eb))
        r = (el * res).sum(-1).abs() / (el.norm(dim=-1) * res.norm(dim=-1)).clamp(min=1e-30)
        a, c = self.eta_a, self.eta_c
        lz = rho_s * torch.sqrt((1 - a**2 - c**2 - 2 * a * c * r).clamp(min=0.0)).unsqueeze(-1)
        x_less = xb0 + a * rho_s * eb + c * rho_s * res + lz * z
        x_noisier = self.eta_b * ybar / safe + (1 - self.eta_b) * xb0 + \
            torch.sqrt((rho_s**2 - (self.eta_b * sigma / safe) ** 2).clamp(min=0.0)) * z
        x_null = xb0 + (1 - self.eta_d**2) ** 0.5 * rho_s * eb + self.eta_d * rho_s * z
        # (a model that reshapes x for the operator: V returns the operator's shape)
        return sp.V(torch.where(zero, x_null, torch.where(noisier, x_noisier, x_less))).reshape(x0.shape)

    def _langevin(self, problem, site, fn, phi, x0, y, sigma, generator):
        if self.theta_prior == "l1":
            return self._kernel_langevin(problem, site, phi, x0, y, sigma, generator)
        n = phi.shape[0]

        def target(p):
            g = measurement_at(problem, site, p, x0)
            f = g.log_prob(y).reshape(n, -1).sum(-1)
            if self.theta_prior == "model":
                f = f + fn.log_prob(p).reshape(n, -1).sum(-1)
            elif self.l1:
                f = f - self.l1 * p.abs().reshape(n, -1).sum(-1)
            return f

        with torch.enable_grad():  # diagonal curvature at the start of the sweep
            p = phi.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(target(p).sum(), p, create_graph=True)
            flat = g.reshape(n, -1)
            h = torch.empty_like(flat)
            for j in range(flat.shape[1]):
                (hj,) = torch.autograd.grad(flat[:, j].sum(), p, retain_graph=True)
                h[:, j] = -hj.reshape(n, -1)[:, j]
        # |curvature|, at least the batch median per entry (a sample in a flat or concave region of the
        # target would otherwise take a huge step into a steep one)
        h = torch.where(torch.isfinite(h), h.detach().abs(), torch.zeros_like(h))
        h = torch.maximum(h, h.median(0, keepdim=True).values).clamp(min=1e-12).reshape(phi.shape)
        step = self._langevin_lr / h
        phi = phi.detach()
        for _ in range(self._langevin_steps):
            with torch.enable_grad():
                p = phi.requires_grad_(True)
                (g,) = torch.autograd.grad(target(p).sum(), p)
            noise = torch.randn(phi.shape, generator=generator, dtype=phi.dtype, device=phi.device)
            phi = (phi + step * torch.where(torch.isfinite(g), g, torch.zeros_like(g))
                   + torch.sqrt(2 * step) * noise).detach()
        return phi

    def _kernel_quadratic(self, problem, site, phi, x0, y, sigma):
        """``(H, b)`` with ``log p(y | x0, k) = -k^T H k / 2 + b^T k + const`` per sample: ``H (n, D, D)``,
        ``b (n, D)``, from the measurement means of the ``D`` unit kernels (the mean is linear in ``k``)."""
        n, shape = phi.shape[0], tuple(phi.shape[1:])
        D = int(torch.Size(shape).numel())
        unit = torch.eye(D, dtype=phi.dtype, device=phi.device).reshape((D,) + shape)
        g = measurement_at(problem, site, unit.repeat((n,) + (1,) * len(shape)), x0.repeat_interleave(D, 0))
        A = g.loc.reshape(n, D, -1).transpose(1, 2)                        # (n, m, D)
        H = A.transpose(1, 2) @ A / sigma**2
        b = (A.transpose(1, 2) @ y.reshape(n, -1, 1).to(A)).squeeze(-1) / sigma**2
        return H, b

    def _kernel_langevin(self, problem, site, phi, x0, y, sigma, generator):
        """Projected Langevin on the kernel's exact quadratic target (see the module docstring)."""
        n = phi.shape[0]
        H, b = self._kernel_quadratic(problem, site, phi, x0, y, sigma)
        D = H.shape[-1]
        P = torch.eye(D, dtype=H.dtype, device=H.device) - 1.0 / D       # the sum-zero subspace
        L = torch.linalg.eigvalsh(P @ H @ P)[:, -1].clamp(min=1e-12)
        step = (self._langevin_lr / L).unsqueeze(-1)
        k = phi.detach().reshape(n, D).to(H)
        for _ in range(self._langevin_steps):
            grad = b - (H @ k.unsqueeze(-1)).squeeze(-1)
            if self.l1:
                grad = grad - self.l1 * torch.sign(k)
            noise = torch.randn(k.shape, generator=generator, dtype=k.dtype, device=k.device)
            k = k + step * grad + torch.sqrt(2 * step) * noise
            k = project_simplex(k) if self.nonnegative else k / k.sum(-1, keepdim=True)
        return k.reshape(phi.shape).to(phi.dtype)

    # -- the run --------------------------------------------------------------------------
    def run(self, problem: Problem, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        site, fn = self._check_structure(problem)
        self.joint = record = ThetaRecord(site)
        den = problem.denoiser
        times = self.times(problem)
        y = problem.observation
        yb = y.expand((n,) + tuple(y.shape))  # one measurement (no plate): y has the operator's out shape
        shape = (n,) + tuple(fn.batch_shape) + tuple(fn.event_shape)
        if self._theta_init == "gaussian" and len(shape) == 3:  # a kernel site (kh, kw): no prior draw needed
            phi = centred_gaussian_kernel(shape[-2:], problem.dtype, problem.device).expand(shape).clone()
        else:
            with torch.no_grad():
                phi = fn.sample((n,)).to(problem.dtype)
        x = terminal_noise(problem.prior, (n,) + tuple(problem.event_shape), generator, problem.dtype,
                           problem.device)
        alphas, sigmas = den.schedule.alpha(times).to(x), den.schedule.sigma(times).to(x)
        rhos = sigmas / alphas
        sp, sigma = self._spectral(problem, site, phi, x)
        ybar = sp.Ut(yb)
        # DDRM start: coordinates noisier than y at rho_1 start from y, the others from noise
        s, rho = sp.s.to(x), rhos[0]
        z = torch.randn(ybar.shape, generator=generator, dtype=x.dtype, device=x.device)
        noisier = s * rho >= sigma
        safe = torch.where(noisier, s, torch.ones_like(s))
        xb = torch.where(noisier, ybar / safe + torch.sqrt((rho**2 - (sigma / safe) ** 2).clamp(min=0)) * z, rho * z)
        x = alphas[0] * sp.V(xb).reshape(x.shape)
        record.set(phi)
        for i in range(len(times) - 1):
            with torch.no_grad():
                x0 = den(x, times[i].to(x))
                eps = (x / alphas[i] - x0) / rhos[i]
                x_s = alphas[i + 1] * self._x_update(sp, sigma, ybar, x0, eps, rhos[i + 1], generator)
                if float(times[i + 1]) <= self._theta_start:
                    for _ in range(self.sweeps):
                        x0p = den(x_s, times[i + 1].to(x)) if float(times[i + 1]) > 0 else x_s
                        phi = self._langevin(problem, site, fn, phi, x0p, yb, sigma, generator)
                        sp, sigma = self._spectral(problem, site, phi, x)
                        ybar = sp.Ut(yb)
                        x_s = alphas[i + 1] * self._x_update(sp, sigma, ybar, x0, eps, rhos[i + 1], generator)
                x = x_s
            record.set(phi)
        return x
