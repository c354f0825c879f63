"""The op layer: functional API, backend choice, fake kernels + autograd, and the reference."""

import torch

from . import _ext
from .autograd import register as _register
from .autograd import register_chain as _register_chain
from .backends import BACKENDS, available_backends, resolve
from .functional import dense_conv, igc_conv, igc_conv_chain
from .reference import channel_shuffle, dense_equivalent, igc_conv_reference

if _ext.has_extension():
    _register(
        "igc_kernels::igc_conv",
        "igc_kernels::igc_conv_backward",
        lambda *args: torch.ops.igc_kernels.igc_conv_backward(*args),
    )
    _register_chain("igc_kernels::igc_conv_chain")

__all__ = [
    "BACKENDS",
    "available_backends",
    "channel_shuffle",
    "dense_conv",
    "dense_equivalent",
    "igc_conv",
    "igc_conv_chain",
    "igc_conv_reference",
    "resolve",
]
