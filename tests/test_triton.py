"""The Triton backend against the reference: forward and every gradient, both layouts.

Without a GPU the very same kernels run on CPU tensors through the Triton interpreter
(TRITON_INTERPRET=1). Triton reads that flag when ``@triton.jit`` builds a kernel, so this module
sets it while the backend is first loaded and restores it right away (other test modules must
not see a CPU "triton" backend); each test here sets it again for its own duration, because the
backend choice (igc_kernels.ops.backends) reads it to allow CPU tensors. The interpreter is slow:
shapes are tiny, but odd-sized, strided, padded and dilated.
"""

import os

import pytest
import torch

from igc_kernels import igc_conv
from igc_kernels.ops import available_backends, igc_conv_reference
from igc_kernels.testing import IGCCase, assert_close_to_reference

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _load_backend() -> str | None:
    from igc_kernels import triton as igc_triton

    if DEVICE == "cuda":
        return igc_triton.unavailable_reason()
    previous = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        reason = igc_triton.unavailable_reason()
    finally:
        if previous is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = previous
    if reason is None and not igc_triton.is_interpreted():
        reason = ("the Triton kernels were built for a GPU before TRITON_INTERPRET=1 was set in this "
                  "process; run tests/test_triton.py on its own")
    return reason


UNAVAILABLE = _load_backend()
pytestmark = [
    pytest.mark.triton,
    pytest.mark.skipif(UNAVAILABLE is not None and not os.environ.get("CI"),
                       reason=f"Triton backend unavailable: {UNAVAILABLE}"),
]


@pytest.fixture(autouse=True)
def _interpreter(monkeypatch):
    if UNAVAILABLE is not None:  # in CI a missing backend is a failure, not a skip
        pytest.fail(f"the Triton backend must run in CI: {UNAVAILABLE}")
    if DEVICE == "cpu":
        monkeypatch.setenv("TRITON_INTERPRET", "1")


def _fused(args):
    return torch.ops.igc_kernels.igc_conv_triton(*args)


# Each case covers several axes at once to keep the interpreter's runtime small.
CASES = {
    "odd-nchw-relu-residual": IGCCase(N=2, L=3, M_in=2, M=2, H=7, W=9, residual=True),
    "odd-cl-relu": IGCCase(N=1, L=3, M_in=2, M=2, H=9, W=7, channels_last=True),
    "stride2-pad-noshuffle": IGCCase(N=2, L=5, M_in=1, M=3, H=9, W=8, stride=(2, 2), padding=(1, 2),
                                     shuffle=False, activation=0, bias1=False),
    "stride2-cl-dilation": IGCCase(N=1, L=4, M_in=3, M=2, H=11, W=7, stride=(2, 1), padding=(2, 1),
                                   dilation=(2, 1), channels_last=True, residual=True, bias2=False),
    "L24-M4-like-the-paper": IGCCase(N=1, L=24, M_in=4, M=4, H=5, W=3),
    "L1-M5-k1": IGCCase(N=2, L=1, M_in=3, M=5, H=5, W=7, k=(1, 1), padding=(0, 0), activation=0),
    "L17-M1-k5x3-cl": IGCCase(N=1, L=17, M_in=1, M=1, H=7, W=5, k=(5, 3), padding=(2, 0), stride=(1, 2),
                              channels_last=True, shuffle=False, residual=True),
    "L2-M3-no-padding-nobias": IGCCase(N=2, L=2, M_in=2, M=3, H=6, W=5, padding=(0, 0), bias1=False,
                                       bias2=False),
    "L2-M20-M_in5-k3x1": IGCCase(N=1, L=2, M_in=5, M=20, H=4, W=5, k=(3, 1), padding=(1, 0)),
    "batch0": IGCCase(N=0, L=3, M_in=2, M=2, H=5, W=5, residual=True),
}


def _check_against_reference(case: IGCCase, seed: int) -> None:
    args = case.make(dtype=torch.float64, seed=seed)
    ref_in = [a.detach().clone().requires_grad_() if isinstance(a, torch.Tensor) else a for a in args]
    fused_in = [a.detach().to(DEVICE, torch.float32) if isinstance(a, torch.Tensor) else a for a in args]
    if case.channels_last:
        fused_in[0] = fused_in[0].contiguous(memory_format=torch.channels_last)
    fused_in = [a.requires_grad_() if isinstance(a, torch.Tensor) else a for a in fused_in]

    ref = igc_conv_reference(*ref_in)
    out = _fused(fused_in)
    assert out.shape == ref.shape and out.dtype == torch.float32
    # Outputs follow the input's layout.
    want_cl = case.channels_last and not fused_in[0].is_contiguous()
    assert out.is_contiguous(memory_format=torch.channels_last if want_cl else torch.contiguous_format)
    assert_close_to_reference(out, ref, torch.float32, "forward")

    grad = torch.randn(ref.shape, dtype=torch.float64)
    ref.backward(grad)
    out.backward(grad.to(DEVICE, torch.float32))
    names = ("x", "w1", "b1", "w2", "b2", "residual")
    for name, got, want in zip(names, fused_in[:6], ref_in[:6]):
        if want is None:
            continue
        assert got.grad is not None, f"no gradient for {name}"
        assert got.grad.shape == want.shape
        assert_close_to_reference(got.grad, want.grad, torch.float32, f"grad {name}")


