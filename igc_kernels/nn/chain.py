"""Running a stack of layers with consecutive IGC layers fused for inference."""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from ..ops import igc_conv_chain
from .igc_conv2d import IGCConv2d

# Layers per fused chain. On the 2-core CI machine, 2 threads, IGC-VDSR inference at 256x256 took
# 73.1-76.8 ms with chains of 2, 72.6-77.3 with chains of 3 and 79.8-83.4 layer by layer (four
# processes, alternating); six body layers on 1x96x64x1920 took 52.1 ms in chains of 2 and 57.1 in
# chains of 3 (56.4 layer by layer), and longer chains were slower still (the 18 body layers at
# 256x256 in chains of 6: 73.5-81.6 ms, of 18: 95.0-96.6): their rings no longer fit in L2.
DEFAULT_CHAIN = 2


def _chain_key(m: nn.Module):
    """What consecutive layers must share to run as one chain (None: this layer cannot chain).
    Layers with hooks, and subclasses (their own forward), run as modules."""
    if type(m) is not IGCConv2d or m.padding_mode != "zeros" or m.in_channels != m.out_channels:
        return None
    if m._forward_hooks or m._forward_pre_hooks or nn.modules.module._global_forward_hooks or \
            nn.modules.module._global_forward_pre_hooks:
        return None
    return (m.primary_groups, m.kernel_size, m.stride, m.padding, m.dilation, m.shuffle, m.activation, m.backend)


def chained_forward(layers: Iterable[nn.Module], x: torch.Tensor, max_chain: int = DEFAULT_CHAIN) -> torch.Tensor:
    """``layers`` applied in order, as ``nn.Sequential`` would; runs of consecutive ``IGCConv2d``
    layers with the same hyperparameters (as many input as output channels, no hooks) go through
    ``igc_kernels.ops.igc_conv_chain`` in chains of up to ``max_chain`` layers, which fuses them
    where no gradient is needed and the fused CPU kernel runs them, with the same result.

    Example::

        body = nn.Sequential(*(IGCConv2d(96, 96, 3, padding=1, activation="relu") for _ in range(4)))
        with torch.no_grad():
            y = chained_forward(body, torch.randn(1, 96, 64, 64))
    """
    if isinstance(max_chain, bool) or not isinstance(max_chain, int) or max_chain < 1:
        raise ValueError(f"max_chain must be a positive int, got {max_chain!r}")
    run: list[IGCConv2d] = []

    def flush(h: torch.Tensor) -> torch.Tensor:
        for i in range(0, len(run), max_chain):
            part = run[i:i + max_chain]
            if len(part) == 1:
                h = part[0](h)
                continue
            m = part[0]
            weights = [(layer.weight1, layer.weight2, layer.bias1, layer.bias2) for layer in part]
            h = igc_conv_chain(
                h, weights, groups=m.primary_groups, stride=m.stride, padding=m.padding, dilation=m.dilation,
                shuffle=m.shuffle, activation=m.activation, backend=m.backend,
            )
        run.clear()
        return h

    for layer in layers:
        key = _chain_key(layer)
        if key is not None and (not run or _chain_key(run[0]) == key):
            run.append(layer)
            continue
        x = flush(x)
        if key is not None:
            run.append(layer)
        else:
            x = layer(x)
    return flush(x)
