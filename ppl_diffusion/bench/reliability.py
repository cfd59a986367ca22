"""Reliability: every bad input or fault we try, and what the user gets (``benchmarks/reliability.py``).

Three tables, all measured when the script runs (so the README's table stays true):

1. **Faults.** Each row runs one reproduction (a Gaussian-mixture prior in d = 4, a tiny problem so
   the whole table takes seconds; the checkpoint and CLI rows use the shipped digits prior) and
   records the exception class and its message, the warning, or the value returned.
2. **Chunking.** The same seeded run with the denoiser's ``max_batch`` set small against one batch
   (``max_batch = 0``): whether the draws are bit-identical (``torch.equal``), for a guide (DDRM on
   the digits prior, DPS on the GMM: its gradient goes through checkpointed chunks), an SMC sampler
   (TDS, MCGDiff) and a kernel (PnP-DM).
3. **Memory.** Peak resident memory (``ru_maxrss`` of a fresh subprocess: torch's CPU allocator has
   no peak counter and ``tracemalloc`` does not see ATen allocations) of a 10,000-sample DDRM run on
   the digits prior, with the automatic chunking and with one batch (``max_batch = 0``).

Run ``python benchmarks/reliability.py [--steps-memory 3] [--skip-memory]``.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

from .report import MarkdownTable, add_out_argument, write_result

__all__ = ["gmm_setup", "fault_rows", "chunk_rows", "memory_run", "main"]

F64 = torch.float64


def gmm_setup(noise: float = 0.1):
    """A d = 4 two-component GMM prior, a 2 x 4 measurement and its model: ``(prior, op, model, y)``."""
    import pyro

    from ..models import GaussianMeasurement, GaussianMixture
    from ..models.operators import Matrix
    from ..schedules import VPSchedule

    g = torch.Generator().manual_seed(0)
    gmm = GaussianMixture(torch.ones(2, dtype=F64) / 2, torch.tensor([[1., 1, 0, 0], [-1, -1, 0, 0]], dtype=F64),
                          torch.full((2,), 0.1, dtype=F64))
    prior = gmm.diffusion_prior(VPSchedule.linear())
    A = torch.randn(2, 4, generator=g, dtype=F64)
    op = Matrix(A)

    def model(y=None):
        x = pyro.sample("x", prior)
        return pyro.sample("y", GaussianMeasurement(op, x, noise), obs=y)

    return prior, op, model, A @ torch.tensor([1., 1, 0, 0], dtype=F64)


def _outcome(fn) -> str:
    """``"ExceptionClass: message"``, ``"warning: message"`` or ``"returns ..."`` of ``fn()``."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            out = fn()
        except BaseException as exc:  # noqa: BLE001 - KeyboardInterrupt subclasses are outcomes here
            if isinstance(exc, SystemExit):
                return f"exit {exc.code}"
            extra = ""
            part = getattr(exc, "partial", None)
            if part is not None:
                extra = f" [.partial: {_describe(part)}]"
            return f"{type(exc).__name__}: {str(exc).splitlines()[0]}{extra}"
    runtime = [w for w in caught if issubclass(w.category, RuntimeWarning)
               or w.category.__module__.startswith("ppl_diffusion")]  # ours: MixingWarning, WarmupWarning, ...
    if runtime:
        label = "RuntimeWarning" if runtime[0].category is RuntimeWarning else \
            f"{runtime[0].category.__name__} ({runtime[0].category.__mro__[1].__name__})"
        return f"{label}: {str(runtime[0].message)}; returns {_describe(out)}"
    return f"returns {_describe(out)}"


def _describe(v) -> str:
    if isinstance(v, torch.Tensor):
        return f"tensor {tuple(v.shape)}, max abs {float(v.abs().max()):.3g}" if v.numel() else "empty tensor"
    if hasattr(v, "samples"):
        return f"{type(v).__name__} samples {tuple(v.samples.shape)}" + \
            (", interrupted" if getattr(v, "interrupted", False) else "")
    if hasattr(v, "particles"):
        return f"{type(v).__name__} particles {tuple(v.particles.shape)}" + \
            (", interrupted" if v.extra.get("interrupted") else "")
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_describe(x) if isinstance(x, torch.Tensor) else x}" for k, x in v.items()
                               if k in ("x", "mu", "loss_trace", "interrupted", "particles")) + "}"
    return type(v).__name__ if not isinstance(v, (int, float, str)) else str(v)


