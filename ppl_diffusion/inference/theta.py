"""Joint approximate inference of the latent sites ``theta`` of a model (an unknown noise level, an
operator parameter) beside the diffusion prior's ``x``: the machinery shared by the guides and the
variational solvers.

* :class:`ThetaLikelihood`: ``log p(y | x, theta)`` and ``log p(theta)`` with one theta per sample
  (:meth:`Problem.log_likelihood_theta`), batched when the model broadcasts a leading sample dim of
  its theta sites, else one trace per sample (checked once on the first call: a model such as
  ``Matrix(gain * A)`` cannot broadcast a batch of gains, and a batch that happens to broadcast
  wrongly is caught by comparing two samples with their own traces).
* :class:`JointTheta`: a batch of ``n`` theta values carried along a reverse diffusion (joint
  guides, the BlindDPS / GibbsDDRM idea for any Pyro prior on theta). Each theta site lives in the
  unconstrained space of its support (``biject_to(site["fn"].support)``, the log-Jacobian included in
  the target); at every diffusion step :meth:`JointTheta.update` takes ``steps`` gradient-ascent or
  Langevin steps on ``log p(y | x0_hat, theta) + log p(theta)`` per sample, with ``x0_hat`` the step's
  denoised estimate (no gradient into the network). The steps are preconditioned by the diagonal
  curvature of that target (a damped Newton step; Langevin with the same fixed-per-step metric) so
  that one ``lr`` works across noise levels and numbers of measurements.
* :func:`theta_autoguide` / :func:`autoguide_draws`: a ``pyro.infer.autoguide`` (AutoNormal or
  AutoDelta) on the free theta sites of a model (the prior site stubbed, so building it runs no
  reverse diffusion), for the SVI solvers (RED-Diff, Score Prior).
"""
from __future__ import annotations

import pyro
import pyro.poutine as poutine
import torch
from torch.distributions import biject_to

from .problem import Problem, _StubPrior

__all__ = ["ThetaLikelihood", "JointTheta", "prior_draws", "theta_transforms", "theta_autoguide",
           "autoguide_draws", "THETA_UPDATES", "THETA_GUIDES"]

#: theta updates of the joint guides
THETA_UPDATES = ("grad", "langevin")
#: autoguides of the variational solvers on theta
THETA_GUIDES = ("normal", "delta")


def theta_transforms(problem: Problem, names=None, method: str = "joint inference") -> dict:
    """``name -> biject_to(support)`` (unconstrained -> constrained) of the free latent sites; a
    ValueError naming the site and the ways forward for a site without one (a discrete site)."""
    names = problem.free_latents if names is None else names
    out = {}
    for n in names:
        fn = problem.latent[n]["fn"]
        try:
            if fn.support.is_discrete:
                raise NotImplementedError
            out[n] = biject_to(fn.support)
        except NotImplementedError:
            raise ValueError(
                f"{method}: latent site {n!r} has support {fn.support}, with no bijection to the real line: "
                f"{method} infers continuous latent sites only. Fix it (pyro.condition(model, data={{{n!r}: "
                "<value>}})), or infer it with pyro.infer.MCMC(Gibbs(model, x_kernel=..., theta_kernel=...)) and a "
                "theta kernel for discrete sites.") from None
    return out


def _seeded(generator):
    """A context forking torch's global RNG, seeded from ``generator`` when one is given."""
    fork = torch.random.fork_rng(devices=[])
    seed = None if generator is None else int(torch.randint(0, 2**62, (1,), generator=generator))

    class _Ctx:
        def __enter__(self):
            fork.__enter__()
            if seed is not None:
                torch.manual_seed(seed)

        def __exit__(self, *exc):
            return fork.__exit__(*exc)

    return _Ctx()


def prior_draws(problem: Problem, n: int, generator: torch.Generator | None = None) -> dict:
    """``n`` ancestral draws of the free latent sites from the model's prior (``name -> (n, *shape)``),
    the prior site stubbed (no reverse diffusion). Torch's global RNG is left as it was; a given
    ``generator`` seeds the draws."""
    names = problem.free_latents
    fixed = {k: v for k, v in problem.fixed.items()}
    out = {k: [] for k in names}
    with _seeded(generator), torch.no_grad():
        for _ in range(int(n)):
            with poutine.block(), _StubPrior(fixed):
                tr = poutine.trace(problem.model).get_trace(*problem.args, **problem.kwargs)
            for k in names:
                out[k].append(torch.as_tensor(tr.nodes[k]["value"]).detach())
    return {k: torch.stack(v) for k, v in out.items()}


