"""Every misuse raises an error that names the argument and what was expected."""

import pytest
import torch

from igc_kernels import IGCConv2d, igc_conv
from igc_kernels.ops import backends


def _ok():
    x = torch.randn(1, 8, 5, 5)
    w1 = torch.randn(8, 2, 3, 3)  # L=4, M_in=2, M=2
    w2 = torch.randn(8, 4, 1, 1)
    return x, w1, w2


def test_3d_input():
    x, w1, w2 = _ok()
    with pytest.raises(ValueError, match=r"x must be a 4-D \(N, C, H, W\) tensor, got 3-D"):
        igc_conv(x[0], w1, w2)


def test_integer_input():
    x, w1, w2 = _ok()
    with pytest.raises(TypeError, match="x must be a floating-point tensor, got torch.int64"):
        igc_conv(x.long(), w1, w2)


def test_not_a_tensor():
    _, w1, w2 = _ok()
    with pytest.raises(TypeError, match="x must be a torch.Tensor, got list"):
        igc_conv([1.0], w1, w2, groups=4)


def test_channels_not_divisible_by_groups():
    x, w1, w2 = _ok()
    with pytest.raises(ValueError, match=r"x.shape\[1\] \(in channels\) must be divisible by groups L=3, got 8"):
        igc_conv(x, w1, w2, groups=3)


def test_bad_groups():
    x, w1, w2 = _ok()
    with pytest.raises(ValueError, match=r"groups \(primary groups L\) must be a positive int, got 0"):
        igc_conv(x, w1, w2, groups=0)


def test_w1_wrong_in_channels():
    x, _, w2 = _ok()
    with pytest.raises(ValueError, match=r"w1.shape\[1\] must be C_in/L=2, got 3"):
        igc_conv(x, torch.randn(8, 3, 3, 3), w2)


def test_w1_not_multiple_of_groups():
    x, _, w2 = _ok()
    with pytest.raises(ValueError, match=r"w1.shape\[0\] \(L\*M\) must be a positive multiple of groups L=4, got 6"):
        igc_conv(x, torch.randn(6, 2, 3, 3), w2)


def test_w1_not_4d():
    x, _, w2 = _ok()
    with pytest.raises(ValueError, match=r"w1 must be 4-D \(L\*M, C_in/L, kH, kW\)"):
        igc_conv(x, torch.randn(8, 2, 3), w2)


def test_w2_wrong_shape():
    x, w1, _ = _ok()
    with pytest.raises(ValueError, match=r"w2 must have shape \(M\*L, L, 1, 1\) = \(8, 4, 1, 1\), got \(8, 4, 3, 3\)"):
        igc_conv(x, w1, torch.randn(8, 4, 3, 3), groups=4)


def test_w2_not_4d_without_groups():
    x, w1, _ = _ok()
    with pytest.raises(ValueError, match="w2 must be a 4-D .* to infer groups"):
        igc_conv(x, w1, torch.randn(8, 4))


def test_bias_wrong_shape():
    x, w1, w2 = _ok()
    with pytest.raises(ValueError, match=r"b1 must have shape \(8,\), got \(4,\)"):
        igc_conv(x, w1, w2, b1=torch.randn(4))
    with pytest.raises(ValueError, match=r"b2 must have shape \(8,\), got \(8, 1\)"):
        igc_conv(x, w1, w2, b2=torch.randn(8, 1))


def test_dtype_mismatch():
    x, w1, w2 = _ok()
    with pytest.raises(TypeError, match="w1 must have the dtype of x \\(torch.float32\\), got torch.float64"):
        igc_conv(x, w1.double(), w2)


def test_device_mismatch():
    x, w1, w2 = _ok()
    with pytest.raises(ValueError, match=r"w2 must be on the same device as x \(cpu\), got meta"):
        igc_conv(x, w1, w2.to("meta"))


def test_negative_padding():
    x, w1, w2 = _ok()
    with pytest.raises(ValueError, match=r"padding must be >= 0, got -1"):
        igc_conv(x, w1, w2, padding=-1)


def test_zero_stride_and_dilation():
    x, w1, w2 = _ok()
    with pytest.raises(ValueError, match=r"stride must be >= 1, got \(0, 1\)"):
        igc_conv(x, w1, w2, stride=(0, 1))
    with pytest.raises(ValueError, match=r"dilation must be >= 1, got 0"):
        igc_conv(x, w1, w2, dilation=0)


