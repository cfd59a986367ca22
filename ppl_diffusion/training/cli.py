"""Command line of the training package: ``python -m ppl_diffusion.training`` and the
``ppl-diffusion train-prior`` subcommand share :func:`add_train_arguments` and :func:`main_train`."""
from __future__ import annotations

import argparse
import sys

from .data import DATASETS
from .loop import train_prior

__all__ = ["add_train_arguments", "main_train", "main"]

def _int_list(s: str):
    try:
        return tuple(int(v) for v in s.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {s!r}") from None


def add_train_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``train-prior`` options to ``parser`` (used by ``python -m ppl_diffusion.training``
    and by the ``ppl-diffusion train-prior`` subcommand)."""
    parser.add_argument("--dataset", required=True, choices=DATASETS,
                        help="training data: 'digits' (sklearn 8x8 digits at 16x16), 'kernels' (7x7 blur kernels) or "
                             "'patches' (32x32 grayscale patches of bundled photographs)")
    parser.add_argument("--out", required=True, help="output folder (diffusers format: unet/, scheduler/)")
    parser.add_argument("--steps", type=int, default=None,
                        help="optimisation steps (default: digits 5000, patches 4000)")
    parser.add_argument("--batch-size", type=int, default=None, help="batch size (default 64)")
    parser.add_argument("--lr", type=float, default=None, help="peak AdamW learning rate (default 2e-3)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--channels", type=_int_list, default=None,
                        help="UNet channels per level, e.g. 32,64,64 (default: preset of the data set)")
    parser.add_argument("--attention", type=_int_list, default=None,
                        help="self-attention per level as 0/1 flags, e.g. 0,1,1 (default: preset)")
    parser.add_argument("--layers-per-block", type=int, default=None, help="ResNet blocks per level (default 1)")
    parser.add_argument("--ema-decay", type=float, default=None, help="EMA decay of the weights (default 0.999)")
    parser.add_argument("--warmup", type=int, default=None, help="learning-rate warm-up steps (default 200)")
    parser.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay (default 0)")
    parser.add_argument("--no-augment", action="store_true",
                        help="train without augmentation (digits: small affine jitter; patches: flips)")
    parser.add_argument("--clip-sample", action=argparse.BooleanOptionalAction, default=None,
                        help="write clip_sample to the scheduler config and clip x0 when drawing samples.png "
                             "(default: on for patches, off for digits)")
    parser.add_argument("--device", default="auto", help="'cpu', 'cuda', 'cuda:1' or 'auto' (default)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (e.g. 2)")
    parser.add_argument("--num-samples", type=int, default=64, help="samples in samples.png (default 64)")
    parser.add_argument("--sample-steps", type=int, default=1000,
                        help="ancestral DDPM steps for samples.png (default 1000)")
    parser.add_argument("--log-every", type=int, default=100, help="print the mean loss every N steps")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    return parser


def main_train(args: argparse.Namespace) -> int:
    """Run :func:`train_prior` from parsed ``add_train_arguments`` options; returns an exit code."""
    train_prior(
        args.dataset, args.out, steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
        channels=args.channels, attention=args.attention, layers_per_block=args.layers_per_block,
        ema_decay=args.ema_decay, warmup=args.warmup, weight_decay=args.weight_decay,
        augment=False if args.no_augment else None, clip_sample=args.clip_sample, device=args.device,
        num_threads=args.threads,
        num_samples=args.num_samples, sample_steps=args.sample_steps, log_every=args.log_every,
        verbose=not args.quiet,
    )
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ppl_diffusion.training",
                                     description="Train a small diffusion prior (diffusers UNet2DModel + "
                                                 "DDPMScheduler) on offline data and save it in diffusers format.")
    add_train_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return main_train(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
