"""The fused chain of IGC layers (igc_kernels::igc_conv_chain, igc_conv_chain, chained_forward):
the layers applied one after another, against the float64 reference and, bitwise, against the
fused op run layer by layer (the chain runs the same kernels on the same packed rows), with the
chain's Winograd tiles aligned as the layers' are (the fixture aligned_chain_tiles)."""

import contextlib

import pytest
import torch
from torch import nn

from igc_kernels.nn import IGCConv2d, chained_forward
from igc_kernels.ops import _ext, igc_conv, igc_conv_chain, igc_conv_reference
from igc_kernels.testing import assert_close_to_reference
from test_fused_cpu import _lib, _num_threads, isa, winograd  # noqa: F401  (fixtures)

pytestmark = pytest.mark.skipif(not _ext.has_kernel("CPU"), reason=f"fused CPU kernel not built: {_ext.EXT_ERROR}")


@contextlib.contextmanager
def _chain_tiles(staggered: bool):
    """The fused chains' Winograd tiles staggered (each stage's a row below the next stage's, the
    default) or aligned at rows 4i in every stage, for a block."""
    old = _lib().igc_kernels_cpu_set_chain_stagger(int(staggered))
    try:
        yield
    finally:
        _lib().igc_kernels_cpu_set_chain_stagger(old)


@pytest.fixture(autouse=True)
def aligned_chain_tiles():
    """Aligned tiles for the bitwise comparisons with the layers run one by one (whose tiles start
    at rows 4i): staggered tiles round differently; test_chain_stagger.py checks them against the
    layers run with the chain's leads."""
    with _chain_tiles(False):
        yield


def _fused_runs() -> int:
    return _lib().igc_kernels_cpu_chain_runs()


@contextlib.contextmanager
def _fused(expected: bool):
    """The block runs the fused chain (expected) or only layer by layer (not expected)."""
    before = _fused_runs()
    yield
    assert (_fused_runs() > before) == expected, "fused chain ran" if not expected else "fused chain did not run"


def _layers(count, L, M, seed, bias1=True, bias2=True, dtype=torch.float32, scale=1.0):
    """count layers of L*M channels: (w1, w2, b1, b2) each, variance preserving (times scale)."""
    gen = torch.Generator().manual_seed(seed)
    C = L * M

    def rnd(*shape, s):
        return (torch.randn(*shape, generator=gen, dtype=torch.float64) * s).to(dtype)

    return [(rnd(C, M, 3, 3, s=scale * (9 * M) ** -0.5), rnd(C, L, 1, 1, s=2 ** 0.5 * L ** -0.5),
             rnd(C, s=0.3) if bias1 else None, rnd(C, s=0.3) if bias2 else None) for _ in range(count)]


def _one_by_one(x, layers, **kw):
    for w1, w2, b1, b2 in layers:
        x = igc_conv(x, w1, w2, b1, b2, padding=1, backend="cpu", **kw)
    return x


def _reference(x, layers, groups, shuffle=True, activation=1):
    h = x.double()
    for w1, w2, b1, b2 in layers:
        h = igc_conv_reference(h, w1.double(), None if b1 is None else b1.double(), w2.double(),
                               None if b2 is None else b2.double(), None, groups, [1, 1], [1, 1], [1, 1],
                               shuffle, activation)
    return h


def _chain_op(x, layers, groups, shuffle=True, activation=1):
    return torch.ops.igc_kernels.igc_conv_chain(
        x, [t[0] for t in layers], [t[2] for t in layers], [t[1] for t in layers], [t[3] for t in layers],
        groups, [1, 1], [1, 1], [1, 1], shuffle, activation)


# (N, L, M, H, W, layers): partial last tiles (H % 4), rows of several segments (W > 64) and of
# part of a vector, images that split between threads' bands, chains longer than the model's.
CHAIN_CASES = [
    (1, 3, 2, 12, 9, 2),
    (1, 4, 4, 13, 45, 3),
    (2, 3, 2, 22, 70, 2),
    (1, 2, 3, 37, 130, 4),
    (3, 6, 4, 16, 17, 5),
    (1, 24, 4, 20, 33, 2),
]


