"""The layer implementations that benchmarks compare, built for one shape.

Every provider is a callable ``run(mode)`` on prepared inputs, so the pytest-benchmark suite and the
report scripts time the same code. Peers (DESIGN.md section 6): the fused kernel, the stock IGC
block (grouped conv + view/transpose + grouped 1x1 + shuffle + ReLU) in NCHW and channels_last,
``torch.compile`` of the stock block, and the dense ``nn.Conv2d`` the IGC layer replaces.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from igc_kernels.ops import available_backends, igc_conv, igc_conv_reference


@dataclass(frozen=True)
class LayerShape:
    N: int = 1
    C: int = 96
    H: int = 256
    W: int = 256
    L: int = 24
    k: int = 3

    @property
    def M(self) -> int:
        return self.C // self.L

    @property
    def macs_per_pixel(self) -> int:
        """Primary (C * M_in * k^2) + secondary (C * L) multiply-adds per output pixel."""
        return self.C * self.M * self.k * self.k + self.C * self.L

    def flops(self, mode: str) -> float:
        """FLOPs of one call: forward 2*MACs; a backward computes grad x and grad w of both convs
        (2x forward), the fused backward also recomputes the primary conv (not counted)."""
        return _per_mode(2.0 * self.macs_per_pixel * self.N * self.H * self.W, mode)

    def dense_flops(self, mode: str) -> float:
        return _per_mode(2.0 * self.C * self.C * self.k * self.k * self.N * self.H * self.W, mode)

    def __str__(self) -> str:
        return f"{self.N}x{self.C}x{self.H}x{self.W}"


MODES = ("forward", "backward", "forward+backward")


def _per_mode(forward_flops: float, mode: str) -> float:
    factor = {"forward": 1.0, "backward": 2.0, "forward+backward": 3.0}.get(mode)
    if factor is None:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    return factor * forward_flops


def _stock_block(x, w1, w2, b2, L):
    return igc_conv_reference(x, w1, None, w2, b2, None, L, [1, 1], [1, 1], [1, 1], True, 1)


def make_provider(name: str, shape: LayerShape, dtype=torch.float32, device="cpu", seed: int = 0) -> Callable[[str], None]:
    """Build inputs and return ``run(mode)`` for one provider.

    Names: 'fused-<backend>' (cpu, cuda, triton), 'stock-nchw', 'stock-cl', 'stock-compile', 'dense'.
    """
    gen = torch.Generator().manual_seed(seed)
    s = shape
    x = torch.randn(s.N, s.C, s.H, s.W, generator=gen).to(device=device, dtype=dtype)
    w1 = (torch.randn(s.C, s.M, s.k, s.k, generator=gen) / (s.M * s.k * s.k) ** 0.5).to(device=device, dtype=dtype)
    w2 = (torch.randn(s.C, s.L, 1, 1, generator=gen) * (2 / s.L) ** 0.5).to(device=device, dtype=dtype)
    b2 = torch.zeros(s.C, device=device, dtype=dtype)
    params = [w1, w2, b2]

    if name.startswith("fused-"):
        backend = name.split("-", 1)[1]
        if backend not in available_backends(device, dtype):
            raise RuntimeError(f"backend {backend!r} unavailable on {device}/{dtype}")

        def fn(inp):
            return igc_conv(inp, w1, w2, None, b2, padding=1, activation="relu", backend=backend)
    elif name in ("stock-nchw", "stock-cl", "stock-compile"):
        if name == "stock-cl":
            x = x.contiguous(memory_format=torch.channels_last)

        def fn(inp):
            return _stock_block(inp, w1, w2, b2, s.L)

        if name == "stock-compile":
            fn = torch.compile(fn, dynamic=False)  # one static graph per shape: the fastest peer, and no dynamic-shape recompiles
    elif name == "dense":
        wd = (torch.randn(s.C, s.C, s.k, s.k, generator=gen) / (s.C * s.k * s.k) ** 0.5).to(device=device, dtype=dtype)
        params = [wd, b2]

        def fn(inp):
            return F.relu(F.conv2d(inp, wd, b2, padding=s.k // 2))
    else:
        raise ValueError(f"unknown provider {name!r}")

    def graph() -> Callable[[], None]:
        """Run the forward with autograd now; return the backward (grad_out all ones)."""
        inp = x.detach().requires_grad_(True)
        for p in params:
            p.requires_grad_(True)
            p.grad = None
        out = fn(inp)
        grad = torch.ones_like(out)
        return lambda: out.backward(grad)

    def prepare(mode: str) -> Callable[[], None]:
        """The work one timed call of `mode` does, with what precedes it (the forward of a
        'backward' call) already done."""
        if mode == "forward":
            def forward() -> None:
                with torch.no_grad():
                    fn(x)
            return forward
        if mode == "backward":
            return graph()
        if mode == "forward+backward":
            return lambda: graph()()
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")

    def run(mode: str) -> None:
        prepare(mode)()

    run.prepare = prepare
    return run


def provider_names(device: str = "cpu", dtype=torch.float32) -> list[str]:
    fused = [f"fused-{b}" for b in available_backends(device, dtype) if b != "reference"]
    return fused + ["stock-nchw", "stock-cl", "stock-compile", "dense"]
