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


def _grid(blocks: tuple[int, ...], warps: tuple[int, ...], name: str, stages: int = 1) -> list[triton.Config]:
    return [triton.Config({name: b}, num_warps=w, num_stages=stages) for b in blocks for w in warps]


def forward() -> list[triton.Config]:
    # The fp32 register tile is BLOCK_P x LP x MP (128 values per pixel at L=24, M=4), so large
    # tiles want more warps to keep it in registers.
    if interpreted():
        return [triton.Config({"BLOCK_P": 32}, num_warps=4)]
    return _grid((32, 64, 128), (4, 8), "BLOCK_P")


def backward() -> list[triton.Config]:
    # Fewer, larger tiles mean fewer fp32 atomics on the weight gradients.
    if interpreted():
        return [triton.Config({"BLOCK_P": 32}, num_warps=4)]
    return _grid((32, 64, 128), (4, 8), "BLOCK_P")


def input_grad() -> list[triton.Config]:
    if interpreted():
        return [triton.Config({"BLOCK_Q": 32}, num_warps=4)]
    return _grid((32, 64, 128), (4, 8), "BLOCK_Q")
