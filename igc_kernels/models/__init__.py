"""Super-resolution models: VDSR and IGC-VDSR structures 1, 2, 3.

    from igc_kernels.models import build_model
    net = build_model("igc_vdsr_s1")          # 20 layers, 96 channels, 18 IGC layers
    sr = net(bicubic_y)                        # (N, 1, H, W) in, same shape out

Parameters (weights + biases; ``count_parameters``), beside the paper's Table 1 ("para", which
matches fp32 file size in KiB: VDSR's 665,921 parameters are 2,601 KiB against 2,605 listed):

    arch          layers (middle 18)        parameters   fp32 KiB   paper Table 1
    igc_vdsr_s1   18 IGC                       107,233        419        578 KB
    igc_vdsr_s2   14 IGC + 4 dense (n=3)       415,969      1,625      1,748 KB
    igc_vdsr_s3   16 IGC + 2 dense (n=6)       261,601      1,022      1,163 KB
    vdsr          18 dense (64 channels)       665,921      2,601      2,605 KB

The IGC layer here has the paper's own count (section 3.2: (M*f*f*M)*L + (L*L)*M = 3,456 +
2,304 = 5,760 weights, + 96 biases). The paper's sizes imply a bigger IGC layer: s2 - s1 = 1,170
KiB and s3 - s1 = 585 KiB are exactly 4 and 2 swaps of an IGC layer of 8,160 parameters for a
dense 96->96 layer of 83,040 (4 x 74,880 x 4 B = 1,170 KiB), and 18 x 8,160 + head + tail is
~581 KiB (s1: 578). 8,160 = 8,064 weights + 96 biases, which is what L = 12 primary groups of
M = 8 channels would give (6,912 + 1,152), or the paper's 5,760 plus one more 2,304-weight 1x1
group conv; the text does not say which. The depth/regular-conv layout (4 and 2 dense layers
in s2 and s3) is confirmed by those differences.
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
    is ignored by 'vdsr', which has no IGC layers and stays plain PyTorch. IGC-VDSR's head and
    tail convs run on the fused CPU kernel too (``FusedConv2d``, backend 'auto': CPU tensors
    only), except with backend 'reference', which keeps the whole network on stock ops.
    ``channels``/``depth`` default to the paper's (96 for IGC-VDSR, 64 for VDSR; 20 layers).
    """
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {sorted(ARCHS)}, got {arch!r}")
    default_channels, every = ARCHS[arch]
    channels = default_channels if channels is None else channels
    head_tail = "stock" if every == "dense" or backend == "reference" else "auto"
    if every == "dense":
        factory = dense_layer
    else:
        if isinstance(channels, int) and isinstance(primary_groups, int) and primary_groups > 0 \
                and channels % primary_groups:
            raise ValueError(f"channels ({channels}) must be divisible by primary_groups ({primary_groups})")
        factory = igc_layer_factory(every, primary_groups=primary_groups, backend=backend)
    return VDSR(channels=channels, depth=depth, layer_factory=factory, head_tail_backend=head_tail)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable scalars (weights and biases)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


__all__ = ["ARCHS", "VDSR", "ConvReLU", "LayerFactory", "build_model", "count_parameters", "dense_layer",
           "igc_layer_factory"]
