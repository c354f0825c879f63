"""IGCConv2d: a drop-in for nn.Conv2d."""

import pytest
import torch
from torch import nn

from igc_kernels import IGCConv2d, replace_conv2d
from igc_kernels.ops import _ext, igc_conv_reference


def test_forward_matches_reference_and_shapes():
    layer = IGCConv2d(12, 8, 3, stride=2, padding=1, primary_groups=4, activation="relu", primary_bias=True)
    with torch.no_grad():
        layer.bias1.normal_()
        layer.bias2.normal_()
    x = torch.randn(2, 12, 9, 8)
    want = igc_conv_reference(x.double(), layer.weight1.double(), layer.bias1.double(), layer.weight2.double(),
                              layer.bias2.double(), None, 4, [2, 2], [1, 1], [1, 1], True, 1)
    got = layer(x)
    assert got.shape == (2, 8, 5, 4) == nn.Conv2d(12, 8, 3, stride=2, padding=1)(x).shape
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("activation", ["none", "relu"])
@pytest.mark.parametrize("padding_mode", ["zeros", "reflect", "circular"])
def test_to_dense_is_exactly_equivalent(activation, padding_mode):
    layer = IGCConv2d(8, 12, (3, 5), padding=(1, 2), dilation=(1, 2), primary_groups=4, activation=activation,
                      padding_mode=padding_mode, primary_bias=True, dtype=torch.float64)
    with torch.no_grad():
        layer.bias1.normal_()
        layer.bias2.normal_()
    dense = layer.to_dense()
    conv = dense[0] if activation == "relu" else dense
    assert isinstance(conv, nn.Conv2d) and conv.weight.shape == (12, 8, 3, 5)
    x = torch.randn(2, 8, 7, 11, dtype=torch.float64)
    torch.testing.assert_close(dense(x), layer(x), rtol=1e-10, atol=1e-10)


def test_residual_is_added_before_the_activation():
    layer = IGCConv2d(8, 8, 3, padding=1, primary_groups=2, activation="relu", backend="reference")
    x = torch.randn(1, 8, 5, 5)
    r = torch.randn(1, 8, 5, 5)
    plain = IGCConv2d(8, 8, 3, padding=1, primary_groups=2, backend="reference")
    plain.load_state_dict(layer.state_dict())
    torch.testing.assert_close(layer(x, r), torch.relu(plain(x) + r))


def test_state_dict_round_trip_and_names():
    a = IGCConv2d(16, 16, 3, padding=1, primary_groups=4)
    b = IGCConv2d(16, 16, 3, padding=1, primary_groups=4)
    assert set(a.state_dict()) == {"weight1", "weight2", "bias2"}
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 16, 6, 6)
    torch.testing.assert_close(a(x), b(x))
    assert sum(p.numel() for p in a.parameters()) == 16 * 4 * 9 + 16 * 4 + 16


def test_paper_layer_has_14x_fewer_weights():
    igc = IGCConv2d(96, 96, 3, padding=1, primary_groups=24, bias=False)
    dense = nn.Conv2d(96, 96, 3, padding=1, bias=False)
    n_igc = sum(p.numel() for p in igc.parameters())
    assert n_igc == 3456 + 2304
    assert round(dense.weight.numel() / n_igc, 1) == 14.4


def test_extra_repr():
    r = repr(IGCConv2d(96, 96, 3, padding=1, primary_groups=24, activation="relu", backend="reference"))
    assert r == ("IGCConv2d(96, 96, kernel_size=(3, 3), primary_groups=24, members=4, padding=(1, 1), "
                 "activation='relu', backend='reference')")
    assert "stride=(2, 2)" in repr(IGCConv2d(8, 8, 3, stride=2, primary_groups=2, bias=False))


def test_same_and_valid_padding():
    assert IGCConv2d(8, 8, 5, padding="same", dilation=2, primary_groups=2).padding == (4, 4)
    assert IGCConv2d(8, 8, 5, padding="valid", primary_groups=2).padding == (0, 0)


def test_default_init_keeps_deep_stacks_alive():
    """18 IGC+ReLU layers (IGC-VDSR's body) neither explode nor vanish at init (DESIGN.md section 5)."""
    torch.manual_seed(0)
    body = nn.Sequential(*[IGCConv2d(96, 96, 3, padding=1, primary_groups=24, activation="relu") for _ in range(18)])
    x = torch.randn(2, 96, 24, 24)
    with torch.no_grad():
        first = body[0](x)
        y = body(x)
    ratio = float(y.pow(2).mean() / first.pow(2).mean())
    # A He-style init keeps the second moment roughly constant; the wrong gain on both convs moves
    # it by 2x per layer (2^17 over the stack), no gain by 0.5x per layer.
    assert 0.1 < ratio < 10, ratio


