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

Consistency training (``--method ct``, :func:`consistency_train`; Song et al. 2023, Algorithm 3) needs no
teacher: the pair ``x0 + sigma_n z``, ``x0 + sigma_{n+1} z`` shares one ``z``, and the target is
``f_{theta^-}`` at the lower level. :func:`consistency_train_prior` uses it to fine-tune a distilled model on
the data (``--init``), with the options of Song & Dhariwal 2023 ("Improved techniques for training
consistency models": pseudo-Huber metric, ``theta^- = theta``, ``lambda = 1 / (sigma_n - sigma_{n+1})``,
lognormal noise index). A distillation can only be as good as its teacher's probability-flow ODE, which
for the ``digits`` prior misses the shipped priors' sample criterion; a CT fine-tune is not bound by it.
With the l2 metric the discrete CT fixed point shrinks the spread (tests/test_consistency_training.py:
for Gaussian data each level multiplies by ``(lam + s_n s_{n+1}) / (lam + s_n^2)``, below the exact
``sqrt((lam + s_{n+1}^2) / (lam + s_n^2))``), so ``N`` must be large (80 here).

Commands (the shipped ``ppl_diffusion/weights/digits_cm``: see its ``training.json``)::

    python -m ppl_diffusion.training.consistency --teacher digits --out ppl_diffusion/weights/digits_cm
    python -m ppl_diffusion.training.consistency --method ct --init <distilled model> --no-augment \\
        --loss pseudo_huber --weighting ict --index lognormal --out <folder>
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path

import torch

from ..metrics import nearest_distances
from ..metrics import nearest_rms as _nn_rms
from ..metrics import neighbour_correlation as _lag1
from ..models.consistency import ConsistencyModel, UNetX0, karras_sigmas, save_consistency

__all__ = ["heun_step", "heun_chain", "distill", "distill_prior", "ct_index_probs", "ct_loss", "consistency_train",
           "consistency_train_prior", "memorisation_check", "sample_checks", "main"]


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

    def step_loss(target):
        x0 = data(batch_size, generator)
        n = torch.randint(0, num_scales - 1, (x0.shape[0],), generator=generator, device=x0.device)
        s, s_next = sigmas[n].to(x0.device), sigmas[n + 1].to(x0.device)
        eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
        x = x0 + s.reshape((-1,) + (1,) * (x0.dim() - 1)).to(x0.dtype) * eps
        with torch.no_grad():
            x_next = heun_step(teacher_ve, x, s, s_next)
            tgt = target(x_next, s_next.to(x0.dtype))
        return (model(x, s.to(x0.dtype)) - tgt).pow(2).flatten(1).sum(1).mean()

    # the kept model: the slow EMA when asked for, else the target EMA (paper: theta^-)
    return _optimise(model, step_loss, steps=steps, lr=lr, lr_decay=lr_decay, ema=ema, ema_target=True,
                     slow_ema=slow_ema, log_every=log_every, callback=callback, checkpoint_every=checkpoint_every,
                     checkpoint=checkpoint)


