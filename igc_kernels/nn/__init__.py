"""Modules built on the fused IGC op."""

from .chain import chained_forward
from .convert import replace_conv2d
from .fused_conv import FusedConv2d
from .igc_conv2d import IGCConv2d

__all__ = ["FusedConv2d", "IGCConv2d", "chained_forward", "replace_conv2d"]
