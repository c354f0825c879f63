"""Accuracy of the fused CPU kernel (csrc/cpu/) against the float64 reference: forward and every
gradient over a seeded sweep of shapes, on every instruction-set path this CPU can run, plus
bf16, float64 gradcheck, NaN propagation, thread-count independence and the ISA report.

The ISA in use is reported and switched through two C functions of igc_kernels._C (ctypes):
``igc_kernels_cpu_isa()`` and ``igc_kernels_cpu_set_isa(name)``; the environment variable
``IGC_KERNELS_CPU_ISA=generic|avx2|avx512|auto`` picks it at first use. The forward's Winograd
primary (kH = 3, vertical stride and dilation 1) is switched the same way
(``igc_kernels_cpu_set_winograd``, ``IGC_KERNELS_CPU_WINOGRAD=0``), so both primaries are tested,
and so is the backward of small images on flat planes (``igc_kernels_cpu_set_plane_backward``,
``IGC_KERNELS_CPU_PLANE_BACKWARD=0``) against the row-by-row backward.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import subprocess
import sys

import pytest
import torch

from igc_kernels.ops import _ext, igc_conv, igc_conv_reference
from igc_kernels.testing import IGCCase, assert_close_to_reference, random_cases

pytestmark = pytest.mark.skipif(not _ext.has_kernel("CPU"), reason=f"fused CPU kernel not built: {_ext.EXT_ERROR}")

ISAS = ("generic", "avx2", "avx512")


def _lib():
    """The fused CPU library's C functions for the tests (every one's signature declared here, for
    this file, test_chain.py and test_band_scheduler.py)."""
    from igc_kernels import _C

    lib = ctypes.CDLL(_C.__file__)
    lib.igc_kernels_cpu_isa.restype = ctypes.c_char_p
    lib.igc_kernels_cpu_set_isa.argtypes = [ctypes.c_char_p]
    lib.igc_kernels_cpu_set_isa.restype = ctypes.c_int
    lib.igc_kernels_cpu_winograd.restype = ctypes.c_int
    lib.igc_kernels_cpu_set_winograd.argtypes = [ctypes.c_int]
    lib.igc_kernels_cpu_plane_backward.restype = ctypes.c_int
    lib.igc_kernels_cpu_set_plane_backward.argtypes = [ctypes.c_int]
    lib.igc_kernels_cpu_stream_bytes.restype = ctypes.c_int64
    lib.igc_kernels_cpu_set_stream_bytes.argtypes = [ctypes.c_int64]
    lib.igc_kernels_cpu_chain_runs.restype = ctypes.c_int64
    lib.igc_kernels_cpu_band_steals.restype = ctypes.c_int64
    lib.igc_kernels_cpu_set_band_skew.restype = ctypes.c_int
    lib.igc_kernels_cpu_set_band_skew.argtypes = [ctypes.c_int]
    return lib


@contextlib.contextmanager
def _stream_from(nbytes: int):
    """Outputs of at least nbytes streamed inside the block; the CPU's default after it."""
    lib = _lib()
    lib.igc_kernels_cpu_set_stream_bytes(nbytes)
    try:
        yield
    finally:
        lib.igc_kernels_cpu_set_stream_bytes(-1)


def _current_isa() -> str:
    return _lib().igc_kernels_cpu_isa().decode()


def _supported_isas() -> list[str]:
    lib = _lib()
    before = _current_isa()
    ok = [name for name in ISAS if lib.igc_kernels_cpu_set_isa(name.encode())]
    lib.igc_kernels_cpu_set_isa(before.encode())
    return ok


@pytest.fixture(params=ISAS)
def isa(request):
    """Run the test on one instruction-set path (skipped where this CPU lacks it)."""
    lib = _lib()
    before = _current_isa()
    if not lib.igc_kernels_cpu_set_isa(request.param.encode()):
        pytest.skip(f"this CPU lacks {request.param}")
    yield request.param
    lib.igc_kernels_cpu_set_isa(before.encode())


def _check_case(case: IGCCase, seed: int, dtype=torch.float32, non_contiguous: bool = False,
                residual_channels_last: bool = False, grad_channels_last: bool = False) -> None:
    """Forward and all six gradients through igc_conv(backend='cpu') + autograd vs float64."""
    args = case.make(dtype=torch.float64, seed=seed)
    x = args[0]
    if non_contiguous:  # same values, strided view of a bigger buffer
        big = torch.randn(x.shape[0], x.shape[1], x.shape[2], 2 * x.shape[3], dtype=torch.float64)
        big[..., ::2] = x
        x = big[..., ::2]
        args[0] = x
    ref_in = [a.detach().clone().requires_grad_(True) if isinstance(a, torch.Tensor) else a for a in args]
    ref = igc_conv_reference(*ref_in)
    grad = torch.randn(ref.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed + 1))
    ref.backward(grad)

    def cast(a):
        if not isinstance(a, torch.Tensor):
            return a
        t = a.detach().to(dtype)
        if a is x and non_contiguous:
            t = torch.empty_strided(a.shape, a.stride(), dtype=dtype)
            t.copy_(a)
        elif (a is x and case.channels_last) or (a is args[5] and residual_channels_last):
            t = t.contiguous(memory_format=torch.channels_last)
        return t.requires_grad_(True)

    ins = [cast(a) for a in args]
    x_, w1, b1, w2, b2, res = ins[:6]
    out = igc_conv(x_, w1, w2, b1, b2, groups=case.L, stride=case.stride, padding=case.padding,
                   dilation=case.dilation, shuffle=case.shuffle, activation=case.activation, residual=res,
                   backend="cpu")
    assert out.shape == ref.shape
    if case.channels_last and out.numel():
        assert out.is_contiguous(memory_format=torch.channels_last)
    assert_close_to_reference(out, ref, dtype, f"{case} forward")
    out.backward(grad.to(dtype, memory_format=torch.channels_last if grad_channels_last else torch.contiguous_format))
    for name, got, want in zip(("x", "w1", "b1", "w2", "b2", "residual"), ins[:6], ref_in[:6]):
        if want is None:
            continue
        assert got.grad is not None, f"{case}: no grad for {name}"
        assert_close_to_reference(got.grad, want.grad, dtype, f"{case} grad {name}")


