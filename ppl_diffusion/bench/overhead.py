"""Cost of the Pyro layer: our guides called through a Pyro model against a bare torch loop.

Both sides use the same network (the shipped ``digits`` UNet, else a tiny random UNet at seed 0), the
same operator (random inpainting, 50 % missing, 1x16x16), the same noise (sigma_y = 0.05), the same
time grid, eta, step size and generator, and draw their random numbers in the same order, so their
outputs agree to float32 round-off (reported as ``max |diff|``). The bare loop calls the ``UNet2DModel``
directly with precomputed coefficients and does the DDIM / DPS / DDRM arithmetic inline: no Pyro trace,
no ``Problem``, no hook objects, no ``Denoiser`` wrapper.

    python benchmarks/overhead.py [--steps 50] [--n 8] [--repeats 5]
"""
from __future__ import annotations

import argparse

import pyro
import torch

from . import image_denoiser, median_time, results_path, set_threads

__all__ = ["main", "setup", "bare_dps", "bare_ddrm", "ours_dps", "ours_ddrm"]


def setup(seed: int = 0, noise_std: float = 0.05, dtype=torch.float32):
    """``(model, denoiser, op, y, label)`` for the random-inpainting problem on 1x16x16."""
    from ..models import DiffusionPrior, GaussianMeasurement
    from ..models.operators import Inpainting

    den, label = image_denoiser()
    shape = tuple(den.event_shape)
    g = torch.Generator().manual_seed(seed)
    op = Inpainting.random(shape, 0.5, generator=g, dtype=dtype)
    u = torch.linspace(-1, 1, shape[-1], dtype=dtype)
    x_true = (0.8 * torch.sin(3 * u)[:, None] * torch.cos(2 * u)[None, :]).expand(shape)
    y = op(x_true) + noise_std * torch.randn(op.out_shape, generator=g, dtype=dtype)
    prior = DiffusionPrior(den, steps=10)

    def model(y=None):
        x = pyro.sample("x", prior)
        return pyro.sample("y", GaussianMeasurement(op, x, noise_std), obs=y)

    return model, den, op, y, label


def _coefs(den, steps, dtype):
    from ..schedules import time_grid

    sch = den.schedule
    t = time_grid(sch, steps, "uniform")
    a, s = sch.alpha(t).to(dtype), sch.sigma(t).to(dtype)
    ts = sch.model_timestep(t).to(torch.float32)
    return t, a, s, ts


def _x0(unet, x, ts_i, a, s):
    return (x - s * unet(x, ts_i.expand(x.shape[0])).sample) / a


def ours_dps(model, y, n, steps, zeta, generator):
    from ..inference.guides import DPS

    return DPS(model, steps=steps, eta=1.0, zeta=zeta).sample(n, y=y, generator=generator)


def bare_dps(den, op, y, n, steps, zeta, generator, noise_std=0.05):
    """DPS (norm form, DDPM eta = 1) as a plain torch loop; same arithmetic and RNG order as ours."""
    unet = den.unet
    dtype = y.dtype
    t, a, s, ts = _coefs(den, steps, dtype)
    mask = op.mask.to(dtype) if hasattr(op, "mask") else None
    x = float(s[0]) * torch.randn((n,) + tuple(den.event_shape), generator=generator, dtype=dtype)
    for i in range(steps):
        a_t, s_t, a_s, s_s = a[i], s[i], a[i + 1], s[i + 1]
        rho_t, rho_s = s_t / a_t, s_s / a_s
        ratio = (rho_s / rho_t).clamp(max=1.0)
        c = s_s * torch.sqrt((1 - ratio**2).clamp(min=0))
        c_eps = torch.sqrt((s_s**2 - c**2).clamp(min=0))
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            x0 = _x0(unet, x, ts[i], a_t, s_t)
            eps = (x - a_t * x0) / s_t
            x_next = a_s * x0 + c_eps * eps
            if float(c) > 0:
                x_next = x_next + c * torch.randn(x.shape, generator=generator, dtype=dtype)
            r = y - (mask * x0 if mask is not None else op(x0))
            L = r.flatten(1).pow(2).sum(1).clamp(min=torch.finfo(dtype).tiny).sqrt()
            (grad,) = torch.autograd.grad(L.sum(), x)
        x = x_next.detach() - zeta * grad
    return x


def ours_ddrm(model, y, n, steps, generator):
    from ..inference.guides import DDRM

    return DDRM(model, steps=steps, eta=0.85, eta_b=1.0).sample(n, y=y, generator=generator)


