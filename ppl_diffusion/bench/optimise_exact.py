"""Exact check E4 of the optimise-the-input solvers: a Gaussian prior ``N(mu, C)``.

With the exact (affine) denoiser of a Gaussian, every deterministic DDIM map without clipping is
affine, ``G(z) = a + M z``, with ``M = U diag(prod_i m_i(lambda)) U^T`` in the eigenbasis
``C = U diag(lambda) U^T``: one step ``t -> s`` multiplies ``x_t - alpha_t mu`` by
``m = (alpha_s alpha_t lambda + sigma_s sigma_t) / (alpha_t^2 lambda + sigma_t^2)`` and the last step
(to ``x0_hat``) by ``alpha_t lambda / (alpha_t^2 lambda + sigma_t^2)``. The consistency function is
``f(x, s) = mu + (C + s_min^2)^{1/2} (C + s^2)^{-1/2} (x - mu)`` (:func:`gaussian_consistency`).
So ``min_z |y - A G(z)|^2`` is least squares in ``z``:

* gradient descent from ``z0`` converges to ``z0 + (AM)^+ (y - A G(z0))`` (it never leaves
  ``z0 + row(AM)``);
* on the sphere ``|z| = sqrt(d)`` it is a trust-region subproblem, solved exactly by
  :func:`sphere_solution` (eigendecomposition plus a 1-D secular equation in the multiplier).

:func:`run` writes ``benchmarks/results/optimise_exact.md``: each solver's iterate error against the
closed form from the same start, and the distilled consistency model against the closed-form
consistency function when trained on the exact Gaussian teacher.
"""
from __future__ import annotations

import math
import time

import pyro
import torch

from ..models import GaussianMeasurement
from ..models.gmm import GaussianMixture
from ..models.operators import Matrix
from ..models.consistency import karras_sigmas
from ..schedules import VPSchedule

__all__ = ["E4", "e4_problem", "ddim_affine", "least_squares_limit", "sphere_solution", "run", "run_consistency",
           "main"]


class E4:
    """A Gaussian-prior linear problem: ``mean``, ``cov``, ``A``, ``y``, ``noise_std``, ``model``, ``schedule``."""

    def __init__(self, mean, cov, A, y, noise_std, schedule):
        self.mean, self.cov, self.A, self.y, self.noise_std, self.schedule = mean, cov, A, y, noise_std, schedule
        prior = GaussianMixture(torch.ones(1, dtype=mean.dtype), mean[None], cov[None]).diffusion_prior(schedule)
        op = Matrix(A)

        def model(y=None):
            x = pyro.sample("x", prior)
            return pyro.sample("y", GaussianMeasurement(op, x, noise_std), obs=y)

        self.model = model

    @property
    def d(self):
        return self.mean.numel()


def e4_problem(d: int = 8, m: int = 4, noise_std: float = 0.1, seed: int = 0) -> E4:
    """Random ``N(mu, C)`` (eigenvalues 0.05..1, random basis, ``mu`` ~ 0.3 N(0, I)) in float64,
    ``A`` with N(0, 1/d) entries, ``y`` from a prior draw."""
    g = torch.Generator().manual_seed(seed)
    dt = torch.float64
    Q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=dt))
    cov = (Q * torch.linspace(0.05, 1.0, d, dtype=dt)) @ Q.T
    mean = 0.3 * torch.randn(d, generator=g, dtype=dt)
    A = torch.randn(m, d, generator=g, dtype=dt) / math.sqrt(d)
    x = mean + torch.linalg.cholesky(cov) @ torch.randn(d, generator=g, dtype=dt)
    y = A @ x + noise_std * torch.randn(m, generator=g, dtype=dt)
    return E4(mean, cov, A, y, noise_std, VPSchedule.linear())


def ddim_affine(pb: E4, times: torch.Tensor):
    """``(a, M)`` of the deterministic DDIM map over ``times`` with the exact Gaussian denoiser."""
    lam, U = torch.linalg.eigh(pb.cov)
    sched = pb.schedule
    fac = torch.ones_like(lam)
    for i, t in enumerate(times):
        a_t, s_t = float(sched.alpha(t)), float(sched.sigma(t))
        den = a_t**2 * lam + s_t**2
        if i == len(times) - 1:
            fac = fac * a_t * lam / den
        else:
            a_s, s_s = float(sched.alpha(times[i + 1])), float(sched.sigma(times[i + 1]))
            fac = fac * (a_s * a_t * lam + s_s * s_t) / den
    M = (U * fac) @ U.T
    a0 = float(sched.alpha(times[0]))
    return pb.mean - a0 * (M @ pb.mean), M


