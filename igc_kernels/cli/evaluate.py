"""``igc-eval``: PSNR/SSIM of a model (or bicubic) on HR image folders x scales, Table-2 style.

    python python/evaluate.py --model bicubic                       # vendored Set5 + Set14, x2/x3/x4
    python python/evaluate.py --weights run/best.safetensors --data /data/B100 --scales 2 4 --markdown out.md
"""

from __future__ import annotations

import argparse
import os
import sys

from . import UserError, add_model_args, load_model, prepare_model, resolve_device, resolve_dtype, run_main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="igc-eval",
        description="Score a super-resolution model (or the bicubic baseline) on folders of HR images "
        "with the protocol of the published tables: Y channel, modcrop, MATLAB bicubic LR, 8-bit output, "
        "shave = scale, PSNR and Wang's SSIM. The paper's Bicubic and IGC-VDSR numbers are printed beside.",
    )
    add_model_args(p, allow_bicubic=True)
    p.add_argument("--data", nargs="+", metavar="FOLDER",
                   help="folders of HR images (default: the Set5 and Set14 shipped in the package)")
    p.add_argument("--scales", nargs="+", type=int, metavar="S",
                   help="scales to test (default: the model's training scales, else 2 3 4)")
    p.add_argument("--tile", type=int, default=0,
                   help="run the network in tiles of this size (exact; bounds memory). 0 = whole image")
    p.add_argument("--markdown", metavar="FILE", help="also write the table as Markdown")
    p.add_argument("--csv", metavar="FILE", help="also write per-image scores as CSV")
    return p


def _write(path: str, text: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _main(argv) -> int:
    from ..sr.data import benchmark_folder
    from ..sr.evaluate import evaluate, format_csv, format_table

    args = build_parser().parse_args(argv)
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    model, meta, label = load_model(args, device)
    model = prepare_model(model, dtype)
    folders = args.data or [benchmark_folder("Set5"), benchmark_folder("Set14")]
    for f in folders:
        if not os.path.isdir(f):
            raise UserError(f"--data: folder not found: {f!r}")
    scales = args.scales or meta.get("scales") or [2, 3, 4]
    if any(s < 1 or s > 16 for s in scales):
        raise UserError(f"--scales must be between 1 and 16, got {scales}")
    if args.tile < 0:
        raise UserError(f"--tile must be >= 0, got {args.tile}")
    scores, errors = evaluate(model, folders, scales, device=device, tile=args.tile or None,
                              dtype=dtype, progress=not args.no_progress)
    for e in errors:
        print(f"warning: skipped {e}", file=sys.stderr)
    if meta:
        info = {k: meta[k] for k in ("arch", "scales", "training_data", "steps") if k in meta}
        print(f"Model: {label} {info}")
    print(format_table(scores, label))
    if args.markdown:
        _write(args.markdown, format_table(scores, label, markdown=True))
    if args.csv:
        _write(args.csv, format_csv(scores, label))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_main(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