@torch.no_grad()
def bare_ddrm(den, op, y, n, steps, generator, noise_std=0.05, eta=0.85, eta_b=1.0):
    """DDRM (Kawar et al.) in the operator's spectral basis as a plain torch loop."""
    unet = den.unet
    dtype = y.dtype
    t, a, s, ts = _coefs(den, steps, dtype)
    sv = op.singular_values.to(dtype)
    r, D = sv.numel(), op.in_dim
    obs = torch.zeros(D, dtype=torch.bool)
    obs[:r] = sv > 1e-8 * sv.max()
    svf = torch.ones(D, dtype=dtype)
    svf[:r] = torch.where(obs[:r], sv, torch.ones_like(sv))
    ybar = torch.zeros(D, dtype=dtype)
    ybar[:r] = torch.where(obs[:r], op.Ut(y)[..., :r] / svf[:r], torch.zeros_like(sv))
    lev = torch.where(obs, noise_std / svf, torch.full_like(svf, float("inf")))
    lev_fin = torch.where(obs, lev, torch.zeros_like(lev))
    lev_safe = torch.where(obs & (lev > 0), lev, torch.ones_like(lev))
    rho_T = float(s[0] / a[0])
    z = torch.randn((n, D), generator=generator, dtype=dtype)
    inside = obs & (lev < rho_T)
    c = torch.where(inside, ybar + torch.sqrt((rho_T**2 - lev_fin**2).clamp(min=0)) * z, rho_T * z)
    x = a[0] * op.V(c)
    k = (1 - eta**2) ** 0.5
    for i in range(steps):
        a_t, s_t, a_s, s_s = a[i], s[i], a[i + 1], s[i + 1]
        x0 = _x0(unet, x, ts[i], a_t, s_t)
        eps = (x - a_t * x0) / s_t
        x0b, eb = op.Vt(x0), op.Vt(eps)
        rho_s = s_s / a_s
        z = torch.randn(x0b.shape, generator=generator, dtype=dtype)
        null = x0b + k * rho_s * eb + eta * rho_s * z
        after = obs & (rho_s < lev)
        before = obs & (rho_s >= lev)
        upd_a = x0b + k * rho_s * (ybar - x0b) / lev_safe + eta * rho_s * z
        upd_b = (1 - eta_b) * x0b + eta_b * ybar + torch.sqrt((rho_s**2 - (eta_b * lev_fin) ** 2).clamp(min=0)) * z
        xs = torch.where(before, upd_b, torch.where(after, upd_a, null))
        x = a_s * op.V(xs)
    return x


def measure(steps=50, n=8, repeats=5, seed=0, zeta=1.0, methods=("dps", "ddrm")):
    """Rows ``(method, steps, n, t_ours, t_bare, ratio, max|diff|)``, medians over ``repeats``."""
    model, den, op, y, label = setup(seed)
    rows = []
    for m in methods:
        if m == "dps":
            f_ours = lambda: ours_dps(model, y, n, steps, zeta, torch.Generator().manual_seed(seed))  # noqa: E731
            f_bare = lambda: bare_dps(den, op, y, n, steps, zeta, torch.Generator().manual_seed(seed))  # noqa: E731
        elif m == "ddrm":
            f_ours = lambda: ours_ddrm(model, y, n, steps, torch.Generator().manual_seed(seed))  # noqa: E731
            f_bare = lambda: bare_ddrm(den, op, y, n, steps, torch.Generator().manual_seed(seed))  # noqa: E731
        else:
            raise ValueError(f"unknown method {m!r}")
        # interleave the two sides so that machine-load drift hits both alike
        tb, to = [], []
        xb = xo = None
        for k in range(repeats + 1):
            t1, xb = median_time(f_bare, 1, 0)
            t2, xo = median_time(f_ours, 1, 0)
            if k:
                tb.append(t1)
                to.append(t2)
        tb.sort()
        to.sort()
        t_bare, t_ours = tb[len(tb) // 2], to[len(to) // 2]
        diff = float((xo.reshape(xb.shape) - xb).abs().max())
        rows.append((m, steps, n, t_ours, t_bare, t_ours / t_bare, diff))
    return rows, label


def table(rows) -> str:
    lines = ["| method | steps | samples | ours through Pyro (s) | bare torch loop (s) | ratio ours/bare | max abs diff |",
             "|---|---|---|---|---|---|---|"]
    for m, steps, n, to, tb, r, d in rows:
        lines.append(f"| {m} | {steps} | {n} | {to:.3f} | {tb:.3f} | {r:.3f} | {d:.1e} |")
    return "\n".join(lines)


NOTES = """Ratios are medians of interleaved runs (bare, ours, bare, ours, ...) after one warm-up each; the
outputs of both sides agree to the stated `max abs diff` (same generator, same draw order), so the
same arithmetic is timed. Target: ratio <= 1.05 with a network denoiser."""


def main(argv=None):
    p = argparse.ArgumentParser(prog="ppl-diffusion benchmark speed", description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--methods", default="dps,ddrm")
    p.add_argument("--out", default=results_path("overhead"))
    a = p.parse_args(argv)
    set_threads()
    rows, label = measure(a.steps, a.n, a.repeats, a.seed, methods=tuple(a.methods.split(",")))
    body = (f"Denoiser: {label}; random inpainting (50 % missing) 1x16x16, sigma_y = 0.05, float32, "
            f"seed {a.seed}.\n\n" + table(rows))
    cmd = "python benchmarks/overhead.py " + " ".join(argv if argv is not None else [])
    text = write_table_safe(a.out, "Cost of the Pyro layer", cmd.strip(), body, NOTES)
    print(text)
    return rows


def write_table_safe(path, title, command, body, notes):
    from ..benchmarking import write_table

    if path in ("", "-"):
        from ..benchmarking import environment_header

        return environment_header(title, command) + "\n" + body + "\n\n" + notes + "\n"
    return write_table(path, title, command, body, notes)


if __name__ == "__main__":  # pragma: no cover
    main()
