"""Network-level providers: IGC-VDSR on the fused kernel vs on stock ops vs VDSR, eager and
``torch.compile``, for inference on a whole image and for one training step on patches."""

from __future__ import annotations

from typing import Callable

import torch

from igc_kernels.models import build_model

# name -> (arch, backend, compiled). 'stock' is the plain-PyTorch reference path of the same layers.
NETWORKS = {
    "igc_vdsr-fused": ("igc_vdsr_s1", "auto", False),
    "igc_vdsr-stock": ("igc_vdsr_s1", "reference", False),
    "vdsr": ("vdsr", "auto", False),
    "igc_vdsr-fused-compile": ("igc_vdsr_s1", "auto", True),
    "igc_vdsr-stock-compile": ("igc_vdsr_s1", "reference", True),
    "vdsr-compile": ("vdsr", "auto", True),
}

NETWORK_MODES = ("inference", "train-step")


def network_flops(arch: str, n: int, h: int, w: int, mode: str) -> float:
    """Multiply-add count x2 of a forward (x3 for a training step), from the conv shapes."""
    model = build_model(arch, backend="reference")
    macs = 0
    for mod in model.modules():
        if hasattr(mod, "weight1"):
            macs += mod.weight1.numel() + mod.weight2.numel()
        elif isinstance(mod, torch.nn.Conv2d):
            macs += mod.weight.numel()
    fwd = 2.0 * macs * n * h * w
    return fwd if mode == "inference" else 3.0 * fwd


def make_network_provider(name: str, mode: str, n: int, h: int, w: int, device="cpu", dtype=torch.float32,
                          seed: int = 0) -> Callable[[], None]:
    """Return a zero-argument callable that runs one inference or one full training step."""
    arch, backend, compiled = NETWORKS[name]
    torch.manual_seed(seed)
    model = build_model(arch, backend=backend).to(device=device, dtype=dtype)
    net = torch.compile(model) if compiled else model
    x = torch.rand(n, 1, h, w, device=device, dtype=dtype)
    if mode == "inference":
        model.eval()

        def infer() -> None:
            with torch.no_grad():
                net(x)

        return infer
    if mode != "train-step":
        raise ValueError(f"mode must be one of {NETWORK_MODES}, got {mode!r}")
    target = torch.rand_like(x)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.l1_loss(net(x), target)
        loss.backward()
        opt.step()

    return step
