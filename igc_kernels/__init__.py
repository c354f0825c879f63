"""igc_kernels: fused interleaved group convolution for PyTorch, and the IGC-VDSR network.

    import igc_kernels
    layer = igc_kernels.IGCConv2d(96, 96, 3, padding=1, primary_groups=24, activation="relu")
"""

from . import ops
from .nn import FusedConv2d, IGCConv2d, chained_forward, replace_conv2d
from .ops import available_backends, igc_conv, igc_conv_chain

__version__ = "0.1.0"

__all__ = [
    "FusedConv2d", "IGCConv2d", "available_backends", "chained_forward", "igc_conv", "igc_conv_chain", "ops",
    "replace_conv2d", "__version__",
]