def _same_non_finite_as_reference(args):
    """The fused forward of the op's arguments against the float64 reference: NaN and Inf exactly
    where the reference has them. Returns both outputs."""
    ours = torch.ops.igc_kernels.igc_conv(*args)
    ref = igc_conv_reference(*[a.double() if isinstance(a, torch.Tensor) else a for a in args])
    assert torch.equal(torch.isnan(ours), torch.isnan(ref))
    assert torch.equal(torch.isinf(ours), torch.isinf(ref))
    return ours, ref


SWEEP = random_cases(36, seed=2024)


def test_sweep_best_isa():
    """Many shapes on the default (best) path, incl. non-contiguous input every fifth case."""
    for i, case in enumerate(SWEEP):
        _check_case(case, seed=100 + i, non_contiguous=(i % 5 == 4 and not case.channels_last))


def test_sweep_each_isa(isa):
    for i, case in enumerate(SWEEP[:12]):
        _check_case(case, seed=200 + i)


# Shapes that exercise vector widths, segment boundaries and register-block remainders:
# W_out around 16/64/128, C_out with L and M not multiples of the block sizes, the paper's layer.
EDGE_CASES = [
    IGCCase(N=1, L=24, M_in=4, M=4, H=3, W=70),  # paper's channel counts, two forward segments
    IGCCase(N=1, L=5, M_in=3, M=7, H=2, W=131, activation=0, residual=True),  # MB/NV remainders
    IGCCase(N=2, L=13, M_in=1, M=1, H=4, W=17, k=(1, 1), padding=(0, 0), shuffle=False),
    IGCCase(N=1, L=1, M_in=5, M=1, H=1, W=1, k=(1, 1), padding=(0, 0)),  # 1x1 image, L=M=1
    IGCCase(N=3, L=2, M_in=2, M=3, H=9, W=33, k=(7, 7), padding=(3, 3), stride=(2, 2), channels_last=True),
    IGCCase(N=1, L=3, M_in=2, M=2, H=8, W=16, k=(3, 5), padding=(3, 0), dilation=(2, 2), stride=(1, 2)),
]


@pytest.mark.parametrize("case", EDGE_CASES, ids=[f"edge{i}" for i in range(len(EDGE_CASES))])
def test_edge_shapes(case, isa):
    _check_case(case, seed=7)


# channels_last rows are packed, stored and (backward) read through blocked transposes (16x16 on
# AVX-512, 8x8 on AVX2, 4x4 generic): channel and pixel counts around the block sizes, residual and
# grad_out in either layout.
CL_CASES = [
    IGCCase(N=2, L=8, M_in=4, M=4, H=5, W=37, channels_last=True, residual=True),
    IGCCase(N=1, L=5, M_in=3, M=5, H=4, W=70, channels_last=True, residual=True, activation=0),
    IGCCase(N=1, L=24, M_in=4, M=4, H=3, W=64, channels_last=True),
    IGCCase(N=2, L=3, M_in=5, M=3, H=6, W=19, padding=(0, 2), channels_last=True, residual=True),
]


@pytest.mark.parametrize("others_cl", [True, False], ids=["res_grad_cl", "res_grad_nchw"])
@pytest.mark.parametrize("case", CL_CASES, ids=[f"cl{i}" for i in range(len(CL_CASES))])
def test_channels_last_transposes(case, others_cl, isa):
    _check_case(case, seed=11, residual_channels_last=others_cl and case.residual, grad_channels_last=others_cl)


# The backward splits the output rows into one band per thread and forms grad_x from a ring of
# grad_y1 rows, recomputing the rows a band's input rows need from its neighbour. Shapes big enough
# for several bands, with vertical stride, dilation, kernel heights 1/3/5, output rows that read
# only padding and input rows that no output reads.
BAND_CASES = [
    IGCCase(N=2, L=6, M_in=4, M=4, H=11, W=40),
    IGCCase(N=1, L=6, M_in=4, M=4, H=23, W=37, k=(5, 3), padding=(2, 1), stride=(2, 1), activation=0),
    IGCCase(N=3, L=6, M_in=4, M=4, H=9, W=40, k=(3, 3), padding=(4, 1)),
    IGCCase(N=2, L=6, M_in=4, M=4, H=13, W=40, k=(3, 3), padding=(2, 1), dilation=(3, 1), channels_last=True),
    IGCCase(N=1, L=6, M_in=4, M=4, H=20, W=40, k=(1, 3), padding=(0, 1), stride=(3, 2), residual=True),
]


