"""``igc-upscale``: make an image (or a folder of images) 2, 3 or 4 times larger with IGC-VDSR.

    python python/upscale.py photo.jpg --scale 2                     # -> photo_x2.png
    python python/upscale.py photos/ --scale 3 -o big/ --weights my.safetensors
"""

from __future__ import annotations

import argparse
import sys

from . import UserError, add_model_args, load_model, prepare_model, resolve_device, resolve_dtype, run_main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="igc-upscale",
        description="Upscale images with a super-resolution network: the luma (Y) goes through the "
        "network, colour (Cb/Cr) and alpha are upscaled bicubically, grayscale stays grayscale. Large "
        "images are processed in overlapping tiles with exactly the whole-image result.",
    )
    p.add_argument("input", help="an image file or a folder of images")
    p.add_argument("-o", "--output", help="output file or folder (default: <name>_x<scale>.png beside "
                   "the input; for a folder, <folder>_x<scale>/)")
    p.add_argument("-s", "--scale", type=int, choices=[2, 3, 4], default=2, help="upscaling factor (default 2)")
    p.add_argument("--tile", type=int, default=256,
                   help="core tile size in output pixels; each tile carries 20 px of context (default 256; 0 = whole image)")
    add_model_args(p, allow_bicubic=False)
    return p


def _main(argv) -> int:
    from ..sr.upscale import plan_jobs, upscale_files

    args = build_parser().parse_args(argv)
    if args.tile < 0:
        raise UserError(f"--tile must be >= 0, got {args.tile}")
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    try:
        jobs = plan_jobs(args.input, args.output, args.scale)
    except (FileNotFoundError, ValueError) as e:
        raise UserError(str(e)) from e
    model, meta, label = load_model(args, device)
    model = prepare_model(model, dtype)
    trained = meta.get("scales")
    if trained and args.scale not in trained:
        print(f"warning: {label} was trained for scales {trained}, not {args.scale}", file=sys.stderr)
    try:
        errors = upscale_files(model, jobs, args.scale, device=device, tile=args.tile or None, dtype=dtype,
                               progress=not args.no_progress)
    except (ValueError, OSError) as e:  # unwritable output, alpha into JPEG, ...
        raise UserError(str(e)) from e
    for e in errors:
        print(f"warning: skipped {e}", file=sys.stderr)
    done = len(jobs) - len(errors)
    print(f"wrote {done} image(s)" + (f" to {jobs[0][1]}" if done == 1 and len(jobs) == 1 else ""))
    return 0 if done else 1


def main(argv: list[str] | None = None) -> int:
    return run_main(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
