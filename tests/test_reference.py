"""The oracle chain: the reference is checked against naive float64 loops and against the
dense-equivalent conv; every fused backend is then checked against the reference."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from igc_kernels.ops import channel_shuffle, dense_equivalent, igc_conv, igc_conv_reference
from igc_kernels.testing import IGCCase, naive_igc, random_cases

TINY = random_cases(12, seed=1234, max_hw=6)


@pytest.mark.parametrize("case", TINY, ids=lambda c: f"L{c.L}M{c.M}Mi{c.M_in}k{c.k}s{c.stride}")
def test_reference_matches_naive_loops(case):
    args = case.make(dtype=torch.float64)
    got = igc_conv_reference(*args).numpy()
    want = naive_igc(*args)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_channel_shuffle_is_the_interleave():
    L, M = 3, 4
    y1 = torch.arange(L * M, dtype=torch.float64).reshape(1, L * M, 1, 1)
    z = channel_shuffle(y1, L)
    for l in range(L):
        for m in range(M):
            assert z[0, m * L + l, 0, 0] == y1[0, l * M + m, 0, 0]


@pytest.mark.parametrize("case", random_cases(10, seed=99, max_hw=9), ids=str)
def test_reference_equals_dense_equivalent_conv(case):
    x, w1, b1, w2, b2, res, L, stride, padding, dilation, shuffle, act = case.make(dtype=torch.float64)
    weight, bias = dense_equivalent(w1, b1, w2, b2, L, shuffle)
    assert weight.shape == (case.c_out, case.c_in, *case.k)
    want = F.conv2d(x, weight, bias, stride, padding, dilation)
    if res is not None:
        want = want + res
    if act == 1:
        want = torch.relu(want)
    got = igc_conv_reference(x, w1, b1, w2, b2, res, L, stride, padding, dilation, shuffle, act)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_functional_reference_backend_matches_naive():
    case = IGCCase(N=1, L=2, M_in=3, M=2, H=5, W=4, residual=True)
    x, w1, b1, w2, b2, res, *_ = case.make(dtype=torch.float64, seed=3)
    got = igc_conv(x, w1, w2, b1, b2, padding=1, activation="relu", residual=res, backend="reference")
    np.testing.assert_allclose(got.numpy(), naive_igc(*case.make(dtype=torch.float64, seed=3)), rtol=1e-12, atol=1e-12)


def test_groups_inferred_from_w2():
    case = IGCCase(L=4, M_in=2, M=3)
    x, w1, b1, w2, b2, *_ = case.make()
    a = igc_conv(x, w1, w2, b1, b2, padding=1, backend="reference")
    b = igc_conv(x, w1, w2, b1, b2, groups=4, padding=1, backend="reference")
    torch.testing.assert_close(a, b)
