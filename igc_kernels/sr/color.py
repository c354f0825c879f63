"""RGB <-> YCbCr as MATLAB's ``rgb2ycbcr`` / ``ycbcr2rgb`` (ITU-R BT.601, studio swing).

Y in [16, 235] and Cb, Cr in [16, 240] on the 0..255 scale; functions take and return float
arrays on the 0..255 scale, the last axis being the channel.
"""

from __future__ import annotations

import numpy as np

# MATLAB's matrix for R, G, B in [0, 1] -> Y, Cb, Cr in 0..255, plus the offset.
_M = np.array(
    [[65.481, 128.553, 24.966], [-37.797, -74.203, 112.0], [112.0, -93.786, -18.214]], dtype=np.float64
)
_OFFSET = np.array([16.0, 128.0, 128.0])


def rgb_to_ycbcr(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) RGB on 0..255 -> (..., 3) float YCbCr on 0..255 (not rounded)."""
    rgb = np.asarray(rgb, dtype=np.float64)
    if rgb.shape[-1] != 3:
        raise ValueError(f"rgb must have 3 channels in its last axis, got shape {rgb.shape}")
    return rgb / 255.0 @ _M.T + _OFFSET


def rgb_to_y(rgb: np.ndarray) -> np.ndarray:
    """Y of (..., 3) RGB on 0..255, rounded as MATLAB ``rgb2ycbcr`` on uint8 (half away from 0)."""
    rgb = np.asarray(rgb, dtype=np.float64)
    if rgb.shape[-1] != 3:
        raise ValueError(f"rgb must have 3 channels in its last axis, got shape {rgb.shape}")
    return np.floor(16.0 + rgb / 255.0 @ _M[0] + 0.5)


def ycbcr_to_rgb(ycc: np.ndarray) -> np.ndarray:
    """(..., 3) YCbCr on 0..255 -> (..., 3) float RGB on 0..255 (not clipped or rounded)."""
    ycc = np.asarray(ycc, dtype=np.float64)
    if ycc.shape[-1] != 3:
        raise ValueError(f"ycc must have 3 channels in its last axis, got shape {ycc.shape}")
    return (ycc - _OFFSET) @ np.linalg.inv(_M).T * 255.0