def least_squares_limit(B: torch.Tensor, c: torch.Tensor, z0: torch.Tensor) -> torch.Tensor:
    """Limit of gradient descent on ``|B z - c|^2`` from ``z0`` (rows of ``z0`` are restarts)."""
    return z0 + (c - z0 @ B.T) @ torch.linalg.pinv(B).T


def sphere_solution(B: torch.Tensor, c: torch.Tensor, radius: float) -> torch.Tensor:
    """Global minimiser of ``|B z - c|^2`` subject to ``|z| = radius`` (equality trust-region
    subproblem): ``z = (B^T B + lam I)^{-1} B^T c`` with ``lam >= -s_min`` solving ``|z(lam)| = radius``
    (bisection on the monotone secular equation; the "hard case" is not handled: it raises)."""
    s, V = torch.linalg.eigh(B.T @ B)
    g = V.T @ (B.T @ c)

    def norm(lam):
        return float(torch.sqrt((g**2 / (s + lam) ** 2).sum()))

    lo = -float(s[0]) + 1e-14
    if norm(lo) < radius:
        raise ValueError("hard case of the trust-region subproblem (no unique solution)")
    hi = float(g.norm()) / radius + abs(float(s[0])) + 1.0
    for _ in range(300):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if norm(mid) > radius else (lo, mid)
    lam = 0.5 * (lo + hi)
    return V @ (g / (s + lam))


def run(seeds=(0, 1, 2), restarts: int = 4, iterations: int = 3000, out=None, cmd="") -> str:
    """The E4 table (see the module docstring); written to ``out`` (:func:`~.report.write_result`)."""
    from ..inference.optimise import DMPlug, SHRED
    from ..inference.optimise.base import ddim_times
    from .report import MarkdownTable, write_result

    table = MarkdownTable("solver", "seed", "m", "iterations", "max rel. error of z vs closed form",
                          "max |B z - c|", "|B z* - c| (closed form)", "seconds")
    cases = [  # (row label, solver class, options, m, sphere)
        ("DMPlug (GD)", DMPlug, dict(optimizer="sgd", steps=3), 4, False),
        ("DMPlug (Adam lr 1e-2)", DMPlug, dict(optimizer="adam", steps=3, lr=1e-2), 4, False),
        ("SHRED full gradient (GD, sphere)", SHRED, dict(optimizer="sgd", grad="full"), 12, True),
        ("SHRED straight-through (GD, sphere)", SHRED, dict(optimizer="sgd", grad="straight_through"), 12, True),
        ("SHRED straight-through (Adam lr 1e-2, sphere)", SHRED, dict(optimizer="adam", lr=1e-2), 12, True),
    ]
    for seed in seeds:
        for name, cls, opts, m, sph in cases:
            opts = dict(opts)
            pb = e4_problem(m=m, seed=seed)
            a, M = ddim_affine(pb, ddim_times(pb.schedule, opts.get("steps", 10)))
            B, c = pb.A @ M, pb.y - pb.A @ a
            g = torch.Generator().manual_seed(100 + seed)
            z0 = torch.randn(restarts, pb.d, generator=g, dtype=torch.float64)
            if sph:
                z0 = z0 * math.sqrt(pb.d) / z0.norm(dim=1, keepdim=True)
            if opts.get("optimizer") == "sgd":  # plain GD: step 0.9 / L of the mean-squared objective
                L = 2 * float(torch.linalg.matrix_norm(B, 2)) ** 2 / m
                if opts.get("grad") == "straight_through":  # its z-gradient is A^T r / alpha_0
                    a0 = float(pb.schedule.alpha(ddim_times(pb.schedule, 10)[0]))
                    L = 2 * float(torch.linalg.matrix_norm(B, 2) * torch.linalg.matrix_norm(pb.A, 2)) / (m * a0)
                opts["lr"] = 0.9 / L
            solver = cls(pb.model, clip=False, iterations=iterations, sphere=sph, init=z0, **opts)
            t0 = time.perf_counter()
            res = solver.draw(restarts, y=pb.y)
            sec = time.perf_counter() - t0
            z = res.extra["z"]
            target = (sphere_solution(B, c, math.sqrt(pb.d)).expand(restarts, -1) if sph
                      else least_squares_limit(B, c, z0))
            err = float(((z - target).norm(dim=1) / target.norm(dim=1)).max())
            r = float((z @ B.T - c).norm(dim=1).max())
            r_star = float((target @ B.T - c).norm(dim=1).max())
            table.add(name, seed, m, iterations, f"{err:.2e}", f"{r:.4f}", f"{r_star:.4f}", f"{sec:.1f}")
    notes = ("E4: prior N(mu, C) in d = 8 (eigenvalues 0.05..1), exact affine denoiser, DDIM without clipping "
             "(DMPlug 3 steps 666/333/0, SHRED 10 steps 900..0 of a 1000-step linear VP schedule), A with N(0, 1/d) "
             "entries, sigma_y = 0.1, 4 restarts per row from fixed starts. Closed forms: DMPlug: z0 + (AM)^+ (y - "
             "A G(z0)), the limit of gradient descent from the same start; SHRED: the global minimiser on the sphere "
             "|z| = sqrt(d) (trust-region subproblem, secular equation). GD step 0.9 / L (L of the full gradient; "
             "for the straight-through one, of A^T A M / alpha_0). Adam has another implicit "
             "bias than GD (its limit is not z0 + (AM)^+ r0): for Adam compare the residual columns. SHRED's "
             "straight-through gradient is (1 / alpha_0) (A^T r) in x-space, not the gradient of the objective in z, "
             "so its fixed point on the sphere is not the constrained minimiser; the rows show by how much.")
    return write_result(out, "optimise_exact", "Optimise-the-input solvers against closed forms (E4)", cmd,
                        str(table), notes)