class ThetaLikelihood:
    """``(log p(y | x, theta), log p(theta))`` with one theta per sample (see the module docstring).

    ``vectorized``: ``None`` (decide on the first call), ``True`` or ``False`` (one trace per sample)."""

    def __init__(self, problem: Problem, vectorized: bool | None = None):
        self.problem = problem
        self.vectorized = vectorized
        exp = getattr(problem, "_expanded", None)
        self.B = exp[1] if exp is not None else 1

    def _one(self, x, theta, i, form):
        B = self.B
        xi = x[i * B:(i + 1) * B]
        return self.problem.log_likelihood_theta(xi, {k: v[i] for k, v in theta.items()}, batched=False, form=form)

    def _loop(self, x, theta, form):
        n = x.shape[0] // self.B
        parts = [self._one(x, theta, i, form) for i in range(n)]
        return torch.cat([p[0].reshape(-1) for p in parts]), torch.stack([p[1] for p in parts])

    def __call__(self, x: torch.Tensor, theta: dict, form: str = "loglik"):
        """``x`` of shape ``(n * B, *event)``, ``theta[name]`` of shape ``(n, *site_shape)`` ->
        ``(ll (n * B,), log_prior (n,))``."""
        if self.vectorized is False:
            return self._loop(x, theta, form)
        if self.vectorized is None:
            self.vectorized = self._check(x, theta, form)
            if not self.vectorized:
                return self._loop(x, theta, form)
        return self.problem.log_likelihood_theta(x, theta, batched=True, form=form)

    def _check(self, x, theta, form) -> bool:
        """Whether the batched trace agrees with per-sample traces (first and last sample)."""
        n = x.shape[0] // self.B
        try:
            with torch.no_grad():
                ll, lp = self.problem.log_likelihood_theta(x.detach(), {k: v.detach() for k, v in theta.items()},
                                                           batched=True, form=form)
        except (RuntimeError, ValueError, IndexError, TypeError):
            return False
        if tuple(ll.shape) != (x.shape[0],) or tuple(lp.shape) != (n,):
            return False
        with torch.no_grad():
            for i in sorted({0, n - 1}):
                li, pi = self._one(x.detach(), {k: v.detach() for k, v in theta.items()}, i, form)
                ok = torch.allclose(ll[i * self.B:(i + 1) * self.B], li.reshape(-1), rtol=1e-5, atol=1e-6) and \
                    torch.allclose(lp[i], pi, rtol=1e-5, atol=1e-6)
                if not ok:
                    return False
        return True


