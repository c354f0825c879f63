"""The fused chains' staggered Winograd tiles (the default; csrc/cpu/forward.cpp, kChainRing): stage
s of a chain of S stages (its IGC layers, then the tail if any) has its tiles start at the rows
(S - 1 - s) + 4i, so each consumer reads the rows its producer has just written from a ring of six
rows. Its result is bitwise that of the layers run one by one with those tile leads (the one-layer
forward's test switch igc_kernels_cpu_set_wino_lead), and close to the float64 reference. The
other chain tests run the chains with aligned tiles (test_chain.py, aligned_chain_tiles)."""

import contextlib

import pytest
import torch
from test_chain import CHAIN_CASES, _chain_tiles, _fused, _layers, _reference
from test_chain_ends import _alone, _dense, _op, _reference_dense
from test_fused_cpu import _lib, _num_threads

from igc_kernels.models import build_model
from igc_kernels.nn import chained_forward
from igc_kernels.ops import _ext, igc_conv
from igc_kernels.testing import assert_close_to_reference

pytestmark = pytest.mark.skipif(not _ext.has_kernel("CPU"), reason=f"fused CPU kernel not built: {_ext.EXT_ERROR}")


@pytest.fixture(autouse=True)
def staggered_chain_tiles():
    with _chain_tiles(True):
        yield


@contextlib.contextmanager
def _wino_lead(lead: int):
    """The one-layer Winograd forward's tiles start at the rows lead + 4i for a block."""
    old = _lib().igc_kernels_cpu_set_wino_lead(lead)
    try:
        yield
    finally:
        _lib().igc_kernels_cpu_set_wino_lead(old)


def _with_leads(x, layers, head=None, head_act="relu", tail=None, tail_act="none", residual=None):
    """The chain's stages one by one: layer k of n with the lead n - 1 - k (n - k with a tail)."""
    h = x if head is None else _alone(x, head, head_act)
    stages = len(layers) + (tail is not None)
    for k, (w1, w2, b1, b2) in enumerate(layers):
        with _wino_lead(stages - 1 - k):
            h = igc_conv(h, w1, w2, b1, b2, padding=1, backend="cpu", activation="relu")
    return h if tail is None else _alone(h, tail, tail_act, residual)


# (N, L, M, H, W, layers): test_chain's cases (partial last tiles, rows of several segments and of
# part of a vector, images split between threads' bands, chains of up to five layers: leads of 4
# or more are a whole tile higher), and a lone layer and images of fewer rows than a chain's leads.
CASES = [*CHAIN_CASES, (1, 3, 2, 12, 9, 1), (2, 4, 2, 12, 20, 5)]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c)))
@pytest.mark.parametrize("ends", ["none", "head", "tail", "both"])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_staggered_chain_equals_layers_with_its_leads(case, ends, threads):
    N, L, M, H, W, count = case
    C = L * M
    seed = H * W + count
    layers = _layers(count, L, M, seed=seed)
    head = _dense(C, 1, seed + 1) if ends in ("head", "both") else None
    tail = _dense(1, C, seed + 2) if ends in ("tail", "both") else None
    if count == 1 and head is None and tail is None:
        pytest.skip("one layer without ends runs alone (no chain)")
    gen = torch.Generator().manual_seed(seed + 3)
    x = torch.randn(N, 1 if head is not None else C, H, W, generator=gen)
    residual = torch.randn(N, 1, H, W, generator=gen) if tail is not None else None
    with _num_threads(threads), torch.no_grad():
        with _fused(True):
            ours = _op(x, layers, L, head, "relu", tail, "none", residual)
        expected = _with_leads(x, layers, head, "relu", tail, "none", residual)
    assert torch.equal(ours, expected)
    h = x.double() if head is None else _reference_dense(x, head, "relu")
    h = _reference(h, layers, L)
    h = h if tail is None else _reference_dense(h, tail, "none", residual)
    assert_close_to_reference(ours, h, torch.float32, "staggered chain vs float64")


