"""Memory bounds shared by every family: network calls in chunks of ``max_batch`` and a refusal,
before any work, of a request whose state cannot fit.

Every :class:`~ppl_diffusion.denoisers.Denoiser` call goes through :func:`chunked_denoise`: a batch
larger than the denoiser's cap (``denoiser.max_batch``, or :func:`auto_max_batch` from the model's
size and the free memory) is evaluated in chunks of that size. The random numbers of a run are drawn
exactly as for one batch (only the network evaluation is split), so a chunked run is bit-identical
to a one-batch run with the same seed whenever the network computes each row independently of the
batch size. On CPU, PyTorch's float32 convolutions switch kernels below a few dozen rows; every
chunk therefore has the full cap size (the last one overlaps the previous rows and keeps only its
tail), and :data:`MIN_CHUNK` bounds the automatic cap from below. Under autograd each chunk is
checkpointed (``torch.utils.checkpoint``), so a gradient through the denoiser (DPS, RED-Diff, TDS)
keeps one chunk's activations at a time and recomputes them in the backward pass.

The state of a run (samples, particles or chains times a few copies) must fit as a whole:
:func:`check_fits` raises :class:`MemoryEstimateError` with the estimate before any network call.

Set a cap by hand with ``denoiser.max_batch = 256`` or, for a block of code,
``with max_batch(denoiser, 256): ...``; ``max_batch = 0`` disables chunking.
"""
from __future__ import annotations

import contextlib
import math

import torch

__all__ = ["MemoryEstimateError", "available_memory", "bytes_per_sample", "auto_max_batch", "batch_cap",
           "chunked_denoise", "check_fits", "max_batch", "MIN_CHUNK", "format_bytes"]

#: smallest automatic chunk (float32 CPU convolutions are batch-size invariant from here on)
MIN_CHUNK = 128
#: share of the free memory one network chunk may use by default, and the cap on that budget
CHUNK_SHARE, CHUNK_BUDGET = 0.25, 512 * 2**20
#: share of the free memory a run's state may use before it is refused
STATE_SHARE = 0.8


class MemoryEstimateError(MemoryError, ValueError):
    """A request whose estimated memory exceeds what is free (raised before any work; a
    ``MemoryError``, also a ``ValueError`` so that the CLI prints it on one line)."""


def format_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1024 or unit == "PB":
            return f"{n:.3g} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024.0
    return f"{n:.3g} PB"  # pragma: no cover


def available_memory(device=None) -> int:
    """Free bytes on ``device``: ``torch.cuda.mem_get_info`` on a GPU; on CPU the smaller of
    ``MemAvailable`` (``/proc/meminfo``) and the cgroup limit minus its usage (8 GB if unknown)."""
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type == "cuda" and torch.cuda.is_available():
        return int(torch.cuda.mem_get_info(dev)[0])
    free = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    free = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            with open(limit_file) as f:
                raw = f.read().strip()
            if raw.isdigit() and int(raw) < 2**60:
                with open(usage_file) as f:
                    used = int(f.read().strip())
                left = max(int(raw) - used, 0)
                free = left if free is None else min(free, left)
                break
        except (OSError, ValueError):
            continue
    return int(free) if free is not None else 8 * 2**30


def _elem_size(den) -> int:
    p = next(iter(den.parameters()), None)
    return p.element_size() if p is not None else 8


def bytes_per_sample(den) -> int:
    """A rough upper bound on the memory one sample takes in one network call of ``den``
    (``den.bytes_per_sample_hint`` if set): for a UNet the widest feature map times 12 live tensors, for
    a Gaussian-mixture denoiser ``K x d`` float64 terms times 6, else the event times 64 copies."""
    own = getattr(den, "bytes_per_sample_hint", None)
    if own:
        return int(own)
    d = max(int(math.prod(tuple(den.event_shape))), 1)
    unet = getattr(den, "unet", None)
    cfg = getattr(unet, "config", None)
    if cfg is not None:
        width = max(int(c) for c in getattr(cfg, "block_out_channels", (64,)))
        hw = d // max(int(getattr(cfg, "in_channels", 1)), 1)
        return 12 * width * hw * _elem_size(den)
    gmm = getattr(den, "gmm", None)
    if gmm is not None:
        return 6 * int(gmm.means.shape[0]) * d * 8
    return 64 * d * _elem_size(den)