@pytest.mark.parametrize("name", list(CASES))
def test_forward_and_gradients_match_reference(name):
    _check_against_reference(CASES[name], seed=None)


@pytest.mark.parametrize("needs", [("x",), ("w1", "b2"), ("w2", "b1")], ids=lambda n: "+".join(n))
def test_partial_requires_grad(needs):
    """Only the requested gradients are computed (the backward op's output_mask paths)."""
    case = IGCCase(N=1, L=3, M_in=2, M=2, H=5, W=7, stride=(2, 1))
    x, w1, b1, w2, b2, *_ = case.make(dtype=torch.float64)
    params = {"x": x, "w1": w1, "b1": b1, "w2": w2, "b2": b2}
    ref = {k: v.clone().requires_grad_(k in needs) for k, v in params.items()}
    fused = {k: v.to(DEVICE, torch.float32).requires_grad_(k in needs) for k, v in params.items()}
    conf = {"stride": case.stride, "padding": case.padding, "activation": "relu"}
    igc_conv(ref["x"], ref["w1"], ref["w2"], ref["b1"], ref["b2"], backend="reference", **conf).sum().backward()
    igc_conv(fused["x"], fused["w1"], fused["w2"], fused["b1"], fused["b2"], backend="triton", **conf).sum().backward()
    for k in params:
        assert (fused[k].grad is None) == (k not in needs), k
        if k in needs:
            assert_close_to_reference(fused[k].grad, ref[k].grad, torch.float32, f"grad {k}")


def test_backward_op_returns_empty_for_unrequested_grads():
    case = IGCCase(N=1, L=2, M_in=2, M=2, H=5, W=5)
    x, w1, b1, w2, _b2, _res, *conf = case.make(dtype=torch.float32)
    x, w1, b1, w2 = (t.to(DEVICE) for t in (x, w1, b1, w2))
    out = _fused([x, w1, b1, w2, None, None, *conf])
    grads = torch.ops.igc_kernels.igc_conv_triton_backward(
        torch.randn_like(out), x, w1, b1, w2, out, *conf, [False, True, False, False, True]
    )
    assert [g.numel() for g in grads] == [0, w1.numel(), 0, 0, w1.shape[0]]


def test_backend_is_reachable_through_igc_conv():
    if DEVICE == "cpu":
        assert "triton" in available_backends("cpu")
    case = IGCCase(N=1, L=4, M_in=2, M=2, H=6, W=5)
    x, w1, b1, w2, b2, _res, _L, _stride, padding, *_ = case.make(dtype=torch.float32)
    x, w1, b1, w2, b2 = (t.to(DEVICE) for t in (x, w1, b1, w2, b2))
    got = igc_conv(x, w1, w2, b1, b2, padding=padding, activation="relu", backend="triton")
    want = igc_conv(x, w1, w2, b1, b2, padding=padding, activation="relu", backend="reference")
    assert_close_to_reference(got, want, torch.float32, "igc_conv(backend='triton')")


def test_unsupported_dtype_is_a_clear_error():
    x = torch.randn(1, 4, 5, 5, dtype=torch.float64, device=DEVICE)
    w1 = torch.randn(4, 2, 3, 3, dtype=torch.float64, device=DEVICE)
    w2 = torch.randn(4, 2, 1, 1, dtype=torch.float64, device=DEVICE)
    with pytest.raises(RuntimeError, match="backend 'triton' supports dtypes"):
        igc_conv(x, w1, w2, backend="triton")


def test_opcheck():
    # The AOT-dispatch checks trace the op with fake tensors into the kernel launch, which the
    # interpreter cannot run; on a GPU every check runs.
    utils = ("test_schema", "test_autograd_registration", "test_faketensor")
    if DEVICE == "cuda":
        utils = utils + ("test_aot_dispatch_dynamic",)
    case = IGCCase(N=1, L=2, M_in=2, M=2, H=5, W=6, residual=True, channels_last=True)
    args = [a.to(DEVICE).requires_grad_() if isinstance(a, torch.Tensor) else a for a in case.make()]
    torch.library.opcheck(torch.ops.igc_kernels.igc_conv_triton.default, tuple(args), test_utils=utils)
    x, w1, b1, w2, b2, res, *conf = [a.detach() if isinstance(a, torch.Tensor) else a for a in args]
    out = _fused([x, w1, b1, w2, b2, res, *conf])
    torch.library.opcheck(
        torch.ops.igc_kernels.igc_conv_triton_backward.default,
        (torch.randn_like(out), x, w1, b1, w2, out, *conf, [True, True, True, True, True]),
        test_utils=utils,
    )


