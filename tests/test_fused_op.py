"""Op-level integration of the fused CPU kernel: opcheck, gradcheck, torch.compile, autograd
with partial requires_grad, memory formats. Kernel accuracy sweeps live in test_fused_cpu.py."""

import os

import pytest
import torch
from torch import nn

from igc_kernels import IGCConv2d, igc_conv
from igc_kernels.ops import _ext, igc_conv_reference
from igc_kernels.testing import IGCCase, assert_close_to_reference

HAS_CPU_KERNEL = _ext.has_kernel("CPU")
needs_cpu_kernel = pytest.mark.skipif(not HAS_CPU_KERNEL, reason=f"fused CPU kernel not built: {_ext.EXT_ERROR}")


def test_cpu_kernel_is_built_in_ci():
    """CI must exercise the fused kernel: missing it there is a failure, not a skip."""
    if os.environ.get("CI") and not HAS_CPU_KERNEL:
        pytest.fail(f"the fused CPU kernel is not available in CI: {_ext.EXT_ERROR}")
    if not os.environ.get("CI") and not HAS_CPU_KERNEL:
        pytest.skip("not in CI; the fused CPU kernel is not built here")


OPCHECK_CASES = [
    IGCCase(N=2, L=3, M_in=2, M=2, H=5, W=6, residual=True),
    IGCCase(N=1, L=2, M_in=3, M=4, H=7, W=5, k=(1, 3), stride=(2, 1), padding=(0, 2), activation=0,
            bias1=False, shuffle=False, channels_last=True),
]


@needs_cpu_kernel
@pytest.mark.parametrize("case", OPCHECK_CASES, ids=["nchw-residual", "cl-noshuffle"])
def test_opcheck(case):
    args = case.make(dtype=torch.float32, requires_grad=True)
    torch.library.opcheck(torch.ops.igc_kernels.igc_conv.default, tuple(args))
    x, w1, b1, w2, b2, res, L, stride, padding, dilation, shuffle, act = [
        a.detach() if isinstance(a, torch.Tensor) else a for a in args
    ]
    out = torch.ops.igc_kernels.igc_conv(x, w1, b1, w2, b2, res, L, stride, padding, dilation, shuffle, act)
    grad = torch.randn_like(out)
    torch.library.opcheck(
        torch.ops.igc_kernels.igc_conv_backward.default,
        (grad, x, w1, b1, w2, out, L, stride, padding, dilation, shuffle, act, [True, True, b1 is not None, True, True]),
    )


@needs_cpu_kernel
@pytest.mark.parametrize("case", [IGCCase(N=1, L=2, M_in=2, M=2, H=4, W=5, residual=True),
                                  IGCCase(N=2, L=1, M_in=3, M=2, H=5, W=3, stride=(2, 2), dilation=(2, 1),
                                          padding=(2, 1), shuffle=False, activation=0)], ids=["a", "b"])
def test_gradcheck_float64(case):
    args = case.make(dtype=torch.float64, requires_grad=True, seed=7)
    # Move ReLU kinks away from zero so finite differences are valid.
    fn = lambda *t: igc_conv(t[0], t[1], t[3], t[2], t[4], groups=case.L, stride=case.stride,  # noqa: E731
                             padding=case.padding, dilation=case.dilation, shuffle=case.shuffle,
                             activation=case.activation, residual=t[5], backend="cpu")
    tensors = [a for a in args[:6]]
    assert torch.autograd.gradcheck(fn, tensors, eps=1e-6, atol=1e-6, rtol=1e-5, nondet_tol=0.0)


