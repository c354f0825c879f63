"""The chain's dense ends: igc_conv_chain's head (a conv before the first layer) and tail (a conv
after the last, with a residual), and chained_forward's FusedConv2d neighbours of a run of IGC
layers. Against the same convs run as FusedConv2d runs them (the fused op with an identity
secondary), bitwise, and against float64 F.conv2d and the float64 IGC reference."""

import pytest
import torch
import torch.nn.functional as F
from test_chain import _fused, _fused_runs, _layers, _one_by_one, _reference
from test_chain import aligned_chain_tiles  # noqa: F401  (autouse: tiles aligned as the layers')
from test_fused_cpu import _num_threads, isa  # noqa: F401  (fixtures)
from torch import nn

from igc_kernels.nn import FusedConv2d, IGCConv2d, chained_forward
from igc_kernels.ops import _ext, igc_conv, igc_conv_chain
from igc_kernels.testing import assert_close_to_reference

pytestmark = pytest.mark.skipif(not _ext.has_kernel("CPU"), reason=f"fused CPU kernel not built: {_ext.EXT_ERROR}")


def _dense(c_out, c_in, seed, bias=True, dtype=torch.float32):
    """(weight, bias) of a 3x3 conv, variance preserving."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(c_out, c_in, 3, 3, generator=gen, dtype=torch.float64) * (9 * c_in) ** -0.5
    b = torch.randn(c_out, generator=gen, dtype=torch.float64) * 0.3 if bias else None
    return w.to(dtype), None if b is None else b.to(dtype)


def _alone(h, end, activation, residual=None):
    """A conv as FusedConv2d runs it on the fused CPU op (identity secondary, no shuffle)."""
    w, b = end
    return igc_conv(h, w, torch.ones(w.shape[0], 1, 1, 1, dtype=w.dtype), b, None, groups=1, padding=1,
                    shuffle=False, activation=activation, residual=residual, backend="cpu")


def _reference_dense(h, end, activation, residual=None):
    w, b = end
    y = F.conv2d(h.double(), w.double(), None if b is None else b.double(), padding=1)
    if residual is not None:
        y = y + residual.double()
    return y.relu() if activation == "relu" else y


def _op(x, layers, L, head=None, head_act="relu", tail=None, tail_act="none", residual=None, activation=1):
    return torch.ops.igc_kernels.igc_conv_chain(
        x, [t[0] for t in layers], [t[2] for t in layers], [t[1] for t in layers], [t[3] for t in layers],
        L, [1, 1], [1, 1], [1, 1], True, activation,
        head_weight=None if head is None else head[0], head_bias=None if head is None else head[1],
        head_activation=int(head_act == "relu"), tail_weight=None if tail is None else tail[0],
        tail_bias=None if tail is None else tail[1], tail_activation=int(tail_act == "relu"), residual=residual)


def _separately(x, layers, head, head_act, tail, tail_act, residual):
    h = x if head is None else _alone(x, head, head_act)
    h = _one_by_one(h, layers, activation="relu")
    return h if tail is None else _alone(h, tail, tail_act, residual)


# (N, L, M, H, W, layers, head input channels, tail output channels): partial last tiles (H % 4),
# rows of several segments and of part of a vector, images split between threads' bands, one
# layer with both ends (the tail reads the only layer), VDSR's 96 channels, tails of 1-4 outputs.
CASES = [
    (1, 3, 2, 12, 9, 1, 1, 1),
    (2, 4, 2, 22, 70, 2, 1, 1),
    (1, 24, 4, 37, 130, 3, 1, 1),
    (3, 3, 4, 16, 17, 2, 3, 4),
    (1, 4, 4, 13, 45, 3, 2, 3),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c)))
@pytest.mark.parametrize("ends", ["head", "tail", "both"])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_chain_ends_equal_separate_convs(case, ends, threads):
    N, L, M, H, W, count, c_head, c_tail = case
    C = L * M
    seed = H * W + count
    layers = _layers(count, L, M, seed=seed)
    head = _dense(C, c_head, seed + 1) if ends != "tail" else None
    tail = _dense(c_tail, C, seed + 2, bias=c_tail != 3) if ends != "head" else None
    gen = torch.Generator().manual_seed(seed + 3)
    x = torch.randn(N, c_head if head is not None else C, H, W, generator=gen)
    residual = torch.randn(N, c_tail, H, W, generator=gen) if tail is not None and c_tail != 4 else None
    with _num_threads(threads), torch.no_grad():
        with _fused(True):
            ours = _op(x, layers, L, head, "relu", tail, "none", residual)
        separate = _separately(x, layers, head, "relu", tail, "none", residual)
    assert torch.equal(ours, separate)
    assert ours.is_contiguous()
    h = x.double() if head is None else _reference_dense(x, head, "relu")
    h = _reference(h, layers, L)
    expected = h if tail is None else _reference_dense(h, tail, "none", residual)
    assert_close_to_reference(ours, expected, torch.float32, "chain with ends vs float64")


@pytest.mark.parametrize("head_act,tail_act", [("none", "relu"), ("relu", "relu"), ("none", "none")])
def test_chain_end_activations(head_act, tail_act, isa):
    layers = _layers(2, 4, 2, seed=21)
    head, tail = _dense(8, 1, 22, bias=False), _dense(1, 8, 23)
    x = torch.randn(2, 1, 19, 40)
    residual = torch.randn(2, 1, 19, 40)
    with torch.no_grad():
        with _fused(True):
            ours = _op(x, layers, 4, head, head_act, tail, tail_act, residual)
        assert torch.equal(ours, _separately(x, layers, head, head_act, tail, tail_act, residual))


@pytest.mark.parametrize("what", ["head-few-outputs", "tail-many-outputs", "residual-channels-last",
                                  "residual-strided", "x-strided", "x-channels-last", "x-float64", "short"])
def test_chain_ends_that_run_alone(what):
    """Ends the chain does not fuse (a head of four outputs, which alone runs by input rows; a tail
    of five outputs; a residual that is not contiguous) run on their own, inputs the chain does
    not take run all layer by layer, and strided inputs are read where they lie: the result is
    the same."""
    L, M, H, W = (2, 2, 16, 24) if what == "head-few-outputs" else (3, 2, 16 if what != "short" else 9, 24)
    C = L * M
    dtype = torch.float64 if what == "x-float64" else torch.float32
    layers = _layers(2, L, M, seed=31, dtype=dtype)
    c_head = 2 if what == "x-channels-last" else 1
    c_tail = {"tail-many-outputs": 5, "residual-channels-last": 2}.get(what, 1)
    head, tail = _dense(C, c_head, 32, dtype=dtype), _dense(c_tail, C, 33, dtype=dtype)
    x = torch.randn(1, c_head, H, W, dtype=dtype)
    residual = torch.randn(1, c_tail, H, W, dtype=dtype)
    if what == "residual-channels-last":
        residual = residual.contiguous(memory_format=torch.channels_last)
    if what == "residual-strided":
        residual = torch.randn(1, 1, H, 2 * W)[..., ::2]
    if what == "x-strided":
        x = torch.randn(1, 1, H, 2 * W)[..., ::2]
    if what == "x-channels-last":
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        ours = _op(x, layers, L, head, "relu", tail, "none", residual)
        assert torch.equal(ours, _separately(x, layers, head, "relu", tail, "none", residual))


def test_chain_ends_non_finite():
    """NaN and Inf in the head's input reach exactly the outputs they reach conv by conv."""
    layers = _layers(2, 3, 2, seed=41)
    head, tail = _dense(6, 1, 42), _dense(1, 6, 43)
    x = torch.randn(1, 1, 24, 50)
    x[0, 0, 0, 0], x[0, 0, 13, 49], x[0, 0, 23, 10] = float("nan"), float("inf"), float("-inf")
    residual = torch.randn(1, 1, 24, 50)
    with torch.no_grad():
        with _fused(True):
            ours = _op(x, layers, 3, head, "relu", tail, "none", residual, activation=0)
        separate = _alone(x, head, "relu")
        separate = _alone(_one_by_one(separate, layers, activation="none"), tail, "none", residual)
    assert not torch.isfinite(ours).all()
    torch.testing.assert_close(ours, separate, rtol=0, atol=0, equal_nan=True)


