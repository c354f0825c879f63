"""Mixed precision for networks with IGC layers.

``torch.autocast`` casts the inputs of the ops it knows (``conv2d``, ``matmul``, ...) but not of
custom ops: an ``IGCConv2d`` under autocast receives bf16/fp16 activations from the dense head
conv while its weights stay fp32, and the fused op (rightly) refuses mixed dtypes. Autocast's own
rule for a conv is "compute in the low dtype, keep fp32 master weights": ``cast_igc_for_autocast``
applies that rule to IGC layers by casting their input and weights to the autocast dtype inside
the forward (the casts are differentiable, so gradients reach the fp32 parameters).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call


def _autocast_dtype(device_type: str) -> torch.dtype | None:
    if not torch.is_autocast_enabled(device_type):
        return None
    return torch.get_autocast_dtype(device_type)


class _AutocastIGC:
    """Replacement forward for one IGCConv2d instance (kept picklable-free: training only)."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.inner = type(module).forward
        self.active = False

    def __call__(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        dt = _autocast_dtype(x.device.type)
        if dt is None or self.active:
            return self.inner(self.module, x, residual)
        params = {k: p.to(dt) for k, p in self.module.named_parameters(recurse=False)}
        self.active = True  # functional_call re-enters this forward; run the original then
        try:
            with torch.autocast(x.device.type, enabled=False):
                res = None if residual is None else residual.to(dt)
                return functional_call(self.module, params, (x.to(dt),), {"residual": res})
        finally:
            self.active = False


def cast_igc_for_autocast(model: nn.Module) -> int:
    """Make every IGCConv2d of ``model`` follow autocast; returns how many layers were adapted."""
    from ..nn import IGCConv2d

    n = 0
    for m in model.modules():
        if isinstance(m, IGCConv2d) and not isinstance(m.__dict__.get("forward"), _AutocastIGC):
            m.forward = _AutocastIGC(m)
            n += 1
    return n