def test_leads_change_the_rounding():
    """The oracle is not vacuous: the staggered chain differs (in the last bits) from the layers run
    with tiles at rows 4i, and the aligned chain equals those."""
    layers = _layers(3, 24, 4, seed=5)
    x = torch.randn(1, 96, 40, 70, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        staggered = _op(x, layers, 24)
        with _chain_tiles(False):
            aligned = _op(x, layers, 24)
        plain = _with_leads(x, layers[:1], None)  # lead 0 for one layer
        for w1, w2, b1, b2 in layers[1:]:
            plain = igc_conv(plain, w1, w2, b1, b2, padding=1, backend="cpu", activation="relu")
    assert torch.equal(aligned, plain)
    assert not torch.equal(staggered, aligned)
    torch.testing.assert_close(staggered, aligned, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("lead", [1, 2, 3, 5])
@pytest.mark.parametrize("shape", [(1, 96, 21, 40), (2, 12, 13, 70), (1, 8, 12, 9)])
def test_one_layer_lead_against_reference(lead, shape):
    """The one-layer forward with its tiles led (the oracle's switch) still computes the layer."""
    C, H = shape[1], shape[2]
    L = C // 4
    (w1, w2, b1, b2), = _layers(1, L, 4, seed=H + lead)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(lead))
    with torch.no_grad(), _wino_lead(lead):
        ours = igc_conv(x, w1, w2, b1, b2, padding=1, backend="cpu", activation="relu")
    assert_close_to_reference(ours, _reference(x, [(w1, w2, b1, b2)], L), torch.float32, f"lead {lead}")


@pytest.mark.parametrize("bad", ["nan", "inf"])
def test_staggered_chain_non_finite(bad):
    """Tiles whose input rows hold Inf or NaN take the direct primary in the chain as in the layer."""
    layers = _layers(3, 6, 4, seed=9)
    x = torch.randn(1, 24, 23, 40, generator=torch.Generator().manual_seed(10))
    x[0, 5, 9, 17] = float(bad)
    x[0, 11, 0, 3] = -float("inf") if bad == "inf" else float("nan")
    with torch.no_grad():
        with _fused(True):
            ours = _op(x, layers, 6)
        expected = _with_leads(x, layers)
    torch.testing.assert_close(ours, expected, rtol=0, atol=0, equal_nan=True)
    assert torch.isfinite(ours).any() and not torch.isfinite(ours).all()


@pytest.mark.parametrize("threads", [2, 3])
def test_staggered_chain_with_stolen_bands(threads):
    """Threads that take tiles from another's band restart every stage above them: same bits."""
    layers = _layers(4, 24, 4, seed=11)
    x = torch.randn(2, 96, 50, 20, generator=torch.Generator().manual_seed(12))
    lib = _lib()
    with _num_threads(threads), torch.no_grad():
        expected = _with_leads(x, layers)
        before = lib.igc_kernels_cpu_band_steals()
        old = lib.igc_kernels_cpu_set_band_skew(1)
        try:
            ours = _op(x, layers, 24)
        finally:
            lib.igc_kernels_cpu_set_band_skew(old)
        assert lib.igc_kernels_cpu_band_steals() > before
    assert torch.equal(ours, expected)


@pytest.mark.parametrize("step", [3, 4])
def test_igc_vdsr_chains_against_its_stages(step):
    """The model's path (chains with the head and the tail; four layers each by default) against
    its stages run one by one with their leads, and against the model in float64."""
    torch.manual_seed(13)
    model = build_model("igc_vdsr_s1").eval()
    x = torch.rand(1, 1, 45, 38)
    net = [*model.head, *model.body, model.tail]
    with torch.no_grad():
        ours = chained_forward(net, x, max_chain=step, residual=x)
        if step == 4:
            assert torch.equal(ours, model(x))
        head, body, tail = model.head[0], list(model.body), model.tail

        def params(m):
            return (m.weight1, m.weight2, m.bias1, m.bias2)

        def dense(m):
            return (m.weight, m.bias)

        h = x
        for k in range(0, len(body), step):
            part = [params(m) for m in body[k:k + step]]
            last = k + step >= len(body)
            h = _with_leads(h, part, head=dense(head) if k == 0 else None, tail=dense(tail) if last else None,
                            residual=x if last else None)
        reference = model.double()(x.double())
    assert torch.equal(ours, h)
    assert_close_to_reference(ours, reference, torch.float32, "IGC-VDSR vs float64")
