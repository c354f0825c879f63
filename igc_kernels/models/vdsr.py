"""VDSR and IGC-VDSR: one 20-layer body with a swappable factory for the middle layers.

Layout (DESIGN.md section 5): head conv 1->C (3x3) + ReLU, ``depth - 2`` middle layers C->C
(3x3) + ReLU, tail conv C->1 (3x3), zero padding throughout, output = input + residual.
``head_tail_backend`` picks who runs head and tail (``FusedConv2d``: the fused kernel or stock).
VDSR's middle layers are dense ``nn.Conv2d``; IGC-VDSR swaps some or all of them for
``IGCConv2d`` with a fused ReLU. Nothing else differs, so the two are one class.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from ..nn import FusedConv2d, IGCConv2d, chained_forward

# factory(index, channels) -> a module C->C (3x3, padding 1) that already applies its ReLU.
LayerFactory = Callable[[int, int], nn.Module]


class ConvReLU(nn.Sequential):
    """Dense 3x3 conv + ReLU, He-initialised for the ReLU that follows it."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        init_conv(conv, gain=math.sqrt(2.0))
        super().__init__(conv, nn.ReLU(inplace=True))


def init_conv(conv: nn.Conv2d, gain: float) -> None:
    """Normal(0, gain / sqrt(fan_in)) weights, zero bias: variance preserving for that gain."""
    fan_in = conv.in_channels // conv.groups * conv.kernel_size[0] * conv.kernel_size[1]
    with torch.no_grad():
        nn.init.normal_(conv.weight, 0.0, gain / math.sqrt(fan_in))
        if conv.bias is not None:
            conv.bias.zero_()


def dense_layer(index: int, channels: int) -> nn.Module:
    return ConvReLU(channels, channels)


def igc_layer_factory(
    every: int | None, primary_groups: int = 24, backend: str = "auto"
) -> LayerFactory:
    """IGC layers, with a dense conv after every ``every`` IGC layers (None: IGC only).

    Middle slot ``i`` (0-based) is dense when ``(i + 1) % (every + 1) == 0``: with 18 slots,
    every=3 gives 14 IGC + 4 dense (structure 2), every=6 gives 16 IGC + 2 dense (structure 3).
    """

    def make(index: int, channels: int) -> nn.Module:
        if every is not None and (index + 1) % (every + 1) == 0:
            return ConvReLU(channels, channels)
        # IGCConv2d's own init: linear gain on the primary, ReLU gain on the secondary.
        return IGCConv2d(
            channels, channels, 3, padding=1, primary_groups=primary_groups,
            activation="relu", backend=backend,
        )

    return make


class VDSR(nn.Module):
    """The VDSR body: head + (depth - 2) middle layers from ``layer_factory`` + tail + global residual.

    Input: bicubic-upscaled Y channel, ``(N, 1, H, W)`` float in [0, 1]. Output: same shape,
    ``input + predicted residual`` (not clamped: clamp when converting to 8 bits).

    Example::

        net = VDSR(channels=64)            # the VDSR baseline
        sr = net(torch.rand(1, 1, 64, 64))
    """

    def __init__(
        self, channels: int = 64, depth: int = 20, layer_factory: LayerFactory = dense_layer,
        head_tail_backend: str = "stock",
    ) -> None:
        super().__init__()
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 2:
            raise ValueError(f"depth must be an int >= 2 (head and tail), got {depth!r}")
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
            raise ValueError(f"channels must be a positive int, got {channels!r}")
        self.channels = channels
        self.depth = depth
        # Head and tail are dense convs with one input or output channel, where PyTorch's CPU conv
        # is slow; FusedConv2d runs them on the fused kernel (ReLU and the global residual fused)
        # unless head_tail_backend is "stock". Same parameters and state_dict keys either way.
        head = FusedConv2d(1, channels, 3, padding=1, activation="relu", backend=head_tail_backend)
        init_conv(head, gain=math.sqrt(2.0))
        self.head = nn.Sequential(head)
        self.body = nn.Sequential(*(layer_factory(i, channels) for i in range(depth - 2)))
        self.tail = FusedConv2d(channels, 1, 3, padding=1, backend=head_tail_backend)
        # No ReLU after the tail: linear gain, so the initial residual keeps the input's scale.
        init_conv(self.tail, gain=1.0)

    @property
    def receptive_field(self) -> int:
        """Side of the square input window one output pixel depends on: 2 * depth + 1 (41 for 20)."""
        return 2 * self.depth + 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 1:
            raise ValueError(f"input must be (N, 1, H, W) (the Y channel), got shape {tuple(x.shape)}")
        # Head, body and tail as nn.Sequential would run them; consecutive IGC layers fused where
        # nothing needs their gradient (inference on the fused CPU kernel: the activations between
        # them stay in the caches), the head and tail with the first and last of them.
        return chained_forward([*self.head, *self.body, self.tail], x, residual=x)
