"""Triton kernels of the fused IGC layer (GPU, or the CPU through TRITON_INTERPRET=1).

The kernels live in ``kernels.py``, their tile configs in ``configs.py`` and the torch ops
(``igc_kernels::igc_conv_triton`` and ``igc_kernels::igc_conv_triton_backward``, with fake kernels
and autograd) in ``igc_conv.py``. Nothing here imports triton until the backend is first asked
for, so ``import igc_kernels`` stays cheap and works without triton installed.

TRITON_INTERPRET=1 is read when the kernels are defined (``@triton.jit`` then builds interpreted
functions), so it must be set before the backend is first used in a process.
"""

from __future__ import annotations

_REASON: list[str | None] = []  # cached result of the first import attempt


def unavailable_reason() -> str | None:
    """None when the Triton backend is usable (and its ops are registered), else why not."""
    if not _REASON:
        try:
            import triton  # noqa: F401
        except ImportError as exc:
            _REASON.append(f"triton is not installed ({exc}); `pip install triton`")
        else:
            try:
                from . import igc_conv  # noqa: F401  (registers the ops)

                _REASON.append(None)
            except Exception as exc:  # noqa: BLE001  (an incompatible triton or torch: say which)
                _REASON.append(f"the Triton kernels failed to load: {type(exc).__name__}: {exc}")
    return _REASON[0]


def is_interpreted() -> bool:
    """True when the kernels were built for the Triton interpreter (TRITON_INTERPRET=1)."""
    if unavailable_reason() is not None:
        return False
    from triton.runtime.interpreter import InterpretedFunction

    from .kernels import igc_fwd_kernel

    return isinstance(igc_fwd_kernel.fn, InterpretedFunction)


__all__ = ["is_interpreted", "unavailable_reason"]
