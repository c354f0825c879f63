"""Triton kernels of the fused IGC layer (GPU, or the CPU through TRITON_INTERPRET=1)."""

from __future__ import annotations


def unavailable_reason() -> str | None:
    """None when the Triton backend is usable, else why not."""
    return "the Triton backend is not built yet"
