"""Which implementation runs a call: the fused C++ kernel on CPU, the CUDA C++ kernel or Triton on
GPU, or the plain-PyTorch reference.

``backend="auto"`` picks the fastest available for the tensor's device and dtype; the environment
variable ``IGC_KERNELS_BACKEND`` overrides "auto". An explicit backend that cannot run the call is
an error that says why, never a silent fallback.
"""

from __future__ import annotations

import os

import torch

from . import _ext

BACKENDS = ("auto", "reference", "cpu", "cuda", "triton")
ENV_VAR = "IGC_KERNELS_BACKEND"

# dtypes each fused kernel computes (accumulating in fp32, or fp64 for float64).
DTYPES = {
    "cpu": (torch.float32, torch.float64, torch.bfloat16),
    "cuda": (torch.float32, torch.float16, torch.bfloat16),
    "triton": (torch.float32, torch.float16, torch.bfloat16),
}


def _triton_status() -> str | None:
    """None when the Triton backend can be imported, else the reason."""
    from igc_kernels import triton as igc_triton

    return igc_triton.unavailable_reason()


def triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def why_unavailable(backend: str, x: torch.Tensor) -> str | None:
    """None if ``backend`` can run on x's device and dtype, else a one-line reason."""
    dev = x.device.type
    if backend == "reference":
        return None
    if backend not in DTYPES:
        return f"unknown backend {backend!r}; expected one of {BACKENDS}"
    if x.dtype not in DTYPES[backend]:
        names = ", ".join(str(d).replace("torch.", "") for d in DTYPES[backend])
        return f"backend {backend!r} supports dtypes {names}, got {x.dtype}"
    if backend == "cpu":
        if dev != "cpu":
            return f"backend 'cpu' needs CPU tensors, got a tensor on {x.device}"
        if not _ext.has_kernel("CPU"):
            return _ext.EXT_ERROR or "igc_kernels._C has no CPU kernel"
        return None
    if backend == "cuda":
        if dev != "cuda":
            return f"backend 'cuda' needs CUDA tensors, got a tensor on {x.device}"
        if not _ext.has_kernel("CUDA"):
            return _ext.EXT_ERROR or "igc_kernels._C was built without CUDA kernels (torch without CUDA or no nvcc)"
        return None
    # triton
    if dev != "cuda" and not (dev == "cpu" and triton_interpreted()):
        return f"backend 'triton' needs CUDA tensors (or TRITON_INTERPRET=1 for CPU tensors), got {x.device}"
    return _triton_status()


def resolve(backend: str, x: torch.Tensor) -> str:
    """The concrete backend that runs this call."""
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        override = os.environ.get(ENV_VAR, "").strip()
        if override and override != "auto":
            if override not in BACKENDS:
                raise ValueError(f"{ENV_VAR} must be one of {BACKENDS}, got {override!r}")
            backend = override
        else:
            order = ("cuda", "triton") if x.device.type == "cuda" else ("cpu",)
            for candidate in order:
                if why_unavailable(candidate, x) is None:
                    return candidate
            return "reference"
    reason = why_unavailable(backend, x)
    if reason is not None:
        raise RuntimeError(f"igc_conv backend {backend!r} is unavailable: {reason}")
    return backend


def available_backends(device: str = "cpu", dtype: torch.dtype = torch.float32) -> list[str]:
    """Backends that can run on this device and dtype (for tests, benchmarks and the README)."""
    probe = torch.empty(0, device="meta", dtype=dtype)
    probe = torch.empty(0, dtype=dtype, device=device) if device != "meta" else probe
    return [b for b in BACKENDS[1:] if why_unavailable(b, probe) is None]