def interrupting(den, after: int):
    """A copy of the GMM denoiser ``den`` whose ``after``-th call raises ``KeyboardInterrupt`` (Ctrl-C)."""
    from ..denoisers import CallableDenoiser

    calls = {"n": 0}

    def fn(x, t):
        calls["n"] += 1
        if calls["n"] == after:
            raise KeyboardInterrupt
        return den.denoise(x, torch.as_tensor(t, dtype=x.dtype))

    out = CallableDenoiser(fn, den.schedule, den.event_shape)
    out.gmm = den.gmm  # same data scale for the divergence guard
    return out


def _interrupt_model(prior, op, after: int):
    import pyro

    from ..models import GaussianMeasurement
    from ..models.prior import DiffusionPrior

    p = DiffusionPrior(interrupting(prior.denoiser, after))

    def model(y=None):
        x = pyro.sample("x", p)
        return pyro.sample("y", GaussianMeasurement(op, x, 0.1), obs=y)

    return model


class _DeadWeights:
    """A one-step-at-a-time Feynman-Kac model whose log-weights all become -inf at step 3."""

    name = "toy"
    n_steps = 6

    def sample_initial(self, R, N, generator):
        return torch.randn(R, N, 2, generator=generator, dtype=F64)

    def start(self, x):
        return {"x": x}, torch.zeros(x.shape[:2], dtype=F64)

    def move(self, k, state, generator):
        return state["x"] + 0.1 * torch.randn(state["x"].shape, generator=generator, dtype=F64)

    def weigh(self, k, state, x_new):
        inc = torch.full(x_new.shape[:2], -float("inf") if k == 2 else 0.0, dtype=F64)
        return {"x": x_new}, inc

    def resample_allowed(self, k):
        return True

    def output(self, state):
        return state["x"]


def _nan_checkpoint(folder: Path):
    """A copy of the shipped digits prior with one NaN weight; returns the folder."""
    import shutil

    from safetensors.torch import load_file, save_file

    from ..models.zoo import prior_folder

    src = prior_folder("digits")
    shutil.copytree(src, folder, dirs_exist_ok=True)
    f = folder / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(str(f))
    key = sorted(state)[0]
    state[key] = state[key].clone()
    state[key].view(-1)[0] = float("nan")
    save_file(state, str(f))
    return folder


