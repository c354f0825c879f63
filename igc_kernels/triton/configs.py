"""Tile shapes the kernels are autotuned over.

Every config is correct on every shape (pixel tiles are masked, channels are padded to powers of
two), so autotuning only picks the fastest. Under TRITON_INTERPRET=1 (CPU tests) there is nothing
to tune and each candidate would run the slow interpreter again, so one config is used.
"""

from __future__ import annotations

import triton
from triton import knobs


def interpreted() -> bool:
    return bool(knobs.runtime.interpret)


def forward() -> list[triton.Config]:
    # Register budget (sm_90, fp16, L=24, M=4, checked with an offline compile): 32 pixels / 4 warps
    # and 64 or 128 pixels / 8 warps fit without spills; 256 pixels spill. Each config is one more
    # compile per specialization (dtype, layout, flags), so the lists stay short.
    if interpreted():
        return [triton.Config({"BLOCK_P": 32}, num_warps=4)]
    return [triton.Config({"BLOCK_P": b}, num_warps=w, num_stages=1) for b, w in ((32, 4), (64, 8), (128, 8))]


def backward() -> list[triton.Config]:
    # Persistent programs: the tile only trades registers (64 pixels / 4 warps spills) for
    # fewer loop trips.
    if interpreted():
        return [triton.Config({"BLOCK_P": 32}, num_warps=4)]
    return [triton.Config({"BLOCK_P": b}, num_warps=w, num_stages=1) for b, w in ((32, 4), (64, 8))]


def w1_grad() -> tuple[int, int]:
    """(BLOCK_P, num_warps) of the w1-gradient kernel; fixed, since its grid depends on it."""
    return (32, 4) if interpreted() else (64, 4)


def input_grad() -> list[triton.Config]:
    if interpreted():
        return [triton.Config({"BLOCK_Q": 32}, num_warps=4)]
    return [triton.Config({"BLOCK_Q": b}, num_warps=w, num_stages=1) for b, w in ((64, 4), (128, 8))]