@pytest.mark.parametrize("case", CHAIN_CASES, ids=lambda c: "x".join(map(str, c)))
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_chain_equals_layer_by_layer(case, threads):
    N, L, M, H, W, count = case
    layers = _layers(count, L, M, seed=H * W + count)
    x = torch.randn(N, L * M, H, W, generator=torch.Generator().manual_seed(count))
    with _num_threads(threads), torch.no_grad():
        with _fused(True):
            ours = _chain_op(x, layers, L)
        layerwise = _one_by_one(x, layers, activation="relu")
    assert torch.equal(ours, layerwise)
    assert_close_to_reference(ours, _reference(x, layers, L), torch.float32, "chain vs float64")
    assert ours.is_contiguous()


@pytest.mark.parametrize("shuffle,activation", [(False, 1), (True, 0)])
def test_chain_options_and_no_bias(shuffle, activation, isa):
    layers = _layers(3, 4, 2, seed=5, bias1=False, bias2=activation == 1)
    x = torch.randn(2, 8, 19, 40)
    with torch.no_grad(), _fused(True):
        ours = _chain_op(x, layers, 4, shuffle, activation)
    with torch.no_grad():
        layerwise = _one_by_one(x, layers, shuffle=shuffle, activation=("none", "relu")[activation])
    assert torch.equal(ours, layerwise)
    assert_close_to_reference(ours, _reference(x, layers, 4, shuffle, activation), torch.float32)


@pytest.mark.parametrize("make_x,fused", [
    (lambda: torch.randn(1, 8, 16, 21).contiguous(memory_format=torch.channels_last), False),
    (lambda: torch.randn(1, 8, 16, 30)[..., ::2], True),  # strided columns: packed like any x
    (lambda: torch.randn(1, 8, 10, 21), False),  # too few rows for Winograd tiles
    (lambda: torch.randn(2, 8, 13, 21, dtype=torch.float64), False),
    (lambda: torch.randn(2, 8, 13, 21).bfloat16(), False),
], ids=["channels_last", "strided", "short", "float64", "bfloat16"])
def test_chain_any_input_equals_layer_by_layer(make_x, fused):
    """Inputs the fused chain does not take run layer by layer; all give the layers' result."""
    x = make_x()
    layers = _layers(2, 4, 2, seed=6, dtype=x.dtype)
    with torch.no_grad():
        with _fused(fused):
            ours = _chain_op(x, layers, 4)
        layerwise = _one_by_one(x, layers, activation="relu")
    assert torch.equal(ours, layerwise)
    assert ours.stride() == layerwise.stride()  # channels_last in, channels_last out


def test_chain_without_winograd(winograd):
    layers = _layers(2, 3, 2, seed=7)
    x = torch.randn(1, 6, 24, 50)
    with torch.no_grad():
        with _fused(winograd):  # the chain runs the Winograd forward only
            ours = _chain_op(x, layers, 3)
        assert torch.equal(ours, _one_by_one(x, layers, activation="relu"))


@pytest.mark.parametrize("width,spots", [
    (50, [(0, 0, 0, "nan")]), (50, [(3, 13, 49, "inf"), (1, 6, 20, "-inf")]),
    (50, [(5, 23, 10, "nan"), (2, 4, 0, "inf")]),
    # next to the ends of the ring rows' 64-column segments, whose windows copy their neighbours' pixels
    (150, [(1, 9, 63, "nan"), (4, 14, 128, "inf")]), (150, [(2, 5, 64, "-inf"), (0, 17, 127, "nan")]),
    (150, [(3, 11, 149, "inf")])], ids=["corner", "edge-tile", "last-row", "segment-ends", "segment-starts",
                                        "last-segment"])
def test_chain_non_finite_inputs(width, spots, isa):
    """NaN and Inf in x reach exactly the outputs they reach layer by layer (the second layer's
    Winograd tiles meet them in the ring rows and take the direct primary)."""
    layers = _layers(3, 3, 2, seed=8)
    x = torch.randn(1, 6, 24, width)
    for c, y, col, v in spots:
        x[0, c, y, col] = float(v)
    with torch.no_grad():
        with _fused(True):
            ours = _chain_op(x, layers, 3, activation=0)
        layerwise = _one_by_one(x, layers, activation="none")
    assert not torch.isfinite(ours).all()
    torch.testing.assert_close(ours, layerwise, rtol=0, atol=0, equal_nan=True)