def test_replace_conv2d_swaps_eligible_layers():
    model = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),  # in_channels 1 not divisible by L=4: kept
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1),
        nn.Conv2d(16, 16, 1),  # 1x1: kept
        nn.Sequential(nn.Conv2d(16, 32, 3, padding=2, dilation=2, bias=False)),
    )
    names = replace_conv2d(model, members=4, backend="reference")
    assert names == ["2", "4.0"]
    assert isinstance(model[2], IGCConv2d) and model[2].primary_groups == 4
    assert isinstance(model[4][0], IGCConv2d) and model[4][0].bias2 is None and model[4][0].dilation == (2, 2)
    assert type(model[0]) is nn.Conv2d and type(model[3]) is nn.Conv2d
    assert model(torch.randn(1, 1, 8, 8)).shape == (1, 32, 8, 8)
    assert replace_conv2d(nn.Sequential(nn.Conv2d(16, 16, 3)), predicate=lambda name, conv: False) == []


# ---------------------------------------------------------------------------------------------
# FusedConv2d: nn.Conv2d on the fused kernel (VDSR's head and tail).

from igc_kernels.nn import FusedConv2d  # noqa: E402


@pytest.mark.parametrize("cin,cout,kw", [(1, 24, {}), (24, 1, {}), (5, 7, {"stride": 2, "dilation": (1, 2)})])
@pytest.mark.parametrize("activation", ["none", "relu"])
def test_fused_conv2d_matches_conv2d(cin, cout, kw, activation):
    torch.manual_seed(cin * 100 + cout)
    ref = torch.nn.Conv2d(cin, cout, 3, padding=1, **kw).double()
    fused = FusedConv2d(cin, cout, 3, padding=1, activation=activation, backend="cpu", **kw).double()
    fused.load_state_dict(ref.state_dict())  # same parameters and keys as nn.Conv2d
    x = torch.randn(2, cin, 13, 17, dtype=torch.float64, requires_grad=True)
    out_hw = ref(x).shape[-2:]
    res = torch.randn(2, cout, *out_hw, dtype=torch.float64, requires_grad=True)
    want = ref(x) + res
    want = torch.relu(want) if activation == "relu" else want
    got = fused(x, residual=res)
    torch.testing.assert_close(got, want)
    g = torch.randn_like(want)
    grads_want = torch.autograd.grad(want, (x, res, ref.weight, ref.bias), g)
    grads_got = torch.autograd.grad(got, (x, res, fused.weight, fused.bias), g)
    for a, b in zip(grads_got, grads_want):
        torch.testing.assert_close(a, b)


def test_fused_conv2d_stock_backend_and_errors():
    conv = FusedConv2d(3, 4, 3, padding=1, activation="relu", backend="stock")
    x = torch.randn(1, 3, 8, 8)
    torch.testing.assert_close(conv(x), torch.relu(torch.nn.functional.conv2d(x, conv.weight, conv.bias, padding=1)))
    assert "activation='relu'" in repr(conv) and "backend='stock'" in repr(conv)
    with pytest.raises(ValueError, match="groups must be 1"):
        FusedConv2d(4, 4, 3, groups=2)
    with pytest.raises(ValueError, match="padding_mode must be 'zeros'"):
        FusedConv2d(4, 4, 3, padding=1, padding_mode="reflect")
    with pytest.raises(ValueError, match="padding must be numbers"):
        FusedConv2d(4, 4, 3, padding="same")
    with pytest.raises(ValueError, match="backend must be one of"):
        FusedConv2d(4, 4, 3, backend="gpu")
    with pytest.raises(ValueError, match="activation must be one of"):
        FusedConv2d(4, 4, 3, activation="gelu")


@pytest.mark.parametrize("backend", ["auto", "stock", "cpu", "reference"])
def test_dense_conv_is_fused_conv2d(backend):
    """igc_kernels.ops.dense_conv (FusedConv2d's function, and the fallback of igc_conv_chain's
    head and tail) gives the module's result bitwise, and nn.Conv2d's within rounding."""
    from igc_kernels.ops import dense_conv

    if backend != "stock" and not _ext.has_kernel("CPU"):
        pytest.skip("fused CPU kernel not built")
    torch.manual_seed(3)
    conv = FusedConv2d(6, 5, 3, padding=1, stride=(1, 2), activation="relu", backend=backend)
    x, res = torch.randn(2, 6, 11, 14), torch.randn(2, 5, 11, 7)
    got = dense_conv(x, conv.weight, conv.bias, padding=1, stride=(1, 2), activation="relu", residual=res,
                     backend=backend)
    assert torch.equal(got, conv(x, residual=res))
    want = torch.relu(torch.nn.functional.conv2d(x, conv.weight, conv.bias, stride=(1, 2), padding=1) + res)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="backend must be one of"):
        dense_conv(x, conv.weight, backend="gpu")
