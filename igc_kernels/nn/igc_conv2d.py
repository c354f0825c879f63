"""``IGCConv2d``: a drop-in for ``nn.Conv2d`` computed as a fused interleaved group convolution."""

from __future__ import annotations

import math
from typing import Union

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import dense_equivalent, igc_conv
from ..ops.validate import Pair, activation_code, pair

PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


class IGCConv2d(nn.Module):
    """Interleaved group convolution with ``nn.Conv2d``'s arguments.

    primary grouped kxk conv (``primary_groups`` = L groups) -> interleave -> secondary grouped 1x1
    conv (M = out_channels / L groups) -> output shuffle -> + bias -> activation. With L=24, M=4,
    k=3 on 96 channels it has 14.4x fewer weights and multiply-adds than ``nn.Conv2d(96, 96, 3)``.

    Args beyond ``nn.Conv2d``'s:
        primary_groups: L; in_channels and out_channels must be divisible by it. Default:
            out_channels // 4 (the paper's M = 4 members per group).
        shuffle: apply the output shuffle (the paper's addition; default True).
        activation: 'none' or 'relu', fused into the kernel's epilogue.
        backend: 'auto', 'cpu', 'cuda', 'triton' or 'reference' (see ``igc_kernels.ops``).
        primary_bias: also give the primary conv a bias. Off by default: the layer is linear up to
            the activation, so a primary bias folds exactly into the secondary one.
        init_nonlinearity: the gain used by ``reset_parameters`` for the secondary conv:
            'relu' (default when activation='relu') or 'linear'.

    ``forward(x, residual=None)``: residual, of the output's shape, is added before the activation.

    Example::

        layer = IGCConv2d(96, 96, 3, padding=1, primary_groups=24, activation="relu")
        y = layer(torch.randn(2, 96, 32, 32))
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: Pair,
        stride: Pair = 1,
        padding: Union[Pair, str] = 0,
        dilation: Pair = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        device=None,
        dtype=None,
        *,
        primary_groups: int | None = None,
        shuffle: bool = True,
        activation: str = "none",
        backend: str = "auto",
        primary_bias: bool = False,
        init_nonlinearity: str | None = None,
    ) -> None:
        super().__init__()
        for name, v in (("in_channels", in_channels), ("out_channels", out_channels)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if primary_groups is None:
            if out_channels % 4:
                raise ValueError(
                    f"primary_groups must be given when out_channels ({out_channels}) is not a multiple of 4"
                )
            primary_groups = out_channels // 4
        if isinstance(primary_groups, bool) or not isinstance(primary_groups, int) or primary_groups < 1:
            raise ValueError(f"primary_groups must be a positive int, got {primary_groups!r}")
        L = primary_groups
        if in_channels % L:
            raise ValueError(f"in_channels ({in_channels}) must be divisible by primary_groups ({L})")
        if out_channels % L:
            raise ValueError(f"out_channels ({out_channels}) must be divisible by primary_groups ({L})")
        if padding_mode not in PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = pair(kernel_size, "kernel_size", 1)
        self.stride = pair(stride, "stride", 1)
        self.dilation = pair(dilation, "dilation", 1)
        self.padding = self._resolve_padding(padding)
        self.padding_mode = padding_mode
        self.primary_groups = L
        self.members = out_channels // L  # M: channels per primary group = secondary groups
        self.shuffle = bool(shuffle)
        self.activation = ("none", "relu")[activation_code(activation)]
        self.backend = backend
        if init_nonlinearity is None:
            init_nonlinearity = "relu" if self.activation == "relu" else "linear"
        if init_nonlinearity not in ("relu", "linear"):
            raise ValueError(f"init_nonlinearity must be 'relu' or 'linear', got {init_nonlinearity!r}")
        self.init_nonlinearity = init_nonlinearity
        factory = {"device": device, "dtype": dtype}
        kh, kw = self.kernel_size
        self.weight1 = nn.Parameter(torch.empty(out_channels, in_channels // L, kh, kw, **factory))
        self.weight2 = nn.Parameter(torch.empty(out_channels, L, 1, 1, **factory))
        self.bias1 = nn.Parameter(torch.empty(out_channels, **factory)) if primary_bias else None
        self.bias2 = nn.Parameter(torch.empty(out_channels, **factory)) if bias else None
        self.reset_parameters()

    def _resolve_padding(self, padding) -> tuple[int, int]:
        if isinstance(padding, str):
            if padding == "valid":
                return (0, 0)
            if padding != "same":
                raise ValueError(f"padding must be an int, a pair, 'same' or 'valid', got {padding!r}")
            if self.stride != (1, 1):
                raise ValueError("padding='same' requires stride 1 (as nn.Conv2d)")
            total = [d * (k - 1) for d, k in zip(self.dilation, self.kernel_size)]
            if any(t % 2 for t in total):
                raise ValueError(
                    f"padding='same' needs an even dilation*(kernel_size-1) per axis, got {total}; pad explicitly"
                )
            return (total[0] // 2, total[1] // 2)
        return pair(padding, "padding", 0)

    def reset_parameters(self) -> None:
        """Variance-preserving init that keeps deep stacks trainable (DESIGN.md section 5).

        There is no nonlinearity between the primary and the secondary conv, so the primary gets
        a linear (gain 1) init and only the secondary, which feeds the activation, the ReLU gain.
        Giving both the ReLU gain doubles the variance per layer; giving neither halves it.
        """
        fan1 = self.weight1.shape[1] * self.kernel_size[0] * self.kernel_size[1]
        fan2 = self.primary_groups
        gain2 = math.sqrt(2.0) if self.init_nonlinearity == "relu" else 1.0
        with torch.no_grad():
            nn.init.normal_(self.weight1, 0.0, 1.0 / math.sqrt(fan1))
            nn.init.normal_(self.weight2, 0.0, gain2 / math.sqrt(fan2))
            for b in (self.bias1, self.bias2):
                if b is not None:
                    b.zero_()

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        padding = self.padding
        if self.padding_mode != "zeros" and padding != (0, 0):
            ph, pw = padding
            x = F.pad(x, (pw, pw, ph, ph), mode=self.padding_mode)
            padding = (0, 0)
        return igc_conv(
            x,
            self.weight1,
            self.weight2,
            self.bias1,
            self.bias2,
            groups=self.primary_groups,
            stride=self.stride,
            padding=padding,
            dilation=self.dilation,
            shuffle=self.shuffle,
            activation=self.activation,
            residual=residual,
            backend=self.backend,
        )

    @torch.no_grad()
    def dense_weight(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(weight, bias) of the ``nn.Conv2d`` that computes the same linear map."""
        return dense_equivalent(self.weight1, self.bias1, self.weight2, self.bias2, self.primary_groups, self.shuffle)

    def to_dense(self) -> nn.Module:
        """An exactly equivalent ``nn.Conv2d`` (followed by ``nn.ReLU`` when activation='relu').

        For deployment or export where the fused op is not available.
        """
        weight, bias = self.dense_weight()
        conv = nn.Conv2d(
            self.in_channels,
            self.out_channels,
            self.kernel_size,
            self.stride,
            self.padding,
            self.dilation,
            bias=bias is not None,
            padding_mode=self.padding_mode,
            device=weight.device,
            dtype=weight.dtype,
        )
        with torch.no_grad():
            conv.weight.copy_(weight)
            if bias is not None:
                conv.bias.copy_(bias)
        return nn.Sequential(conv, nn.ReLU()) if self.activation == "relu" else conv

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}"
        s += f", primary_groups={self.primary_groups}, members={self.members}"
        if self.stride != (1, 1):
            s += f", stride={self.stride}"
        if self.padding != (0, 0):
            s += f", padding={self.padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.bias2 is None:
            s += ", bias=False"
        if self.bias1 is not None:
            s += ", primary_bias=True"
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode!r}"
        if not self.shuffle:
            s += ", shuffle=False"
        if self.activation != "none":
            s += f", activation={self.activation!r}"
        if self.backend != "auto":
            s += f", backend={self.backend!r}"
        return s