def _optimise(model, step_loss, *, steps, lr, lr_decay, ema, ema_target, slow_ema, log_every, callback,
              checkpoint_every, checkpoint) -> list:
    """The loop shared by :func:`distill` and :func:`consistency_train`: ``steps`` Adam steps on
    ``step_loss(target)`` (learning rate decayed linearly to 0 with ``lr_decay``), the target ``theta^-``
    a copy of the student moved as an EMA at decay ``ema`` (``ema_target``) or the student itself, an
    optional slow EMA, the loss curve every ``log_every`` steps and ``checkpoint(step, kept, target)``
    every ``checkpoint_every``. Loads the kept model (slow EMA, else the target) into ``model``."""
    target = copy.deepcopy(model).requires_grad_(False) if ema_target else model
    slow = copy.deepcopy(model).requires_grad_(False) if slow_ema else None
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 1 - k / steps if lr_decay else 1.0)
    curve, acc, cnt = [], 0.0, 0
    for step in range(1, steps + 1):
        loss = step_loss(target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            if target is not model:
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
    kept = slow if slow is not None else target
    if kept is not model:
        model.load_state_dict(kept.state_dict())
    return curve


def ct_index_probs(sigmas: torch.Tensor, p_mean: float = -1.1, p_std: float = 2.0) -> torch.Tensor:
    """The lognormal noise-index distribution of improved consistency training (Song & Dhariwal 2023,
    Section 3.5): ``p(n) propto erf((log sigma_n - P_mean) / (sqrt(2) P_std)) - erf((log sigma_{n+1} - P_mean)
    / (sqrt(2) P_std))`` over the ``N - 1`` adjacent pairs of the DESCENDING grid ``sigmas``."""
    e = torch.erf((torch.log(sigmas.double()) - p_mean) / (math.sqrt(2.0) * p_std))
    w = e[:-1] - e[1:]
    return w / w.sum()


def ct_loss(a: torch.Tensor, b: torch.Tensor, kind: str = "l2", c: float | None = None) -> torch.Tensor:
    """Per-sample distance ``d(a, b)``: ``"l2"`` the squared l2 norm (Song et al. 2023), ``"pseudo_huber"``
    ``sqrt(|a - b|^2 + c^2) - c`` with ``c = 0.00054 sqrt(dim)`` unless given (Song & Dhariwal 2023,
    Section 3.3)."""
    sq = (a - b).pow(2).flatten(1).sum(1)
    if kind == "l2":
        return sq
    if kind == "pseudo_huber":
        c = 0.00054 * math.sqrt(a[0].numel()) if c is None else float(c)
        return torch.sqrt(sq + c * c) - c
    raise ValueError(f"ct_loss: kind must be 'l2' or 'pseudo_huber', got {kind!r}")


def consistency_train(model: ConsistencyModel, data, *, steps: int, batch_size: int, lr: float,
                      num_scales: int = 18, ema: float = 0.0, loss: str = "l2", huber_c: float | None = None,
                      weighting: str = "uniform", index: str = "uniform", p_mean: float = -1.1, p_std: float = 2.0,
                      lr_decay: bool = False, slow_ema: float = 0.0, generator: torch.Generator | None = None,
                      log_every: int = 0, callback=None, checkpoint_every: int = 0, checkpoint=None) -> list:
    """Train ``model`` in place by consistency training (Song et al. 2023, Algorithm 3: no teacher); returns
    ``[(step, mean loss)]``.

    Each step draws clean ``x0 = data(batch, generator)``, ONE ``z ~ N(0, I)`` per sample and an adjacent
    pair ``sigma_n > sigma_{n+1}`` of the ``num_scales``-point Karras grid, and minimises
    ``lambda(sigma_n) d(f_theta(x0 + sigma_n z, sigma_n), f_{theta^-}(x0 + sigma_{n+1} z, sigma_{n+1}))``
    (the CT loss: the teacher's ODE step of :func:`distill` replaced by the one-sample estimate of the score,
    the same ``z``). Options of the improved techniques (Song & Dhariwal 2023): ``ema = 0`` sets
    ``theta^- = theta`` with a stop-gradient (Section 3.2; ``ema > 0``: the original EMA target),
    ``loss="pseudo_huber"`` (Section 3.3, :func:`ct_loss`), ``weighting="ict"`` for
    ``lambda(sigma_n) = 1 / (sigma_n - sigma_{n+1})`` (Section 3.3; ``"uniform"``: ``lambda = 1``) and
    ``index="lognormal"`` for :func:`ct_index_probs` (Section 3.5; ``"uniform"``: ``n`` uniform as in
    Algorithm 3). The model kept is ``theta^-`` (``theta`` when ``ema = 0``), or the slow EMA of the student
    when ``slow_ema > 0``; ``lr_decay`` and ``checkpoint`` as in :func:`distill`."""
    if not 0.0 <= slow_ema < 1.0 or not 0.0 <= ema < 1.0:
        raise ValueError(f"consistency_train: ema and slow_ema must be in [0, 1), got {ema}, {slow_ema}")
    if weighting not in ("uniform", "ict") or index not in ("uniform", "lognormal"):
        raise ValueError(f"consistency_train: weighting must be 'uniform' or 'ict' and index 'uniform' or "
                         f"'lognormal', got {weighting!r}, {index!r}")
    if num_scales < 2:
        raise ValueError(f"consistency_train: num_scales must be >= 2, got {num_scales}")
    ct_loss(torch.zeros(1, 1), torch.zeros(1, 1), loss, huber_c)  # validates ``loss``
    sigmas = karras_sigmas(num_scales, model.sigma_min, model.sigma_max)
    probs = ct_index_probs(sigmas, p_mean, p_std) if index == "lognormal" else None
    def step_loss(target):
        x0 = data(batch_size, generator)
        b, shape = x0.shape[0], (-1,) + (1,) * (x0.dim() - 1)
        if probs is None:
            n = torch.randint(0, num_scales - 1, (b,), generator=generator)
        else:
            n = torch.multinomial(probs, b, replacement=True, generator=generator)
        s, s_next = sigmas[n].to(x0.dtype).to(x0.device), sigmas[n + 1].to(x0.dtype).to(x0.device)
        z = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
        with torch.no_grad():
            tgt = target(x0 + s_next.reshape(shape) * z, s_next)
        d = ct_loss(model(x0 + s.reshape(shape) * z, s), tgt, loss, huber_c)
        lam = 1.0 / (sigmas[n] - sigmas[n + 1]).to(d.dtype).to(d.device) if weighting == "ict" else 1.0
        return (lam * d).mean()

    # the kept model: the slow EMA when asked for, else the target theta^- (theta itself when ema = 0)
    return _optimise(model, step_loss, steps=steps, lr=lr, lr_decay=lr_decay, ema=ema, ema_target=bool(ema),
                     slow_ema=slow_ema, log_every=log_every, callback=callback, checkpoint_every=checkpoint_every,
                     checkpoint=checkpoint)


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


def memorisation_check(model: ConsistencyModel, train: torch.Tensor, held: torch.Tensor, num: int = 64,
                       seed: int = 0) -> dict:
    """Does ``model`` copy training images? ``num`` one-step samples (seed ``seed``): mean nearest-neighbour
    RMS to the held-out images and to as many training images drawn at random (seed 0); a model that
    generalises is about as close to both, one that copies its training set is closer to the training
    subset. Also the smallest per-sample nearest-training-image RMS, against the same for the held-out images."""
    sub = train[torch.randperm(train.shape[0], generator=torch.Generator().manual_seed(0))[: held.shape[0]]]
    x = model.sample(num, torch.Generator().manual_seed(seed))
    d_x, d_h = nearest_distances(x, train), nearest_distances(held, train)
    return dict(samples=num, nn_rms_to_heldout=round(_nn_rms(x, held), 4),
                nn_rms_to_as_many_training_images=round(_nn_rms(x, sub), 4),
                min_nn_rms_to_train_samples=round(float(d_x.min()), 4),
                min_nn_rms_to_train_heldout=round(float(d_h.min()), 4))


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
    _train_and_record(t0, lambda: distill(model, teacher_ve, lambda b, gen: src.sample(b, gen), steps=steps,
                                      batch_size=batch_size, lr=lr, num_scales=num_scales, ema=ema,
                                      slow_ema=slow_ema, generator=g, log_every=log_every,
                                      callback=log_and_keep, checkpoint_every=checkpoint_every,
                                      checkpoint=checkpoint),
                      model, record_of, save if out is not None else None, steps, verbose)
    return model


def _train_and_record(t0: float, train, model, record_of, save, steps: int, verbose: bool) -> dict:
    """Run ``train()`` (returns the loss curve; started at ``time.perf_counter() = t0``), build
    ``record_of(model, curve, wall, steps)``, write it with ``save(model, record)`` when given and print
    its sample checks when ``verbose``."""
    curve = train()
    wall = time.perf_counter() - t0
    record = record_of(model, curve, wall, steps)
    if save is not None:
        save(model, record)
    if verbose:
        print(json.dumps(record["sample_checks"]), f"wall {wall:.0f} s", flush=True)
    return record


def _consistency_folder(name_or_path) -> Path:
    from ..models.consistency import CONSISTENCY_DIR

    folder = Path(name_or_path)
    return folder if folder.is_dir() else CONSISTENCY_DIR / str(name_or_path)


def consistency_train_prior(init: str = "digits_cm", out=None, *, data: str = "digits", augment: bool = True,
                            steps: int = 2000, batch_size: int = 32, lr: float = 1e-5, num_scales: int = 80,
                            ema: float = 0.0, loss: str = "l2", huber_c: float | None = None,
                            weighting: str = "uniform", index: str = "uniform", p_mean: float = -1.1,
                            p_std: float = 2.0, slow_ema: float = 0.0, lr_decay: bool = False, seed: int = 0,
                            threads: int | None = 1, checkpoint_every: int = 0, log_every: int = 50,
                            verbose: bool = True) -> ConsistencyModel:
    """Fine-tune a consistency model (``init``: a shipped name or a folder of :func:`save_consistency`, e.g. the
    distilled ``digits_cm``) by consistency training on the data set ``data`` (:func:`consistency_train`: no
    teacher); saves it to ``out`` with ``training.json`` (command, settings, wall time, loss curve, the sample
    checks of :func:`sample_checks` before and after, and the ``init`` model's own ``training.json`` under
    ``"init_training"``), also every ``checkpoint_every`` steps (``"partial": true``)."""
    from ..models.consistency import load_consistency
    from ..models.zoo import _read_json, heldout_images
    from .data import _make_source

    if threads:
        torch.set_num_threads(int(threads))
    torch.manual_seed(seed)
    folder = _consistency_folder(init)
    init_cfg = _read_json(folder / "consistency.json", "consistency config")
    init_rec = _read_json(folder / "training.json", "training record") if (folder / "training.json").is_file() else {}
    model = load_consistency(init)
    model.requires_grad_(True).train()
    model.clip_x0 = False  # training: the raw x0 estimate (a clipped one has no gradient where it clips)
    src = _make_source(data, torch.device("cpu"), augment=augment)
    train = src.train
    g = torch.Generator().manual_seed(seed)
    command = (f"python -m ppl_diffusion.training.consistency --method ct --init {init} --data {data}"
               f"{'' if augment else ' --no-augment'} --out {out} --steps {steps} --batch-size {batch_size} "
               f"--lr {lr} --num-scales {num_scales} --ema {ema} --slow-ema {slow_ema} --loss {loss}"
               f"{'' if huber_c is None else f' --huber-c {huber_c}'} --weighting {weighting} --index {index} "
               f"--p-mean {p_mean} --p-std {p_std}{' --lr-decay' if lr_decay else ''} --seed {seed} "
               f"--threads {threads} --checkpoint-every {checkpoint_every} --log-every {log_every}")

    held = heldout_images(data)

    def checks(m, memorisation=False):
        m = copy.deepcopy(m).requires_grad_(False).eval()
        m.clip_x0 = True  # inference: the x0 estimate is clipped to the data range [-1, 1]
        out = sample_checks(m, train)
        if memorisation:
            out["memorisation"] = memorisation_check(m, train, held)
        return out

    noise = train.mean() + train.std() * torch.randn((32,) + tuple(model.event_shape),
                                                     generator=torch.Generator().manual_seed(1))
    references = dict(init_model=checks(model, True), heldout=_stats(held, train),
                      gaussian_noise=_stats(noise, train))
    dim = model.event_shape.numel()

    def record_of(m, curve, wall, step) -> dict:
        rec = dict(
            method="consistency training (Song et al. 2023, Algorithm 3: x0 + sigma_n z and x0 + sigma_{n+1} z with "
            "the same z, no teacher), fine-tuning the consistency model " + repr(str(init)),
            data=src.description, num_scales=num_scales, steps=steps, steps_done=step, partial=step < steps,
            batch_size=batch_size, lr=lr, lr_decay=lr_decay, optimizer="Adam", ema=ema,
            target="theta^- = theta, stop-gradient (Song & Dhariwal 2023, Section 3.2)" if ema == 0
            else f"EMA of the student, decay {ema}", loss=loss,
            huber_c=(0.00054 * dim**0.5 if huber_c is None else huber_c) if loss == "pseudo_huber" else None,
            weighting=weighting, index=index, p_mean=p_mean if index == "lognormal" else None,
            p_std=p_std if index == "lognormal" else None, slow_ema=slow_ema,
            kept_model="slow EMA of the student" if slow_ema else ("the student theta" if ema == 0 else
                                                                    "the EMA target theta^-"),
            sigma_min=m.sigma_min, sigma_max=m.sigma_max, sigma_data=m.sigma_data, seed=seed, threads=threads,
            student_init=str(init), parameters=sum(p.numel() for p in m.parameters()),
            wall_time_train_s=round(wall, 1), loss_curve=curve,
            teacher_scheduler=init_cfg.get("teacher_scheduler"),
            sample_checks=dict(note="32 samples (seed 0) against the training digits: mean RMS distance to the "
                               "nearest training digit, mean offset, std ratio, centred neighbour-correlation "
                               "offset (the shipped priors' criterion, tests/test_zoo.py: nn_rms <= 1.5 x held-out, "
                               "|mean| < 0.1, std ratio in (0.75, 1.25), |lag1| < 0.1); init_model: before "
                               "consistency training; memorisation: see memorisation_check", **checks(m, True),
                               **references),
            command=command, init_training=init_rec)
        return rec

    def save(m, rec):
        m = copy.deepcopy(m).requires_grad_(False).eval()
        m.clip_x0 = bool(init_cfg.get("clip_x0", True))
        save_consistency(m, out, rec)
        out_path = Path(out)
        rec["safetensors_bytes"] = sum(f.stat().st_size for f in out_path.rglob("*.safetensors"))
        (out_path / "training.json").write_text(json.dumps(rec, indent=1) + "\n")

    curve_so_far: list = []

    def log_and_keep(step, val):
        curve_so_far.append((step, val))
        if verbose:
            print(f"step {step}: loss {val:.5f} ({time.perf_counter() - t0:.0f} s)", flush=True)

    def checkpoint(step, kept, target):
        if out is None:
            return
        rec = record_of(kept, list(curve_so_far), time.perf_counter() - t0, step)
        save(kept, rec)
        if verbose:
            print(f"checkpoint {step}: one step {rec['sample_checks']['one_step_clip']}, two steps "
                  f"{rec['sample_checks']['two_step_clip']}", flush=True)

    t0 = time.perf_counter()
    _train_and_record(t0, lambda: consistency_train(model, lambda b, gen: src.sample(b, gen), steps=steps,
                                                batch_size=batch_size, lr=lr, num_scales=num_scales, ema=ema,
                                                loss=loss, huber_c=huber_c, weighting=weighting, index=index,
                                                p_mean=p_mean, p_std=p_std, lr_decay=lr_decay, slow_ema=slow_ema,
                                                generator=g, log_every=log_every, callback=log_and_keep,
                                                checkpoint_every=checkpoint_every, checkpoint=checkpoint),
                      model, record_of, save if out is not None else None, steps, verbose)
    model.requires_grad_(False).eval()
    model.clip_x0 = bool(init_cfg.get("clip_x0", True))
    return model


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m ppl_diffusion.training.consistency",
                                description="Distil a diffusion prior into a one-step consistency model (--method "
                                "cd), or fine-tune one by consistency training on the data (--method ct).")
    p.add_argument("--method", choices=("cd", "ct"), default="cd",
                   help="cd: consistency distillation (Algorithm 2) from --teacher; ct: consistency training "
                   "(Algorithm 3) of the model --init on --data")
    p.add_argument("--teacher", default="digits", help="cd: shipped prior name or local folder (default digits)")
    p.add_argument("--init", default="digits_cm", help="ct: the consistency model to start from (name or folder)")
    p.add_argument("--data", default="digits", help="ct: the training data set (default digits)")
    p.add_argument("--no-augment", action="store_true", help="ct: train on the data without augmentation")
    p.add_argument("--out", required=True, help="output folder (unet/, consistency.json, training.json)")
    p.add_argument("--steps", type=int, default=None, help="default 1500 (cd) / 2000 (ct)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=None, help="default 2e-5 (cd) / 1e-5 (ct)")
    p.add_argument("--num-scales", type=int, default=None,
                   help="N of the Karras grid (default 18, the paper's CIFAR-10 CD setting, for cd; 80 for ct)")
    p.add_argument("--ema", type=float, default=None,
                   help="EMA decay mu of the target network (default 0.95 for cd; 0 for ct: theta^- = theta)")
    p.add_argument("--slow-ema", type=float, default=0.0,
                   help="keep a second EMA of the student at this decay and ship it (default 0: ship the target)")
    p.add_argument("--loss", choices=("l2", "pseudo_huber"), default="l2", help="ct: the metric d")
    p.add_argument("--huber-c", type=float, default=None, help="ct: pseudo-Huber c (default 0.00054 sqrt(dim))")
    p.add_argument("--weighting", choices=("uniform", "ict"), default="uniform",
                   help="ct: lambda(sigma_n) = 1 (uniform) or 1 / (sigma_n - sigma_{n+1}) (ict)")
    p.add_argument("--index", choices=("uniform", "lognormal"), default="uniform",
                   help="ct: distribution of the noise index n (lognormal: improved CT, P_mean / P_std)")
    p.add_argument("--p-mean", type=float, default=-1.1)
    p.add_argument("--p-std", type=float, default=2.0)
    p.add_argument("--lr-decay", action="store_true", help="ct: decay the learning rate linearly to 0")
    p.add_argument("--sigma-max", type=float, default=80.0, help="cd: sigma_max of the grid and sampler (paper: 80)")
    p.add_argument("--sigma-data", type=float, default=0.5,
                   help="cd: sigma_data of c_skip (paper: 0.5; smaller keeps f close to the teacher's denoiser)")
    p.add_argument("--checkpoint-every", type=int, default=0, help="write the model every this many steps")
    p.add_argument("--log-every", type=int, default=50, help="loss-curve interval (steps)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quiet", action="store_true")
    a = p.parse_args(argv)
    cd = a.method == "cd"

    def pick(v, cd_default, ct_default):
        return v if v is not None else (cd_default if cd else ct_default)

    try:
        if cd:
            distill_prior(a.teacher, a.out, steps=pick(a.steps, 1500, 0), batch_size=a.batch_size,
                          lr=pick(a.lr, 2e-5, 0), num_scales=pick(a.num_scales, 18, 0), ema=pick(a.ema, 0.95, 0),
                          slow_ema=a.slow_ema, sigma_max=a.sigma_max, sigma_data=a.sigma_data, seed=a.seed,
                          threads=a.threads, checkpoint_every=a.checkpoint_every, log_every=a.log_every,
                          verbose=not a.quiet)
        else:
            consistency_train_prior(a.init, a.out, data=a.data, augment=not a.no_augment,
                                    steps=pick(a.steps, 0, 2000), batch_size=a.batch_size, lr=pick(a.lr, 0, 1e-5),
                                    num_scales=pick(a.num_scales, 0, 80), ema=pick(a.ema, 0, 0.0), loss=a.loss,
                                    huber_c=a.huber_c, weighting=a.weighting, index=a.index, p_mean=a.p_mean,
                                    p_std=a.p_std, slow_ema=a.slow_ema, lr_decay=a.lr_decay, seed=a.seed,
                                    threads=a.threads, checkpoint_every=a.checkpoint_every,
                                    log_every=a.log_every, verbose=not a.quiet)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
