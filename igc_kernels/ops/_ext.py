"""Loads the compiled library igc_kernels._C (which registers the C++/CUDA kernels) once, and
answers which devices it has kernels for."""

from __future__ import annotations

import torch

OP = "igc_kernels::igc_conv"

try:
    from igc_kernels import _C  # noqa: F401  (importing runs the TORCH_LIBRARY registrations)

    EXT_ERROR: str | None = None
except ImportError as exc:  # a source checkout that was not built, or a broken build
    EXT_ERROR = f"igc_kernels._C could not be loaded ({exc}); build it with `pip install -e . --no-build-isolation`"


def has_extension() -> bool:
    return EXT_ERROR is None


# Which devices the loaded library has kernels for, read once: the registrations happen when the
# library loads, and a plain dict is something torch.compile can trace through.
KERNELS = {
    key: EXT_ERROR is None and torch._C._dispatch_has_kernel_for_dispatch_key(OP, key) for key in ("CPU", "CUDA")
}


def has_kernel(dispatch_key: str) -> bool:
    """True when the C++ op has a kernel for this dispatch key ('CPU' or 'CUDA')."""
    return KERNELS.get(dispatch_key, False)
