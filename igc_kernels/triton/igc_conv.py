"""The Triton backend as torch ops: ``igc_kernels::igc_conv_triton`` and its backward.

Both are ``torch.library.triton_op``s whose kernels are launched through ``wrap_triton``, so
``torch.compile`` traces into them; their schemas match ``igc_kernels::igc_conv`` and
``igc_kernels::igc_conv_backward`` (csrc/igc_kernels.cpp), and autograd is the one shared by all
fused ops (igc_kernels/ops/autograd.py). Importing this module registers the ops.
"""

from __future__ import annotations

import torch
import triton
from torch.library import triton_op, wrap_triton

from igc_kernels.ops.autograd import memory_format_of, output_shape, register
from igc_kernels.ops.validate import check_igc_args

from . import configs
from .kernels import igc_bwd_input_kernel, igc_bwd_kernel, igc_bwd_w1_kernel, igc_fwd_kernel

FORWARD = "igc_kernels::igc_conv_triton"
BACKWARD = "igc_kernels::igc_conv_triton_backward"


def _ieee(dtype: torch.dtype) -> bool:
    # fp32 must stay fp32 (the op promises 1e-4 relative); tl.dot would otherwise use TF32.
    return dtype == torch.float32


def _sizes(x: torch.Tensor, w1: torch.Tensor, groups: int) -> dict:
    """Compile-time sizes of the kernels (see kernels._primary_z for the packing)."""
    L = groups
    M, M_IN, KH, KW = w1.shape[0] // L, w1.shape[1], w1.shape[2], w1.shape[3]
    MP, MINP = triton.next_power_of_2(M), triton.next_power_of_2(M_IN)
    G = max(1, 16 // MP)  # primary groups per packed tile: G*MP >= 16 output columns
    QP = max(triton.next_power_of_2(triton.cdiv(L, G)), 16 // G)  # packs; QP*G >= 16 (secondary K)
    return {"L": L, "M": M, "M_IN": M_IN, "KH": KH, "KW": KW, "G": G, "QP": QP, "KP": max(16, G * MINP),
            "MINP": MINP, "MP": MP}


def _pack_index(sz: dict, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each packed entry [q, k, col]: whether it holds a weight, its w1 row and input channel."""
    L, M, M_IN, G, QP, KP, MINP, MP = (sz[k] for k in ("L", "M", "M_IN", "G", "QP", "KP", "MINP", "MP"))
    q = torch.arange(QP, device=device)[:, None, None]
    k = torch.arange(KP, device=device)[None, :, None]
    col = torch.arange(G * MP, device=device)[None, None, :]
    g, ci, m = k // MINP, k % MINP, col % MP
    l = q * G + g
    valid = (g == col // MP) & (k < G * MINP) & (ci < M_IN) & (m < M) & (l < L)
    return valid, torch.where(valid, l * M + m, 0), torch.where(valid, ci, 0)


def pack_w1(w1: torch.Tensor, sz: dict) -> torch.Tensor:
    """w1 (L*M, M_in, kH, kW) as block-diagonal tiles, (kH*kW, QP, KP, G*MP):
    packed[t, q, g*MINP + ci, g*MP + m] = w1[(q*G + g)*M + m, ci, t], zero elsewhere."""
    valid, c1, ci = _pack_index(sz, w1.device)
    taps = w1.reshape(w1.shape[0], w1.shape[1], -1)[c1, ci]  # (QP, KP, NP, kH*kW)
    return torch.where(valid[..., None], taps, 0).permute(3, 0, 1, 2).contiguous()


def unpack_w1(packed: torch.Tensor, sz: dict, shape: torch.Size) -> torch.Tensor:
    """Inverse of pack_w1 (a gather from the block diagonal): (kH*kW, QP, KP, NP) -> w1's shape."""
    M, G, MINP, MP = sz["M"], sz["G"], sz["MINP"], sz["MP"]
    c1 = torch.arange(shape[0], device=packed.device)[:, None]
    ci = torch.arange(shape[1], device=packed.device)[None, :]
    l, m = c1 // M, c1 % M
    q, g = l // G, l % G
    taps = packed[:, q, g * MINP + ci, g * MP + m]  # (kH*kW, C, M_in): static shapes for torch.compile
    return taps.permute(1, 2, 0).reshape(shape).contiguous()


def _persistent_programs(device: torch.device) -> int:
    """Programs of the reducing backward kernels: a few per SM, so each sums many tiles in
    registers and the fp32 atomics stay few (a handful of programs under the interpreter, which
    still makes each of them loop over several tiles)."""
    if configs.interpreted() or device.type != "cuda":
        return 2
    return 4 * torch.cuda.get_device_properties(device).multi_processor_count


def _conv_args(stride, padding, dilation) -> tuple[int, ...]:
    return (stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1])


@triton_op(FORWARD, mutates_args=())
def igc_conv_triton(
    x: torch.Tensor,
    w1: torch.Tensor,
    b1: torch.Tensor | None,
    w2: torch.Tensor,
    b2: torch.Tensor | None,
    residual: torch.Tensor | None,
    groups: int,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    shuffle: bool,
    activation: int,
) -> torch.Tensor:
    check_igc_args(x, w1, b1, w2, b2, residual, groups, tuple(stride), tuple(padding), tuple(dilation))
    out = torch.empty(output_shape(x, w1, stride, padding, dilation), dtype=x.dtype, device=x.device)
    out = out.contiguous(memory_format=memory_format_of(x))
    n, _, h, w = x.shape
    _, _, ho, wo = out.shape
    P = n * ho * wo
    if P == 0:
        return out
    sz = _sizes(x, w1, groups)
    w1p, w2c = pack_w1(w1, sz), w2.contiguous()
    b1c = b1.contiguous() if b1 is not None else w2c  # never read when absent
    b2c = b2.contiguous() if b2 is not None else w2c
    res = residual if residual is not None else out

    def grid(meta):
        return (triton.cdiv(P, meta["BLOCK_P"]),)

    wrap_triton(igc_fwd_kernel)[grid](
        x, w1p, b1c, w2c, b2c, res, out,
        P, h, w, ho, wo,
        *x.stride(), *out.stride(), *res.stride(),
        *_conv_args(stride, padding, dilation),
        **sz,
        HAS_B1=b1 is not None, HAS_B2=b2 is not None, HAS_RES=residual is not None,
        SHUFFLE=bool(shuffle), ACT=int(activation), IEEE=_ieee(x.dtype),
    )
    return out


@triton_op(BACKWARD, mutates_args=())
def igc_conv_triton_backward(
    grad_out: torch.Tensor,
    x: torch.Tensor,
    w1: torch.Tensor,
    b1: torch.Tensor | None,
    w2: torch.Tensor,
    out: torch.Tensor | None,
    groups: int,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    shuffle: bool,
    activation: int,
    output_mask: list[bool],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    if activation != 0 and out is None:
        raise ValueError("out (the forward output) is required when activation is not 'none'")
    n, _, h, w = x.shape
    c_mid = w1.shape[0]
    _, _, ho, wo = output_shape(x, w1, stride, padding, dilation)
    if tuple(grad_out.shape) != (n, c_mid, ho, wo):
        raise ValueError(f"grad_out must have the output's shape {(n, c_mid, ho, wo)}, got {tuple(grad_out.shape)}")
    need_x, need_w1, need_b1, need_w2, need_b2 = (bool(v) for v in output_mask)
    sz = _sizes(x, w1, groups)
    P = n * ho * wo
    f32 = {"dtype": torch.float32, "device": x.device}
    # Weight/bias gradients accumulate in fp32 (atomics), then take the parameter's dtype.
    # dL/dw1 is reduced in the packed layout of the primary's weights (see pack_w1).
    packed_numel = sz["KH"] * sz["KW"] * sz["QP"] * sz["KP"] * sz["G"] * sz["MP"]
    gw1 = torch.zeros(packed_numel if need_w1 else 1, **f32)
    gb1 = torch.zeros(c_mid, **f32) if need_b1 else torch.zeros(1, **f32)
    gw2 = torch.zeros(w2.shape, **f32) if need_w2 else torch.zeros(1, **f32)
    gb2 = torch.zeros(c_mid, **f32) if need_b2 else torch.zeros(1, **f32)
    # dL/dy1, pixel-major; kept in x's dtype as the stock path's own intermediate gradient is.
    need_gy1 = need_x or need_w1
    gy1 = torch.empty((P, c_mid) if need_gy1 else (1,), dtype=x.dtype, device=x.device)
    gx = torch.empty_like(x, memory_format=memory_format_of(x)) if need_x else x.new_empty((0,))
    w1p, w2c = pack_w1(w1, sz), w2.contiguous()
    b1c = b1.contiguous() if b1 is not None else w2c
    o = out if out is not None else grad_out
    conv = _conv_args(stride, padding, dilation)
    if P > 0 and (need_gy1 or need_b1 or need_w2 or need_b2):
        programs = _persistent_programs(x.device)

        def grid(meta):
            return (min(triton.cdiv(P, meta["BLOCK_P"]), programs),)

        wrap_triton(igc_bwd_kernel)[grid](
            grad_out, x, w1p, b1c, w2c, o,
            gy1, gb1, gw2, gb2,
            P, h, w, ho, wo,
            *x.stride(), *grad_out.stride(), *o.stride(),
            *conv,
            **sz,
            HAS_B1=b1 is not None, SHUFFLE=bool(shuffle), ACT=int(activation), IEEE=_ieee(x.dtype),
            NEED_GY1=need_gy1, NEED_B1=need_b1, NEED_W2=need_w2, NEED_B2=need_b2,
        )
    if need_w1 and P > 0:
        block, warps = configs.w1_grad()
        tiles = triton.cdiv(P, block)
        per_chunk = triton.cdiv(tiles, _persistent_programs(x.device))
        wrap_triton(igc_bwd_w1_kernel)[(sz["KH"] * sz["KW"], triton.cdiv(tiles, per_chunk))](
            x, gy1, gw1,
            P, h, w, ho, wo, per_chunk,
            *x.stride(),
            *conv,
            **sz, IEEE=_ieee(x.dtype), BLOCK_P=block, num_warps=warps,
        )
    if need_x:
        Q = n * h * w
        if P == 0:
            gx.zero_()
        elif Q > 0:

            def grid_x(meta):
                return (triton.cdiv(Q, meta["BLOCK_Q"]),)

            wrap_triton(igc_bwd_input_kernel)[grid_x](
                gy1, w1p, gx,
                Q, h, w, ho, wo,
                *gx.stride(),
                *conv,
                **sz, IEEE=_ieee(x.dtype),
            )
    # Unrequested gradients are distinct 0-element tensors (a custom op's outputs may not alias).
    return (
        gx,
        unpack_w1(gw1.view(sz["KH"] * sz["KW"], sz["QP"], sz["KP"], -1), sz, w1.shape).to(w1.dtype)
        if need_w1 else x.new_empty((0,)),
        gb1.to(x.dtype) if need_b1 else x.new_empty((0,)),
        gw2.to(w2.dtype) if need_w2 else x.new_empty((0,)),
        gb2.to(x.dtype) if need_b2 else x.new_empty((0,)),
    )


register(FORWARD, BACKWARD, lambda *args: torch.ops.igc_kernels.igc_conv_triton_backward(*args))