@contextlib.contextmanager
def _num_threads(threads: int):
    """torch.set_num_threads(threads) for a block, restored after it."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _switched(name: str, on: bool):
    """Turn the CPU kernels' switch igc_kernels_cpu_set_<name> on or off for one test."""
    lib = _lib()
    get, put = getattr(lib, f"igc_kernels_cpu_{name}"), getattr(lib, f"igc_kernels_cpu_set_{name}")
    before = get()
    put(int(on))
    yield on
    put(before)


@pytest.fixture(params=[True, False], ids=["winograd", "direct"])
def winograd(request):
    yield from _switched("winograd", request.param)


# Rows whose last vector holds at most half a vector run it at half width on AVX-512 (rows GEMM,
# NT reduce and both Winograd kernels), and rows of two vectors and a half take blocks of 8 output
# rows x 3 vectors: every last-vector size around those cases, with L = 13 (secondary blocks of 13
# rows: remainders of both the 8- and 12-row blocks) and H = 8 (Winograd tiles; the direct primary
# is run by the winograd fixture's other value).
@pytest.mark.parametrize("width", [1, 4, 8, 9, 16, 20, 24, 25, 33, 36, 40, 41, 48, 52, 56, 57])
def test_row_tails(width, winograd, isa):
    _check_case(IGCCase(N=2, L=13, M_in=3, M=2, H=8, W=width, residual=True), seed=50 + width)


# The Winograd forward (tiles of four output rows, F(4,3) down the columns) against the reference,
# and the direct primary on the same shapes: output heights that leave a partial last tile or
# several images per thread, widths around the 64-pixel segments, kernel widths 1/3/5 with
# horizontal stride and dilation, output-channel blocks (M) that are not multiples of the kernel's
# row blocks, channels_last, residual, no biases.
WINOGRAD_CASES = [
    IGCCase(N=1, L=24, M_in=4, M=4, H=12, W=70),  # the paper's channels, two segments
    IGCCase(N=3, L=3, M_in=2, M=5, H=13, W=17, residual=True, activation=0),  # partial last tile
    IGCCase(N=2, L=2, M_in=3, M=7, H=4, W=130, bias1=False, bias2=False),  # one tile, three segments
    IGCCase(N=1, L=4, M_in=1, M=3, H=16, W=64, k=(3, 5), padding=(1, 2)),
    IGCCase(N=1, L=3, M_in=2, M=2, H=17, W=33, k=(3, 3), padding=(2, 2), dilation=(1, 2), stride=(1, 2)),
    IGCCase(N=2, L=5, M_in=2, M=4, H=8, W=37, k=(3, 1), padding=(1, 0), channels_last=True, residual=True),
    IGCCase(N=1, L=2, M_in=4, M=1, H=20, W=5, padding=(0, 1)),  # H_out 18: partial tile, no top padding
    IGCCase(N=1, L=6, M_in=4, M=4, H=36, W=36),  # a training patch
    # One segment wide, NCHW: each tile's four rows go through the secondary as one run; a partial
    # last tile row by row; the widest such image; a channels_last residual (rows not joined).
    IGCCase(N=3, L=6, M_in=4, M=4, H=14, W=64, residual=True),
]


@pytest.mark.parametrize("case", WINOGRAD_CASES, ids=[f"wino{i}" for i in range(len(WINOGRAD_CASES))])
def test_winograd_rows(case, winograd, isa):
    h_out = case.out_hw[0]
    assert case.k[0] == 3 and case.stride[0] == 1 and case.dilation[0] == 1 and case.L > 1
    assert h_out % 4 == 0 or h_out >= 12  # where the forward takes the Winograd path
    _check_case(case, seed=41)


def test_winograd_bfloat16_and_threads():
    """bf16 rows are packed (converted) before their transform (no ReLU: a mask flipped by the bf16
    rounding of the output would dominate grad x); more threads than tiles, and tiles split across
    threads mid-image, give the same values."""
    case = IGCCase(N=2, L=6, M_in=4, M=4, H=24, W=40, residual=True)
    _check_case(case.with_(activation=0), seed=43, dtype=torch.bfloat16)
    for threads in (3, 16):
        with _num_threads(threads):
            _check_case(case, seed=44)


def test_winograd_strided_input(winograd):
    """A strided view as x (rows packed element by element before their transform)."""
    _check_case(IGCCase(N=2, L=4, M_in=3, M=4, H=12, W=45, residual=True), seed=45, non_contiguous=True)


def test_winograd_row_strided_residual(winograd):
    """A residual whose rows are not one after another (a column slice of a wider tensor, unit
    stride along the row): the forward must not treat a tile's four rows as one run."""
    case = IGCCase(N=2, L=4, M_in=3, M=4, H=12, W=20, residual=True)
    args = case.make(dtype=torch.float64, seed=46)
    res = args[5]
    wide = torch.randn(res.shape[0], res.shape[1], res.shape[2], res.shape[3] + 7, dtype=torch.float64)
    wide[..., : res.shape[3]] = res
    ref = igc_conv_reference(*args)
    x, w1, b1, w2, b2 = (a.float() for a in args[:5])
    res_view = wide.float()[..., : res.shape[3]]
    assert res_view.stride(3) == 1 and res_view.stride(2) != res.shape[3]
    out = igc_conv(x, w1, w2, b1, b2, groups=case.L, stride=case.stride, padding=case.padding,
                   dilation=case.dilation, shuffle=case.shuffle, activation=case.activation, residual=res_view,
                   backend="cpu")
    assert_close_to_reference(out, ref, torch.float32, f"{case} strided residual")