@needs_cpu_kernel
@pytest.mark.parametrize("which", [(True, False, False), (False, True, False), (False, False, True)])
def test_partial_requires_grad(which):
    case = IGCCase(N=2, L=3, M_in=2, M=2, H=6, W=5)
    x, w1, b1, w2, b2, *_ = case.make(dtype=torch.float32, seed=11)
    x.requires_grad_(which[0])
    w1.requires_grad_(which[1])
    b2.requires_grad_(which[2])
    out = igc_conv(x, w1, w2, b1, b2, padding=1, activation="relu", backend="cpu")
    out.square().sum().backward()
    ref_args = [t.detach().double().requires_grad_(t.requires_grad) for t in (x, w1, w2, b1, b2)]
    igc_conv(*ref_args, padding=1, activation="relu", backend="reference").square().sum().backward()
    for got, want, name in zip((x, w1, b2), (ref_args[0], ref_args[1], ref_args[4]), ("x", "w1", "b2")):
        assert (got.grad is None) == (want.grad is None), name
        if got.grad is not None:
            assert_close_to_reference(got.grad, want.grad, torch.float32, f"grad {name}")


@needs_cpu_kernel
def test_channels_last_in_channels_last_out():
    case = IGCCase(N=1, L=4, M_in=2, M=3, H=6, W=7, channels_last=True)
    x, w1, b1, w2, b2, *_ = case.make()
    out = igc_conv(x, w1, w2, b1, b2, padding=1, backend="cpu")
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert_close_to_reference(out, igc_conv(x.double(), w1.double(), w2.double(), b1.double(), b2.double(),
                                            padding=1, backend="reference"), torch.float32, "channels_last")


@needs_cpu_kernel
def test_batch_zero_forward_and_backward():
    layer = IGCConv2d(8, 8, 3, padding=1, primary_groups=4, activation="relu", backend="cpu")
    x = torch.randn(0, 8, 5, 5, requires_grad=True)
    out = layer(x)
    assert out.shape == (0, 8, 5, 5)
    out.sum().backward()
    assert x.grad.shape == x.shape
    assert torch.count_nonzero(layer.weight1.grad) == 0 and torch.count_nonzero(layer.weight2.grad) == 0


@needs_cpu_kernel
def test_torch_compile_fullgraph_forward_and_backward():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        IGCConv2d(16, 16, 3, padding=1, primary_groups=4, activation="relu", backend="cpu"),
        IGCConv2d(16, 16, 3, padding=1, primary_groups=4, activation="relu", backend="cpu"),
        nn.Conv2d(16, 3, 3, padding=1),
    )
    x = torch.randn(2, 3, 9, 10)
    eager_out = model(x)
    eager_out.square().mean().backward()
    eager_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    compiled = torch.compile(model, fullgraph=True, backend="inductor")
    out = compiled(x)
    out.square().mean().backward()
    torch.testing.assert_close(out, eager_out, rtol=1e-4, atol=1e-5)
    for g, p in zip(eager_grads, model.parameters()):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-5)


@needs_cpu_kernel
def test_auto_picks_the_fused_kernel_on_cpu():
    from igc_kernels.ops import resolve

    assert resolve("auto", torch.empty(1, 1, 1, 1)) == "cpu"
    assert resolve("auto", torch.empty(1, 1, 1, 1, dtype=torch.float16)) == "reference"


def test_reference_backend_autograd_matches_dense_path():
    """The reference backend is differentiable by construction; check it once against float64."""
    case = IGCCase(N=1, L=2, M_in=2, M=2, H=4, W=4)
    args = case.make(dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *t: igc_conv_reference(*t, *args[6:]), tuple(args[:6]))


@needs_cpu_kernel
def test_autocast_runs_the_op_in_the_autocast_dtype():
    """torch.autocast does not cast custom ops' inputs; igc_conv does it as conv2d would."""
    torch.manual_seed(0)
    layer = IGCConv2d(16, 16, 3, padding=1, primary_groups=4, activation="relu")
    x = torch.randn(2, 16, 7, 9)
    want = layer(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
    assert out.dtype == torch.bfloat16
    # bf16 inputs and weights (8-bit mantissa), fp32 accumulation: a few bf16 ulps of the output.
    torch.testing.assert_close(out.float(), want, rtol=3e-2, atol=3e-2)
    out.float().sum().backward()
    assert layer.weight1.grad.dtype == torch.float32 and torch.isfinite(layer.weight1.grad).all()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=False):
        assert layer(x).dtype == torch.float32
