"""Running a stack of layers with consecutive IGC layers fused for inference."""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from ..ops import igc_conv_chain
from .fused_conv import FusedConv2d
from .igc_conv2d import IGCConv2d

# How many layers a fused chain takes (max_chain=None). Each layer of a chain but the last keeps
# its output in a ring of six rows of all channels (csrc/cpu/forward.cpp, kChainRing), and a chain
# pays only while its rings stay in the caches: chains of up to four while the rings fit in
# 7 MiB, else shorter. Measured with 2 threads, each chain length alternating with the others in
# one process (medians of the per-round ratios), on a Zen 3 (512 KiB L2 per core, 32 MiB L3):
#   IGC-VDSR inference at 256x256 took 0.972x the time of chains of three in chains of four
#   (quartiles 0.956-0.995; chains of six 1.009x), at 512x512 0.980x (six: 0.984x); at 64x1920,
#   where a ring takes 4.5 MiB, chains of two took 0.910x the time of chains of one, of three
#   0.966x, of four 1.012x.
# Before the tiles were staggered (rings of nine rows) chains of three were the best at 256x256.
RING_ROWS = 6
RING_BUDGET_BYTES = 7 << 20
MAX_AUTO_CHAIN = 4
# A ring row holds each 64-column segment of a channel in a window of 72 columns (its pixels, a
# neighbour's on each side, zeros to a whole vector: kChainSegW in csrc/cpu/forward.cpp).
SEGMENT_COLUMNS, WINDOW_COLUMNS = 64, 72


def ring_bytes(channels: int, width: int, element_size: int = 4) -> int:
    """Bytes of one layer's ring of output rows in a fused chain."""
    segments = -(-width // SEGMENT_COLUMNS)
    return RING_ROWS * channels * segments * WINDOW_COLUMNS * element_size


def auto_chain_length(channels: int, width: int, element_size: int = 4) -> int:
    """Layers per fused chain for activations of ``channels`` x ``width`` (see RING_BUDGET_BYTES)."""
    ring = ring_bytes(channels, width, element_size)
    return max(1, min(MAX_AUTO_CHAIN, 1 + RING_BUDGET_BYTES // max(ring, 1)))


def _has_hooks(m: nn.Module) -> bool:
    return bool(m._forward_hooks or m._forward_pre_hooks or nn.modules.module._global_forward_hooks or
                nn.modules.module._global_forward_pre_hooks)


def _chain_key(m: nn.Module):
    """What consecutive layers must share to run as one chain (None: this layer cannot chain).
    Layers with hooks, and subclasses (their own forward), run as modules."""
    if type(m) is not IGCConv2d or m.padding_mode != "zeros" or m.in_channels != m.out_channels or _has_hooks(m):
        return None
    return (m.primary_groups, m.kernel_size, m.stride, m.padding, m.dilation, m.shuffle, m.activation, m.backend)


def _joins(end: nn.Module, run: IGCConv2d, h: torch.Tensor, head: bool) -> bool:
    """Whether ``end`` can run as the head (before) or tail (after) of a chain of layers like
    ``run``: a FusedConv2d (no subclass, no hooks) on the fused CPU kernel with the layers' stride,
    padding and dilation, whose channels meet theirs (the op then fuses it where its kernel can)."""
    if type(end) is not FusedConv2d or _has_hooks(end) or not end._use_fused(h) or end.backend not in ("auto", "cpu"):
        return False
    if (end.stride, end.padding, end.dilation) != (run.stride, run.padding, run.dilation):
        return False
    return end.out_channels == run.in_channels if head else end.in_channels == run.out_channels


def chained_forward(layers: Iterable[nn.Module], x: torch.Tensor, max_chain: int | None = None,
                    residual: torch.Tensor | None = None) -> torch.Tensor:
    """``layers`` applied in order, as ``nn.Sequential`` would, the last one given ``residual``
    if not None (``layers[-1](h, residual=residual)``, as ``FusedConv2d`` takes it). Runs of
    consecutive ``IGCConv2d`` layers with the same hyperparameters (as many input as output
    channels, no hooks) go through one ``igc_kernels.ops.igc_conv_chain`` call each, fused in
    chains of up to ``max_chain`` layers (None: as many as ``auto_chain_length`` gives for the
    activation's channels and width) where no gradient is needed and the fused CPU kernel runs
    them (all of a run's chains in one parallel region), with the same result to float32
    rounding. A ``FusedConv2d`` right before or after a run (VDSR's head
    and tail) joins its first or last chain, as the chain's head or tail.

    Example::

        body = nn.Sequential(*(IGCConv2d(96, 96, 3, padding=1, activation="relu") for _ in range(4)))
        with torch.no_grad():
            y = chained_forward(body, torch.randn(1, 96, 64, 64))
    """
    if max_chain is not None and (isinstance(max_chain, bool) or not isinstance(max_chain, int) or max_chain < 1):
        raise ValueError(f"max_chain must be a positive int or None, got {max_chain!r}")
    layers = list(layers)
    if residual is not None and not layers:
        raise ValueError("residual is passed to the last layer, but layers is empty")
    # Steps: a module, or a run of chainable IGC layers.
    steps: list[nn.Module | list[IGCConv2d]] = []
    for layer in layers:
        key = _chain_key(layer)
        if key is not None and steps and isinstance(steps[-1], list) and _chain_key(steps[-1][0]) == key:
            steps[-1].append(layer)
        else:
            steps.append([layer] if key is not None else layer)

    def dense(end: FusedConv2d | None):
        return None if end is None else (end.weight, end.bias)

    def run_chain(h, run, head, tail, res):
        step = max_chain
        if step is None:
            step = auto_chain_length(run[0].out_channels, h.shape[-1], h.element_size()) if h.dim() >= 3 else 1
        if step == 1 and head is None and tail is None:  # no chain: the modules
            for layer in run:
                h = layer(h)
            return h
        # One op for the run, in chains of `step` layers (one parallel region for all of them on the
        # CPU: a thread done with its part of one chain starts on the next).
        m = run[0]
        weights = [(layer.weight1, layer.weight2, layer.bias1, layer.bias2) for layer in run]
        return igc_conv_chain(
            h, weights, groups=m.primary_groups, stride=m.stride, padding=m.padding, dilation=m.dilation,
            shuffle=m.shuffle, activation=m.activation, backend=m.backend,
            head=dense(head), head_activation=head.activation if head is not None else "none",
            tail=dense(tail), tail_activation=tail.activation if tail is not None else "none",
            residual=res if tail is not None else None, chain_length=step,
        )

    h = x
    i = 0
    while i < len(steps):
        item = steps[i]
        if isinstance(item, list):
            head, run = None, item
        elif i + 1 < len(steps) and isinstance(steps[i + 1], list) and _joins(item, steps[i + 1][0], h, head=True):
            head, run = item, steps[i + 1]
            i += 1
        else:
            h = item(h, residual=residual) if i == len(steps) - 1 and residual is not None else item(h)
            i += 1
            continue
        if i == len(steps) - 1 and residual is not None:  # the run's last layer takes the residual itself
            *rest, final = run
            if rest:
                h = run_chain(h, rest, head, None, None)
            elif head is not None:
                h = head(h)
            return final(h, residual=residual)
        nxt = steps[i + 1] if i + 1 < len(steps) else None
        tail = nxt if isinstance(nxt, nn.Module) and _joins(nxt, run[0], h, head=False) else None
        h = run_chain(h, run, head, tail, residual if tail is not None and i + 1 == len(steps) - 1 else None)
        i += 2 if tail is not None else 1
    return h
