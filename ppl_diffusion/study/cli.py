"""``ppl-diffusion study``: run a study from a TOML / JSON file or from flags (flags override the file)."""
from __future__ import annotations

import argparse
import json

__all__ = ["add_study_arguments", "main_study", "EXAMPLE_TOML"]

EXAMPLE_TOML = """\
name = "uq-sr2"
samples = 16            # posterior draws per cell
seeds = [0]             # solver seeds
measurements = 6        # held-out images 0..5 (or a list, or "0-5")

[problem]               # kind = "image" (prior, operator, op_args, noise_std) or "gmm" (d, d_y)
kind = "image"
prior = "digits"
operator = "sr"
op_args = { factor = 2 }
noise_std = 0.05

[methods]               # label = { solver options }; method = "<registry name>" when the label differs
ddrm = { steps = 50 }
mcgdiff = { steps = 40, particles = 32, independent = false }

[settings]              # optional: named overrides of the problem, "samples" or "options"
low_noise = { noise_std = 0.02 }
high_noise = { noise_std = 0.1 }

[resources]             # what each Ray task asks for; Ray retries of a task whose worker died
cpus_per_task = 1
gpus_per_task = 0
max_retries = 2
"""


def add_study_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", nargs="?", default=None, help="study file (.toml, .yaml or .json); see --example")
    p.add_argument("--out", default=None, help="output folder (default out/<study name>); a re-run with the same "
                                               "folder skips the finished cells")
    p.add_argument("--backend", choices=["inprocess", "ray"], default="inprocess",
                   help="inprocess (default, no Ray) or ray (pip install 'ppl-diffusion[ray]')")
    p.add_argument("--address", default=None, help="Ray cluster to join ('auto', 'ray://head:10001'); "
                                                    "default: start a local Ray")
    p.add_argument("--workers", type=int, default=None, help="local Ray: CPU slots (default: all CPUs)")
    g = p.add_argument_group("the grid (override the file)")
    g.add_argument("--name", default=None, help="study name")
    g.add_argument("--methods", default=None, help="comma-separated registered methods, e.g. ddrm,mcgdiff")
    g.add_argument("--method-args", default=None,
                   help='JSON object {label: options}, e.g. \'{"ddrm": {"steps": 50}}\'')
    g.add_argument("--measurements", default=None, help="count or list: 6, 0-5, 0,3,7")
    g.add_argument("--seeds", default=None, help="solver seeds: count or list (default 0)")
    g.add_argument("--samples", type=int, default=None, help="posterior draws per cell")
    g.add_argument("--prior", default=None, help="image problems: prior name or folder (default digits)")
    g.add_argument("--operator", default=None, help="image problems: operator (default sr)")
    g.add_argument("--op-args", action="append", default=None, help="operator parameters key=value[,key=value]")
    g.add_argument("--noise-std", type=float, default=None, help="image problems: sigma_y (default 0.05)")
    g.add_argument("--gmm", default=None, metavar="D,D_Y",
                   help="GMM problems with exact posteriors instead of images, e.g. 8,2")
    p.add_argument("--example", action="store_true", help="print an example study file and exit")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _study_from_args(args):
    from ..tasks import parse_op_args
    from .spec import Study, load_study

    d = {}
    if args.file:
        d = load_study(args.file).to_dict()
        for k in ("cpus_per_task", "gpus_per_task", "max_retries"):
            d.setdefault("resources", {})[k] = d.pop(k)
    if args.methods:
        d["methods"] = {m.strip(): {} for m in args.methods.split(",") if m.strip()}
    if args.method_args:
        try:
            extra = json.loads(args.method_args)
        except json.JSONDecodeError as e:
            raise ValueError(f"--method-args must be a JSON object ({e})") from e
        if not isinstance(extra, dict) or not all(isinstance(v, dict) for v in extra.values()):
            raise ValueError('--method-args must be a JSON object {label: {option: value}}')
        d.setdefault("methods", {})
        for k, v in extra.items():
            d["methods"].setdefault(k, {}).update(v)
    if not d.get("methods"):
        raise ValueError("give a study file or --methods (e.g. --methods ddrm,mcgdiff); see --example")
    for k in ("name", "samples", "measurements", "seeds"):
        if getattr(args, k) is not None:
            d[k] = getattr(args, k)
    prob = dict(d.get("problem") or {})
    if args.gmm:
        dd, dy = (int(v) for v in args.gmm.split(","))
        prob = {"kind": "gmm", "d": dd, "d_y": dy}
    for k, v in (("prior", args.prior), ("operator", args.operator), ("noise_std", args.noise_std)):
        if v is not None:
            prob[k] = v
    if args.op_args:
        prob["op_args"] = parse_op_args(args.op_args)
    d["problem"] = prob
    return Study.from_dict(d)


def main_study(args) -> int:
    from . import run_study

    if args.example:
        print(EXAMPLE_TOML, end="")
        return 0
    study = _study_from_args(args)
    out = args.out or f"out/{study.name}"
    n = len(study.cells())
    print(f"study {study.name!r}: {len(study.measurements)} measurements x {len(study.methods)} methods x "
          f"{len(study.settings)} settings x {len(study.seeds)} seeds = {n} cells, backend {args.backend} -> {out}/")
    res = run_study(study, out, backend=args.backend, address=args.address, workers=args.workers,
                    progress=not args.no_progress)
    print((res.out / "summary.md").read_text())
    print(f"ran {res.ran} cells, skipped {res.skipped} finished ones, {len(res.failed)} failed; "
          f"{out}/results.csv, {out}/table.csv, {out}/study.nc, {out}/calibration.png")
    return 0