def test_bad_pair():
    x, w1, w2 = _ok()
    with pytest.raises(TypeError, match=r"stride must be an int or a pair of ints, got \(1, 2, 3\)"):
        igc_conv(x, w1, w2, stride=(1, 2, 3))
    with pytest.raises(TypeError, match="padding must be an int or a pair of ints, got True"):
        igc_conv(x, w1, w2, padding=True)


def test_input_smaller_than_kernel():
    x, w1, w2 = _ok()
    with pytest.raises(ValueError, match=r"padded input \(2x2\) is smaller than the dilated kernel \(3x3\)"):
        igc_conv(x[:, :, :2, :2], w1, w2)


def test_residual_wrong_shape():
    x, w1, w2 = _ok()
    with pytest.raises(ValueError, match=r"residual must have the output's shape \(1, 8, 3, 3\), got \(1, 8, 5, 5\)"):
        igc_conv(x, w1, w2, residual=torch.randn(1, 8, 5, 5))


def test_bad_activation():
    x, w1, w2 = _ok()
    with pytest.raises(ValueError, match="activation must be one of 'none', 'relu', got 'gelu'"):
        igc_conv(x, w1, w2, activation="gelu")


def test_bad_shuffle():
    x, w1, w2 = _ok()
    with pytest.raises(TypeError, match="shuffle must be a bool, got 1"):
        igc_conv(x, w1, w2, shuffle=1)


def test_unknown_backend():
    x, w1, w2 = _ok()
    with pytest.raises(ValueError, match=r"backend must be one of \('auto', 'reference', 'cpu', 'cuda', 'triton'\), got 'gpu'"):
        igc_conv(x, w1, w2, backend="gpu")


def test_unavailable_backend_is_an_error_not_a_fallback():
    x, w1, w2 = _ok()
    with pytest.raises(RuntimeError, match="igc_conv backend 'cuda' is unavailable: backend 'cuda' needs CUDA tensors"):
        igc_conv(x, w1, w2, backend="cuda")
    with pytest.raises(RuntimeError, match="backend 'cpu' supports dtypes float32, float64, bfloat16, got torch.float16"):
        igc_conv(x.half(), w1.half(), w2.half(), backend="cpu")


def test_env_override(monkeypatch):
    x, w1, w2 = _ok()
    monkeypatch.setenv(backends.ENV_VAR, "reference")
    assert backends.resolve("auto", x) == "reference"
    monkeypatch.setenv(backends.ENV_VAR, "bogus")
    with pytest.raises(ValueError, match="IGC_KERNELS_BACKEND must be one of"):
        backends.resolve("auto", x)


def test_module_argument_errors():
    with pytest.raises(ValueError, match=r"in_channels \(10\) must be divisible by primary_groups \(4\)"):
        IGCConv2d(10, 8, 3, primary_groups=4)
    with pytest.raises(ValueError, match=r"out_channels \(6\) must be divisible by primary_groups \(4\)"):
        IGCConv2d(8, 6, 3, primary_groups=4)
    with pytest.raises(ValueError, match=r"primary_groups must be given when out_channels \(6\) is not a multiple of 4"):
        IGCConv2d(6, 6, 3)
    with pytest.raises(ValueError, match="primary_groups must be a positive int, got 0"):
        IGCConv2d(8, 8, 3, primary_groups=0)
    with pytest.raises(ValueError, match="in_channels must be a positive int, got 0"):
        IGCConv2d(0, 8, 3)
    with pytest.raises(ValueError, match="padding_mode must be one of"):
        IGCConv2d(8, 8, 3, padding_mode="mirror")
    with pytest.raises(ValueError, match="padding must be an int, a pair, 'same' or 'valid', got 'full'"):
        IGCConv2d(8, 8, 3, padding="full")
    with pytest.raises(ValueError, match="padding='same' requires stride 1"):
        IGCConv2d(8, 8, 3, stride=2, padding="same")
    with pytest.raises(ValueError, match=r"padding='same' needs an even dilation\*\(kernel_size-1\)"):
        IGCConv2d(8, 8, 2, padding="same")
    with pytest.raises(ValueError, match="init_nonlinearity must be 'relu' or 'linear', got 'tanh'"):
        IGCConv2d(8, 8, 3, init_nonlinearity="tanh")
    with pytest.raises(ValueError, match="activation must be one of 'none', 'relu', got 'elu'"):
        IGCConv2d(8, 8, 3, activation="elu")
