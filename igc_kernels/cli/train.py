"""``igc-train``: train IGC-VDSR / VDSR with the paper's recipe (every part configurable).

    igc-train --out-dir runs/s1                          # paper recipe on T91 + BSD200, x2/x3/x4
    igc-train --out-dir runs/s1 --iters 4000 --val-folder my_val   # a short budget, LR steps scaled
    igc-train --out-dir runs/s1 --resume                  # continue after an interruption
    torchrun --nproc_per_node=4 -m igc_kernels.cli.train --out-dir runs/s1   # multi-GPU (DDP)

Budgets are in iterations; one epoch is ``--epoch-iters`` iterations (default: one pass over
the non-overlapping patch grid of the training set). The learning-rate steps are fractions of
the total budget (``--lr-milestones 0.6 0.9`` = the paper's epochs 30 and 45 of 50).
"""

from __future__ import annotations

import argparse
import sys

from ..sr.checkpoint import CheckpointError
from ..sr.train import (
    AMP_MODES,
    DEFAULT_TRAIN_FOLDERS,
    LOSSES,
    TrainConfig,
    TrainError,
    export_checkpoint,
    train,
)

ARCH_CHOICES = ("igc_vdsr_s1", "igc_vdsr_s2", "igc_vdsr_s3", "vdsr")


def _opt_float(s: str) -> float | None:
    return None if s.lower() in ("none", "off", "0") else float(s)


def build_parser() -> argparse.ArgumentParser:
    d = TrainConfig()
    p = argparse.ArgumentParser(
        prog="igc-train", description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("run")
    g.add_argument("--out-dir", default=d.out_dir, help="checkpoint, CSV log, run info and final weights (default %(default)s)")
    g.add_argument("--resume", action="store_true", help="continue from <out-dir>/checkpoint.ckpt if it exists")
    g.add_argument("--weights-out", default=None, help="where to write the final safetensors (default <out-dir>/weights.safetensors)")
    g.add_argument("--init-weights", default=None, metavar="FILE.safetensors",
                   help="start from these weights (same architecture) with a fresh optimizer and schedule")
    g.add_argument("--export-only", action="store_true",
                   help="do not train: write weights from <out-dir>/checkpoint.ckpt (same model options as the run)")
    g.add_argument("--seed", type=int, default=d.seed)
    g.add_argument("--device", default=d.device, help="auto, cpu, cuda, cuda:N (default %(default)s)")
    g.add_argument("--amp", choices=AMP_MODES, default=d.amp,
                   help="mixed precision: auto = bf16 (or fp16) on GPU, off on CPU (default %(default)s)")
    g.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    g.add_argument("--workers", type=int, default=d.num_workers, help="DataLoader worker processes (default %(default)s)")
    g.add_argument("--ckpt-every", type=int, default=d.ckpt_every, help="checkpoint every N iterations (default %(default)s)")
    g.add_argument("--log-every", type=int, default=d.log_every, help="CSV/progress row every N iterations (default %(default)s)")
    g.add_argument("--val-every", type=int, default=None, help="validate every N iterations (default: every epoch)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument("--tensorboard", action="store_true", help="also log to <out-dir>/tb (needs tensorboard)")
    g = p.add_argument_group("model")
    g.add_argument("--arch", choices=ARCH_CHOICES, default=d.arch)
    g.add_argument("--backend", default=d.backend, help="IGC op backend: auto, cpu, cuda, triton, reference")
    g.add_argument("--channels", type=int, default=None, help="width (default: the paper's, 96 or 64 for vdsr)")
    g.add_argument("--depth", type=int, default=d.depth)
    g.add_argument("--primary-groups", type=int, default=d.primary_groups, help="L of the IGC layers")
    g = p.add_argument_group("data")
    g.add_argument("--train-folders", nargs="+", default=None,
                   help=f"training image folders (default: {' '.join(DEFAULT_TRAIN_FOLDERS)}, relative to the repository)")
    g.add_argument("--val-folder", default=None, help="held-out validation images (PSNR beside bicubic each epoch)")
    g.add_argument("--val-crop", type=int, default=0, help="centre-crop validation images to this side (0: whole)")
    g.add_argument("--scales", type=int, nargs="+", default=list(d.scales))
    g.add_argument("--patch-size", type=int, default=d.patch_size)
    g.add_argument("--patch-stride", type=int, default=None, help="patch grid step (default: patch size)")
    g.add_argument("--batch-size", type=int, default=d.batch_size, help="per process (default %(default)s)")
    g = p.add_argument_group("schedule")
    g.add_argument("--epochs", type=int, default=d.epochs)
    g.add_argument("--epoch-iters", type=int, default=None, help="iterations per epoch (default: one pass over the patches)")
    g.add_argument("--iters", type=int, default=None, help="total iterations (default: epochs * epoch-iters)")
    g.add_argument("--lr", type=float, default=d.lr)
    g.add_argument("--betas", type=float, nargs=2, default=list(d.betas))
    g.add_argument("--eps", type=float, default=d.eps)
    g.add_argument("--weight-decay", type=float, default=d.weight_decay)
    g.add_argument("--lr-milestones", type=float, nargs="*", default=list(d.lr_milestones),
                   help="fractions of the budget where lr is multiplied by --lr-gamma (default %(default)s)")
    g.add_argument("--lr-gamma", type=float, default=d.lr_gamma)
    g.add_argument("--loss", choices=LOSSES, default=d.loss)
    g.add_argument("--grad-clip", type=_opt_float, default=None, help="max gradient norm (default: off)")
    return p


def config_from_args(a: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        out_dir=a.out_dir, arch=a.arch, backend=a.backend, channels=a.channels, depth=a.depth,
        primary_groups=a.primary_groups, train_folders=a.train_folders, val_folder=a.val_folder,
        val_crop=a.val_crop, scales=tuple(a.scales), patch_size=a.patch_size, patch_stride=a.patch_stride,
        batch_size=a.batch_size, num_workers=a.workers, epochs=a.epochs, epoch_iters=a.epoch_iters,
        iters=a.iters, lr=a.lr, betas=tuple(a.betas), eps=a.eps, weight_decay=a.weight_decay,
        lr_milestones=tuple(a.lr_milestones), lr_gamma=a.lr_gamma, loss=a.loss, grad_clip=a.grad_clip,
        seed=a.seed, device=a.device, amp=a.amp, threads=a.threads, ckpt_every=a.ckpt_every,
        log_every=a.log_every, val_every=a.val_every, resume=a.resume, progress=not a.no_progress,
        tensorboard=a.tensorboard, weights_out=a.weights_out, init_weights=a.init_weights,
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.export_only:
            print(f"igc-train: weights written to {export_checkpoint(config_from_args(args))}")
            return 0
        summary = train(config_from_args(args))
    except (TrainError, CheckpointError, FileNotFoundError) as e:
        print(f"igc-train: error: {e}", file=sys.stderr)
        return 2
    if summary.get("stopped"):
        return 130
    if "weights" in summary:
        print(f"igc-train: {summary['step']} iterations done; weights: {summary['weights']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