def fault_rows():
    """``[(fault, reproduction, outcome)]``: every fault we try, run now."""
    from ..inference.guides.ddrm import DDRM
    from ..inference.guides.dps import DPS
    from ..inference.kernels import PMC, PnPDM
    from ..inference.smc.engine import run_smc
    from ..inference.smc.mcgdiff import MCGDiff
    from ..inference.smc.smcdiff import SMCDiff
    from ..inference.smc.tds import TDS
    from ..inference.variational.red_diff import REDDiff

    prior, op, model, y = gmm_setup()
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    far = torch.tensor([300.0, -300.0], dtype=F64)
    rows = [
        ("guidance too strong", "`DPS(model, steps=10, zeta=1e6).sample(2, y=y)`",
         lambda: DPS(model, steps=10, zeta=1e6).sample(2, y=y, generator=g())),
        ("learning rate too large", "`REDDiff(model, lr=1e6, steps=20).draw(2, y=y)`",
         lambda: REDDiff(model, lr=1e6, steps=20).draw(2, y=y)),
        ("learning rate absurd", "`REDDiff(model, lr=1e30, steps=20).draw(2, y=y)`",
         lambda: REDDiff(model, lr=1e30, steps=20).draw(2, y=y)),
        ("MCMC step too large", "`PMC(model, step_size=1e10).draw(4, y=y, warmup=2)`",
         lambda: PMC(model, step_size=1e10).draw(4, y=y, warmup=2, generator=g())),
        ("Langevin step too large", "`PnPDM(model, likelihood_step='langevin', langevin_step=1e10).draw(4, ...)`",
         lambda: PnPDM(model, likelihood_step="langevin", langevin_step=1e10, langevin_steps=5, num_grid=10)
         .draw(4, y=y, warmup=2, generator=g())),
        ("one chain stuck far out", "`PMC(model).run_chains(init=...)`, chain 0 started at 1e7",
         lambda: PMC(model).run_chains(y=y, num_chains=3, num_samples=5, init=_stuck_init(), generator=g())),
        ("y far outside the prior (SMC)", "`MCGDiff(model, particles=16, steps=20).draw(2, y=[300, -300])`",
         lambda: MCGDiff(model, particles=16, steps=20).draw(2, y=far, generator=g())),
        ("y far outside the prior (TDS)", "`TDS(model, particles=16, steps=20).draw(2, y=[300, -300])`",
         lambda: TDS(model, particles=16, steps=20).draw(2, y=far, generator=g())),
        ("y absurdly far (SMC particles blow up)", "`MCGDiff(...).draw(2, y=[1e8, -1e8])`",
         lambda: MCGDiff(model, particles=16, steps=20).draw(2, y=far * 1e8 / 300, generator=g())),
        ("one draw per SMC run misweights a mode", "`MCGDiff(d8_model, particles=16, steps=50, resampling="
         "'multinomial', ess_threshold=1.0).draw(2000, y=y)` (planted: resampling every step loses the minor mode)",
         _planted_mode_loss),
        ("MCMC chains hold different modes", "`PnPDM(two_mode_model, rho0=0.1, rho_min=0.1, decay=1.0).run_chains("
         "y=y, num_chains=8, num_samples=100, init=half the chains in each mode)` (exact minor weight 0.1)",
         _stuck_modes),
        ("all log-weights -inf", "`run_smc(model_whose_weights_die_at_step_3, R=2, N=8)`",
         lambda: run_smc(_DeadWeights(), 2, 8, generator=g())),
        ("batch that cannot fit", "`DDRM(model).sample(10**12, y=y)`",
         lambda: DDRM(model).sample(10**12, y=y)),
        ("prior batch that cannot fit", "`prior.sample((10**12,))`", lambda: prior.sample((10**12,))),
        ("Ctrl-C in a guide", "`DDRM(...).sample(8, y=y)`, KeyboardInterrupt at the 5th network call",
         lambda: DDRM(_interrupt_model(prior, op, 5), steps=20).sample(8, y=y, generator=g())),
        ("Ctrl-C in MCMC chains", "`PMC(...).run_chains(num_samples=20)`, KeyboardInterrupt at call 12",
         lambda: PMC(_interrupt_model(prior, op, 12)).run_chains(y=y, num_chains=2, num_samples=20,
                                                                  generator=g())),
        ("Ctrl-C in SMC", "`TDS(..., steps=20, reverse_variance='ddpm').run(y=y)`, KeyboardInterrupt at call 8",
         lambda: TDS(_interrupt_model(prior, op, 8), particles=8, steps=20,  # calls counted from the run
                     reverse_variance="ddpm").run(y=y, generator=g())),
        ("Ctrl-C in RED-Diff", "`REDDiff(..., steps=50).draw(2, y=y)`, KeyboardInterrupt at call 10",
         lambda: REDDiff(_interrupt_model(prior, op, 10), steps=50).draw(2, y=y)),
        ("SMCDiff on a k-space (MRI) mask", "`SMCDiff(model_with_MRI_operator)`",
         lambda: SMCDiff(_mri_model())),
    ]
    out = []
    for name, how, fn in rows:
        out.append((name, how, _outcome(fn)))
    with tempfile.TemporaryDirectory() as tmp:
        folder = _nan_checkpoint(Path(tmp) / "nan_prior")
        from ..models.zoo import load_prior

        out.append(("checkpoint with a NaN weight", "`load_prior(folder)`", _outcome(lambda: load_prior(folder))))
        from ..cli import main as cli

        blocker = Path(tmp) / "a_file"
        blocker.write_text("")
        out.append(("CLI --out not writable", "`ppl-diffusion solve ... --out <an existing file>`",
                     _cli_outcome(cli, ["solve", "--image", str(_digit(tmp)), "--operator", "inpainting",
                                        "--method", "ddrm", "--samples", "1", "--out", str(blocker)])))
        out.append(("CLI, guidance too strong", "`ppl-diffusion solve ... --method dps --method-args "
                    "'{\"zeta\": 1e6, \"steps\": 5}'`",
                    _cli_outcome(cli, ["solve", "--image", str(_digit(tmp)), "--operator", "inpainting", "--method",
                                       "dps", "--method-args", '{"zeta": 1e6, "steps": 5}', "--samples", "1",
                                       "--out", str(Path(tmp) / "o")])))
    return out


