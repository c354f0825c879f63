"""Super-resolution models: VDSR and IGC-VDSR structures 1, 2, 3.

    from igc_kernels.models import build_model
    net = build_model("igc_vdsr_s1")          # 20 layers, 96 channels, 18 IGC layers
    sr = net(bicubic_y)                        # (N, 1, H, W) in, same shape out
"""

from __future__ import annotations

from torch import nn

from .vdsr import VDSR, ConvReLU, LayerFactory, dense_layer, igc_layer_factory

# arch -> (default channels, dense conv after every n IGC layers; "dense" = no IGC at all)
ARCHS = {
    "igc_vdsr_s1": (96, None),
    "igc_vdsr_s2": (96, 3),
    "igc_vdsr_s3": (96, 6),
    "vdsr": (64, "dense"),
}


def build_model(
    arch: str,
    backend: str = "auto",
    *,
    channels: int | None = None,
    depth: int = 20,
    primary_groups: int = 24,
) -> VDSR:
    """Build ``arch`` (one of ``ARCHS``) with freshly initialised weights.

    ``backend`` selects the IGC op backend ('auto', 'cpu', 'cuda', 'triton', 'reference'); it
    is ignored by 'vdsr', which has no IGC layers. ``channels``/``depth`` default to the paper's
    (96 for IGC-VDSR, 64 for VDSR; 20 layers).
    """
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {sorted(ARCHS)}, got {arch!r}")
    default_channels, every = ARCHS[arch]
    channels = default_channels if channels is None else channels
    if every == "dense":
        factory = dense_layer
    else:
        if isinstance(channels, int) and isinstance(primary_groups, int) and primary_groups > 0 \
                and channels % primary_groups:
            raise ValueError(f"channels ({channels}) must be divisible by primary_groups ({primary_groups})")
        factory = igc_layer_factory(every, primary_groups=primary_groups, backend=backend)
    return VDSR(channels=channels, depth=depth, layer_factory=factory)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable scalars (weights and biases)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


__all__ = ["ARCHS", "VDSR", "ConvReLU", "LayerFactory", "build_model", "count_parameters", "dense_layer",
           "igc_layer_factory"]