def test_chain_ends_bad_arguments():
    layers = _layers(2, 3, 2, 44)
    x = torch.randn(1, 1, 16, 20)
    head, tail = _dense(6, 1, 45), _dense(1, 6, 46)
    kw = dict(groups=3, padding=1, activation="relu")
    with pytest.raises(ValueError, match="residual is added by the tail"):
        igc_conv_chain(x, layers, head=head, residual=torch.randn(1, 1, 16, 20), **kw)
    with pytest.raises(ValueError, match=r"head must be a \(weight, bias\) tuple"):
        igc_conv_chain(x, layers, head=head[0], **kw)
    with pytest.raises(ValueError, match=r"tail\[0\] \(weight\) must be a 4-D"):
        igc_conv_chain(x, layers, head=head, tail=(tail[0][0], None), **kw)
    with pytest.raises(ValueError, match=r"head: .*w1.shape\[1\]"):  # a head of 2 input channels for x's 1
        igc_conv_chain(x, layers, head=_dense(6, 2, 47), **kw)
    with pytest.raises(ValueError, match=r"layers\[0\]: "):  # a head of 4 channels for layers of 6
        igc_conv_chain(x, layers, head=_dense(4, 1, 48), **kw)
    with pytest.raises(ValueError, match=r"tail: .*residual"):
        igc_conv_chain(x, layers, head=head, tail=tail, residual=torch.randn(1, 1, 16, 21), **kw)
    with pytest.raises(ValueError, match="activation"):
        igc_conv_chain(x, layers, head=head, head_activation="gelu", **kw)
    with pytest.raises(RuntimeError, match="head_bias was given without head_weight"):
        torch.ops.igc_kernels.igc_conv_chain(x, [layers[0][0]], [None], [layers[0][1]], [None], 3, [1, 1], [1, 1],
                                             [1, 1], True, 1, head_bias=head[1])
    with pytest.raises(RuntimeError, match="residual is added by the tail"):
        _op(torch.randn(1, 6, 16, 20), layers, 3, residual=torch.randn(1, 6, 16, 20))
    with pytest.raises(RuntimeError, match="tail: .*w1"):
        _op(torch.randn(1, 6, 16, 20), layers, 3, tail=_dense(1, 5, 49))
    with pytest.raises(RuntimeError, match="head_weight must be a 4-D"):
        _op(x, layers, 3, head=(head[0][0], None))


