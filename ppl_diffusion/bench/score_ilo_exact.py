"""Exact check of Score-ILO on E2: a linear "decoder" ``G2(h) = W h + b`` with a Gaussian-mixture prior on ``h``.

The split is :func:`~ppl_diffusion.models.ilo.affine_split` (``G1 = identity``) and the layer score
model is the exact GMM denoiser, so every error is the method's. The h round alone is run
(``z_steps=0``, ``init`` = the restarts' starting ``h``; no clamp, no sphere).

MAP mode (``noise=0``, ``hot_steps=1``, plain gradient descent ``optimizer="sgd"``): the update
``h <- h - lr grad MSE(h) + tau Delta(h)`` with ``Delta = PC_t(h) - h`` has its fixed points at the
stationary points of (up to O(eps_c dt beta), ~1e-14 here)

    J(h) = MSE(h) - tau / lr * [(dt beta_t + eps_c) log p_t(h) + dt beta_t |h|^2 / 4]

(:func:`ilo_objective`), found independently by L-BFGS on the exact ``log p_t`` from the same start.
The posterior MAP instead minimises ``MSE(h) - (2 sigma_y^2 / m) log p_0(h)`` (``m`` = entries of
``y``): the ratio of the two prior weights is the method's miscalibration. Adam with the official
constants (lr 0.05, tau 0.1) is run on the same problems and compared with both stationary points.

Sampling mode (the code's noise 0.025, PC noise on): the restarts' final ``h`` against exact
posterior draws by sliced Wasserstein, with the floor of as many exact draws, and the ratio of the
draws' spread to the posterior's. For plain gradient descent the update is a Langevin step of
``exp(-U)`` with ``U = (2 / s^2) (lr MSE - tau Phi)``, ``s^2 = noise^2 + tau^2 (dt beta + 2 eps_c)``:
the implied data weight ``2 lr / s^2`` against the exact ``m / (2 sigma_y^2)`` and prior weight
``2 tau (dt beta + eps_c) / s^2`` against 1 are reported.

    python benchmarks/score_ilo_exact.py [--problems 3]
"""
from __future__ import annotations

import argparse
import shlex
import sys

import torch

from .report import MarkdownTable, add_out_argument, write_result

__all__ = ["E2ILO", "e2_ilo", "pull_constants", "ilo_objective", "map_objective", "lbfgs", "run_map",
           "run_sampling", "main"]


class E2ILO:
    """An E2 problem with its exact layer score model: ``pb`` (LatentGMMProblem), ``schedule``,
    ``model``, ``score`` (IntermediateScore of the exact GMM denoiser), ``m`` (entries of y)."""

    def __init__(self, variant: str = "a", seed: int = 0):
        from ..models.ilo import IntermediateScore
        from ..models.latent_gmm import latent_gmm_problem
        from ..schedules import VPSchedule

        self.pb = latent_gmm_problem(variant, seed=seed)
        self.schedule = VPSchedule.linear()
        self.model = self.pb.model(self.schedule)
        self.score = IntermediateScore(self.pb.latent_prior.denoiser(self.schedule))
        self.m = int(self.pb.y.numel())
        self.k = int(self.pb.autoencoder.latent_shape.numel())

    def mse(self, h: torch.Tensor) -> torch.Tensor:
        x = self.pb.autoencoder.decode(h)
        return (self.pb.operator(x) - self.pb.y).reshape(h.shape[0], -1).pow(2).mean(1)


def e2_ilo(variant: str = "a", seed: int = 0) -> E2ILO:
    return E2ILO(variant, seed)


def pull_constants(schedule, t: float = 0.01, snr: float = 1e-4) -> dict:
    """``sigma_t``, ``alpha_t``, ``beta_t``, ``dt``, ``eps_c`` of the pull at time ``t`` (see score_ilo)."""
    tt = torch.as_tensor(t, dtype=torch.float64)
    T = schedule.num_train_timesteps
    beta = -2.0 * float(schedule.dlog_alpha_dt(tt))
    sigma = float(schedule.sigma(tt))
    return dict(alpha=float(schedule.alpha(tt)), sigma=sigma, beta=beta, dt=1.0 / T,
                eps_c=2.0 * (1.0 - beta / T) * (snr * sigma) ** 2)


def ilo_objective(e: E2ILO, lr: float, tau: float, t: float = 0.01, snr: float = 1e-4):
    """``J(h)`` of the module docstring (rows of ``h`` are restarts)."""
    c = pull_constants(e.schedule, t, snr)
    w = tau / lr

    def J(h):
        lp = e.pb.latent_prior.marginal_log_prob(h, c["alpha"], c["sigma"])
        return e.mse(h) - w * ((c["dt"] * c["beta"] + c["eps_c"]) * lp + 0.25 * c["dt"] * c["beta"] * (h * h).sum(-1))

    return J


