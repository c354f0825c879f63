"""Upscaling with a trained model: tiled inference on the Y channel, bicubic Cb/Cr and alpha.

Tiling is exact: one output pixel of a depth-d net of 3x3 convs depends on a (2d+1)^2 window
(41x41 for 20 layers), so a tile that carries ``context >= d`` pixels of real image around its
core gives the core exactly as the whole-image pass would (the zero padding at the tile's edge
never reaches the core). Tiles only bound memory; results match the untiled pass up to float
summation order.
"""

from __future__ import annotations

import os
from typing import Iterable

import numpy as np
import torch
from torch import nn

from .color import rgb_to_ycbcr, ycbcr_to_rgb
from .data import check_scale
from .image_io import IMAGE_EXTENSIONS, LoadedImage, list_images, read_image, write_image
from .imresize import imresize

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def model_context(model: nn.Module) -> int:
    """Pixels of context each side that make tiling exact (receptive radius; 20 for 20 layers)."""
    rf = getattr(model, "receptive_field", None)
    if rf is None:
        raise ValueError("model has no receptive_field attribute; pass context explicitly")
    return (rf - 1) // 2


def tile_spans(length: int, tile: int, context: int) -> list[tuple[int, int, int, int]]:
    """[(in_start, in_stop, core_start, core_stop)] covering 0..length along one axis."""
    spans = []
    for core_start in range(0, length, tile):
        core_stop = min(core_start + tile, length)
        spans.append((max(core_start - context, 0), min(core_stop + context, length), core_start, core_stop))
    return spans


@torch.no_grad()
def run_tiled(
    model: nn.Module,
    x: torch.Tensor,
    tile: int | None = 256,
    context: int | None = None,
    dtype: torch.dtype | None = None,
    progress=None,
) -> torch.Tensor:
    """``model(x)`` for x ``(1, 1, H, W)``, computed tile by tile (``tile`` x ``tile`` cores).

    tile=None or 0 runs the whole image at once. ``context`` defaults to the model's receptive
    radius (exact result). ``dtype`` (e.g. torch.float16 on GPU) is the compute dtype and must be
    the model's parameter dtype (default: it); the result is float32 on x's device. ``progress``: optional callable(n_done_tiles).
    """
    if x.dim() != 4 or x.shape[:2] != (1, 1):
        raise ValueError(f"x must be (1, 1, H, W), got {tuple(x.shape)}")
    context = model_context(model) if context is None else context
    if context < 0:
        raise ValueError(f"context must be >= 0, got {context}")
    param = next(model.parameters(), None)
    model_dtype = param.dtype if param is not None else x.dtype
    dtype = dtype or model_dtype
    if dtype != model_dtype:
        raise ValueError(f"compute dtype {dtype} differs from the model's {model_dtype}; call model.to({dtype}) first")
    h, w = x.shape[-2:]
    if not tile or (h <= tile and w <= tile):
        return model(x.to(dtype)).float()
    if tile < 1:
        raise ValueError(f"tile must be a positive int (or 0 for none), got {tile}")
    out = torch.empty(1, 1, h, w, device=x.device, dtype=torch.float32)
    for y0, y1, cy0, cy1 in tile_spans(h, tile, context):
        for x0, x1, cx0, cx1 in tile_spans(w, tile, context):
            piece = model(x[..., y0:y1, x0:x1].to(dtype)).float()
            out[..., cy0:cy1, cx0:cx1] = piece[..., cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]
            if progress is not None:
                progress(1)
    return out


def sr_from_bicubic(model, bic01: np.ndarray, device="cpu", tile=256, dtype=None, progress=None) -> np.ndarray:
    """The model's output for a bicubic-upscaled Y image (H, W) in [0, 1]; float64, not clamped."""
    x = torch.from_numpy(np.ascontiguousarray(bic01, dtype=np.float32))[None, None].to(device)
    return run_tiled(model, x, tile=tile, dtype=dtype, progress=progress)[0, 0].double().cpu().numpy()


