"""PSNR and SSIM on the Y channel with the protocol of the published SR tables (DESIGN.md 5).

Both take 8-bit-scale images (values 0..255, any real dtype): the SR output must already be
clamped and rounded (``to_uint8_scale``). ``shave`` pixels are dropped from every border first
(the convention is ``shave = scale``).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

PROTOCOL = (
    "Y of BT.601 YCbCr (MATLAB rgb2ycbcr, rounded; gray files as is), HR modcropped to the scale, "
    "LR = MATLAB bicubic imresize in float, SR clamped and rounded to 8 bits, shave = scale px, "
    "SSIM = Wang ssim_index.m (11x11 Gaussian sigma 1.5, K1 0.01, K2 0.03, L 255, valid)"
)


def to_uint8_scale(y01) -> np.ndarray:
    """[0, 1] float (array or tensor) -> float64 on 0..255, clamped and rounded half up."""
    if isinstance(y01, torch.Tensor):
        y01 = y01.detach().to("cpu", torch.float64).numpy()
    y = np.clip(np.asarray(y01, dtype=np.float64), 0.0, 1.0) * 255.0
    return np.floor(y + 0.5)


def shave_border(img: np.ndarray, shave: int) -> np.ndarray:
    if shave < 0:
        raise ValueError(f"shave must be >= 0, got {shave}")
    if shave == 0:
        return img
    if img.shape[0] <= 2 * shave or img.shape[1] <= 2 * shave:
        raise ValueError(f"image of shape {img.shape[:2]} is too small to shave {shave} px per border")
    return img[shave:-shave, shave:-shave]


def _check_pair(a, b) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"images must be 2-D (H, W) of one shape, got {a.shape} and {b.shape}")
    return a, b


def psnr(ref, test, shave: int = 0, peak: float = 255.0) -> float:
    """10 log10(peak^2 / MSE) over the shaved images; inf when they are identical."""
    a, b = _check_pair(ref, test)
    a, b = shave_border(a, shave), shave_border(b, shave)
    mse = float(np.mean((a - b) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(peak * peak / mse)


@functools.lru_cache(maxsize=4)
def gaussian_window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    """MATLAB ``fspecial('gaussian', size, sigma)``: a normalised 2-D Gaussian."""
    r = (size - 1) / 2.0
    x = np.arange(size, dtype=np.float64) - r
    g = np.exp(-(x[:, None] ** 2 + x[None, :] ** 2) / (2.0 * sigma * sigma))
    g[g < np.finfo(np.float64).eps * g.max()] = 0
    return g / g.sum()


@functools.lru_cache(maxsize=4)
def _gaussian_1d(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    g = np.exp(-(x * x) / (2.0 * sigma * sigma))
    return g / g.sum()


def _valid_sep(img: np.ndarray, g: np.ndarray) -> np.ndarray:
    """'valid' correlation with the separable window outer(g, g)."""
    n = len(g)
    h, w = img.shape
    rows = sum(g[i] * img[i : h - n + 1 + i] for i in range(n))
    return sum(g[j] * rows[:, j : w - n + 1 + j] for j in range(n))


def ssim(ref, test, shave: int = 0, peak: float = 255.0) -> float:
    """Mean SSIM as Wang et al.'s ``ssim_index.m`` (the one the SR tables use).

    11x11 Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03, L = peak, 'valid' filtering, no
    downsampling (unlike MATLAB's newer ``ssim()``), mean of the SSIM map.
    """
    a, b = _check_pair(ref, test)
    a, b = shave_border(a, shave), shave_border(b, shave)
    win = gaussian_window()
    if a.shape[0] < win.shape[0] or a.shape[1] < win.shape[1]:
        raise ValueError(f"SSIM needs at least {win.shape} pixels after shaving, got {a.shape}")
    c1, c2 = (0.01 * peak) ** 2, (0.03 * peak) ** 2
    # The window is an outer product of two normalised 1-D Gaussians, so filter2(win, ., 'valid')
    # is two 1-D valid passes (sums of 11 shifted slices; far cheaper than a 2-D float64 conv).
    g = _gaussian_1d()
    mu_a, mu_b, e_aa, e_bb, e_ab = (_valid_sep(m, g) for m in (a, b, a * a, b * b, a * b))
    var_a, var_b, cov = e_aa - mu_a**2, e_bb - mu_b**2, e_ab - mu_a * mu_b
    num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    den = (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    return float(np.mean(num / den))
