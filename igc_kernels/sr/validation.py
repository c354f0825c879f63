"""Validation during training: PSNR of the network beside bicubic on a held-out image folder.

The LR/bicubic pairs are built once (same protocol as the evaluation tables: Y of BT.601,
modcrop, MATLAB bicubic in float, SR clamped and rounded to 8 bits, shave = scale), so each
validation pass costs only the network's forward passes. Bicubic PSNR is logged beside the
network's from step 0: a VDSR-style net that stays at the bicubic PSNR has collapsed to a zero
residual.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import torch

from .color import rgb_to_y
from .image_io import list_images, read_image
from .imresize import imresize
from .metrics import psnr, to_uint8_scale


@dataclass
class ValPair:
    name: str
    scale: int
    bicubic: torch.Tensor  # (1, 1, H, W) float32 in [0, 1], the network input
    hr: np.ndarray  # (H, W) float64 on 0..255, the target (modcropped Y)


def _center_crop(y: np.ndarray, size: int) -> np.ndarray:
    h, w = y.shape
    ch, cw = min(h, size), min(w, size)
    top, left = (h - ch) // 2, (w - cw) // 2
    return y[top : top + ch, left : left + cw]


def load_val_pairs(folder: str | os.PathLike, scales: tuple[int, ...], crop: int = 0) -> list[ValPair]:
    """One ``ValPair`` per (image, scale). ``crop`` > 0 takes a centre crop of that side first
    (keeps each validation pass cheap on a CPU); gray files are scored on their raw values."""
    files = list_images(folder)
    if not files:
        raise FileNotFoundError(f"validation folder {os.fspath(folder)!r} holds no images")
    pairs = []
    for f in files:
        img = read_image(f)
        y = img.pixels if img.is_gray else rgb_to_y(img.pixels)
        if crop:
            y = _center_crop(y, crop)
        for s in scales:
            h, w = (y.shape[0] // s) * s, (y.shape[1] // s) * s
            if h < 3 * s or w < 3 * s:
                raise ValueError(f"validation image {f!r} is too small for scale {s}")
            hr = y[:h, :w]
            lr = imresize(hr / 255.0, 1.0 / s)
            bic = imresize(lr, s)
            pairs.append(ValPair(os.path.basename(f), s, torch.from_numpy(bic).float()[None, None], hr))
    return pairs


@torch.no_grad()
def validate(model: torch.nn.Module, pairs: list[ValPair], device: torch.device) -> dict[str, float]:
    """Mean PSNR per scale of ``model`` and of bicubic: keys ``psnr_x{s}`` and ``bicubic_x{s}``."""
    was_training = model.training
    model.eval()
    sums: dict[str, list[float]] = {}
    try:
        for p in pairs:
            sr = model(p.bicubic.to(device)).float().cpu()[0, 0]
            sums.setdefault(f"psnr_x{p.scale}", []).append(psnr(p.hr, to_uint8_scale(sr), shave=p.scale))
            sums.setdefault(f"bicubic_x{p.scale}", []).append(
                psnr(p.hr, to_uint8_scale(p.bicubic[0, 0]), shave=p.scale)
            )
    finally:
        model.train(was_training)
    return {k: float(np.mean([v for v in vals if math.isfinite(v)] or [math.inf])) for k, vals in sums.items()}
