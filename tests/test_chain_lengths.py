"""igc_conv_chain's chain_length: the layers fused in chains of that many layers by one op, which
the CPU runs in one parallel region (forward.cpp, chains_forward): a thread that is done with its
part of one chain starts on the next and waits only for the rows of the previous chain's output
that its tiles read. Against the same chains run by one op call each (their own regions), bitwise,
and against the float64 reference; with threads stealing bands; and the path that runs one
region per chain when the intermediate activations would take too much memory."""

import contextlib
import ctypes

import pytest
import torch
from test_chain import _chain_tiles, _fused, _fused_runs, _layers, _reference
from test_chain_ends import _dense, _op, _reference_dense
from test_fused_cpu import _lib, _num_threads

from igc_kernels.ops import _ext, igc_conv_chain
from igc_kernels.testing import assert_close_to_reference

pytestmark = pytest.mark.skipif(not _ext.has_kernel("CPU"), reason=f"fused CPU kernel not built: {_ext.EXT_ERROR}")


def _lengths_op(x, layers, L, length, head=None, tail=None, residual=None):
    return torch.ops.igc_kernels.igc_conv_chain(
        x, [t[0] for t in layers], [t[2] for t in layers], [t[1] for t in layers], [t[3] for t in layers],
        L, [1, 1], [1, 1], [1, 1], True, 1,
        head_weight=None if head is None else head[0], head_bias=None if head is None else head[1],
        head_activation=1, tail_weight=None if tail is None else tail[0],
        tail_bias=None if tail is None else tail[1], tail_activation=0, residual=residual, chain_length=length)


def _op_per_chain(x, layers, L, length, head=None, tail=None, residual=None):
    """The same chains, one op call (one parallel region) each."""
    h = x
    for i in range(0, len(layers), length):
        first, last = i == 0, i + length >= len(layers)
        h = _op(h, layers[i:i + length], L, head if first else None, "relu", tail if last else None, "none",
                residual if last else None)
    return h


@contextlib.contextmanager
def _keep_bytes(nbytes: int):
    lib = _lib()
    lib.igc_kernels_cpu_set_chains_keep_bytes.argtypes = [ctypes.c_int64]
    lib.igc_kernels_cpu_set_chains_keep_bytes.restype = ctypes.c_int64
    old = lib.igc_kernels_cpu_set_chains_keep_bytes(nbytes)
    try:
        yield
    finally:
        lib.igc_kernels_cpu_set_chains_keep_bytes(old)


# (N, L, M, H, W, layers, chain length): chains of one to four layers and a last chain shorter
# than the others, heights of every remainder mod 4 and of fewer rows than a chain's leads, rows
# of several segments and of part of a vector, several images.
CASES = [
    (1, 3, 2, 12, 9, 5, 2),
    (2, 4, 4, 13, 45, 7, 3),
    (1, 2, 3, 37, 130, 6, 4),
    (3, 6, 4, 16, 17, 4, 1),
    (1, 24, 4, 22, 33, 8, 4),
    (2, 4, 2, 12, 20, 6, 5),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c)))
@pytest.mark.parametrize("ends", ["none", "both"])
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("staggered", [True, False], ids=["staggered", "aligned"])
def test_one_region_equals_one_op_per_chain(case, ends, threads, staggered):
    N, L, M, H, W, count, length = case
    C = L * M
    seed = H * W + count + length
    layers = _layers(count, L, M, seed=seed)
    head = _dense(C, 1, seed + 1) if ends == "both" else None
    tail = _dense(1, C, seed + 2) if ends == "both" else None
    gen = torch.Generator().manual_seed(seed + 3)
    x = torch.randn(N, 1 if head is not None else C, H, W, generator=gen)
    residual = torch.randn(N, 1, H, W, generator=gen) if tail is not None else None
    chains = -(-count // length)
    with _num_threads(threads), torch.no_grad(), _chain_tiles(staggered):
        before = _fused_runs()
        ours = _lengths_op(x, layers, L, length, head, tail, residual)
        assert _fused_runs() - before == chains
        expected = _op_per_chain(x, layers, L, length, head, tail, residual)
        with _keep_bytes(0):  # one region per chain
            alone = _lengths_op(x, layers, L, length, head, tail, residual)
    assert torch.equal(ours, expected)
    assert torch.equal(alone, expected)
    h = x.double() if head is None else _reference_dense(x, head, "relu")
    h = _reference(h, layers, L)
    h = h if tail is None else _reference_dense(h, tail, "none", residual)
    assert_close_to_reference(ours, h, torch.float32, "chains in one region vs float64")


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("length", [1, 2, 3])
def test_one_region_with_stolen_bands(threads, length):
    """Every tile of every chain first in one band: the other threads steal from it in each chain,
    and wait for the rows the previous chain's thieves and owner write."""
    layers = _layers(7, 24, 4, seed=31 + length)
    x = torch.randn(2, 96, 42, 20, generator=torch.Generator().manual_seed(32))
    lib = _lib()
    with _num_threads(threads), torch.no_grad():
        expected = _op_per_chain(x, layers, 24, length)
        before = lib.igc_kernels_cpu_band_steals()
        old = lib.igc_kernels_cpu_set_band_skew(1)
        try:
            ours = _lengths_op(x, layers, 24, length)
        finally:
            lib.igc_kernels_cpu_set_band_skew(old)
        assert lib.igc_kernels_cpu_band_steals() > before
    assert torch.equal(ours, expected)


def test_chain_length_of_all_layers_or_more_is_one_chain():
    layers = _layers(3, 4, 2, seed=41)
    x = torch.randn(1, 8, 20, 30)
    with torch.no_grad():
        one = _lengths_op(x, layers, 4, 0)
        for length in (3, 4, 100):
            with _fused(True):
                before = _fused_runs()
                assert torch.equal(_lengths_op(x, layers, 4, length), one)
                assert _fused_runs() - before == 1


def test_chain_length_checked():
    layers = _layers(2, 4, 2, seed=42)
    x = torch.randn(1, 8, 12, 12)
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="chain_length must be a positive int or None"):
            igc_conv_chain(x, layers, groups=4, padding=1, chain_length=bad)
    with pytest.raises(RuntimeError, match="chain_length must be >= 0"):
        _lengths_op(x, layers, 4, -2)


def test_chain_length_python_matches_op():
    """The Python function passes chain_length through (fused) and keeps the result where it runs
    layer by layer (a gradient needed)."""
    layers = _layers(5, 4, 2, seed=43)
    x = torch.randn(1, 8, 21, 30)
    with torch.no_grad():
        ours = igc_conv_chain(x, layers, groups=4, padding=1, activation="relu", chain_length=2)
        assert torch.equal(ours, _lengths_op(x, layers, 4, 2))
    params = [tuple(t.clone().requires_grad_(t is not None) if t is not None else None for t in layer)
              for layer in layers]
    out = igc_conv_chain(x, params, groups=4, padding=1, activation="relu", chain_length=2)
    assert out.requires_grad
    torch.testing.assert_close(out.detach(), ours, rtol=1e-5, atol=1e-5)
