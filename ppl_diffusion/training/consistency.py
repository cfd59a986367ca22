"""Consistency distillation (Song, Dhariwal, Chen, Sutskever, "Consistency models", ICML 2023,
Algorithm 2) from a diffusion prior used as the teacher.

On the ``N``-point Karras grid ``sigma_0 = sigma_max > ... > sigma_{N-1} = sigma_min`` each step
draws ``n``, sets ``x_n = x0 + sigma_n eps`` and lets the teacher take ONE Heun step of the
probability-flow ODE ``dx/dsigma = (x - D(x, sigma)) / sigma`` to ``sigma_{n+1}`` (the teacher's
``D`` is its denoiser in VE form, :meth:`Denoiser.denoise_ve`). The loss is
``|f_theta(x_n, sigma_n) - f_ema(x_hat_{n+1}, sigma_{n+1})|^2`` (the paper's squared l2 metric;
LPIPS is not available offline), with ``f_ema`` an exponential moving average of the student
(decay ``mu``). Constants of the paper's CIFAR-10 setting: ``N = 18``, ``sigma_min = 0.002``,
``sigma_max = 80``, ``sigma_data = 0.5``; the student starts from the teacher's network.

Command (the shipped ``ppl_diffusion/weights/digits_cm``)::

    python -m ppl_diffusion.training.consistency --teacher digits --out ppl_diffusion/weights/digits_cm
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

from ..models.consistency import ConsistencyModel, UNetX0, karras_sigmas, save_consistency

__all__ = ["heun_step", "distill", "distill_prior", "main"]


def heun_step(teacher_ve, x: torch.Tensor, s: torch.Tensor, s_next: torch.Tensor) -> torch.Tensor:
    """One Heun step of ``dx/dsigma = (x - D(x, sigma)) / sigma`` from per-sample ``s`` to ``s_next`` (> 0)."""
    shape = (-1,) + (1,) * (x.dim() - 1)
    s, s_next = s.reshape(shape).to(x.dtype), s_next.reshape(shape).to(x.dtype)
    d = (x - teacher_ve(x, s.reshape(-1))) / s
    x1 = x + (s_next - s) * d
    d1 = (x1 - teacher_ve(x1, s_next.reshape(-1))) / s_next
    return x + (s_next - s) * 0.5 * (d + d1)


def distill(model: ConsistencyModel, teacher_ve, data, *, steps: int, batch_size: int, lr: float,
            num_scales: int = 18, ema: float = 0.95, lr_decay: bool = False,
            generator: torch.Generator | None = None, log_every: int = 0, callback=None) -> list:
    """Train ``model`` in place by consistency distillation; returns ``[(step, mean loss)]``.

    ``teacher_ve(x, sigma) -> x0`` is the teacher's VE denoiser (``sigma`` of shape ``(batch,)``),
    ``data(batch, generator)`` draws clean training samples; ``lr_decay`` decays the learning rate
    linearly to 0."""
    sigmas = karras_sigmas(num_scales, model.sigma_min, model.sigma_max)
    target = copy.deepcopy(model).requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 1 - k / steps if lr_decay else 1.0)
    curve, acc, cnt = [], 0.0, 0
    for step in range(1, steps + 1):
        x0 = data(batch_size, generator)
        n = torch.randint(0, num_scales - 1, (x0.shape[0],), generator=generator, device=x0.device)
        s, s_next = sigmas[n].to(x0.device), sigmas[n + 1].to(x0.device)
        eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
        x = x0 + s.reshape((-1,) + (1,) * (x0.dim() - 1)).to(x0.dtype) * eps
        with torch.no_grad():
            x_next = heun_step(teacher_ve, x, s, s_next)
            tgt = target(x_next, s_next.to(x0.dtype))
        loss = (model(x, s.to(x0.dtype)) - tgt).pow(2).flatten(1).sum(1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            for pt, p in zip(target.parameters(), model.parameters()):
                pt.lerp_(p, 1 - ema)
        acc, cnt = acc + float(loss.detach()), cnt + 1
        if log_every and step % log_every == 0:
            curve.append((step, acc / cnt))
            acc, cnt = 0.0, 0
            if callback is not None:
                callback(step, curve[-1][1])
    model.load_state_dict(target.state_dict())  # the EMA student is the one that is kept (paper: theta^-)
    return curve


def distill_prior(teacher: str = "digits", out=None, *, steps: int = 1500, batch_size: int = 32, lr: float = 2e-5,
                  num_scales: int = 18, ema: float = 0.95, seed: int = 0, threads: int | None = 1,
                  log_every: int = 50, verbose: bool = True) -> ConsistencyModel:
    """Distil a shipped (or local) prior into a :class:`ConsistencyModel` whose network starts from
    the teacher's; saves it to ``out`` with ``training.json`` (command, wall time, loss curve and the
    nearest-neighbour check of one-step samples) when ``out`` is given."""
    from ..models.zoo import heldout_images, load_prior
    from .data import _make_source

    if threads:
        torch.set_num_threads(int(threads))
    torch.manual_seed(seed)
    prior = load_prior(teacher)
    den = prior.denoiser
    unet = copy.deepcopy(den.unet).requires_grad_(True).train()
    model = ConsistencyModel(UNetX0(unet, den.schedule), den.event_shape)
    src = _make_source(teacher, torch.device("cpu"), augment=True)
    g = torch.Generator().manual_seed(seed)

    def teacher_ve(x, s):
        return den.denoise_ve(x, s)

    def log(step, loss):
        if verbose:
            print(f"step {step}: loss {loss:.5f} ({time.perf_counter() - t0:.0f} s)", flush=True)

    t0 = time.perf_counter()
    curve = distill(model, teacher_ve, lambda b, gen: src.sample(b, gen), steps=steps, batch_size=batch_size,
                    lr=lr, num_scales=num_scales, ema=ema, generator=g, log_every=log_every, callback=log)
    wall = time.perf_counter() - t0
    model.requires_grad_(False).eval()
    model.clip_x0 = True  # inference only: the x0 estimate at sigma_max is clipped to the data range [-1, 1]
    x = model.sample(64, torch.Generator().manual_seed(1))
    train = src.train.flatten(1).double()

    def nn_rms(a):
        return float(torch.cdist(a.flatten(1).double(), train).min(1).values.mean()) / a[0].numel() ** 0.5

    record = dict(
        teacher=teacher, method="consistency distillation (Song et al. 2023, Algorithm 2), one Heun step of the "
        "teacher's probability-flow ODE, squared l2 metric, EMA target", num_scales=num_scales, steps=steps,
        batch_size=batch_size, lr=lr, optimizer="Adam", ema=ema, seed=seed, threads=threads,
        student_init="the teacher's UNet", data=src.description,
        parameters=sum(p.numel() for p in model.parameters()), wall_time_train_s=round(wall, 1),
        loss_curve=curve, teacher_scheduler=den.scheduler_config,
        one_step_samples=dict(num=64, seed=1, nn_rms_samples_to_train=round(nn_rms(x), 4),
                              nn_rms_heldout_to_train=round(nn_rms(heldout_images(teacher)), 4)),
        command=(f"python -m ppl_diffusion.training.consistency --teacher {teacher} --out {out} --steps {steps} "
                 f"--batch-size {batch_size} --lr {lr} --num-scales {num_scales} --ema {ema} --seed {seed} "
                 f"--threads {threads}"),
    )
    if out is not None:
        save_consistency(model, out, record)
        out_path = Path(out)
        record["safetensors_bytes"] = sum(f.stat().st_size for f in out_path.rglob("*.safetensors"))
        (out_path / "training.json").write_text(json.dumps(record, indent=1) + "\n")
    if verbose:
        print(json.dumps(record["one_step_samples"]), f"wall {wall:.0f} s", flush=True)
    return model


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m ppl_diffusion.training.consistency",
                                description="Distil a diffusion prior into a one-step consistency model.")
    p.add_argument("--teacher", default="digits", help="shipped prior name or local folder (default digits)")
    p.add_argument("--out", required=True, help="output folder (unet/, consistency.json, training.json)")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-5)
    p.add_argument("--num-scales", type=int, default=18, help="N of the Karras grid (paper's CIFAR-10: 18)")
    p.add_argument("--ema", type=float, default=0.95, help="EMA decay mu of the target network")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quiet", action="store_true")
    a = p.parse_args(argv)
    try:
        distill_prior(a.teacher, a.out, steps=a.steps, batch_size=a.batch_size, lr=a.lr, num_scales=a.num_scales,
                      ema=a.ema, seed=a.seed, threads=a.threads, verbose=not a.quiet)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
