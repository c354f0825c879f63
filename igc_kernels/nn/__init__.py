"""Modules built on the fused IGC op."""

from .convert import replace_conv2d
from .fused_conv import FusedConv2d
from .igc_conv2d import IGCConv2d

__all__ = ["FusedConv2d", "IGCConv2d", "replace_conv2d"]