def run_consistency(seeds=(0, 1, 2), restarts: int = 4, iterations: int = 3000, steps: int = 1000, out=None,
                    cmd: str = "") -> str:
    """Consistent-CSGM with the exact Gaussian consistency function (GD iterate vs closed form), and
    consistency distillation with the exact Gaussian teacher (relative errors against the composed
    teacher Heun steps and against the closed-form consistency function, at N = 18 and 40 levels)."""
    from ..inference.optimise import ConsistentCSGM
    from ..models.consistency import AffineTable, ConsistencyModel, gaussian_consistency_model
    from ..training.consistency import distill, heun_step
    from .report import MarkdownTable, write_result

    t1 = MarkdownTable("solver", "seed", "m", "iterations", "max rel. error of z vs closed form", "max |B z - c|",
                       "|B z* - c| (closed form)", "seconds")
    for seed in seeds:
        for label, sph in (("Consistent-CSGM (GD)", False), ("Consistent-CSGM (GD, sphere)", True)):
            m = 12 if sph else 4
            pb = e4_problem(m=m, seed=seed)
            cm = gaussian_consistency_model(pb.mean, pb.cov)
            lam, U = torch.linalg.eigh(pb.cov)
            S = (U * torch.sqrt((lam + cm.sigma_min**2) / (lam + cm.sigma_max**2))) @ U.T
            M, a = cm.sigma_max * S, pb.mean - S @ pb.mean
            B, c = pb.A @ M, pb.y - pb.A @ a
            z0 = torch.randn(restarts, pb.d, generator=torch.Generator().manual_seed(100 + seed), dtype=torch.float64)
            if sph:
                z0 = z0 * math.sqrt(pb.d) / z0.norm(dim=1, keepdim=True)
            lr = 0.9 * m / (2 * float(torch.linalg.matrix_norm(B, 2)) ** 2)
            t0 = time.perf_counter()
            res = ConsistentCSGM(pb.model, consistency_model=cm, optimizer="sgd", lr=lr, iterations=iterations,
                                 sphere=sph, init=z0).draw(restarts, y=pb.y)
            sec = time.perf_counter() - t0
            z = res.extra["z"]
            target = (sphere_solution(B, c, math.sqrt(pb.d)).expand(restarts, -1) if sph
                      else least_squares_limit(B, c, z0))
            err = float(((z - target).norm(dim=1) / target.norm(dim=1)).max())
            t1.add(label, seed, m, iterations, f"{err:.2e}", f"{float((z @ B.T - c).norm(dim=1).max()):.4f}",
                   f"{float((target @ B.T - c).norm(dim=1).max()):.4f}", f"{sec:.1f}")
    t2 = MarkdownTable("seed", "levels N", "level", "sigma", "Heun chain vs closed form", "student vs Heun chain",
                       "student vs closed form", "student vs closed form before training")
    for seed in seeds:
        pb = e4_problem(d=4, seed=seed)
        mu, C = pb.mean, pb.cov
        lam, U = torch.linalg.eigh(C)

        def teacher(x, s, mu=mu, lam=lam, U=U):
            return mu + ((x - mu) @ U * (lam / (lam + s.reshape(-1, 1) ** 2))) @ U.T

        L = torch.linalg.cholesky(C)

        def data(b, g, mu=mu, L=L):
            return mu + torch.randn(b, mu.numel(), generator=g, dtype=torch.float64) @ L.T

        exact = gaussian_consistency_model(mu, C)
        for N in (18, 40):
            sig = karras_sigmas(N)
            model = ConsistencyModel(AffineTable(sig, mu.numel()), (mu.numel(),))
            g = torch.Generator().manual_seed(5)
            x0, noise = data(512, g), torch.randn(512, mu.numel(), generator=g, dtype=torch.float64)
            levels = (0, N // 3, 2 * N // 3)

            def errs(levels=levels, sig=sig, x0=x0, noise=noise, model=model, N=N, exact=exact):
                out = []
                for n in levels:
                    s = sig[n].expand(512)
                    x = x0 + float(sig[n]) * noise
                    chain = x.clone()
                    for k in range(n, N - 1):
                        chain = heun_step(teacher, chain, sig[k].expand(512), sig[k + 1].expand(512))
                    with torch.no_grad():
                        f, fx = model(x, s), exact(x, s)
                    out.append(((f - chain).norm() / chain.norm(), (f - fx).norm() / fx.norm(),
                                (chain - fx).norm() / fx.norm()))
                return out

            before = errs()
            distill(model, teacher, data, steps=steps, batch_size=256, lr=3e-2, lr_decay=True, num_scales=N,
                    generator=torch.Generator().manual_seed(seed))
            for n, (e_chain, e_exact, h), (_, b, _) in zip(levels, errs(), before):
                t2.add(seed, N, n, f"{float(sig[n]):.3g}", f"{float(h):.4f}", f"{float(e_chain):.4f}",
                       f"{float(e_exact):.4f}", f"{float(b):.3f}")
    notes = ("Consistent-CSGM on E4 with the exact consistency function of N(mu, C) as the generator "
             "(G(z) = f(80 z, 80), affine), plain GD, d = 8; closed forms as in optimise_exact.md. Distillation: d = 4 "
             f"Gaussian, exact teacher, one Heun step per pair, student = one affine map per level, {steps} Adam "
             "steps (lr 3e-2 decayed linearly, batch 256, EMA 0.95), relative L2 errors over 512 points "
             "x0 + sigma eps. The distillation target is the composition of the teacher's Heun steps down to "
             "sigma_min; its distance to the closed form is the Heun discretisation error of the Karras grid, "
             "which falls with N.")
    body = str(t1) + "\n\n" + str(t2)
    return write_result(out, "optimise_exact_consistency", "Consistent-CSGM and consistency distillation against "
                        "closed forms (E4)", cmd, body, notes)


def main(argv=None):
    import argparse
    import shlex
    import sys

    from . import set_threads
    from .report import add_out_argument

    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(prog="python benchmarks/optimise_exact.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--iterations", type=int, default=3000)
    p.add_argument("--restarts", type=int, default=4)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--part", default="ddim", choices=("ddim", "consistency"),
                   help="ddim: DMPlug / SHRED (optimise_exact.md); consistency: Consistent-CSGM and distillation "
                        "(optimise_exact_consistency.md)")
    add_out_argument(p, "optimise_exact")
    a = p.parse_args(argv)
    set_threads()
    if a.part == "consistency":
        text = run_consistency(tuple(int(s) for s in a.seeds.split(",")), a.restarts, a.iterations, out=a.out,
                               cmd=shlex.join(["python", "benchmarks/optimise_exact.py"] + argv))
        print(text)
        return text
    text = run(tuple(int(s) for s in a.seeds.split(",")), a.restarts, a.iterations, a.out,
               shlex.join(["python", "benchmarks/optimise_exact.py"] + argv))
    print(text)
    return text


if __name__ == "__main__":  # pragma: no cover
    main()
