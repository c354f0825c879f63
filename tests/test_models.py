"""VDSR / IGC-VDSR: structure, parameter counts, shapes, init health, and a short overfit run."""

import math

import pytest
import torch
from torch import nn

from igc_kernels.models import ARCHS, build_model, count_parameters
from igc_kernels.nn import IGCConv2d


def dense(cin, cout):  # 3x3 conv with bias
    return cout * cin * 9 + cout


IGC96 = 96 * 4 * 9 + 96 * 24 + 96  # primary 3,456 + secondary 2,304 + bias (DESIGN section 2)


@pytest.mark.parametrize(
    "arch, expected",
    [
        ("igc_vdsr_s1", dense(1, 96) + 18 * IGC96 + dense(96, 1)),
        ("igc_vdsr_s2", dense(1, 96) + 14 * IGC96 + 4 * dense(96, 96) + dense(96, 1)),
        ("igc_vdsr_s3", dense(1, 96) + 16 * IGC96 + 2 * dense(96, 96) + dense(96, 1)),
        ("vdsr", dense(1, 64) + 18 * dense(64, 64) + dense(64, 1)),
    ],
)
def test_parameter_counts(arch, expected):
    assert count_parameters(build_model(arch, backend="reference")) == expected


@pytest.mark.parametrize("arch, n_igc, dense_slots", [
    ("igc_vdsr_s1", 18, []), ("igc_vdsr_s2", 14, [3, 7, 11, 15]), ("igc_vdsr_s3", 16, [6, 13]), ("vdsr", 0, list(range(18))),
])
def test_layer_layout(arch, n_igc, dense_slots):
    m = build_model(arch)
    assert len(m.body) == 18 and m.depth == 20 and m.receptive_field == 41
    kinds = [isinstance(layer, IGCConv2d) for layer in m.body]
    assert sum(kinds) == n_igc
    assert [i for i, k in enumerate(kinds) if not k] == dense_slots
    for layer in m.body:
        if isinstance(layer, IGCConv2d):
            assert (layer.primary_groups, layer.members, layer.activation) == (24, 4, "relu")
    assert m.head[0].in_channels == 1 and m.tail.out_channels == 1


@pytest.mark.parametrize("arch", sorted(ARCHS))
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_output_shape_and_global_residual(arch, scale):
    torch.manual_seed(scale)
    m = build_model(arch, backend="reference", depth=4)
    h, w = 7 * scale, 5 * scale + 1  # odd sizes: zero padding keeps the size
    x = torch.rand(2, 1, h, w)
    y = m(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    with torch.no_grad():  # output = input + residual: zero tail -> identity
        m.tail.weight.zero_()
        m.tail.bias.zero_()
    torch.testing.assert_close(m(x), x)


def test_bad_arguments():
    with pytest.raises(ValueError, match="arch must be one of"):
        build_model("srcnn")
    with pytest.raises(ValueError, match="divisible by primary_groups"):
        build_model("igc_vdsr_s1", channels=50)
    with pytest.raises(ValueError, match="depth must be an int >= 2"):
        build_model("vdsr", depth=1)
    with pytest.raises(ValueError, match=r"input must be \(N, 1, H, W\)"):
        build_model("vdsr", depth=3)(torch.rand(1, 3, 8, 8))


def _body_gain(m: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        h = m.head(x)
        return m.body(h).pow(2).mean().item() / h.pow(2).mean().item()


@pytest.mark.parametrize("arch", ["igc_vdsr_s1", "igc_vdsr_s2", "vdsr"])
def test_init_keeps_activation_scale(arch):
    """Through 18 layers the activations' second moment stays within 100x of the head's.

    The init is variance preserving only in expectation; finite width makes the per-layer
    gain a random walk, hence the wide band. A wrong gain is far outside it: the ReLU gain on
    both IGC convs doubles the scale per layer (2^18 ~ 2.6e5), no ReLU gain halves it.
    """
    x = torch.rand(2, 1, 40, 40)
    gains = []
    for seed in range(3):
        torch.manual_seed(seed)
        gains.append(_body_gain(build_model(arch, backend="reference"), x))
    geo = math.exp(sum(math.log(g) for g in gains) / len(gains))
    assert 1e-2 < geo < 1e2, gains


def test_init_check_detects_wrong_gain():
    """The band above is tight enough to catch the failure DESIGN.md section 5 describes."""
    torch.manual_seed(0)
    m = build_model("igc_vdsr_s1", backend="reference")
    with torch.no_grad():
        for layer in m.body:
            layer.weight1.mul_(math.sqrt(2.0))  # ReLU gain on the primary too
    assert _body_gain(m, torch.rand(2, 1, 40, 40)) > 1e2


def test_overfit_cuts_loss_below_bicubic():
    """60 Adam steps on 8 real patches: the 20-layer IGC net must learn a residual that beats
    bicubic (the zero-residual loss), not merely shrink its initial residual."""
    from igc_kernels.sr.data import PatchDataset, benchmark_folder

    torch.manual_seed(0)
    ds = PatchDataset(benchmark_folder("Set5"), scales=3, patch_size=24, augment=False, stride=48)
    idx = torch.randperm(len(ds))[:8]
    x = torch.stack([ds[int(i)][0] for i in idx])
    y = torch.stack([ds[int(i)][1] for i in idx])
    bicubic_loss = (x - y).abs().mean().item()
    m = build_model("igc_vdsr_s1")
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    losses = []
    for _ in range(60):
        loss = (m(x) - y).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.05 * losses[0]
    assert losses[-1] < 0.95 * bicubic_loss, (losses[-1], bicubic_loss)


@pytest.mark.parametrize("backend", [b for b in ("cpu", "triton") if b in __import__("igc_kernels").available_backends()])
def test_same_network_on_every_cpu_backend(backend):
    """One set of weights gives the same output on the reference and on each fused backend."""
    torch.manual_seed(0)
    ref = build_model("igc_vdsr_s2", backend="reference", depth=8).eval()
    other = build_model("igc_vdsr_s2", backend=backend, depth=8).eval()
    other.load_state_dict(ref.state_dict())
    x = torch.rand(2, 1, 19, 23)
    with torch.no_grad():
        torch.testing.assert_close(other(x), ref(x), rtol=1e-4, atol=1e-5)


def test_head_and_tail_runner():
    """IGC-VDSR runs head and tail on the fused kernel; VDSR and the stock-ops build stay stock."""
    assert build_model("igc_vdsr_s1").tail.backend == "auto"
    assert build_model("igc_vdsr_s1").head[0].backend == "auto"
    assert build_model("igc_vdsr_s1", backend="reference").tail.backend == "stock"
    assert build_model("vdsr").tail.backend == "stock"
    keys = set(build_model("igc_vdsr_s1").state_dict())
    assert {"head.0.weight", "head.0.bias", "tail.weight", "tail.bias"} <= keys