def _planted_mode_loss():
    """One draw per run of MCGDiff forced to resample at every step with 16 particles, on a d = 8 two-measurement
    mixture whose minor mode it loses in most runs (tests/test_exactness.py)."""
    from ..inference.smc.mcgdiff import MCGDiff
    from ..schedules import VPSchedule
    from .exactness import exactness_problem

    pb = exactness_problem("uneven", 8, 2, seed=1, mean_scale=4.0)
    sv = MCGDiff(pb.model(VPSchedule.gmm_benchmark()), particles=16, steps=50, resampling="multinomial",
                 ess_threshold=1.0)
    return sv.draw(2000, y=pb.y, generator=torch.Generator().manual_seed(0))


def _stuck_modes():
    """A real PnP-DM run whose chains never leave the mode they start in (pooled minor weight 0.5 against the
    exact 0.1; tests/test_mixing_check.py)."""
    from .mixing_check import two_mode_pnpdm

    pb, kern, init = two_mode_pnpdm()
    return kern.run_chains(y=pb.y, num_chains=8, num_samples=100, warmup_steps=5, init=init,
                           generator=torch.Generator().manual_seed(0))


def _stuck_init():
    x = torch.zeros(3, 4, dtype=F64)
    x[0] = 1e7
    return x


def _mri_model():
    import pyro

    from ..models import GaussianMeasurement
    from ..tasks import make_operator

    prior = _digits_prior()
    op = make_operator("mri", tuple(prior.event_shape))

    def model(y=None):
        x = pyro.sample("x", prior)
        return pyro.sample("y", GaussianMeasurement(op, x, 0.05), obs=y)

    return model


def _digits_prior():
    from ..models.zoo import load_prior

    return load_prior("digits")


def _digit(tmp) -> Path:
    import numpy as np

    from ..models.zoo import heldout_images

    path = Path(tmp) / "digit.npy"
    if not path.exists():
        np.save(path, heldout_images("digits")[0].numpy())
    return path


def _cli_outcome(cli, argv) -> str:
    import contextlib
    import io

    err = io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = cli(argv)
    lines = [ln for ln in err.getvalue().splitlines() if ln.strip()]
    return f"exit {code} after {time.perf_counter() - t0:.1f} s, stderr: {lines[-1] if lines else ''}"


def chunk_rows():
    """``[(family, run, chunk, identical)]``: a small ``max_batch`` against one batch, same seed."""
    from ..inference.guides.ddrm import DDRM
    from ..inference.guides.dps import DPS
    from ..inference.kernels import PnPDM
    from ..inference.smc.mcgdiff import MCGDiff
    from ..inference.smc.tds import TDS
    from ..memory import max_batch
    from ..tasks import make_model, make_operator

    prior, op, model, y = gmm_setup()
    digits = _digits_prior()
    dop = make_operator("inpainting", tuple(digits.event_shape))
    dmodel = make_model(digits, dop, 0.05)
    dy = dop(heldout()) + 0.05 * torch.randn(dop.out_shape, generator=torch.Generator().manual_seed(1))
    cases = [
        ("guide", "DDRM, digits prior, 300 draws, 10 steps", digits.denoiser, 128,
         lambda g: DDRM(dmodel, steps=10).sample(300, y=dy, generator=g)),
        ("guide (gradient)", "DPS, GMM d = 4, 50 draws, 20 steps", prior.denoiser, 8,
         lambda g: DPS(model, steps=20).sample(50, y=y, generator=g)),
        ("SMC", "TDS, GMM, 4 runs x 32 particles, 20 steps", prior.denoiser, 16,
         lambda g: TDS(model, particles=32, steps=20).sample(4, y=y, generator=g)),
        ("SMC", "MCGDiff, GMM, 4 runs x 32 particles, 20 steps", prior.denoiser, 16,
         lambda g: MCGDiff(model, particles=32, steps=20).sample(4, y=y, generator=g)),
        ("kernel", "PnP-DM, GMM, 8 chains x 4 draws", prior.denoiser, 4,
         lambda g: PnPDM(model, num_grid=10, langevin_steps=5).draw(32, y=y, chains=8, warmup=2,
                                                                   generator=g).samples),
    ]
    rows = []
    for fam, what, den, cap, fn in cases:
        with max_batch(den, 0):
            one = fn(torch.Generator().manual_seed(7))
        with max_batch(den, cap):
            chunked = fn(torch.Generator().manual_seed(7))
        rows.append((fam, what, cap, "yes" if torch.equal(one, chunked) else
                     f"NO (max diff {float((one - chunked).abs().max()):.2g})"))
    return rows