def map_objective(e: E2ILO):
    """The posterior MAP objective in MSE units: ``MSE(h) - (2 sigma_y^2 / m) log p_0(h)``."""
    lam = 2 * e.pb.noise_std**2 / e.m
    return lambda h: e.mse(h) - lam * e.pb.latent_prior.log_prob(h)


def lbfgs(J, h0: torch.Tensor, iters: int = 200) -> torch.Tensor:
    """A stationary point of ``J`` per row, by L-BFGS (strong Wolfe) from ``h0``."""
    def one(h0r):
        h = h0r.clone().requires_grad_(True)
        opt = torch.optim.LBFGS([h], lr=1.0, max_iter=iters, tolerance_grad=1e-14, tolerance_change=1e-16,
                                history_size=20, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            v = J(h).sum()
            v.backward()
            return v

        opt.step(closure)
        return h.detach()

    return torch.cat([one(h0[r: r + 1]) for r in range(h0.shape[0])])


def _grad_norm(J, h: torch.Tensor) -> torch.Tensor:
    h = h.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(J(h).sum(), h)
    return g.norm(dim=1)


def _run_ilo(e: E2ILO, h0, gen, **options):
    from ..inference.optimise import ScoreILO

    s = ScoreILO(e.model, score_model=e.score, z_steps=0, clamp=False, sphere=False, init=h0, **options)
    return s.draw(h0.shape[0], y=e.pb.y, generator=gen)


def lipschitz(e: E2ILO) -> float:
    """The largest curvature of ``MSE(h)``: ``(2 / m) sigma_max(A W)^2``."""
    AW = e.pb.A @ e.pb.autoencoder.W
    return 2.0 / e.m * float(torch.linalg.matrix_norm(AW, 2)) ** 2


def run_map(e: E2ILO, restarts: int = 4, seed: int = 0, gd=(0.5, 20.0, 8000), adam=(0.05, 0.1, 3000)) -> dict:
    """MAP mode on one problem. GD at ``lr = gd[0] / L`` (L: :func:`lipschitz`), ``tau = gd[1] lr``: the
    final ``h`` against the stationary points of ``J`` (its gradient there; L-BFGS from the same start,
    and L-BFGS polishing from ``h``). Adam with the code's constants against the same."""
    g = torch.Generator().manual_seed(seed)
    h0 = e.pb.latent_prior.sample(restarts, generator=g)
    post_std = e.pb.posterior.covariance().diagonal().sqrt()
    c = pull_constants(e.schedule)
    hm = lbfgs(map_objective(e), h0)
    out = {}
    for name, opt in (("gd", "sgd"), ("adam", "adam")):
        if name == "gd":
            lr = gd[0] / lipschitz(e)
            tau, iters = gd[1] * lr, gd[2]
        else:
            lr, tau, iters = adam
        d = _run_ilo(e, h0, g, h_steps=iters, lr=lr, h_temperature=tau, optimizer=opt)
        h = d.extra["h"]
        J = ilo_objective(e, lr, tau)
        hj = lbfgs(J, h0)
        polished = lbfgs(J, h)
        same = int(((h - hj).abs().max(1).values < 1e-6).sum())
        out[name] = dict(lr=lr, tau=tau, iters=iters, err_J=float((h - hj).abs().max()), same=same,
                         polish=float((polished - h).abs().max()), grad_J=float(_grad_norm(J, h).max()),
                         grad_J0=float(_grad_norm(J, h0).max()),
                         dist_map=float(((h - hm) / post_std).norm(dim=1).mean()),
                         dist_J_map=float(((hj - hm) / post_std).norm(dim=1).mean()),
                         lam_ratio=tau / lr * (c["dt"] * c["beta"] + c["eps_c"]) / (2 * e.pb.noise_std**2 / e.m),
                         nfe=d.nfe_per_sample, restarts=restarts)
    return out


def run_sampling(e: E2ILO, restarts: int = 400, iters: int = 3000, seed: int = 0, noise: float = 0.025,
                 lr: float = 0.05, tau: float = 0.1, optimizer: str = "adam") -> dict:
    """Sampling mode on one problem: SW of the restarts' final ``h`` to exact posterior draws."""
    from ..metrics import sliced_wasserstein

    g = torch.Generator().manual_seed(seed)
    h0 = e.pb.latent_prior.sample(restarts, generator=g)
    d = _run_ilo(e, h0, g, h_steps=iters, lr=lr, h_temperature=tau, optimizer=optimizer, noise=noise)
    h = d.extra["h"]
    ref = e.pb.posterior.sample(4000, generator=g)
    other = e.pb.posterior.sample(restarts, generator=g)
    gp = torch.Generator().manual_seed(seed + 1)
    sw = float(sliced_wasserstein(h, ref, generator=gp))
    floor = float(sliced_wasserstein(other, ref, generator=torch.Generator().manual_seed(seed + 1)))
    prior_sw = float(sliced_wasserstein(e.pb.latent_prior.sample(restarts, generator=g), ref,
                                        generator=torch.Generator().manual_seed(seed + 1)))
    c = pull_constants(e.schedule)
    s2 = noise**2 + tau**2 * (c["dt"] * c["beta"] + 2 * c["eps_c"])
    std_ratio = float((h.std(0) / e.pb.posterior.covariance().diagonal().sqrt()).mean())
    return dict(sw=sw, floor=floor, prior_sw=prior_sw, std_ratio=std_ratio,
                data_weight=(2 * lr / s2) / (e.m / (2 * e.pb.noise_std**2)),
                prior_weight=2 * tau * (c["dt"] * c["beta"] + c["eps_c"]) / s2, nfe=d.nfe_per_sample)


def main(argv=None) -> str:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(prog="python benchmarks/score_ilo_exact.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--problems", type=int, default=3, help="E2 problems (seeds) per variant")
    p.add_argument("--variants", default="a,b")
    p.add_argument("--restarts", type=int, default=400, help="restarts of the sampling-mode check")
    p.add_argument("--threads", type=int, default=1)
    add_out_argument(p, "score_ilo_exact")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    t1 = MarkdownTable("variant", "seed", "run", "lr / tau / iters", "max norm of grad J(h) (at h0)",
                       "L-BFGS polish from h moves", "same point as L-BFGS from h0", "max abs(h - h_J)",
                       "dist to posterior MAP (post. std)", "J's point to MAP", "prior weight / calibrated")
    t2 = MarkdownTable("variant", "seed", "run", "SW to p(h|y)", "floor (exact draws)", "prior draws",
                       "std / posterior std", "implied data weight / exact", "implied prior weight / exact")
    for v in a.variants.split(","):
        for seed in range(a.problems):
            e = e2_ilo(v, seed)
            r = run_map(e, seed=seed)
            for name, q in r.items():
                t1.add(v, seed, "MAP, " + ("GD" if name == "gd" else "Adam (code constants)"),
                       f"{q['lr']:.3g} / {q['tau']:.3g} / {q['iters']}", f"{q['grad_J']:.1e} ({q['grad_J0']:.1e})",
                       f"{q['polish']:.1e}", f"{q['same']}/{q['restarts']}", f"{q['err_J']:.2e}",
                       f"{q['dist_map']:.2f}", f"{q['dist_J_map']:.2f}", f"{q['lam_ratio']:.3g}")
            for opt, lr in (("adam", 0.05), ("sgd", 0.05)):
                s = run_sampling(e, restarts=a.restarts, seed=seed, optimizer=opt, lr=lr)
                t2.add(v, seed, f"noise 0.025, {'Adam' if opt == 'adam' else 'GD'} lr {lr:g}, tau 0.1, 3000 it.",
                       f"{s['sw']:.4f}", f"{s['floor']:.4f}", f"{s['prior_sw']:.4f}", f"{s['std_ratio']:.2f}",
                       f"{s['data_weight']:.2f}" if opt == "sgd" else "n/a (Adam)",
                       f"{s['prior_weight']:.3f}" if opt == "sgd" else "n/a (Adam)")
    notes = ("E2 (`models/latent_gmm.py`: d = 16, k = 4, 6 observed pixels, sigma_y = 0.5, latent GMM of 25 "
             "components scaled by 0.25), variants a (orthonormal W) and b (ill-conditioned W); the layer h = z "
             "(G1 = identity), G2 = Dec; score model = the exact GMM denoiser; t = 0.01, hot_steps 1, snr 1e-4. "
             "MAP rows: 4 restarts from prior draws; GD at lr = 0.5 / L (L the largest curvature of the MSE), "
             "tau = 20 lr, 8000 iterations; "
             "h_J is the L-BFGS stationary point of J from the same start (J is not convex: it may be another "
             "stationary point), 'polish' how far L-BFGS on J moves from Score-ILO's h; "
             "'dist to posterior MAP' the distance (in exact posterior standard deviations, mean over restarts) "
             "to the L-BFGS stationary point of the exact MAP objective from the same start; 'prior weight / "
             "calibrated' = tau (dt beta + eps_c) / lr against 2 sigma_y^2 / m. The GD rows check the "
             "implementation (the fixed point must be J's stationary point); the Adam rows use the official "
             "constants, whose normalised steps do not stop at J's stationary point. Sampling rows: 400 "
             "restarts, final h as draws, SW (1000 projections) to 4000 exact posterior draws; floor = 400 "
             "independent exact draws; the 'implied' weights are those of the Langevin chain GD + noise "
             "targets (exact = 1).")
    cmd = shlex.join(["python", "benchmarks/score_ilo_exact.py"] + argv)
    return write_result(a.out, "score_ilo_exact", "Score-ILO on E2 (linear G2, exact GMM score on h)", cmd,
                        str(t1) + "\n\n" + str(t2), notes)


if __name__ == "__main__":  # pragma: no cover
    main()