class JointTheta:
    """A batch of ``n`` theta values carried along a reverse diffusion (see the module docstring).

    Args:
        problem: the problem (or its :meth:`Problem.expand_measurements` view: ``x`` then has
            ``n * B`` elements and element ``i * B + b`` uses ``theta[i]``).
        n: theta values (samples).
        update: ``"grad"`` (gradient ascent: each sample's theta tracks the maximiser of
            ``log p(y | x0_hat, theta) + log p(theta)``) or ``"langevin"`` (unadjusted Langevin on the
            same target: each sample's theta is a draw around it).
        lr: step size in the unconstrained space (a fraction of the Newton step with ``precondition``).
        steps: theta steps per diffusion step.
        precondition: scale each step by the inverse of the target's diagonal curvature per sample
            (``max(-d2f/dz2, 1)``; one extra backward pass per theta element); deterministic moves
            are clipped to 1 unconstrained unit (an e-fold for a positive site).
        final_steps: theta steps on the returned x after the last diffusion step (:meth:`finish`), so that
            each returned theta is paired with its own x (``"grad"``: the conditional maximiser;
            ``"langevin"``: Gibbs-like draws of theta | x).
        init: ``name -> (n, *shape)`` starting values (constrained); default prior draws.
        generator: random generator of the prior draws and the Langevin noise.
    """

    def __init__(self, problem: Problem, n: int, *, update: str = "grad", lr: float = 0.1, steps: int = 1,
                 precondition: bool = True, final_steps: int = 0, init: dict | None = None,
                 generator: torch.Generator | None = None):
        self.problem, self.n = problem, int(n)
        self.final_steps = int(final_steps)
        self.names = list(problem.free_latents)
        self.transforms = theta_transforms(problem, self.names)
        self.update_kind, self.lr, self.steps, self.precondition = update, float(lr), int(steps), bool(precondition)
        self.likelihood = ThetaLikelihood(problem)
        start = prior_draws(problem, self.n, generator) if init is None else init
        dtype, device = problem.dtype, problem.device
        self.z = {k: self.transforms[k].inv(start[k].to(dtype=dtype, device=device)).detach() for k in self.names}
        #: per diffusion step: the batch mean of each site (constrained)
        self.history: dict = {k: [] for k in self.names}

    # ------------------------------------------------------------------------------------
    def values(self, z: dict | None = None) -> dict:
        """Constrained theta ``name -> (n, *shape)`` (differentiable in ``z`` when given)."""
        z = self.z if z is None else z
        return {k: self.transforms[k](z[k]) for k in self.names}

    def _per_sample(self, v: torch.Tensor) -> torch.Tensor:
        return v.reshape(self.n, -1).sum(-1)

    def log_target(self, x0: torch.Tensor, z: dict) -> torch.Tensor:
        """``log p(y | x0, theta) + log p(theta) + log |d theta / dz|`` per theta sample ``(n,)``."""
        theta = self.values(z)
        ll, lp = self.likelihood(x0, theta)
        out = self._per_sample(ll) + lp
        for k in self.names:
            out = out + self._per_sample(self.transforms[k].log_abs_det_jacobian(z[k], theta[k]))
        return out

    def update(self, x0: torch.Tensor, generator: torch.Generator | None = None, steps: int | None = None,
               record: bool = True) -> None:
        """``steps`` (default ``self.steps``) theta moves given the denoised estimate ``x0`` (detached
        here); ``record`` appends the batch mean to :attr:`history`."""
        x0 = x0.detach()
        for _ in range(self.steps if steps is None else int(steps)):
            with torch.enable_grad():
                z = {k: v.detach().requires_grad_(True) for k, v in self.z.items()}
                f = self.log_target(x0, z)
                grads = torch.autograd.grad(f.sum(), [z[k] for k in self.names], create_graph=self.precondition)
                curv = {}
                if self.precondition:
                    for k, g in zip(self.names, grads):
                        flat_g = g.reshape(self.n, -1)
                        h = torch.empty_like(flat_g)
                        for j in range(flat_g.shape[1]):  # diagonal: samples are independent
                            (hj,) = torch.autograd.grad(flat_g[:, j].sum(), z[k], retain_graph=True,
                                                        allow_unused=True)
                            h[:, j] = 0.0 if hj is None else -hj.reshape(self.n, -1)[:, j]
                        h = torch.where(torch.isfinite(h), h.detach(), torch.ones_like(h))
                        curv[k] = h.clamp(min=1.0).reshape(g.shape)
            new = {}
            for k, g in zip(self.names, grads):
                g = g.detach()
                g = torch.where(torch.isfinite(g), g, torch.zeros_like(g))
                metric = 1.0 / curv[k] if self.precondition else torch.ones_like(g)
                move = self.lr * metric * g
                if self.precondition:
                    move = move.clamp(-1.0, 1.0)
                if self.update_kind == "langevin":
                    noise = torch.randn(g.shape, generator=generator, dtype=g.dtype, device=g.device)
                    move = move + torch.sqrt(2.0 * self.lr * metric) * noise
                new[k] = (self.z[k] + move).detach()
            self.z = new
        if record:
            with torch.no_grad():
                for k, v in self.values().items():
                    self.history[k].append(v.mean(0))

    def finish(self, x: torch.Tensor, generator: torch.Generator | None = None) -> None:
        """``final_steps`` theta moves on the returned samples ``x`` (not recorded in the history)."""
        if self.final_steps:
            self.update(x, generator, steps=self.final_steps, record=False)

    def data_term(self, x0: torch.Tensor, form: str) -> torch.Tensor:
        """Per element of ``x0``: ``log p(y | x0, theta)`` (``"loglik"``), ``||y - A_theta(x0)||^2``
        (``"sqnorm"``) or its square root (``"norm"``), theta fixed at the current values."""
        theta = {k: v.detach() for k, v in self.values().items()}
        if form == "loglik":
            return self.likelihood(x0, theta)[0]
        sq = self.likelihood(x0, theta, form="sqnorm")[0]
        return sq if form == "sqnorm" else torch.sqrt(sq.clamp(min=torch.finfo(sq.dtype).tiny))

    def trace(self) -> dict:
        """``name -> (steps, *shape)``: the batch mean of each site after every diffusion step."""
        return {k: torch.stack(v) if v else torch.empty(0) for k, v in self.history.items()}