def heldout():
    from ..models.zoo import heldout_images

    return heldout_images("digits")[0]


_MEMORY_CODE = """
import json, resource, sys, time, torch
torch.set_num_threads(1)
from ppl_diffusion.inference.guides.ddrm import DDRM
from ppl_diffusion.memory import batch_cap
from ppl_diffusion.models.zoo import heldout_images, load_prior
from ppl_diffusion.tasks import make_model, make_operator
n, steps, cap = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
prior = load_prior("digits")
if cap != "auto":
    prior.denoiser.max_batch = int(cap)
op = make_operator("inpainting", tuple(prior.event_shape))
y = op(heldout_images("digits")[0])
model = make_model(prior, op, 0.05)
DDRM(model, steps=2).sample(2, y=y)  # warm-up: libraries loaded
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
x = DDRM(model, steps=steps).sample(n, y=y, generator=torch.Generator().manual_seed(0))
secs = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"base_kib": base, "peak_kib": peak, "seconds": secs, "shape": list(x.shape),
                  "cap": batch_cap(prior.denoiser), "finite": bool(torch.isfinite(x).all())}))
"""


def memory_run(n: int = 10_000, steps: int = 3, cap: str = "auto") -> dict:
    """Peak RSS of ``DDRM(steps).sample(n)`` on the digits prior in a fresh subprocess."""
    out = subprocess.run([sys.executable, "-c", _MEMORY_CODE, str(n), str(steps), str(cap)], capture_output=True,
                         text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_out_argument(p, "reliability")
    p.add_argument("--steps-memory", type=int, default=3, help="DDRM steps of the 10,000-sample memory run")
    p.add_argument("--samples-memory", type=int, default=10_000)
    p.add_argument("--skip-memory", action="store_true", help="skip the memory runs (minutes on one thread)")
    p.add_argument("--skip-unchunked", action="store_true", help="measure only the chunked memory run")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    faults = MarkdownTable("fault", "reproduction", "what the user gets")
    for name, how, outcome in fault_rows():
        faults.add(name, how, outcome.replace("|", "\\|"))
    chunks = MarkdownTable("family", "run", "max_batch", "bit-identical to one batch")
    for row in chunk_rows():
        chunks.add(*row)
    body = "## Faults\n\n" + str(faults) + "\n\n## Chunked runs against one batch (same seed)\n\n" + str(chunks)
    if not args.skip_memory:
        mem = MarkdownTable("run", "chunk (max_batch)", "peak RSS", "above the warm-up", "seconds")
        caps = ["auto"] + ([] if args.skip_unchunked else ["0"])
        for cap in caps:
            r = memory_run(args.samples_memory, args.steps_memory, cap)
            mem.add(f"DDRM {args.samples_memory} draws x {args.steps_memory} steps, digits", r["cap"] or "none",
                    f"{r['peak_kib'] / 2**20:.2f} GB", f"{(r['peak_kib'] - r['base_kib']) / 2**20:.2f} GB",
                    f"{r['seconds']:.0f}")
        body += "\n\n## Peak memory (ru_maxrss of a fresh process, 1 thread)\n\n" + str(mem)
    command = "python benchmarks/reliability.py " + " ".join(argv if argv is not None else sys.argv[1:])
    write_result(args.out, "reliability", "Reliability: faults, chunking, memory", command.strip(), body,
                 notes="Every row is run by ppl_diffusion/bench/reliability.py; the messages are the library's own.")
    return body


if __name__ == "__main__":  # pragma: no cover
    main()