def upscale_image(
    model: nn.Module, img: LoadedImage, scale: int, device="cpu", tile: int | None = 256, dtype=None,
    progress=None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """(pixels, alpha) of the upscaled image on 0..255 (float, unclipped), ``scale`` x larger.

    Y goes through the model (input: the bicubic upscale of the Y channel on [0, 1]); Cb, Cr
    and alpha are upscaled bicubically (MATLAB-compatible). Gray stays gray.
    """
    scale = check_scale(scale)
    if img.is_gray:
        y = img.pixels / 255.0
        chroma = None
    else:
        ycc = rgb_to_ycbcr(img.pixels)
        y = ycc[..., 0] / 255.0
        chroma = imresize(ycc[..., 1:], scale)
    sr_y = sr_from_bicubic(model, imresize(y, scale), device=device, tile=tile, dtype=dtype, progress=progress) * 255.0
    if chroma is None:
        pixels = sr_y
    else:
        pixels = ycbcr_to_rgb(np.dstack([sr_y, chroma]))
    alpha = None if img.alpha is None else np.clip(imresize(img.alpha, scale), 0, 255)
    return np.clip(pixels, 0, 255), alpha


def output_name(path: str, scale: int) -> str:
    root, _ = os.path.splitext(os.path.basename(path))
    return f"{root}_x{scale}.png"


def plan_jobs(inp: str, out: str | None, scale: int) -> list[tuple[str, str]]:
    """[(input file, output file)] for a file or a folder of images.

    A file goes to ``out`` (a file name, or a folder when it exists as one or ends with a
    separator) or beside the input as ``<name>_x<scale>.png``; a folder goes to folder ``out``
    (default ``<input>_x<scale>``) with the same names as PNG.
    """
    if os.path.isdir(inp):
        files = list_images(inp)
        if not files:
            raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in folder {inp!r}")
        out = out or os.path.normpath(inp) + f"_x{scale}"
        return [(f, os.path.join(out, os.path.splitext(os.path.basename(f))[0] + ".png")) for f in files]
    if not os.path.isfile(inp):
        raise FileNotFoundError(f"input not found: {inp!r}")
    if out is None:
        return [(inp, os.path.join(os.path.dirname(inp), output_name(inp, scale)))]
    if os.path.isdir(out) or out.endswith(os.sep):
        return [(inp, os.path.join(out, output_name(inp, scale)))]
    if not out.lower().endswith(IMAGE_EXTENSIONS):
        raise ValueError(f"output file {out!r} must end in one of {', '.join(IMAGE_EXTENSIONS)}")
    return [(inp, out)]


def upscale_files(
    model: nn.Module,
    jobs: Iterable[tuple[str, str]],
    scale: int,
    device="cpu",
    tile: int | None = 256,
    dtype=None,
    progress: bool = False,
) -> list[str]:
    """Upscale each (input, output) pair; returns the unreadable inputs' messages (others written)."""
    jobs = list(jobs)
    errors = []
    it = jobs
    if progress and len(jobs) > 1:
        from tqdm import tqdm

        it = tqdm(jobs, desc=f"upscale x{scale}", unit="img")
    from .image_io import ImageReadError

    for src, dst in it:
        try:
            img = read_image(src)
        except ImageReadError as e:
            errors.append(str(e))
            continue
        bar = None
        if progress and len(jobs) == 1 and tile:  # one (large) image: show its tiles
            from tqdm import tqdm

            h, w = (n * scale for n in img.pixels.shape[:2])
            n_tiles = len(tile_spans(h, tile, 0)) * len(tile_spans(w, tile, 0))
            bar = tqdm(total=n_tiles, desc=f"upscale x{scale} ({w}x{h})", unit="tile") if n_tiles > 1 else None
        pixels, alpha = upscale_image(model, img, scale, device=device, tile=tile, dtype=dtype,
                                      progress=bar.update if bar is not None else None)
        if bar is not None:
            bar.close()
        write_image(dst, pixels, alpha, img.bit_depth)
    return errors
