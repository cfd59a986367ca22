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

``sigma_max`` is an option (``--sigma-max``). With a student that starts from an epsilon-predicting
teacher, ``D(x, sigma) = x - sigma * eps(...)`` multiplies the network's error by ``sigma``: at
``sigma = 80`` the teacher's own one-step estimate ``D(80 z, 80)`` is pixel noise (nearest-training-digit
RMS 0.74 on the digits prior, centred neighbour correlation 0.68 below the data's), at ``sigma = 10`` it
is a blurred digit (0.30, correlation within 0.03), while the teacher's 18-step Heun ODE started at
``10 z`` is nearly as good as the one started at ``80 z`` (64 samples 0.282 vs 0.280, 256 samples 0.279 vs
0.272, held-out digits 0.181; the Gaussian with the data's mean and covariance, noised to ``sigma = 10``,
is 0.49 nat in KL from the starting ``N(0, 100 I)``, 0.008 at 80). Likewise ``sigma_data``
(``--sigma-data``) of ``c_skip``: with 0.5, the initial ``f = c_skip x + (1 - c_skip) D`` keeps about half
of the noisy input near ``sigma = 0.5`` and the distillation first spreads that noise up the grid
(pilot, 300 steps: neighbour correlation of one-step samples 0.13 below the data's); with 0.05 the
initial ``f`` is the teacher's denoiser above ``sigma ~ 0.15`` (correlation within 0.04). The shipped
model uses ``sigma_max = 10``, ``sigma_data = 0.05``.

``slow_ema`` keeps a second, slower exponential moving average of the student (the paper's released
models are such EMAs, distinct from the target ``theta^-``) and returns it; ``checkpoint_every`` writes
the model reached so far, so that an interrupted run leaves a usable result.

Command (the shipped ``ppl_diffusion/weights/digits_cm``: see its ``training.json``)::

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

__all__ = ["heun_step", "heun_chain", "distill", "distill_prior", "sample_checks", "main"]


def heun_step(teacher_ve, x: torch.Tensor, s: torch.Tensor, s_next: torch.Tensor) -> torch.Tensor:
    """One Heun step of ``dx/dsigma = (x - D(x, sigma)) / sigma`` from per-sample ``s`` to ``s_next`` (> 0)."""
    shape = (-1,) + (1,) * (x.dim() - 1)
    s, s_next = s.reshape(shape).to(x.dtype), s_next.reshape(shape).to(x.dtype)
    d = (x - teacher_ve(x, s.reshape(-1))) / s
    x1 = x + (s_next - s) * d
    d1 = (x1 - teacher_ve(x1, s_next.reshape(-1))) / s_next
    return x + (s_next - s) * 0.5 * (d + d1)


def heun_chain(teacher_ve, x: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """The teacher's Heun ODE solve from ``x`` at ``sigmas[0]`` down the (descending) grid ``sigmas``."""
    with torch.no_grad():
        for k in range(len(sigmas) - 1):
            x = heun_step(teacher_ve, x, sigmas[k].expand(x.shape[0]), sigmas[k + 1].expand(x.shape[0]))
    return x


def distill(model: ConsistencyModel, teacher_ve, data, *, steps: int, batch_size: int, lr: float,
            num_scales: int = 18, ema: float = 0.95, lr_decay: bool = False, slow_ema: float = 0.0,
            generator: torch.Generator | None = None, log_every: int = 0, callback=None,
            checkpoint_every: int = 0, checkpoint=None) -> list:
    """Train ``model`` in place by consistency distillation; returns ``[(step, mean loss)]``.

    ``teacher_ve(x, sigma) -> x0`` is the teacher's VE denoiser (``sigma`` of shape ``(batch,)``),
    ``data(batch, generator)`` draws clean training samples; ``lr_decay`` decays the learning rate
    linearly to 0. The model kept is the target ``theta^-`` (EMA ``ema``), or with ``slow_ema > 0`` a
    second EMA of the student at that decay. ``checkpoint(step, kept_model, target)`` is called every
    ``checkpoint_every`` steps."""
    if not 0.0 <= slow_ema < 1.0:
        raise ValueError(f"distill: slow_ema must be in [0, 1), got {slow_ema}")
    sigmas = karras_sigmas(num_scales, model.sigma_min, model.sigma_max)
    target = copy.deepcopy(model).requires_grad_(False)
    slow = copy.deepcopy(model).requires_grad_(False) if slow_ema else None
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
            if slow is not None:
                for ps, p in zip(slow.parameters(), model.parameters()):
                    ps.lerp_(p, 1 - slow_ema)
        acc, cnt = acc + float(loss.detach()), cnt + 1
        if log_every and step % log_every == 0:
            curve.append((step, acc / cnt))
            acc, cnt = 0.0, 0
            if callback is not None:
                callback(step, curve[-1][1])
        if checkpoint is not None and checkpoint_every and step % checkpoint_every == 0 and step < steps:
            checkpoint(step, slow if slow is not None else target, target)
    # the kept model: the slow EMA when asked for, else the target EMA (paper: theta^-)
    model.load_state_dict((slow if slow is not None else target).state_dict())
    return curve


def _lag1(a: torch.Tensor) -> float:
    """Horizontal neighbour correlation of the pixels, each image centred (0 for white noise)."""
    a = a.double()
    a = a - a.mean(dim=(-2, -1), keepdim=True)
    left, right = a[..., :, :-1], a[..., :, 1:]
    return float((left * right).sum() / torch.sqrt((left**2).sum() * (right**2).sum()))


def _nn_rms(a: torch.Tensor, train: torch.Tensor) -> float:
    """Mean over ``a`` of the RMS-per-pixel distance to the nearest image of ``train``."""
    d = torch.cdist(a.flatten(1).double(), train.flatten(1).double()).min(1).values
    return float(d.mean()) / a[0].numel() ** 0.5


def _stats(x: torch.Tensor, train: torch.Tensor) -> dict:
    """The shipped priors' sample criterion (tests/test_zoo.py) on ``x``: nearest-training-image RMS,
    mean offset, std ratio and centred neighbour-correlation offset against ``train``."""
    return dict(nn_rms=round(_nn_rms(x, train), 4), mean_minus_data=round(float(x.mean() - train.mean()), 3),
                std_ratio=round(float(x.std() / train.std()), 3), lag1_minus_data=round(_lag1(x) - _lag1(train), 3))


def sample_checks(model: ConsistencyModel, train: torch.Tensor, num: int = 32, seed: int = 0) -> dict:
    """One- and two-step samples of ``model`` (``num``, seed ``seed``; x0 clipped and not) scored by
    :func:`_stats` against ``train``."""
    clip = model.clip_x0
    out = {}
    try:
        for c in (True, False):
            model.clip_x0 = c
            tag = "clip" if c else "no_clip"
            out[f"one_step_{tag}"] = _stats(model.sample(num, torch.Generator().manual_seed(seed)), train)
            out[f"two_step_{tag}"] = _stats(model.sample(num, torch.Generator().manual_seed(seed), steps=2), train)
    finally:
        model.clip_x0 = clip
    return out


def distill_prior(teacher: str = "digits", out=None, *, steps: int = 1500, batch_size: int = 32, lr: float = 2e-5,
                  num_scales: int = 18, ema: float = 0.95, slow_ema: float = 0.0, sigma_max: float = 80.0,
                  sigma_data: float = 0.5, seed: int = 0, threads: int | None = 1, checkpoint_every: int = 0,
                  log_every: int = 50, verbose: bool = True) -> ConsistencyModel:
    """Distil a shipped (or local) prior into a :class:`ConsistencyModel` whose network starts from
    the teacher's; saves it to ``out`` with ``training.json`` (command, wall time, loss curve and the
    sample checks of :func:`sample_checks`, with the teacher's own Heun ODE on the same grid) when
    ``out`` is given, also every ``checkpoint_every`` steps (``"partial": true`` in training.json)."""
    from ..models.zoo import heldout_images, load_prior
    from .data import _make_source

    if threads:
        torch.set_num_threads(int(threads))
    if not sigma_max > 0.002:
        raise ValueError(f"distill_prior: sigma_max must exceed sigma_min = 0.002, got {sigma_max}")
    torch.manual_seed(seed)
    prior = load_prior(teacher)
    den = prior.denoiser
    unet = copy.deepcopy(den.unet).requires_grad_(True).train()
    model = ConsistencyModel(UNetX0(unet, den.schedule), den.event_shape, sigma_max=sigma_max,
                             sigma_data=sigma_data)
    src = _make_source(teacher, torch.device("cpu"), augment=True)
    g = torch.Generator().manual_seed(seed)
    train = src.train
    command = (f"python -m ppl_diffusion.training.consistency --teacher {teacher} --out {out} --steps {steps} "
               f"--batch-size {batch_size} --lr {lr} --num-scales {num_scales} --ema {ema} --slow-ema {slow_ema} "
               f"--sigma-max {sigma_max} --sigma-data {sigma_data} --seed {seed} --threads {threads} "
               f"--checkpoint-every {checkpoint_every} "
               f"--log-every {log_every}")

    def teacher_ve(x, s):
        return den.denoise_ve(x, s)

    # references on the same grid: the teacher's Heun ODE from sigma_max z, held-out digits, matched noise
    grid = karras_sigmas(num_scales, model.sigma_min, sigma_max)
    z = torch.randn((32,) + tuple(den.event_shape), generator=torch.Generator().manual_seed(0))
    noise = train.mean() + train.std() * torch.randn(z.shape, generator=torch.Generator().manual_seed(1))
    references = dict(teacher_heun_same_grid=_stats(heun_chain(teacher_ve, sigma_max * z, grid), train),
                      heldout=_stats(heldout_images(teacher), train), gaussian_noise=_stats(noise, train))

    def log(step, loss):
        if verbose:
            print(f"step {step}: loss {loss:.5f} ({time.perf_counter() - t0:.0f} s)", flush=True)

    def record_of(m: ConsistencyModel, curve, wall, step, target=None) -> dict:
        m.requires_grad_(False).eval()
        m.clip_x0 = True  # inference: the x0 estimate is clipped to the data range [-1, 1]
        rec = dict(
            teacher=teacher, method="consistency distillation (Song et al. 2023, Algorithm 2), one Heun step of the "
            "teacher's probability-flow ODE, squared l2 metric, EMA target", num_scales=num_scales, steps=steps,
            steps_done=step, partial=step < steps, batch_size=batch_size, lr=lr, optimizer="Adam", ema=ema,
            slow_ema=slow_ema, kept_model="slow EMA of the student" if slow_ema else "the EMA target theta^-",
            sigma_min=m.sigma_min, sigma_max=sigma_max, sigma_data=m.sigma_data, seed=seed, threads=threads,
            student_init="the teacher's UNet", data=src.description,
            parameters=sum(p.numel() for p in m.parameters()), wall_time_train_s=round(wall, 1),
            loss_curve=curve, teacher_scheduler=den.scheduler_config,
            sample_checks=dict(note="32 samples (seed 0) against the training digits: mean RMS distance to the "
                               "nearest training digit, mean offset, std ratio, centred neighbour-correlation "
                               "offset (the shipped priors' criterion, tests/test_zoo.py: nn_rms <= 1.5 x held-out, "
                               "|mean| < 0.1, std ratio in (0.75, 1.25), |lag1| < 0.1)",
                               **sample_checks(m, train), **references),
            command=command)
        if target is not None and slow_ema:
            t = copy.deepcopy(target).requires_grad_(False).eval()
            t.clip_x0 = True
            rec["target_sample_checks"] = sample_checks(t, train)
        return rec

    def save(m, rec):
        save_consistency(m, out, rec)
        out_path = Path(out)
        rec["safetensors_bytes"] = sum(f.stat().st_size for f in out_path.rglob("*.safetensors"))
        (out_path / "training.json").write_text(json.dumps(rec, indent=1) + "\n")

    curve_so_far: list = []

    def checkpoint(step, kept, target):
        if out is None:
            return
        m = copy.deepcopy(kept)
        rec = record_of(m, list(curve_so_far), time.perf_counter() - t0, step, target)
        save(m, rec)
        if verbose:
            print(f"checkpoint {step}: one step {rec['sample_checks']['one_step_clip']}, two steps "
                  f"{rec['sample_checks']['two_step_clip']}", flush=True)

    def log_and_keep(step, loss):
        curve_so_far.append((step, loss))
        log(step, loss)

    t0 = time.perf_counter()
    curve = distill(model, teacher_ve, lambda b, gen: src.sample(b, gen), steps=steps, batch_size=batch_size,
                    lr=lr, num_scales=num_scales, ema=ema, slow_ema=slow_ema, generator=g, log_every=log_every,
                    callback=log_and_keep, checkpoint_every=checkpoint_every, checkpoint=checkpoint)
    wall = time.perf_counter() - t0
    record = record_of(model, curve, wall, steps)
    if out is not None:
        save(model, record)
    if verbose:
        print(json.dumps(record["sample_checks"]), f"wall {wall:.0f} s", flush=True)
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
    p.add_argument("--slow-ema", type=float, default=0.0,
                   help="keep a second EMA of the student at this decay and ship it (default 0: ship the target)")
    p.add_argument("--sigma-max", type=float, default=80.0, help="sigma_max of the grid and sampler (paper: 80)")
    p.add_argument("--sigma-data", type=float, default=0.5,
                   help="sigma_data of c_skip (paper: 0.5; smaller keeps f close to the teacher's denoiser)")
    p.add_argument("--checkpoint-every", type=int, default=0, help="write the model every this many steps")
    p.add_argument("--log-every", type=int, default=50, help="loss-curve interval (steps)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quiet", action="store_true")
    a = p.parse_args(argv)
    try:
        distill_prior(a.teacher, a.out, steps=a.steps, batch_size=a.batch_size, lr=a.lr, num_scales=a.num_scales,
                      ema=a.ema, slow_ema=a.slow_ema, sigma_max=a.sigma_max, sigma_data=a.sigma_data, seed=a.seed,
                      threads=a.threads, checkpoint_every=a.checkpoint_every, log_every=a.log_every,
                      verbose=not a.quiet)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
