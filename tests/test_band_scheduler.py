"""The CPU forward's band scheduler (csrc/cpu/layer.h, BandScheduler): threads that run out of work
take the back half of another thread's band of row tiles. Forced here by giving every tile to the
first band (a test switch in the library), so the other threads start by taking from it; the
results must be bitwise those of the unforced runs, which no stealing can change."""

import contextlib

import pytest
import torch

from igc_kernels.ops import _ext, igc_conv, igc_conv_reference
from igc_kernels.testing import assert_close_to_reference

from test_chain import _chain_op, _fused, _layers, _one_by_one, _reference
from test_chain import aligned_chain_tiles  # noqa: F401  (autouse: tiles aligned as the layers')
from test_fused_cpu import _lib, _num_threads

pytestmark = pytest.mark.skipif(not _ext.has_kernel("CPU"), reason=f"fused CPU kernel not built: {_ext.EXT_ERROR}")


@contextlib.contextmanager
def _all_tiles_in_first_band(expect_steals: bool):
    lib = _lib()
    before = lib.igc_kernels_cpu_band_steals()
    old = lib.igc_kernels_cpu_set_band_skew(1)
    try:
        yield
    finally:
        lib.igc_kernels_cpu_set_band_skew(old)
    stole = lib.igc_kernels_cpu_band_steals() > before
    assert stole == expect_steals, "no thread took tiles from another's band" if expect_steals else "a thread stole"


# (N, L, M, H, W, layers): images of many tiles (threads steal again within the image); several images whose tiles a thief takes
# across an image boundary; a partial last tile; the model's layer.
CASES = [(1, 24, 4, 64, 40, 2), (1, 24, 4, 128, 24, 2), (3, 24, 4, 20, 33, 3), (2, 6, 4, 30, 70, 2), (1, 24, 4, 50, 20, 4)]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c)))
@pytest.mark.parametrize("threads", [2, 3])
def test_chain_with_stolen_bands_is_bitwise_unchanged(case, threads):
    N, L, M, H, W, count = case
    layers = _layers(count, L, M, seed=H + W)
    x = torch.randn(N, L * M, H, W, generator=torch.Generator().manual_seed(H * W))
    with _num_threads(threads), torch.no_grad():
        with _fused(True):
            plain = _chain_op(x, layers, L)
        with _all_tiles_in_first_band(True), _fused(True):
            stolen = _chain_op(x, layers, L)
        layerwise = _one_by_one(x, layers, activation="relu")
    assert torch.equal(stolen, plain) and torch.equal(stolen, layerwise)
    assert_close_to_reference(stolen, _reference(x, layers, L), torch.float32, "chain with stolen bands vs float64")


@pytest.mark.parametrize("shape", [(1, 96, 64, 40), (3, 96, 21, 33), (2, 24, 30, 70)], ids=str)
@pytest.mark.parametrize("threads", [2, 3])
def test_layer_with_stolen_bands_is_bitwise_unchanged(shape, threads):
    N, C, H, W = shape
    L, M = C // 4, 4
    gen = torch.Generator().manual_seed(H * W + C)
    x = torch.randn(N, C, H, W, generator=gen)
    w1 = torch.randn(C, M, 3, 3, generator=gen) / 6
    w2 = torch.randn(C, L, 1, 1, generator=gen) / L ** 0.5
    b1, b2 = torch.randn(C, generator=gen), torch.randn(C, generator=gen)
    with _num_threads(threads), torch.no_grad():
        plain = igc_conv(x, w1, w2, b1, b2, padding=1, activation="relu", backend="cpu")
        with _all_tiles_in_first_band(True):
            stolen = igc_conv(x, w1, w2, b1, b2, padding=1, activation="relu", backend="cpu")
    assert torch.equal(stolen, plain)
    ref = igc_conv_reference(x.double(), w1.double(), b1.double(), w2.double(), b2.double(), None, L,
                             [1, 1], [1, 1], [1, 1], True, 1)
    assert_close_to_reference(stolen, ref, torch.float32, "layer with stolen bands vs float64")


def test_one_thread_never_steals():
    layers = _layers(2, 24, 4, seed=3)
    x = torch.randn(1, 96, 40, 24, generator=torch.Generator().manual_seed(5))
    with _num_threads(1), torch.no_grad(), _all_tiles_in_first_band(False):
        out = _chain_op(x, layers, 24)
    with torch.no_grad():
        assert torch.equal(out, _one_by_one(x, layers, activation="relu"))