def test_chain_overflow_in_a_middle_layer():
    """Activations that overflow to Inf inside the chain (huge weights) match layer by layer."""
    layers = _layers(3, 3, 2, seed=11, scale=1e13)
    x = torch.randn(1, 6, 20, 40) * 1e13
    with torch.no_grad():
        with _fused(True):
            ours = _chain_op(x, layers, 3)
        layerwise = _one_by_one(x, layers, activation="relu")
    assert not torch.isfinite(ours).all()
    torch.testing.assert_close(ours, layerwise, rtol=0, atol=0, equal_nan=True)


def test_chain_scratch_reused_between_calls():
    """Each thread keeps its rings between calls of one geometry: a call after one with other
    data (Inf in it), after another geometry, and again after it, still equals layer by layer."""
    small, wide = _layers(2, 3, 2, seed=17), _layers(2, 24, 4, seed=18)
    x_inf = torch.randn(1, 6, 24, 40)
    x_inf[0, :, :, ::7] = float("inf")
    with torch.no_grad():
        # (the rings of 96 channels x 1200 pixels, over 4 MiB, are not kept between calls)
        for x in (x_inf, torch.randn(1, 6, 24, 40), torch.randn(2, 6, 17, 37), torch.randn(1, 6, 24, 40),
                  torch.randn(1, 96, 12, 1200), torch.randn(1, 6, 24, 40)):
            layers = small if x.shape[1] == 6 else wide
            with _fused(True):
                ours = _chain_op(x, layers, x.shape[1] // (4 if x.shape[1] == 96 else 2))
            torch.testing.assert_close(ours, _one_by_one(x, layers, activation="relu"), rtol=0, atol=0,
                                       equal_nan=True)


def test_functional_chain_follows_autograd():
    """Where a gradient is needed igc_conv_chain runs the layers one by one, and gradients flow."""
    layers = [tuple(t.requires_grad_() if t is not None else None for t in layer) for layer in _layers(2, 3, 2, 12)]
    x = torch.randn(1, 6, 16, 20, requires_grad=True)
    with _fused(False):
        out = igc_conv_chain(x, layers, groups=3, padding=1, activation="relu")
    out.square().sum().backward()
    grads = [x.grad.clone()] + [t.grad.clone() for layer in layers for t in layer if t is not None]
    for t in [x] + [t for layer in layers for t in layer if t is not None]:
        t.grad = None
    _one_by_one(x, layers, activation="relu").square().sum().backward()
    for g, t in zip(grads, [x] + [t for layer in layers for t in layer if t is not None]):
        torch.testing.assert_close(g, t.grad, rtol=0, atol=0)
    with torch.no_grad(), _fused(True):
        assert torch.equal(igc_conv_chain(x, layers, groups=3, padding=1, activation="relu"), out)


def test_chain_op_has_no_backward():
    layers = _layers(2, 3, 2, 13)
    x = torch.randn(1, 6, 16, 20, requires_grad=True)
    out = _chain_op(x, layers, 3)
    with pytest.raises(RuntimeError, match="no backward"):
        out.sum().backward()


def test_chain_bad_arguments_name_the_layer():
    layers = _layers(2, 3, 2, 14)
    x = torch.randn(1, 6, 16, 20)
    bad = [layers[0], (layers[1][0][:, :1], layers[1][1], None, None)]
    with pytest.raises(ValueError, match=r"layers\[1\].*w1.shape\[1\]"):
        igc_conv_chain(x, bad, groups=3, padding=1)
    with pytest.raises(ValueError, match="at least one"):
        igc_conv_chain(x, [], groups=3, padding=1)
    with pytest.raises(ValueError, match=r"layers\[0\] must be a \(w1, w2, b1, b2\) tuple"):
        igc_conv_chain(x, [layers[0][:2]], groups=3, padding=1)
    with pytest.raises(RuntimeError, match="one entry per layer"):
        torch.ops.igc_kernels.igc_conv_chain(x, [layers[0][0]], [None, None], [layers[0][1]], [None], 3,
                                             [1, 1], [1, 1], [1, 1], True, 1)
    with pytest.raises(RuntimeError, match="layer 1: .*w1"):
        _chain_op(x, bad, 3)


def test_chain_opcheck():
    layers = _layers(2, 3, 2, 15)
    x = torch.randn(2, 6, 13, 18)
    args = (x, [t[0] for t in layers], [t[2] for t in layers], [t[1] for t in layers], [t[3] for t in layers],
            3, [1, 1], [1, 1], [1, 1], True, 1)
    torch.library.opcheck(torch.ops.igc_kernels.igc_conv_chain.default, args,
                          test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_static"))


def _body(L=4, M=2, dense_at=()):
    C = L * M
    torch.manual_seed(16)
    return nn.Sequential(*(nn.Sequential(nn.Conv2d(C, C, 3, padding=1), nn.ReLU()) if i in dense_at else
                           IGCConv2d(C, C, 3, padding=1, primary_groups=L, activation="relu") for i in range(7)))


@pytest.mark.parametrize("dense_at,max_chain", [((), 2), ((2, 5), 2), ((3,), 3), ((), 1)])
def test_chained_forward_equals_sequential(dense_at, max_chain):
    body = _body(dense_at=dense_at).eval()
    x = torch.randn(2, 8, 21, 30)
    with torch.no_grad():
        with _fused(max_chain > 1):
            ours = chained_forward(body, x, max_chain=max_chain)
        assert torch.equal(ours, body(x))
    out = chained_forward(body, x)  # autograd: layer by layer, differentiable
    assert out.requires_grad and torch.equal(out.detach(), body(x).detach())


def test_chained_forward_runs_hooked_layers_as_modules():
    """A layer with a forward hook is called as a module (its hook runs), the others still chain."""
    body = _body().eval()
    seen = []
    body[3].register_forward_hook(lambda mod, inp, out: seen.append(out.shape))
    x = torch.randn(1, 8, 16, 20)
    with torch.no_grad():
        with _fused(True):
            ours = chained_forward(body, x)
        assert torch.equal(ours, body(x))
    assert len(seen) == 2  # chained_forward's call, then body(x)'s


def test_chained_forward_compiles():
    body = _body(dense_at=(4,)).eval()
    x = torch.randn(1, 8, 16, 24)
    compiled = torch.compile(lambda h: chained_forward(body, h), fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), body(x), rtol=1e-5, atol=1e-5)


def test_auto_chain_length():
    """Chains of up to four while their rings fit the budget (four: three layers' rings), else
    shorter, down to one."""
    from igc_kernels.nn import chain

    assert chain.auto_chain_length(96, 256) == 4
    assert chain.auto_chain_length(96, 512) == 4
    assert chain.auto_chain_length(96, 1280) == 3
    assert chain.auto_chain_length(96, 1920) == 2
    assert chain.auto_chain_length(96, 3840) == 1
    assert chain.auto_chain_length(96, 1920, element_size=2) == 3
    lengths = [chain.auto_chain_length(96, w) for w in range(1, 8000, 37)]
    assert lengths == sorted(lengths, reverse=True)


@pytest.mark.parametrize("budget_rings,runs", [(0, 0), (1, 4), (2, 3), (100, 2)])
def test_chained_forward_takes_auto_chain_length(monkeypatch, budget_rings, runs):
    """max_chain=None: seven layers in fused chains of the automatic length, all in one op (1: the
    modules one by one; 2: chains of 2, 2, 2 and 1; 3: of 3, 3 and 1; 4: of 4 and 3), the result
    unchanged."""
    from igc_kernels.nn import chain

    body = _body().eval()
    x = torch.randn(1, 8, 12, 30)
    ring = chain.ring_bytes(8, 30)
    monkeypatch.setattr(chain, "RING_BUDGET_BYTES", budget_rings * ring)
    with torch.no_grad():
        before = _fused_runs()
        ours = chained_forward(body, x)
        assert _fused_runs() - before == runs
        assert torch.equal(ours, body(x))


def test_chained_forward_rejects_bad_max_chain():
    with pytest.raises(ValueError, match="max_chain must be a positive int or None"):
        chained_forward(_body(), torch.randn(1, 8, 8, 8), max_chain=0)