# -- autoguides on theta for the variational solvers -------------------------------------------
def theta_autoguide(model, names: list, kind: str = "normal", prefix: str = "theta", init_scale: float = 0.1):
    """An AutoNormal (``kind="normal"``) or AutoDelta (``"delta"``) guide on the sites ``names`` of
    ``model``, initialised at the prior medians; its parameters are named ``{prefix}.*`` in Pyro's
    param store. The guide is built on the model with the diffusion prior stubbed and every other site
    hidden, so that setting it up runs no reverse diffusion."""
    from pyro.infer.autoguide import AutoDelta, AutoNormal
    from pyro.infer.autoguide.initialization import init_to_median

    names = list(names)

    def theta_model(*args, **kwargs):
        with poutine.block(expose=names), _StubPrior():
            return model(*args, **kwargs)

    if kind == "normal":
        guide = AutoNormal(theta_model, init_loc_fn=init_to_median(num_samples=31), init_scale=float(init_scale))
    elif kind == "delta":
        guide = AutoDelta(theta_model, init_loc_fn=init_to_median(num_samples=31))
    else:
        raise ValueError(f"theta guide must be one of {THETA_GUIDES}, got {kind!r}")
    guide._pyro_name = prefix
    return guide


def autoguide_draws(guide, names: list, n: int, *args, nest: int = 0, generator: torch.Generator | None = None,
                    **kwargs):
    """``n`` draws of an autoguide on theta: ``(name -> (n, *site_shape), log q (n,))`` in one
    vectorised call (a plate of ``n`` at dim ``-(nest + 1)``), torch's global RNG left as it was."""
    with _seeded(generator), torch.no_grad(), poutine.block():
        with pyro.plate("_theta_draws", int(n), dim=-(nest + 1)):
            tr = poutine.trace(guide).get_trace(*args, **kwargs)
        tr.compute_log_prob()
    n = int(n)
    out, log_q = {}, torch.zeros(n, dtype=torch.float64)
    for k in names:
        site = tr.nodes[k]
        own = tuple(guide.prototype_trace.nodes[k]["value"].shape)
        v = site["value"]
        if v.dim() <= len(own) or v.shape[0] != n:  # not broadcast over the draws (a point mass)
            v = v.reshape(own).expand((n,) + own)
        out[k] = v.reshape((n,) + own)
        lq = site["log_prob"]
        log_q = log_q + (lq.reshape(n, -1).sum(-1) if lq.dim() and lq.shape[0] == n else lq.sum()).to(torch.float64)
    return out, log_q


def theta_structure(model, prior_site: str | None, method: str, run_directly: str):
    """The structure a theta kernel (Gibbs, PMMH) needs: ``(problem, theta names, current values)``.
    Refuses a model without a free latent site besides the prior (``run_directly`` says what to
    use instead) and a discrete theta site, both at construction."""
    structure = Problem.from_model(model, prior_site=prior_site, allow_unobserved=True)
    structure.check_model(method, latents=True)
    names = structure.free_latents
    if not names:
        raise ValueError(f"{method}: the model has no latent site besides the diffusion prior "
                         f"{structure.prior_site!r}; {run_directly}")
    theta_transforms(structure, names, method)
    values = {n: structure.latent[n]["value"].detach() for n in names}
    return structure, names, values
