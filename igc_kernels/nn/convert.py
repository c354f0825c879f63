"""Swap the eligible ``nn.Conv2d`` layers of an existing model for ``IGCConv2d``."""

from __future__ import annotations

from typing import Callable

from torch import nn

from .igc_conv2d import IGCConv2d


def _eligible(conv: nn.Conv2d, L: int) -> bool:
    return (
        type(conv) is nn.Conv2d
        and conv.groups == 1
        and isinstance(conv.padding, tuple)
        and conv.kernel_size != (1, 1)
        and conv.in_channels % L == 0
        and conv.out_channels % L == 0
    )


def replace_conv2d(
    model: nn.Module,
    members: int = 4,
    *,
    predicate: Callable[[str, nn.Conv2d], bool] | None = None,
    **igc_kwargs,
) -> list[str]:
    """Replace in place every ``nn.Conv2d`` that an IGC layer can stand in for.

    A conv is eligible when it is ungrouped, not 1x1, and both channel counts are divisible by
    L = out_channels // members. The new layer keeps the conv's geometry and bias setting, gets
    fresh (trainable) weights, and ``igc_kwargs`` (e.g. ``backend=``). ``predicate(name, conv)``
    can veto a layer. Returns the qualified names of the replaced layers.
    """
    if members < 1:
        raise ValueError(f"members must be >= 1, got {members}")
    replaced: list[str] = []
    for parent_name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            if not isinstance(child, nn.Conv2d) or child.out_channels % members:
                continue
            L = child.out_channels // members
            name = f"{parent_name}.{child_name}" if parent_name else child_name
            if not _eligible(child, L) or (predicate is not None and not predicate(name, child)):
                continue
            layer = IGCConv2d(
                child.in_channels,
                child.out_channels,
                child.kernel_size,
                stride=child.stride,
                padding=child.padding,
                dilation=child.dilation,
                bias=child.bias is not None,
                padding_mode=child.padding_mode,
                device=child.weight.device,
                dtype=child.weight.dtype,
                primary_groups=L,
                **igc_kwargs,
            )
            setattr(parent, child_name, layer)
            replaced.append(name)
    return replaced
