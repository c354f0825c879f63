"""``FusedConv2d``: an ``nn.Conv2d`` that runs on the fused IGC kernel where that is faster.

A dense conv is an IGC layer with one primary group (L = 1) and an identity secondary; the CPU
kernel folds that secondary away and runs the conv as one GEMM over its packed input rows. For
convs with few input or output channels, such as VDSR's head (1 -> C) and tail (C -> 1), this is
several times faster than PyTorch's CPU convolution (``bench/cpu_layer.py`` has no peer for it;
``python bench/network.py`` times the networks that use it). It also fuses the ReLU and a
residual add into the same pass.

Same parameters and state_dict as ``nn.Conv2d``, so weights load either way.
"""

from __future__ import annotations

import torch
from torch import nn

from ..ops import dense_conv
from ..ops.functional import DENSE_BACKENDS, dense_backend
from ..ops.validate import activation_code


class FusedConv2d(nn.Conv2d):
    """``nn.Conv2d`` (groups 1, zero padding) + optional fused ReLU and residual.

    Args beyond ``nn.Conv2d``'s:
        activation: 'none' or 'relu', applied after the residual add.
        backend: 'auto' (default): the fused kernel for CPU tensors when the compiled CPU kernel
            is present, PyTorch's own conv otherwise (cuDNN is the better choice on GPUs);
            'stock': always PyTorch's conv; 'cpu', 'cuda', 'triton', 'reference': that backend
            of ``igc_kernels.ops.igc_conv`` (``igc_kernels.ops.dense_conv`` is the function).

    ``forward(x, residual=None)``: residual, of the output's shape, is added before the activation.
    """

    def __init__(self, *args, activation: str = "none", backend: str = "auto", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.groups != 1:
            raise ValueError(f"groups must be 1 (a dense conv), got {self.groups}")
        if self.padding_mode != "zeros":
            raise ValueError(f"padding_mode must be 'zeros', got {self.padding_mode!r}")
        if isinstance(self.padding, str):
            raise ValueError(f"padding must be numbers (the fused op has no 'same'/'valid'), got {self.padding!r}")
        if backend not in DENSE_BACKENDS:
            raise ValueError(f"backend must be one of {DENSE_BACKENDS}, got {backend!r}")
        self.activation = "relu" if activation_code(activation) == 1 else "none"
        self.backend = backend

    def _use_fused(self, x: torch.Tensor) -> bool:
        """Whether this conv runs on the fused op for x (as dense_conv decides)."""
        return dense_backend(self.backend, x) != "stock"

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        return dense_conv(x, self.weight, self.bias, stride=self.stride, padding=self.padding,
                          dilation=self.dilation, activation=self.activation, residual=residual,
                          backend=self.backend)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, activation={self.activation!r}, backend={self.backend!r}"