def auto_max_batch(den, device=None) -> int:
    """The default cap: a quarter of the free memory (at most 512 MB) over :func:`bytes_per_sample`,
    at least :data:`MIN_CHUNK`."""
    budget = min(CHUNK_SHARE * available_memory(device), CHUNK_BUDGET)
    return max(MIN_CHUNK, int(budget // max(bytes_per_sample(den), 1)))


def batch_cap(den, device=None) -> int | None:
    """The chunk size of ``den``'s calls: ``den.max_batch`` if set (0 or a negative value: no
    chunking, ``None``), else :func:`auto_max_batch` (cached per device)."""
    cap = getattr(den, "max_batch", None)
    if cap is not None:
        return int(cap) if int(cap) > 0 else None
    key = str(device)
    cache = den.__dict__.setdefault("_auto_cap", {})
    if key not in cache:
        cache[key] = auto_max_batch(den, device)
    return cache[key]


def chunked_denoise(den, x_t: torch.Tensor, t: torch.Tensor, cap: int) -> torch.Tensor:
    """``den.denoise(x_t, t)`` in chunks of ``cap`` rows of the flattened batch (see the module
    docstring: equal-size chunks, the last one overlapping; checkpointed under autograd)."""
    ne = den.n_event
    batch = tuple(x_t.shape[: x_t.dim() - ne])
    n = int(math.prod(batch))
    flat = x_t.reshape((n,) + tuple(den.event_shape))
    try:
        tb = t.expand(batch).reshape(n) if t.dim() > 0 else t
    except RuntimeError:  # a time tensor that does not broadcast to the batch: let the denoiser decide
        return den.denoise(x_t, t)
    grad = torch.is_grad_enabled() and (flat.requires_grad or tb.requires_grad)
    outs = []
    for start in range(0, n, cap):
        lo = min(start, max(n - cap, 0))  # every chunk has cap rows: the last one overlaps
        xs = flat[lo: lo + cap]
        ts = tb[lo: lo + cap] if tb.dim() > 0 else tb
        if grad:
            from torch.utils.checkpoint import checkpoint

            out = checkpoint(den.denoise, xs, ts, use_reentrant=False)
        else:
            out = den.denoise(xs, ts)
        outs.append(out[start - lo:])
    return torch.cat(outs).reshape(x_t.shape)


def check_fits(what: str, n: int, event_shape, dtype, device=None, copies: int = 8, den=None,
               unit: str = "samples") -> None:
    """Refuse (:class:`MemoryEstimateError`) a run of ``n`` elements of ``event_shape`` whose state
    (``copies`` tensors of the batch) plus one network chunk exceeds the free memory."""
    d = max(int(math.prod(tuple(event_shape))), 1)
    elem = torch.empty((), dtype=dtype).element_size() if dtype is not None else 8
    state = float(n) * d * elem * copies
    chunk = 0.0
    if den is not None:
        cap = batch_cap(den, device)
        chunk = float(min(n, cap or n)) * bytes_per_sample(den)
    need = state + chunk
    free = available_memory(device)
    if need > STATE_SHARE * free:
        raise MemoryEstimateError(
            f"{what}: {n} {unit} of shape {tuple(event_shape)} need about {format_bytes(need)} "
            f"({copies} copies of the batch state: {format_bytes(state)}; one network chunk: "
            f"{format_bytes(chunk)}), more than the {format_bytes(free)} free; nothing was run. "
            f"Ask for fewer {unit} per call (about {max(int(STATE_SHARE * free // max(need / n, 1)), 0)} fit) "
            "and concatenate the calls.")


@contextlib.contextmanager
def max_batch(den, cap: int | None):
    """Temporarily set ``den.max_batch`` (``None``: automatic; 0: no chunking)."""
    old = getattr(den, "max_batch", None)
    den.max_batch = cap
    try:
        yield den
    finally:
        den.max_batch = old