def test_winograd_switch_reported():
    lib = _lib()
    before = lib.igc_kernels_cpu_winograd()
    try:
        lib.igc_kernels_cpu_set_winograd(0)
        assert lib.igc_kernels_cpu_winograd() == 0
        lib.igc_kernels_cpu_set_winograd(1)
        assert lib.igc_kernels_cpu_winograd() == 1
    finally:
        lib.igc_kernels_cpu_set_winograd(before)


@pytest.mark.parametrize("threads", [3, 4])
@pytest.mark.parametrize("case", BAND_CASES, ids=[f"band{i}" for i in range(len(BAND_CASES))])
def test_backward_row_bands(case, threads):
    with _num_threads(threads):
        _check_case(case, seed=31 + threads)


@pytest.fixture(params=[True, False], ids=["plane", "rows"])
def plane(request):
    yield from _switched("plane_backward", request.param)


# The backward of images up to 48 pixels wide (stride 1, dilation 1, odd kernels, 'same' padding,
# contiguous NCHW) runs on bands of rows laid out as flat planes with zero columns between the rows
# (backward_plane.cpp); the plane fixture's other value runs the same cases row by row. Halo rows
# of 1 and 2 (k 3 and 5), no halo (k 1), anisotropic kernels, bands split for threads (N = 1),
# the widest width it takes, single-pixel rows and columns, one primary group (VDSR's head/tail).
PLANE_CASES = [
    IGCCase(N=2, L=24, M_in=4, M=4, H=36, W=36),  # a training patch of the paper's layer
    IGCCase(N=1, L=3, M_in=2, M=5, H=41, W=29, activation=0, bias1=False),  # bands of one image
    IGCCase(N=1, L=2, M_in=3, M=4, H=23, W=19, k=(5, 5), padding=(2, 2), shuffle=False),
    IGCCase(N=3, L=4, M_in=2, M=3, H=7, W=13, k=(1, 1), padding=(0, 0), residual=True),
    IGCCase(N=2, L=3, M_in=4, M=2, H=17, W=11, k=(3, 5), padding=(1, 2), bias2=False),
    IGCCase(N=2, L=5, M_in=1, M=2, H=9, W=48),
    IGCCase(N=3, L=2, M_in=2, M=2, H=1, W=1),
    IGCCase(N=2, L=1, M_in=1, M=24, H=16, W=17),  # VDSR's head
    IGCCase(N=2, L=1, M_in=24, M=1, H=16, W=17, activation=0, residual=True),  # VDSR's tail
]


@pytest.mark.parametrize("threads", [1, 4])
@pytest.mark.parametrize("case", PLANE_CASES, ids=[f"plane{i}" for i in range(len(PLANE_CASES))])
def test_plane_backward(case, threads, plane, isa):
    with _num_threads(threads):
        _check_case(case, seed=61 + threads)


def test_plane_backward_many_bands(plane):
    """Ten threads on one image of 81 rows: bands of 9 rows (as many as fit; none left empty)."""
    with _num_threads(10):
        _check_case(IGCCase(N=1, L=2, M_in=2, M=3, H=81, W=5), seed=71)


def test_plane_backward_gradcheck_float64(plane):
    """The float64 plane backward against finite differences (5x3 kernel: two halo rows)."""
    case = IGCCase(N=2, L=2, M_in=2, M=2, H=7, W=6, k=(5, 3), padding=(2, 1), residual=True)
    args = case.make(dtype=torch.float64, requires_grad=True, seed=7)

    def fn(x, w1, b1, w2, b2, res):
        return igc_conv(x, w1, w2, b1, b2, groups=case.L, stride=case.stride, padding=case.padding,
                        dilation=case.dilation, shuffle=case.shuffle, activation=case.activation, residual=res,
                        backend="cpu")

    assert torch.autograd.gradcheck(fn, tuple(args[:6]), eps=1e-6, atol=1e-7, rtol=1e-6)


# (W, the spot (n, c, y, x), value): a row's end in a partial vector, a whole vector's last lane
# of a pair, a single vector, the first row, the last image; x is checked for Inf and NaN as it is
# copied into the planes (Kernels::copy_rows_finite), on every ISA.
NON_FINITE_ROWS = [
    (12, (0, 1, 3, 11), "inf"),
    (36, (1, 0, 5, 35), "nan"),
    (36, (0, 3, 0, 31), "-inf"),
    (20, (1, 2, 7, 15), "inf"),
    (44, (1, 1, 0, 0), "nan"),
]


