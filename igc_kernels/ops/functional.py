"""``igc_conv``: the functional face of the fused IGC layer."""

from __future__ import annotations

import torch

from . import backends
from .reference import igc_conv_reference
from .validate import Pair, activation_code, check_igc_args, pair


def _autocast(*tensors):
    """Autocast does not cast the inputs of custom ops, so do what it does for conv2d: inside an
    enabled autocast region, floating inputs other than float64 run in the autocast dtype (the
    casts are differentiable, so fp32 parameters get fp32 gradients)."""
    x = tensors[0]
    if not isinstance(x, torch.Tensor) or not torch.is_autocast_enabled(x.device.type):
        return tensors
    dtype = torch.get_autocast_dtype(x.device.type)

    def cast(t):
        if isinstance(t, torch.Tensor) and t.is_floating_point() and t.dtype != torch.float64:
            return t.to(dtype)
        return t

    return tuple(cast(t) for t in tensors)


def igc_conv(
    x: torch.Tensor,
    w1: torch.Tensor,
    w2: torch.Tensor,
    b1: torch.Tensor | None = None,
    b2: torch.Tensor | None = None,
    *,
    groups: int | None = None,
    stride: Pair = 1,
    padding: Pair = 0,
    dilation: Pair = 1,
    shuffle: bool = True,
    activation: str = "none",
    residual: torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Interleaved group convolution in one pass.

    Computes, for ``x`` of shape (N, L*M_in, H, W):
      1. primary grouped conv ``conv2d(x, w1, b1, stride, padding, dilation, groups=L)``,
         w1: (L*M, M_in, kH, kW), output channel l*M + m;
      2. interleave: z[:, m*L + l] = y1[:, l*M + m];
      3. secondary grouped 1x1 conv ``conv2d(z, w2, b2, groups=M)``, w2: (M*L, L, 1, 1);
      4. output shuffle (if ``shuffle``): out[:, l*M + m] = s[:, m*L + l];
      5. ``+ residual`` (same shape as the output), then ``activation`` ('none' or 'relu').

    ``groups`` (L) defaults to ``w2.shape[1]``. Returns (N, L*M, H_out, W_out) in x's memory
    format (channels_last in, channels_last out).

    Example::

        x = torch.randn(1, 96, 64, 64)
        w1 = torch.randn(96, 4, 3, 3) * 0.1   # L=24 groups, M=4
        w2 = torch.randn(96, 24, 1, 1) * 0.2
        y = igc_conv(x, w1, w2, padding=1, activation="relu")
    """
    if groups is None:
        if not isinstance(w2, torch.Tensor) or w2.dim() != 4:
            raise ValueError("w2 must be a 4-D (M*L, L, 1, 1) tensor to infer groups; pass groups=L")
        groups = int(w2.shape[1])
    stride_ = pair(stride, "stride", 1)
    padding_ = pair(padding, "padding", 0)
    dilation_ = pair(dilation, "dilation", 1)
    act = activation_code(activation)
    if not isinstance(shuffle, bool):
        raise TypeError(f"shuffle must be a bool, got {shuffle!r}")
    x, w1, w2, b1, b2, residual = _autocast(x, w1, w2, b1, b2, residual)
    check_igc_args(x, w1, b1, w2, b2, residual, groups, stride_, padding_, dilation_)
    args = (x, w1, b1, w2, b2, residual, groups, list(stride_), list(padding_), list(dilation_), shuffle, act)
    chosen = backends.resolve(backend, x)
    if chosen == "reference":
        return igc_conv_reference(*args)
    if chosen == "triton":
        return torch.ops.igc_kernels.igc_conv_triton(*args)
    return torch.ops.igc_kernels.igc_conv(*args)
