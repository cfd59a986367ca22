"""Every guide on the shipped prior's held-out images for the tasks of BENCHMARKS.md §3 (CPU size).

Tasks (sigma_y = 0.05 on [-1, 1] images, 1x16x16): random inpainting (70 % missing), box inpainting
(8x8 centre), 2x / 4x super-resolution (block average), Gaussian deblur (std 1 px), motion-like deblur
(5-px diagonal line kernel), compressed sensing (m = 64 of 256), phase retrieval (oversampling 2).
Per (guide, task): PSNR / SSIM of the posterior mean, coverage of pixel-wise 90 % intervals, the
correlation of the posterior std with |mean - truth|, NFE and wall time per sample. A guide whose
requirements the task does not meet (e.g. DDRM on phase retrieval) is listed as ``n/a``.

    python benchmarks/images.py [--images 4] [--samples 8] [--steps 50] [--guides dps,ddrm,...]
"""
from __future__ import annotations

import argparse
import time

import pyro
import torch

from . import heldout, image_denoiser, results_path, set_threads

__all__ = ["main", "tasks", "evaluate"]

GUIDES = ("ddrm", "ddnm", "ddnm_plus", "dds", "diffpir", "ilvr", "score_sde", "repaint", "ks",
          "dps", "pigdm", "mmps", "mcg", "score_ald", "snips")


def tasks(shape=(1, 16, 16), dtype=torch.float32, seed=0):
    from ..models import operators as O

    g = torch.Generator().manual_seed(seed)
    H = shape[-1]
    line = torch.eye(5, dtype=dtype) / 5.0
    return {
        "inpaint_random70": O.Inpainting.random(shape, 0.7, generator=g, dtype=dtype),
        "inpaint_box": O.Inpainting.box(shape, H // 4, H // 4, H // 2, H // 2, dtype=dtype),
        "sr2": O.SuperResolution(2, shape, dtype=dtype),
        "sr4": O.SuperResolution(4, shape, dtype=dtype),
        "deblur_gauss": O.Blur.gaussian(shape, 1.0, dtype=dtype),
        "deblur_motion": O.Blur(line, shape),
        "cs_m64": O.CompressedSensing(64, shape, generator=g, dtype=dtype),
        "phase_retrieval": O.PhaseRetrieval(shape, 2.0),
    }


def _guide_class(name):
    from ..inference import guides as G

    return {"ddrm": G.DDRM, "ddnm": G.DDNM, "ddnm_plus": G.DDNMPlus, "dds": G.DDS, "diffpir": G.DiffPIR,
            "ilvr": G.ILVR, "score_sde": G.ScoreSDE, "repaint": G.RePaint, "ks": G.KadkhodaieSimoncelli,
            "dps": G.DPS, "pigdm": G.PiGDM, "mmps": G.MMPS, "mcg": G.MCG, "score_ald": G.ScoreALD,
            "snips": G.SNIPS}[name]


def evaluate(guide, task, op, den, x_true, n_samples, steps, seed=0, noise_std=0.05):
    """Metrics of one guide on one task over the images ``x_true`` (N, C, H, W); None when not applicable."""
    from ..metrics import coverage, psnr, ssim
    from ..models import DiffusionPrior, GaussianMeasurement

    prior = DiffusionPrior(den, steps=10)

    def model(y=None):
        x = pyro.sample("x", prior)
        return pyro.sample("y", GaussianMeasurement(op, x, noise_std), obs=y)

    cls = _guide_class(guide)
    rows = []
    t_total, nfe = 0.0, 0
    g = torch.Generator().manual_seed(seed)
    for i, xt in enumerate(x_true):
        y = op(xt) + noise_std * torch.randn(op.out_shape, generator=g, dtype=xt.dtype)
        try:
            gd = cls(model, steps=steps)
            t0 = time.perf_counter()
            xs = gd.sample(n_samples, y=y, generator=g).detach().reshape((n_samples,) + xt.shape)
            t_total += time.perf_counter() - t0
            nfe = gd.last_nfe
        except (ValueError, NotImplementedError, TypeError) as e:
            return dict(guide=guide, task=task, error=f"{type(e).__name__}: {str(e)[:60]}")
        except Exception as e:  # divergence etc.
            return dict(guide=guide, task=task, error=f"{type(e).__name__}: {str(e)[:60]}")
        m, sd = xs.mean(0), xs.std(0)
        err = (m - xt).abs().flatten()
        corr = float(torch.corrcoef(torch.stack([sd.flatten(), err]))[0, 1])
        rows.append((float(psnr(m, xt)), float(ssim(m[None], xt[None]).mean()),
                     float(coverage(xs, xt, 0.9)), corr))
    r = torch.tensor(rows).nanmean(0) if rows else torch.full((4,), float("nan"))
    return dict(guide=guide, task=task, psnr=float(r[0]), ssim=float(r[1]), coverage=float(r[2]), corr=float(r[3]),
                nfe=nfe, sec_per_sample=t_total / (len(x_true) * n_samples))


def table(results) -> str:
    lines = ["| guide | task | PSNR | SSIM | 90% coverage | corr(std, abs err) | NFE | s / sample |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['guide']} | {r['task']} | n/a | | | | | {r['error']} |")
        else:
            lines.append(f"| {r['guide']} | {r['task']} | {r['psnr']:.2f} | {r['ssim']:.3f} | {r['coverage']:.2f} | "
                         f"{r['corr']:.2f} | {r['nfe']} | {r['sec_per_sample']:.3f} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(prog="ppl-diffusion benchmark images", description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=4)
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--guides", default=",".join(GUIDES))
    p.add_argument("--tasks", default="")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=results_path("images"))
    a = p.parse_args(argv)
    set_threads()
    den, dlabel = image_denoiser()
    x, ilabel = heldout(a.images)
    ts = tasks(tuple(den.event_shape), seed=a.seed)
    names = a.tasks.split(",") if a.tasks else list(ts)
    results = [evaluate(gname, t, ts[t], den, x, a.samples, a.steps, a.seed)
               for t in names for gname in a.guides.split(",")]
    body = (f"Denoiser: {dlabel}. Images: {ilabel}, {a.images} images x {a.samples} samples, {a.steps} steps, "
            f"default options of each guide, seed {a.seed}, float32.\n\n" + table(results))
    from .overhead import write_table_safe

    text = write_table_safe(a.out, "Image tasks (BENCHMARKS.md §3)", ("python benchmarks/images.py " + " ".join(argv or [])).strip(),
                            body, "With an untrained UNet these numbers measure plumbing and data consistency, not image quality.")
    print(text)
    return results


if __name__ == "__main__":  # pragma: no cover
    main()