@pytest.mark.parametrize("W,spot,value", NON_FINITE_ROWS, ids=[f"w{w}-{v}" for w, _, v in NON_FINITE_ROWS])
def test_plane_backward_non_finite_input_rows(W, spot, value, plane, isa):
    """An Inf or NaN in x: grad_w1 must see it only through real pixels (the plane path sums such
    bands row by row, so no zero gap column multiplies it into NaN)."""
    case = IGCCase(N=2, L=2, M_in=2, M=2, H=8, W=W, activation=0, residual=False)
    args = case.make(dtype=torch.float64, seed=12)
    x = args[0].clone()
    x[spot] = float(value)
    args[0] = x
    ref_in = [a.detach().clone().requires_grad_(True) if isinstance(a, torch.Tensor) else a for a in args]
    ref = igc_conv_reference(*ref_in)
    ref.backward(torch.ones_like(ref))
    f = [a.float() if isinstance(a, torch.Tensor) else a for a in args]
    out = torch.ops.igc_kernels.igc_conv(*f)
    grads = torch.ops.igc_kernels.igc_conv_backward(torch.ones_like(out), f[0], f[1], f[2], f[3], out, *f[6:],
                                                    [True] * 5)
    for got, want in zip(grads, ref_in[:5]):
        assert torch.equal(torch.isnan(got), torch.isnan(want.grad))
        assert torch.equal(torch.isinf(got), torch.isinf(want.grad))


def test_plane_switch_reported():
    lib = _lib()
    before = lib.igc_kernels_cpu_plane_backward()
    try:
        for value in (0, 1):
            lib.igc_kernels_cpu_set_plane_backward(value)
            assert lib.igc_kernels_cpu_plane_backward() == value
    finally:
        lib.igc_kernels_cpu_set_plane_backward(before)


# One primary group (L = 1) is a dense conv followed by a per-channel scale; the forward folds the
# scale into the primary weights and runs one GEMM (VDSR's head and tail use this).
DENSE_CASES = [
    IGCCase(N=2, L=1, M_in=1, M=24, H=9, W=37),
    IGCCase(N=1, L=1, M_in=24, M=1, H=7, W=70, activation=0, residual=True),
    IGCCase(N=3, L=1, M_in=3, M=5, H=8, W=11, k=(5, 3), padding=(2, 0), stride=(2, 1), channels_last=True),
]


@pytest.mark.parametrize("case", DENSE_CASES, ids=[f"dense{i}" for i in range(len(DENSE_CASES))])
def test_single_primary_group(case, isa):
    _check_case(case, seed=5)


# A dense conv with few output channels (L = 1, M * kH <= 12: VDSR's 96 -> 1 tail) runs input row
# by input row: each row's contributions to the kH output rows it reaches, then a sum per output
# row (forward.cpp, few_outputs_by_input_rows). Row padding above, below and past the kernel's
# reach, kH of 2 to 5, horizontal stride and dilation, residual and ReLU; images that start and
# end inside a thread's chunk of rows.
FEW_OUTPUT_CASES = [
    IGCCase(N=2, L=1, M_in=24, M=1, H=13, W=37, activation=0, residual=True),
    IGCCase(N=3, L=1, M_in=5, M=4, H=6, W=20, activation=1),  # M * kH = 12
    IGCCase(N=2, L=1, M_in=7, M=2, H=9, W=17, k=(5, 3), padding=(2, 1), residual=True),
    IGCCase(N=2, L=1, M_in=6, M=3, H=5, W=11, k=(2, 3), padding=(0, 1)),
    IGCCase(N=3, L=1, M_in=4, M=1, H=1, W=8, k=(2, 2), padding=(2, 1)),  # output rows of padding only
    IGCCase(N=2, L=1, M_in=8, M=2, H=8, W=23, padding=(1, 2), stride=(1, 2), dilation=(1, 2)),
    IGCCase(N=2, L=1, M_in=3, M=2, H=2, W=5, k=(4, 1), padding=(3, 0), activation=0),
]


@pytest.mark.parametrize("case", FEW_OUTPUT_CASES, ids=[f"few{i}" for i in range(len(FEW_OUTPUT_CASES))])
def test_few_output_channels(case, isa):
    _check_case(case, seed=17)
    args = case.make(seed=18)
    ref = igc_conv_reference(*[a.double() if isinstance(a, torch.Tensor) else a for a in args])
    outs = []
    for threads in (1, 2, 3, 4):  # chunks of rows that start and end inside images
        with _num_threads(threads):
            outs.append(torch.ops.igc_kernels.igc_conv(*args))
    assert_close_to_reference(outs[0], ref, torch.float32, f"{case} forward")
    for out in outs[1:]:
        assert torch.equal(out, outs[0])  # each input row's GEMM is the same whatever the chunking


def test_few_output_channels_non_finite():
    """Inf and NaN in x, and an Inf weight: NaN and Inf exactly where the reference has them."""
    case = IGCCase(N=2, L=1, M_in=16, M=2, H=9, W=21, activation=0, residual=True)
    args = case.make(seed=19)
    x = args[0].clone()
    x[0, 3, 0, 0], x[0, 5, 4, 10], x[1, 15, 8, 20], x[1, 0, 2, 7] = float("inf"), float("nan"), float("-inf"), float("inf")
    args[0] = x
    for inf_weight in (False, True):
        if inf_weight:
            w1 = args[1].clone()
            w1[1, 7, 2, 0] = float("inf")
            args[1] = w1
        ours, ref = _same_non_finite_as_reference(args)
        assert torch.isfinite(ref).any() and not torch.isfinite(ref).all()
        finite = torch.isfinite(ref)
        assert_close_to_reference(ours[finite], ref[finite], torch.float32, "finite part")