def test_chain_ends_follow_autograd():
    """Where a gradient is needed the ends run as convs of their own, and gradients flow."""
    layers = [tuple(t.requires_grad_() if t is not None else None for t in layer) for layer in _layers(2, 3, 2, 51)]
    head = tuple(t.requires_grad_() for t in _dense(6, 1, 52))
    tail = tuple(t.requires_grad_() for t in _dense(1, 6, 53))
    x = torch.randn(1, 1, 16, 20, requires_grad=True)
    params = [x, *head, *tail] + [t for layer in layers for t in layer if t is not None]
    kw = dict(groups=3, padding=1, activation="relu", head=head, head_activation="relu", tail=tail, residual=x)
    with _fused(False):
        out = igc_conv_chain(x, layers, **kw)
    out.square().sum().backward()
    grads = [t.grad.clone() for t in params]
    for t in params:
        t.grad = None
    _separately(x, layers, head, "relu", tail, "none", x).square().sum().backward()
    for g, t in zip(grads, params):
        torch.testing.assert_close(g, t.grad, rtol=0, atol=0)
    with torch.no_grad(), _fused(True):
        assert torch.equal(igc_conv_chain(x, layers, **kw), out)


def test_chain_ends_opcheck():
    layers = _layers(2, 3, 2, 54)
    head, tail = _dense(6, 2, 55), _dense(2, 6, 56)
    args = (torch.randn(2, 2, 13, 18), [t[0] for t in layers], [t[2] for t in layers], [t[1] for t in layers],
            [t[3] for t in layers], 3, [1, 1], [1, 1], [1, 1], True, 1)
    kwargs = dict(head_weight=head[0], head_bias=head[1], head_activation=1, tail_weight=tail[0], tail_bias=tail[1],
                  tail_activation=0, residual=torch.randn(2, 2, 13, 18))
    torch.library.opcheck(torch.ops.igc_kernels.igc_conv_chain.default, args, kwargs,
                          test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_static"))


def _network(head_backend="auto", tail_out=1, C=8, L=4, body=4):
    """VDSR's layout in small: FusedConv2d head, IGC layers, FusedConv2d tail."""
    torch.manual_seed(57)
    return nn.ModuleList([FusedConv2d(1, C, 3, padding=1, activation="relu", backend=head_backend),
                          *(IGCConv2d(C, C, 3, padding=1, primary_groups=L, activation="relu") for _ in range(body)),
                          FusedConv2d(C, tail_out, 3, padding=1)]).eval()


def _sequential(net, x, residual):
    h = x
    for m in net[:-1]:
        h = m(h)
    return net[-1](h, residual=residual)


@pytest.mark.parametrize("max_chain,runs", [(None, 1), (2, 2), (3, 2), (1, 4), (4, 1)])  # (None, 4: one chain)
def test_chained_forward_joins_head_and_tail(max_chain, runs):
    """The FusedConv2d before and after a run join its first and last chains (a chain of one
    layer with an end is fused too), and the residual goes to the tail: as the modules compute."""
    net = _network()
    x = torch.randn(2, 1, 21, 30)
    with torch.no_grad():
        before = _fused_runs()
        ours = chained_forward(net, x, max_chain=max_chain, residual=x)
        assert _fused_runs() - before == runs
        assert torch.equal(ours, _sequential(net, x, x))
    out = chained_forward(net, x, residual=x)  # autograd: module by module, differentiable
    assert out.requires_grad and torch.equal(out.detach(), _sequential(net, x, x).detach())


@pytest.mark.parametrize("what", ["hooked-tail", "stock-head", "last-is-igc", "tail-mid"])
def test_chained_forward_ends_that_stay_modules(what):
    """Ends with hooks, or on stock convs, run as modules; a residual for an IGC layer that comes
    last goes to that layer; a FusedConv2d between runs joins the run before it."""
    net = _network(head_backend="stock" if what == "stock-head" else "auto")
    seen = []
    if what == "hooked-tail":
        net[-1].register_forward_hook(lambda mod, inp, out: seen.append(out.shape))
    x = torch.randn(1, 1, 16, 20)
    layers = list(net)
    residual = x
    if what == "last-is-igc":
        layers, residual = layers[:-1], torch.randn(1, 8, 16, 20)
    if what == "tail-mid":
        layers = layers[:-1] + [FusedConv2d(8, 8, 3, padding=1, activation="relu")] + layers[1:]
    with torch.no_grad():
        ours = chained_forward(layers, x, residual=residual)
        assert torch.equal(ours, _sequential(layers, x, residual))
    if what == "hooked-tail":
        assert len(seen) == 2  # chained_forward's call, then _sequential's


def test_chained_forward_with_ends_compiles():
    net = _network()
    x = torch.randn(1, 1, 16, 24)
    compiled = torch.compile(lambda h: chained_forward(net, h, residual=h), fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), _sequential(net, x, x), rtol=1e-5, atol=1e-5)


def test_chained_forward_residual_needs_layers():
    with pytest.raises(ValueError, match="layers is empty"):
        chained_forward([], torch.randn(1, 1, 4, 4), residual=torch.randn(1, 1, 4, 4))
