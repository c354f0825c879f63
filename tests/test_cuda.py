"""The CUDA C++ kernels (csrc/cuda/) against the float64 reference: forward and every gradient,
fp32/fp16/bf16, NCHW and channels_last, the paper's shape (fast kernel) and odd general shapes.

Two ways to run the same kernels:
- on a CUDA device, through the registered ops (tests marked ``requires_cuda``; skipped without a
  GPU; CI proves the CUDA build separately with .ci/cuda_build.sh);
- on the CPU, through the CUDA emulation (csrc/cuda/emulation/): the kernel sources compiled by the
  host compiler, each CUDA thread a std::thread and __syncthreads a barrier. That runs the kernels'
  real indexing, tiling, shared-memory use and reductions on any machine with g++ and the CUDA
  headers (tests marked ``requires_emulation``).
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from igc_kernels.ops import _ext
from igc_kernels.ops.reference import igc_conv_reference


def _no_cuda_reason() -> str | None:
    # torch.cuda.is_available() does not create a CUDA context, so this is safe at collection.
    if not torch.cuda.is_available():
        return "no CUDA device (CUDA kernels are compiled in CI by .ci/cuda_build.sh, run here on a GPU)"
    return None


requires_cuda = pytest.mark.skipif(_no_cuda_reason() is not None, reason=str(_no_cuda_reason()))

DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# Relative error (max |err| / max |ref|) allowed in fp32: fp32 accumulation over a few hundred
# terms stays far below 1e-4 (DESIGN section 6).
FP32_TOL = 1e-4
# Low precision: at most 2x the error of PyTorch's own kernels in that dtype (DESIGN section 6),
# plus a floor of a few units in the last place, because PyTorch's error on a tiny tensor can be
# near zero by luck (fp16 has 11 significant bits, bf16 8).
LOW_FLOOR = {torch.float16: 4 * 2.0**-11, torch.bfloat16: 4 * 2.0**-8}


@dataclasses.dataclass(frozen=True)
class Case:
    L: int
    M_in: int
    M: int
    k: tuple[int, int]
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    shuffle: bool = True
    activation: int = 0
    b1: bool = False
    b2: bool = False
    residual: bool = False
    N: int = 2
    H: int = 9
    W: int = 11

    def __str__(self) -> str:  # readable test ids
        return (
            f"L{self.L}Min{self.M_in}M{self.M}k{self.k[0]}x{self.k[1]}s{self.stride}p{self.padding}"
            f"d{self.dilation}{'sh' if self.shuffle else 'nosh'}act{self.activation}"
            f"{'b1' if self.b1 else ''}{'b2' if self.b2 else ''}{'res' if self.residual else ''}"
            f"N{self.N}H{self.H}W{self.W}"
        )


PAPER = {"L": 24, "M_in": 4, "M": 4, "k": (3, 3), "padding": (1, 1)}
CASES = [
    # The paper's layer (fast kernel): tiles of 8x32 with ragged edges in both directions.
    Case(**PAPER, activation=1, b1=True, b2=True, residual=True, N=2, H=13, W=37),
    Case(**{**PAPER, "padding": (0, 0)}, shuffle=False, N=1, H=10, W=33),
    Case(**{**PAPER, "padding": (2, 1)}, activation=1, b2=True, N=1, H=5, W=7),
    # General kernel: every other shape.
    Case(
        L=3,
        M_in=2,
        M=5,
        k=(3, 2),
        stride=(2, 1),
        padding=(1, 0),
        dilation=(1, 2),
        b1=True,
        b2=True,
        N=2,
    ),
    Case(L=1, M_in=3, M=2, k=(1, 1), activation=1, residual=True, N=1, H=7, W=5),
    Case(
        L=5,
        M_in=1,
        M=1,
        k=(5, 5),
        stride=(3, 3),
        padding=(2, 2),
        shuffle=False,
        b1=True,
        N=3,
        H=13,
        W=8,
    ),
    Case(
        L=4,
        M_in=4,
        M=4,
        k=(3, 3),
        padding=(1, 1),
        dilation=(2, 2),
        activation=1,
        b1=True,
        b2=True,
        H=9,
        W=9,
    ),
]


def _make_inputs(case: Case, dtype: torch.dtype, channels_last: bool, seed: int):
    """Fresh random inputs, rounded to ``dtype`` once, so every path sees the same values."""
    g = torch.Generator().manual_seed(seed)
    c_in, c_out = case.L * case.M_in, case.L * case.M
    h_out = (case.H + 2 * case.padding[0] - case.dilation[0] * (case.k[0] - 1) - 1) // case.stride[
        0
    ] + 1
    w_out = (case.W + 2 * case.padding[1] - case.dilation[1] * (case.k[1] - 1) - 1) // case.stride[
        1
    ] + 1

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)

    fan1 = case.M_in * case.k[0] * case.k[1]
    t = {
        "x": rnd(case.N, c_in, case.H, case.W),
        "w1": rnd(c_out, case.M_in, *case.k, scale=fan1**-0.5),
        "b1": rnd(c_out, scale=0.5) if case.b1 else None,
        "w2": rnd(c_out, case.L, 1, 1, scale=case.L**-0.5),
        "b2": rnd(c_out, scale=0.5) if case.b2 else None,
        "residual": rnd(case.N, c_out, h_out, w_out) if case.residual else None,
        "grad": rnd(case.N, c_out, h_out, w_out),
    }
    if channels_last:
        for name in ("x", "residual", "grad"):
            if t[name] is not None:
                t[name] = t[name].contiguous(memory_format=torch.channels_last)
    return t


def _away_from_relu_kink(t, case: Case, dtype: torch.dtype):
    """In fp16/bf16 an output within rounding of 0 can land on either side of the ReLU, flipping
    its gradient between 0 and grad_out for any implementation. Zero grad_out there (and only
    there), so the comparison measures arithmetic error, not coin flips at the kink."""
    if case.activation != 1 or dtype == torch.float32:
        return t
    d = {k: (v.double() if v is not None else None) for k, v in t.items()}
    out = igc_conv_reference(
        d["x"], d["w1"], d["b1"], d["w2"], d["b2"], d["residual"], *_conf(case)
    )
    keep = out.abs() > 0.05 * out.abs().max()
    return {**t, "grad": (t["grad"] * keep.to(dtype)).contiguous(memory_format=_layout(t["grad"]))}


def _conf(case: Case):
    return (
        case.L,
        list(case.stride),
        list(case.padding),
        list(case.dilation),
        case.shuffle,
        case.activation,
    )


def _reference(t, case: Case, device, dtype):
    """Forward and the five gradients of the reference on ``device`` in ``dtype``."""
    leaves = {
        k: (v.to(device=device, dtype=dtype).requires_grad_(k in ("x", "w1", "b1", "w2", "b2")))
        if v is not None
        else None
        for k, v in t.items()
        if k != "grad"
    }
    out = igc_conv_reference(
        leaves["x"],
        leaves["w1"],
        leaves["b1"],
        leaves["w2"],
        leaves["b2"],
        leaves["residual"],
        *_conf(case),
    )
    out.backward(t["grad"].to(device=device, dtype=dtype))
    grads = [
        leaves[k].grad if leaves[k] is not None else None for k in ("x", "w1", "b1", "w2", "b2")
    ]
    return out.detach(), grads


def _cuda_forward_backward(t, case: Case, mask=(True, True, True, True, True)):
    d = {k: (v.cuda() if v is not None else None) for k, v in t.items()}
    out = torch.ops.igc_kernels.igc_conv(
        d["x"], d["w1"], d["b1"], d["w2"], d["b2"], d["residual"], *_conf(case)
    )
    grads = torch.ops.igc_kernels.igc_conv_backward(
        d["grad"],
        d["x"],
        d["w1"],
        d["b1"],
        d["w2"],
        out if case.activation else None,
        *_conf(case),
        list(mask),
    )
    return out, list(grads)


def _rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    ref = ref.double().cpu()
    return ((a.double().cpu() - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()


@pytest.fixture
def cuda_kernel():
    # On a GPU machine a missing CUDA kernel is a build problem, not a reason to skip.
    assert _ext.has_kernel("CUDA"), (
        _ext.EXT_ERROR or "igc_kernels._C was built without its CUDA kernels"
    )


@requires_cuda
@pytest.mark.usefixtures("cuda_kernel")
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("case", CASES, ids=str)
def test_forward_and_gradients_match_reference(case, dtype, channels_last):
    t = _make_inputs(
        case, dtype, channels_last, seed=hash((str(case), str(dtype), channels_last)) % 2**31
    )
    t = _away_from_relu_kink(t, case, dtype)
    ref_out, ref_grads = _reference(t, case, "cpu", torch.float64)
    out, grads = _cuda_forward_backward(t, case)
    expected_format = torch.channels_last if channels_last else torch.contiguous_format
    assert out.dtype == dtype and out.is_contiguous(memory_format=expected_format)
    assert grads[0].is_contiguous(memory_format=expected_format)

    if dtype == torch.float32:
        tols = [FP32_TOL] * 6
    else:
        # PyTorch's own error in this dtype (the stock ops on the GPU), against the same oracle.
        torch_out, torch_grads = _reference(t, case, "cuda", dtype)
        tols = [
            max(2 * _rel_err(r, o), LOW_FLOOR[dtype])
            for r, o in zip([torch_out, *torch_grads], [ref_out, *ref_grads])
            if o is not None
        ]
    names = ["out", "grad_x", "grad_w1", "grad_b1", "grad_w2", "grad_b2"]
    pairs = [
        (n, a, r) for n, a, r in zip(names, [out, *grads], [ref_out, *ref_grads]) if r is not None
    ]
    for (name, a, r), tol in zip(pairs, tols):
        assert a.shape == r.shape, f"{name}: shape {tuple(a.shape)} != {tuple(r.shape)}"
        err = _rel_err(a, r)
        assert err <= tol, f"{name}: relative error {err:.3g} > {tol:.3g} ({case}, {dtype})"


@requires_cuda
@pytest.mark.usefixtures("cuda_kernel")
@pytest.mark.parametrize("case", [CASES[0], CASES[2]], ids=str)
def test_fast_and_general_kernels_agree(case, monkeypatch):
    t = _make_inputs(case, torch.float32, False, seed=7)
    fast = _cuda_forward_backward(t, case)
    monkeypatch.setenv("IGC_KERNELS_CUDA_PATH", "general")
    general = _cuda_forward_backward(t, case)
    names = ["out", "grad_x", "grad_w1", "grad_b1", "grad_w2", "grad_b2"]
    for name, a, b in zip(names, [fast[0], *fast[1]], [general[0], *general[1]]):
        # Same sums in a different order: fp32 rounding only.
        assert _rel_err(a, b) <= 1e-5, name


@requires_cuda
@pytest.mark.usefixtures("cuda_kernel")
def test_unrequested_gradients_are_empty():
    case = CASES[0]
    t = _make_inputs(case, torch.float32, True, seed=3)
    _, ref_grads = _reference(t, case, "cpu", torch.float64)
    for i in range(5):
        mask = [j == i for j in range(5)]
        _, grads = _cuda_forward_backward(t, case, mask=mask)
        for j, g in enumerate(grads):
            if j == i:
                assert _rel_err(g, ref_grads[j]) <= FP32_TOL
            else:
                assert g.numel() == 0


@requires_cuda
@pytest.mark.usefixtures("cuda_kernel")
def test_empty_batch():
    case = dataclasses.replace(CASES[3], N=0)
    t = _make_inputs(case, torch.float32, False, seed=5)
    out, grads = _cuda_forward_backward(t, case)
    assert out.shape[0] == 0 and grads[0].shape == t["x"].shape
    for g, name in zip(grads[1:], ("w1", "b1", "w2", "b2")):
        assert g.shape == t[name].shape and bool((g == 0).all())


@requires_cuda
@pytest.mark.usefixtures("cuda_kernel")
def test_autograd_through_the_public_api():
    from igc_kernels.ops import igc_conv

    case = CASES[0]
    t = _make_inputs(case, torch.float32, True, seed=11)
    leaves = {k: t[k].cuda().requires_grad_() for k in ("x", "w1", "w2", "b1", "b2", "residual")}
    out = igc_conv(
        leaves["x"],
        leaves["w1"],
        leaves["w2"],
        leaves["b1"],
        leaves["b2"],
        padding=1,
        activation="relu",
        residual=leaves["residual"],
        backend="cuda",
    )
    out.backward(t["grad"].cuda())
    ref_out, _ = _reference(t, case, "cpu", torch.float64)
    assert _rel_err(out.detach(), ref_out) <= FP32_TOL
    ref = {k: t[k].double().requires_grad_() for k in leaves}
    ref_y = igc_conv_reference(
        ref["x"], ref["w1"], ref["b1"], ref["w2"], ref["b2"], ref["residual"], *_conf(case)
    )
    ref_y.backward(t["grad"].double())
    for k, leaf in leaves.items():
        assert _rel_err(leaf.grad, ref[k].grad) <= FP32_TOL, k


@requires_cuda
@pytest.mark.usefixtures("cuda_kernel")
def test_rejects_float64_with_a_clear_message():
    case = CASES[3]
    t = _make_inputs(case, torch.float64, False, seed=1)
    with pytest.raises(RuntimeError, match="float32, float16 or bfloat16"):
        _cuda_forward_backward(t, case)


@requires_cuda
@pytest.mark.usefixtures("cuda_kernel")
def test_rejects_mixed_devices():
    case = CASES[3]
    t = _make_inputs(case, torch.float32, False, seed=2)
    with pytest.raises(RuntimeError, match="w1 must be on the same device as x"):
        torch.ops.igc_kernels.igc_conv(
            t["x"].cuda(),
            t["w1"],
            t["b1"].cuda(),
            t["w2"].cuda(),
            t["b2"].cuda(),
            None,
            *_conf(case),
        )


# ---------------------------------------------------------------------------------------------
# The same kernels on the CPU, through the CUDA emulation.

EMU_SOURCE = (
    Path(__file__).resolve().parent.parent / "csrc" / "cuda" / "emulation" / "igc_conv_emulated.cpp"
)


def _cuda_include_dir() -> str | None:
    homes = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    for home in homes:
        if home and (Path(home) / "include" / "cuda_fp16.h").exists():
            return str(Path(home) / "include")
    return None


def _no_emulation_reason() -> str | None:
    if shutil.which("g++") is None:
        return "g++ not found (the CUDA emulation is compiled with the host compiler)"
    if _cuda_include_dir() is None:
        return "CUDA headers (cuda_fp16.h) not found under CUDA_HOME, CUDA_PATH or /usr/local/cuda"
    return None


requires_emulation = pytest.mark.skipif(
    _no_emulation_reason() is not None, reason=str(_no_emulation_reason())
)
EMU_DTYPE = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
EMU_MAX_BLOCKS = (
    3  # few blocks: the grid-stride loops and multi-row partial sums run on small inputs
)


@pytest.fixture(scope="module")
def emu(tmp_path_factory):
    lib = tmp_path_factory.mktemp("cuda_emulation") / "libigc_cuda_emulated.so"
    cmd = [
        "g++",
        "-std=c++20",
        "-O1",
        "-fPIC",
        "-shared",
        "-pthread",
        "-Wall",
        "-Wno-unknown-pragmas",
        f"-I{_cuda_include_dir()}",
        f"-I{EMU_SOURCE.parent.parent.parent}",
        str(EMU_SOURCE),
        "-o",
        str(lib),
    ]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return ctypes.CDLL(str(lib))


def _i64(values) -> ctypes.Array:
    return (ctypes.c_int64 * len(values))(*values)


def _ptr(t: torch.Tensor | None):
    return ctypes.c_void_p(t.data_ptr()) if t is not None and t.numel() > 0 else None


def _emu_params(case: Case, t) -> tuple[list[int], int, int]:
    n, c_in, h, w = t["x"].shape
    c_out = case.L * case.M
    h_out = (h + 2 * case.padding[0] - case.dilation[0] * (case.k[0] - 1) - 1) // case.stride[0] + 1
    w_out = (w + 2 * case.padding[1] - case.dilation[1] * (case.k[1] - 1) - 1) // case.stride[1] + 1
    params = [
        n,
        c_in,
        h,
        w,
        c_out,
        h_out,
        w_out,
        case.L,
        case.M_in,
        case.M,
        *case.k,
        *case.stride,
        *case.padding,
        *case.dilation,
        int(case.shuffle),
        int(case.activation == 1),
    ]
    return params, h_out, w_out


def _layout(x: torch.Tensor) -> torch.memory_format:
    """The memory format the kernels give outputs of x (ATen's suggest_memory_format)."""
    cl = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    return torch.channels_last if cl else torch.contiguous_format


def _emu_forward(emu, case: Case, t, fast: bool) -> torch.Tensor:
    params, h_out, w_out = _emu_params(case, t)
    x = t["x"]
    out = torch.empty(x.shape[0], case.L * case.M, h_out, w_out, dtype=x.dtype).contiguous(
        memory_format=_layout(x)
    )
    f32 = {
        k: (t[k].float().contiguous() if t[k] is not None else None)
        for k in ("w1", "b1", "w2", "b2")
    }
    res = t["residual"]
    rc = emu.igc_emu_forward(
        _i64(params),
        EMU_DTYPE[x.dtype],
        int(fast),
        EMU_MAX_BLOCKS,
        _ptr(x),
        _i64(x.stride()),
        _ptr(f32["w1"]),
        _ptr(f32["b1"]),
        _ptr(f32["w2"]),
        _ptr(f32["b2"]),
        _ptr(res),
        _i64(res.stride()) if res is not None else None,
        _ptr(out),
        _i64(out.stride()),
    )
    assert rc == 0, f"igc_emu_forward returned {rc}"
    return out


def _emu_backward(
    emu, case: Case, t, out: torch.Tensor, fast: bool, mask=(True,) * 5
) -> list[torch.Tensor]:
    """The backward kernels with the buffers igc_conv_cuda.cpp would allocate for this mask."""
    params, _, _ = _emu_params(case, t)
    x, w1, w2 = t["x"], t["w1"], t["w2"]
    c_out = case.L * case.M
    empty = torch.empty(0, dtype=x.dtype)
    gx = torch.empty_like(x, memory_format=_layout(x)) if mask[0] else empty
    gw1 = torch.empty_like(w1.contiguous()) if mask[1] else empty.clone()
    gb1 = torch.empty(c_out, dtype=x.dtype) if mask[2] else empty.clone()
    gw2 = torch.empty_like(w2.contiguous()) if mask[3] else empty.clone()
    gb2 = torch.empty(c_out, dtype=x.dtype) if mask[4] else empty.clone()
    end_w2 = c_out * case.L if mask[3] else 0
    end_b2 = end_w2 + (c_out if mask[4] else 0)
    end_w1 = end_b2 + (w1.numel() if mask[1] else 0)
    k = end_w1 + (c_out if mask[2] else 0)
    seg = [end_w2, end_b2, end_w1, k, int(mask[3]), int(mask[0] or mask[1] or mask[2])]
    rows = emu.igc_emu_backward_rows(_i64(params), EMU_MAX_BLOCKS)
    partial = torch.zeros(rows, k, dtype=torch.float32) if k > 0 else None
    total_pix = out.shape[0] * out.shape[2] * out.shape[3]
    # NaN-filled workspaces: an entry a kernel reads but no kernel wrote shows up in the results.
    nan = float("nan")
    need_ws = mask[0] or (fast and mask[1])
    ws = torch.full((c_out, total_pix), nan, dtype=torch.float32) if need_ws else None
    y1ws = torch.full((c_out, total_pix), nan, dtype=torch.float32) if fast and mask[3] else None
    f32 = {k: (t[k].float().contiguous() if t[k] is not None else None) for k in ("w1", "b1", "w2")}
    emu.igc_emu_backward.restype = ctypes.c_int
    rc = emu.igc_emu_backward(
        _i64(params),
        EMU_DTYPE[x.dtype],
        _i64(seg),
        int(fast),
        EMU_MAX_BLOCKS,
        _ptr(t["grad"]),
        _i64(t["grad"].stride()),
        _ptr(out),
        _i64(out.stride()),
        _ptr(x),
        _i64(x.stride()),
        _ptr(f32["w1"]),
        _ptr(f32["b1"]),
        _ptr(f32["w2"]),
        _ptr(y1ws),
        _ptr(ws),
        _ptr(partial),
        _ptr(gw2),
        _ptr(gb2),
        _ptr(gw1),
        _ptr(gb1),
        _ptr(gx),
        _i64(gx.stride()) if mask[0] else None,
        ctypes.c_int64(gx.numel()),
    )
    assert rc == 0, f"igc_emu_backward returned {rc}"
    return [gx, gw1, gb1, gw2, gb2]


def _fast_applies(case: Case) -> bool:
    return (case.L, case.M_in, case.M, case.k, case.stride, case.dilation) == (
        24,
        4,
        4,
        (3, 3),
        (1, 1),
        (1, 1),
    )


EMU_COMBOS = [
    (torch.float32, False),
    (torch.float32, True),
    (torch.float16, True),
    (torch.bfloat16, False),
]


@requires_emulation
@pytest.mark.parametrize(
    "dtype,channels_last", EMU_COMBOS, ids=lambda v: str(v).replace("torch.", "")
)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_emulated_kernels_match_reference(emu, case, dtype, channels_last):
    t = _make_inputs(
        case, dtype, channels_last, seed=hash((str(case), str(dtype), channels_last, 1)) % 2**31
    )
    t = _away_from_relu_kink(t, case, dtype)
    ref_out, ref_grads = _reference(t, case, "cpu", torch.float64)
    out = _emu_forward(emu, case, t, fast=_fast_applies(case))
    grads = _emu_backward(emu, case, t, out, fast=_fast_applies(case))
    tol = FP32_TOL if dtype == torch.float32 else LOW_FLOOR[dtype]
    names = ["out", "grad_x", "grad_w1", "grad_b1", "grad_w2", "grad_b2"]
    for name, a, r in zip(names, [out, *grads], [ref_out, *ref_grads]):
        if r is None:
            continue
        err = _rel_err(a, r)
        assert err <= tol, f"{name}: relative error {err:.3g} > {tol:.3g} ({case}, {dtype})"


@requires_emulation
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_emulated_fast_and_general_forward_agree(emu, channels_last):
    case = CASES[0]
    t = _make_inputs(case, torch.float32, channels_last, seed=13)
    fast = _emu_forward(emu, case, t, fast=True)
    general = _emu_forward(emu, case, t, fast=False)
    torch.testing.assert_close(fast, general, rtol=1e-5, atol=1e-5)


@requires_emulation
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_emulated_fast_and_general_backward_agree(emu, channels_last):
    case = CASES[0]
    t = _make_inputs(case, torch.float32, channels_last, seed=17)
    out = _emu_forward(emu, case, t, fast=True)
    fast = _emu_backward(emu, case, t, out, fast=True)
    general = _emu_backward(emu, case, t, out, fast=False)
    for name, a, b in zip(["grad_x", "grad_w1", "grad_b1", "grad_w2", "grad_b2"], fast, general):
        # Same sums in a different order (2-D tiles vs runs of pixels): fp32 rounding only.
        assert _rel_err(a, b) <= 1e-5, name


@requires_emulation
@pytest.mark.parametrize("fast", [True, False], ids=["fast", "general"])
def test_emulated_single_gradients(emu, fast):
    case = CASES[0]
    t = _make_inputs(case, torch.float32, True, seed=19)
    _, ref_grads = _reference(t, case, "cpu", torch.float64)
    out = _emu_forward(emu, case, t, fast=True)
    for i in range(5):
        mask = [j == i for j in range(5)]
        grads = _emu_backward(emu, case, t, out, fast=fast, mask=mask)
        assert _rel_err(grads[i], ref_grads[i]) <= FP32_TOL, f"gradient {i} alone"
        assert all(g.numel() == 0 for j, g in enumerate(grads) if j != i)