def test_streamed_output(isa):
    """The row-by-row backward writes grad_x of 16 MiB and more with non-temporal stores (aligned
    full vectors; the rest, as W=250 gives, with plain stores): same values as the reference on
    every ISA path. Rows this long also take the backward's path without software prefetch."""
    case = IGCCase(N=1, L=24, M_in=4, M=4, H=180, W=250, residual=True)
    assert case.c_out * case.out_hw[0] * case.out_hw[1] * 4 >= 16 << 20
    assert case.L * case.M_in * case.H * case.W * 4 >= 16 << 20  # grad_x
    _check_case(case, seed=11)


# From 4 MiB the forward streams its output where the stores cover whole cache lines (rows of
# whole vectors, or joined tiles of four rows of a multiple of 4 pixels), and the plane backward
# streams grad_x as one run per channel and band (copy_stream: plain stores before the run's first
# aligned vector and after its last whole one). No ReLU: among a million outputs, float32 rounding
# moves some across zero, and the float32 and float64 ReLU masks then differ (streaming does not
# touch the activation).
STREAM_CASES = [
    IGCCase(N=9, L=24, M_in=4, M=4, H=36, W=36, activation=0),  # training patches: joined tiles, aligned runs
    IGCCase(N=11, L=24, M_in=4, M=4, H=35, W=33, activation=0, residual=True),  # forward not streamed; unaligned runs
    IGCCase(N=1, L=24, M_in=4, M=4, H=48, W=240, activation=0),  # rows of whole vectors; grad_x row by row
]


@pytest.mark.parametrize("case", STREAM_CASES, ids=[f"stream{i}" for i in range(len(STREAM_CASES))])
def test_streamed_from_4_mib(case, isa):
    assert case.N * case.c_out * case.out_hw[0] * case.out_hw[1] * 4 >= 4 << 20
    with _stream_from(4 << 20):  # the Intel default; on AMD cores outputs that fit the L3 stay cached
        _check_case(case, seed=13)


def _cpuinfo_field(name: str) -> str:
    """The first value of field `name` in /proc/cpuinfo (Linux), "" when it has none."""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.split(":", 1)[0].strip() == name:
                return line.split(":", 1)[1].strip()
    return ""


def _sysfs_l3_bytes() -> int:
    from pathlib import Path

    for d in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        if (d / "level").read_text().strip() == "3":
            size = (d / "size").read_text().strip()
            return int(size[:-1]) << {"K": 10, "M": 20}[size[-1]] if size[-1] in "KM" else int(size)
    return 0


@pytest.mark.skipif(not os.path.exists("/proc/cpuinfo"), reason="reads the CPU vendor from /proc/cpuinfo")
def test_stream_bytes_default():
    """Outputs stream from 4 MiB, or on AMD cores from the size of the L3 that sysfs shows."""
    lib = _lib()
    lib.igc_kernels_cpu_set_stream_bytes(-1)
    l3 = _sysfs_l3_bytes()
    want = l3 if _cpuinfo_field("vendor_id") == "AuthenticAMD" and l3 > 4 << 20 else 4 << 20
    assert lib.igc_kernels_cpu_stream_bytes() == want


@pytest.mark.parametrize("value,expected", [("12345", 12345), ("0", 0), ("abc", None), ("-5", None), ("12k", None)])
def test_stream_bytes_environment(value, expected):
    """IGC_KERNELS_CPU_STREAM_BYTES sets the threshold; anything but a byte count is an error
    that names the variable when a kernel runs."""
    code = (
        "import ctypes, torch, igc_kernels._C as C\n"
        "lib = ctypes.CDLL(C.__file__); lib.igc_kernels_cpu_stream_bytes.restype = ctypes.c_int64\n"
        "print(lib.igc_kernels_cpu_stream_bytes())\n"
        "x = torch.randn(1, 8, 6, 6); w1 = torch.randn(8, 2, 3, 3); w2 = torch.randn(8, 4, 1, 1)\n"
        "torch.ops.igc_kernels.igc_conv(x, w1, None, w2, None, None, 4, [1, 1], [1, 1], [1, 1], True, 1)\n"
    )
    env = dict(os.environ, IGC_KERNELS_CPU_STREAM_BYTES=value)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    if expected is None:
        assert done.returncode != 0
        assert f"IGC_KERNELS_CPU_STREAM_BYTES={value} is not a byte count" in done.stderr
    else:
        assert done.returncode == 0, done.stderr
        assert int(done.stdout.split()[0]) == expected


def test_streamed_equals_cached(isa):
    """Streaming changes where the stores go, not what they store: the forward (a layer, and a
    chain of layers), and the plane backward's grad_x, bitwise the same streamed and cached."""
    from igc_kernels.ops import igc_conv_chain

    case = IGCCase(N=3, L=24, M_in=4, M=4, H=20, W=32, residual=True)
    x, w1, b1, w2, b2, res, L, stride, pad, dil, sh, act = case.make(seed=41)
    layers = [(a[1], a[3], a[2], a[4]) for a in (case.make(seed=42 + k) for k in range(3))]  # (w1, w2, b1, b2)
    grad = torch.randn(case.N, case.c_out, *case.out_hw, generator=torch.Generator().manual_seed(44))
    results = []
    for nbytes in (0, 1 << 40):  # everything eligible streamed; nothing streamed
        with _stream_from(nbytes), torch.no_grad():
            out = torch.ops.igc_kernels.igc_conv(x, w1, b1, w2, b2, res, L, stride, pad, dil, sh, act)
            gx = torch.ops.igc_kernels.igc_conv_backward(grad, x, w1, b1, w2, out, L, stride, pad, dil, sh, act,
                                                          [True, False, False, False, False])[0]
            chain = igc_conv_chain(x, layers, groups=L, padding=pad, activation="relu", backend="cpu")
        results.append((out, gx, chain))
    for name, a, b in zip(("forward", "grad_x", "chain"), *results):
        assert torch.equal(a, b), name


