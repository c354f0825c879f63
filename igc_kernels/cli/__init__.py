"""Command-line front ends (``main(argv=None) -> int``); shared argument handling lives here.

User errors (bad paths, missing or tampered weights, impossible options) end in one line on
stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys

import torch

from ..runtime import keep_freed_memory


class UserError(Exception):
    """An error caused by the command line or the user's files: printed as one line."""


def add_model_args(p: argparse.ArgumentParser, allow_bicubic: bool) -> None:
    choices = ["shipped", "bicubic"] if allow_bicubic else ["shipped"]
    p.add_argument("--model", choices=choices, default="shipped",
                   help="'shipped': the trained weights inside the package (default)"
                        + ("; 'bicubic': no network, the bicubic baseline" if allow_bicubic else ""))
    p.add_argument("--weights", metavar="FILE.safetensors",
                   help="a weights file written by igc_kernels.sr.weights.save_weights (overrides --model)")
    p.add_argument("--shipped-name", default=None, metavar="NAME",
                   help="which shipped weights (default: igc_vdsr_s1_x234); see igc_kernels/weights/")
    p.add_argument("--device", default="auto", help="'auto' (CUDA if available, else CPU), 'cpu', 'cuda', 'cuda:1', ...")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32",
                   help="compute dtype of the network; float16/bfloat16 need a CUDA device")
    p.add_argument("--backend", default="auto", help="IGC op backend: auto, cpu, cuda, triton, reference")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise UserError(f"--device: {e}") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda requested but no CUDA device is available")
    return dev


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    from ..sr.upscale import DTYPES

    dtype = DTYPES[name]
    if dtype != torch.float32 and device.type != "cuda":
        raise UserError(f"--dtype {name} needs a CUDA device (got {device}); use float32 on CPU")
    return dtype


def load_model(args, device: torch.device):
    """(model or None for bicubic, metadata dict, label) from --model/--weights."""
    from ..models import ARCHS
    from ..sr import weights as W

    if args.backend not in ("auto", "reference", "cpu", "cuda", "triton"):
        raise UserError(f"--backend must be auto, cpu, cuda, triton or reference, got {args.backend!r}")
    try:
        if args.weights:
            model, meta = W.load_weights(args.weights, device=device, backend=args.backend)
            label = meta.get("arch", "model")
        elif args.model == "bicubic":
            return None, {}, "Bicubic"
        else:
            model, meta = W.load_shipped(args.shipped_name or W.DEFAULT_SHIPPED, device=device, backend=args.backend)
            label = meta.get("arch", "model")
    except (FileNotFoundError, W.WeightsError) as e:
        raise UserError(str(e)) from e
    assert meta.get("arch") in ARCHS
    return model, meta, label


def prepare_model(model, dtype: torch.dtype):
    """Cast a loaded model to the compute dtype (float16/bfloat16 inference on GPU)."""
    return None if model is None else model.to(dtype)


def run_main(fn, argv) -> int:
    """Call fn(argv); turn UserError (and Ctrl-C) into a one-line message and an exit status.

    The tools keep freed activation memory mapped (igc_kernels.runtime): without it every layer
    of every tile re-faults its output pages, which can cost more than the layer's arithmetic."""
    keep_freed_memory()
    try:
        return fn(argv)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
