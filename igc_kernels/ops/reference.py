"""The IGC layer in plain PyTorch: the oracle every fused backend is tested against, and the
fallback on devices without a fused kernel.

It spells out the four steps of DESIGN.md section 2 with stock ops, exactly as a user would write
them, so it is also the "stock block" that the benchmarks compare against.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .validate import Pair


def channel_shuffle(t: torch.Tensor, groups: int) -> torch.Tensor:
    """View channels as (groups, C/groups) and transpose: out[:, j*groups + g] = t[:, g*(C/groups) + j].

    Same as torchvision's channel_shuffle. With groups=L it is the IGC interleave
    z[:, m*L + l] = y1[:, l*M + m]; with groups=M it is the output shuffle.
    """
    n, c, h, w = t.shape
    return t.reshape(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


def igc_conv_reference(
    x: torch.Tensor,
    w1: torch.Tensor,
    b1: torch.Tensor | None,
    w2: torch.Tensor,
    b2: torch.Tensor | None,
    residual: torch.Tensor | None,
    groups: int,
    stride: Pair,
    padding: Pair,
    dilation: Pair,
    shuffle: bool,
    activation: int,
) -> torch.Tensor:
    """Primary grouped conv -> interleave -> secondary grouped 1x1 -> shuffle -> +residual -> act."""
    L = groups
    M = w1.shape[0] // L
    y1 = F.conv2d(x, w1, b1, stride, padding, dilation, groups=L)
    z = channel_shuffle(y1, L)
    s = F.conv2d(z, w2, b2, groups=M)
    out = channel_shuffle(s, M) if shuffle else s
    if residual is not None:
        out = out + residual
    if activation == 1:
        out = torch.relu(out)
    return out


def interleave_index(L: int, M: int) -> torch.Tensor:
    """perm such that z = y1[:, perm]: z[m*L + l] = y1[l*M + m]."""
    return torch.arange(L * M).reshape(L, M).t().reshape(-1)


def dense_equivalent(
    w1: torch.Tensor,
    b1: torch.Tensor | None,
    w2: torch.Tensor,
    b2: torch.Tensor | None,
    groups: int,
    shuffle: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The dense conv weight W = P_out . W2 . P . W1 (and bias) that the linear IGC layer equals.

    Returns (W of shape (C_out, C_in, kH, kW), bias of shape (C_out,) or None).
    """
    L = groups
    c_mid, m_in, kh, kw = w1.shape
    M = c_mid // L
    c_in = L * m_in
    # Block-diagonal W1 as a dense (C_mid, C_in, kh, kw) weight.
    dense1 = w1.new_zeros(c_mid, c_in, kh, kw)
    for l in range(L):
        dense1[l * M : (l + 1) * M, l * m_in : (l + 1) * m_in] = w1[l * M : (l + 1) * M]
    # Block-diagonal W2 (C_mid x C_mid) acting on the interleaved channels.
    dense2 = w2.new_zeros(c_mid, c_mid)
    for m in range(M):
        dense2[m * L : (m + 1) * L, m * L : (m + 1) * L] = w2[m * L : (m + 1) * L, :, 0, 0]
    perm = interleave_index(L, M).to(w1.device)
    mix = dense2[:, perm.argsort()]  # columns indexed by y1 channel: z[c] = y1[perm[c]]
    # mix @ y1 gives s; the output shuffle picks rows.
    if shuffle:
        out_perm = interleave_index(M, L).to(w1.device)  # out[l*M+m] = s[m*L+l]
        mix = mix[out_perm]
    weight = torch.einsum("oc,cikl->oikl", mix, dense1)
    bias = None
    if b1 is not None or b2 is not None:
        bias = w1.new_zeros(c_mid)
        if b1 is not None:
            bias = bias + mix @ b1
        if b2 is not None:
            b2v = b2[interleave_index(M, L).to(w1.device)] if shuffle else b2
            bias = bias + b2v
    return weight, bias