def test_output_mask_and_batch_zero():
    """Unrequested gradients come back as 0-element tensors; N=0 gives empty outputs, zero weight grads."""
    case = IGCCase(N=2, L=3, M_in=2, M=2, H=5, W=6)
    x, w1, b1, w2, b2, res, L, s, p, d, sh, act = case.make(seed=3)
    out = torch.ops.igc_kernels.igc_conv(x, w1, b1, w2, b2, res, L, s, p, d, sh, act)
    g = torch.randn_like(out)
    full = torch.ops.igc_kernels.igc_conv_backward(g, x, w1, b1, w2, out, L, s, p, d, sh, act, [True] * 5)
    for i in range(5):
        mask = [j == i for j in range(5)]
        part = torch.ops.igc_kernels.igc_conv_backward(g, x, w1, b1, w2, out, L, s, p, d, sh, act, mask)
        for j in range(5):
            if j == i:
                torch.testing.assert_close(part[j], full[j], rtol=1e-6, atol=1e-6)
            else:
                assert part[j].numel() == 0
    x0 = x[:0]
    out0 = torch.ops.igc_kernels.igc_conv(x0, w1, b1, w2, b2, None, L, s, p, d, sh, act)
    assert out0.shape == (0, case.c_out, *case.out_hw)
    gx, gw1, gb1, gw2, gb2 = torch.ops.igc_kernels.igc_conv_backward(
        out0, x0, w1, b1, w2, out0, L, s, p, d, sh, act, [True] * 5)
    assert gx.shape == x0.shape
    for t, like in ((gw1, w1), (gb1, b1), (gw2, w2), (gb2, b2)):
        assert t.shape == like.shape and torch.count_nonzero(t) == 0


def test_gradcheck_float64_strided_channels_last():
    """The float64 kernels against finite differences (stride 2, dilation, channels_last)."""
    case = IGCCase(N=1, L=2, M_in=2, M=3, H=6, W=5, k=(3, 3), stride=(2, 1), padding=(1, 2), dilation=(1, 2),
                   activation=0, residual=True, channels_last=True)
    args = case.make(dtype=torch.float64, requires_grad=True, seed=5)

    def fn(x, w1, b1, w2, b2, res):
        return igc_conv(x, w1, w2, b1, b2, groups=case.L, stride=case.stride, padding=case.padding,
                        dilation=case.dilation, shuffle=case.shuffle, activation=0, residual=res, backend="cpu")

    assert torch.autograd.gradcheck(fn, tuple(args[:6]), eps=1e-6, atol=1e-7, rtol=1e-6)


def test_bfloat16_within_twice_torch_error():
    """DESIGN section 6: bf16 within 2x the error of PyTorch's own kernels in bf16 (the stock block
    and its autograd run in bf16), both measured against float64 on the same bf16-rounded inputs.
    The fused kernel keeps y1, s and every sum in fp32 and rounds once on store, so it is usually far
    inside; the floor 2^-8 (one bf16 rounding of the output) covers cases where torch is lucky.
    activation=0 so that a ReLU mask flipped by rounding near 0 cannot dominate the comparison."""
    cases = [IGCCase(N=2, L=4, M_in=4, M=4, H=9, W=21, residual=True, activation=0),
             IGCCase(N=1, L=6, M_in=2, M=3, H=7, W=8, stride=(2, 2), channels_last=True, activation=0)]
    for i, case in enumerate(cases):
        bf = [a.to(torch.bfloat16) if isinstance(a, torch.Tensor) else a for a in case.make(seed=40 + i)]
        if case.channels_last:
            bf[0] = bf[0].contiguous(memory_format=torch.channels_last)
        exact = [a.double().requires_grad_(True) if isinstance(a, torch.Tensor) else a for a in bf]
        ref = igc_conv_reference(*exact)
        g = torch.randn(ref.shape, generator=torch.Generator().manual_seed(i)).to(torch.bfloat16)
        ref.backward(g.double())
        stock_in = [a.clone().requires_grad_(True) if isinstance(a, torch.Tensor) else a for a in bf]
        stock = igc_conv_reference(*stock_in)
        stock.backward(g)
        ours = torch.ops.igc_kernels.igc_conv(*bf)
        grads = torch.ops.igc_kernels.igc_conv_backward(g, bf[0], bf[1], bf[2], bf[3], None, *bf[6:], [True] * 5)

        def rel(a, b):
            return ((a.double() - b).abs().max() / b.abs().max()).item()

        pairs = [("out", ours, stock, ref)] + [
            (name, got, s_in.grad, e_in.grad)
            for name, got, s_in, e_in in zip(("x", "w1", "b1", "w2", "b2"), grads, stock_in, exact)]
        for name, got, torch_bf16, want in pairs:
            err_ours, err_torch = rel(got, want.detach()), rel(torch_bf16, want.detach())
            assert err_ours <= max(2 * err_torch, 2 ** -8), (case, name, err_ours, err_torch)


def test_float64_matches_reference_tightly():
    for i, case in enumerate(SWEEP[:6]):
        _check_case(case, seed=300 + i, dtype=torch.float64)