@pytest.mark.skipif(DEVICE != "cuda", reason="torch.compile cannot trace interpreted Triton kernels")
def test_torch_compile_fullgraph_forward_and_backward():
    case = IGCCase(N=2, L=4, M_in=2, M=4, H=9, W=7, residual=True)
    args = [a.to(DEVICE).requires_grad_() if isinstance(a, torch.Tensor) else a for a in case.make()]
    compiled = torch.compile(_fused, fullgraph=True)
    out = compiled(args)
    out.sum().backward()
    got = [a.grad.clone() for a in args[:6] if isinstance(a, torch.Tensor)]
    ref_in = [a.detach().double().requires_grad_() if isinstance(a, torch.Tensor) else a for a in args]
    ref = igc_conv_reference(*ref_in)
    ref.sum().backward()
    assert_close_to_reference(out, ref, torch.float32, "compiled forward")
    for g, r in zip(got, [a.grad for a in ref_in[:6] if isinstance(a, torch.Tensor)]):
        assert_close_to_reference(g, r, torch.float32, "compiled grad")


def _device_check_module():
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "device_check.py"
    spec = importlib.util.spec_from_file_location("device_check", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("device_check", module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_device_check_correctness_helper_runs_the_triton_backend(tmp_path):
    """The GPU script's correctness section, on a tiny shape with the same kernels (CPU: interpreted)."""
    dc = _device_check_module()
    report = dc.Report(str(tmp_path / "check.md"))
    cases = {"tiny": IGCCase(N=1, L=3, M_in=2, M=2, H=5, W=7, stride=(2, 1), residual=True, channels_last=True)}
    assert dc.correctness(report, ["triton"], [torch.float32], cases, DEVICE)
    text = (tmp_path / "check.md").read_text()
    for name in ("out", "x", "w1", "b1", "w2", "b2", "residual"):
        assert f"| triton | float32 | tiny | {name} |" in text


def test_device_check_cli_without_gpu(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "bench" / "device_check.py"
    help_run = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120, check=False)
    assert help_run.returncode == 0 and "--out" in help_run.stdout and "--quick" in help_run.stdout
    if DEVICE == "cpu":
        run = subprocess.run([sys.executable, str(script), "--out", str(tmp_path / "r.md")], capture_output=True,
                             text=True, timeout=120, check=False)
        assert run.returncode == 2 and "no CUDA device" in run.stderr


def test_kernels_compile_for_an_h100_class_gpu_without_one():
    """The interpreter checks the arithmetic; this lowers the same kernels to SASS for sm_90
    (dot shapes, layouts, permutes, atomics), which the interpreter never exercises."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    run = subprocess.run([sys.executable, "-m", "igc_kernels.triton.offline_compile", "--first", "--arch", "90"],
                         capture_output=True, text=True, timeout=300, env=env, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = [ln for ln in run.stdout.splitlines() if ln.startswith("sm_90")]
    assert [ln.split(" {")[0].split("channels_last ")[1] for ln in lines] == ["forward", "backward", "w1 grad", "input grad"]


def test_device_check_providers_compute_the_same_layer():
    """Every IGC peer the GPU script times (fused, stock, dense-equivalent) computes one function."""
    dc = _device_check_module()
    providers = dc.make_providers(dc.Shape(1, 96, 5, 7), torch.float32, DEVICE, ["triton"], compile_stock=False)
    outs = {}
    for name, (fn, x, params) in providers.items():
        assert all(p.requires_grad for p in params), name
        with torch.no_grad():
            outs[name] = fn(x)
    want = outs["stock IGC, cuDNN (NCHW)"]
    for name, out in outs.items():
        if not name.startswith("dense nn.Conv2d"):  # the dense peer has its own weights
            assert_close_to_reference(out, want, torch.float32, name)


def test_fp16_within_twice_pytorchs_own_error():
    """Low precision by the project's rule: error vs float64 at most 2x PyTorch's own fp16 error
    (floor: one fp16 rounding). bf16 is checked on the GPU only (bench/device_check.py): the
    Triton interpreter's tl.dot mishandles bf16 operands (numpy has no bfloat16)."""
    dc = _device_check_module()
    case = IGCCase(N=2, L=6, M_in=4, M=4, H=7, W=9, residual=True, channels_last=True)
    rows = dc.check_case("triton", torch.float16, case, DEVICE, "fp16")
    bad = [(r.tensor, r.err, r.torch_err) for r in rows if not r.ok]
    assert not bad, bad