# H=9: the row-by-row forward; H=12 and 13: Winograd row tiles (the fixture also runs them on the
# direct primary), with NaN and Inf in rows at every position of a tile, in the padding-side
# columns and in the partial last tile.
NON_FINITE_CASES = [
    (IGCCase(N=1, L=3, M_in=2, M=2, H=9, W=40, activation=1, residual=False), [(1, 4, 5, "nan"), (4, 2, 30, "inf")]),
    (IGCCase(N=1, L=3, M_in=2, M=2, H=12, W=40, activation=0, residual=False),
     [(1, 5, 5, "inf"), (2, 0, 0, "nan"), (5, 10, 39, "-inf"), (0, 7, 17, "inf")]),
    (IGCCase(N=2, L=4, M_in=2, M=3, H=13, W=70, activation=1, residual=True), [(3, 12, 66, "nan"), (6, 3, 1, "inf")]),
]


@pytest.mark.parametrize("case,spots", NON_FINITE_CASES, ids=["rows", "tiles", "partial-tile"])
def test_non_finite_inputs_propagate(case, spots, winograd, isa):
    """NaN/Inf in x give NaN/Inf exactly where the reference has them (and no crash). The Winograd
    transforms mix a tile's rows, so tiles with a non-finite input must take the direct primary."""
    args = case.make(seed=9)
    x = args[0].clone()
    for c, y, col, v in spots:
        x[-1, c, y, col] = float(v)
    args[0] = x
    ours, ref = _same_non_finite_as_reference(args)
    assert torch.isnan(ours).any()
    finite = torch.isfinite(ref)
    assert_close_to_reference(ours[finite], ref[finite], torch.float32, "finite part")
    grads = torch.ops.igc_kernels.igc_conv_backward(torch.ones_like(ours), x, args[1], args[2], args[3], ours,
                                                    *args[6:], [True] * 5)
    assert not torch.isfinite(grads[1]).all()  # the weight gradient sees the non-finite input


def test_non_finite_weights_propagate(winograd):
    """An Inf primary weight: the forward keeps Inf (not NaN) where the reference has it."""
    case = IGCCase(N=1, L=3, M_in=2, M=2, H=12, W=20, activation=0, residual=False)
    args = case.make(seed=10)
    w1 = args[1].clone()
    w1[2, 1, 0, 2] = float("inf")
    args[1] = w1
    _same_non_finite_as_reference(args)


def test_thread_count_does_not_change_results():
    case = IGCCase(N=2, L=8, M_in=4, M=4, H=24, W=40, residual=True)
    args = case.make(seed=21)
    results = []
    for threads in (1, 2):
        with _num_threads(threads):
            out = torch.ops.igc_kernels.igc_conv(*args)
            grads = torch.ops.igc_kernels.igc_conv_backward(torch.ones_like(out), args[0], args[1], args[2],
                                                            args[3], out, *args[6:], [True] * 5)
        results.append((out, grads))
    assert torch.equal(results[0][0], results[1][0])  # rows are independent: bitwise equal
    for a, b in zip(results[0][1], results[1][1]):  # weight grads sum in a different order
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_isa_report_and_switch():
    supported = _supported_isas()
    assert "generic" in supported
    assert _current_isa() in supported
    lib = _lib()
    assert lib.igc_kernels_cpu_set_isa(b"no-such-isa") == 0
    if sys.platform.startswith("linux") and os.uname().machine == "x86_64":
        # The best path this CPU supports must be available (flags as the kernel lists them).
        flags = set(_cpuinfo_field("flags").split())
        if {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags:
            assert "avx512" in supported
        if {"avx2", "fma"} <= flags:
            assert "avx2" in supported


def test_library_is_built_multithreaded():
    """at::parallel_for is an inline template; where torch uses OpenMP its `#pragma omp parallel` is
    compiled into igc_kernels._C, which must then be built with -fopenmp or every call runs on one
    thread (torch.set_num_threads would be ignored)."""
    lib = _lib()
    lib.igc_kernels_cpu_multithreaded.restype = ctypes.c_int
    assert lib.igc_kernels_cpu_multithreaded() == 1, (
        "igc_kernels._C was compiled without -fopenmp: the fused CPU kernels run single-threaded")


_ENV_SCRIPT = """
import ctypes, torch
from igc_kernels import _C
import igc_kernels.ops
lib = ctypes.CDLL(_C.__file__); lib.igc_kernels_cpu_isa.restype = ctypes.c_char_p
x = torch.randn(1, 4, 5, 5); w1 = torch.randn(4, 2, 3, 3); w2 = torch.randn(4, 2, 1, 1)
try:
    torch.ops.igc_kernels.igc_conv(x, w1, None, w2, None, None, 2, [1, 1], [1, 1], [1, 1], True, 0)
    print("ok", lib.igc_kernels_cpu_isa().decode())
except RuntimeError as e:
    print("error", "IGC_KERNELS_CPU_ISA" in str(e), lib.igc_kernels_cpu_isa().decode())
"""


@pytest.mark.parametrize("value,expected", [("generic", "ok generic"), ("bogus", "error True invalid")])
def test_environment_variable_picks_isa(value, expected):
    env = dict(os.environ, IGC_KERNELS_CPU_ISA=value)
    res = subprocess.run([sys.executable, "-c", _ENV_SCRIPT], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines()[-1] == expected
