"""Triton kernels of the fused IGC layer (DESIGN.md sections 2 and 3).

One program owns a tile of BLOCK_P output pixels (flattened over N, H_out, W_out) and *all*
channels, so the whole layer happens on chip:

* primary grouped conv: an fp32 register tile ``y1[p, l, m]`` (primary group l, member m),
  accumulated with CUDA-core FMAs over the M_in input channels and the kH*kW taps (4 channels
  per group are far too few for tensor cores);
* interleave + secondary 1x1 grouped conv: per secondary group m a ``[pixels x L] x [L x L]``
  product, written as one batched ``tl.dot`` over m (``[M, P, L] x [M, L, L]``), with L padded to a
  power of two >= 16 (24 -> 32) because ``tl.dot`` needs every dimension >= 16;
* output shuffle, biases, residual and activation in the epilogue. No permutation moves data:
  the interleave is the ``(l, m) -> (m, l)`` transpose of the register tile and the shuffle is the
  index map of the store (``out[:, j*M + m] = s[:, m*L + j]``).

Strides are kernel arguments, so one kernel serves NCHW and channels_last (Triton specialises
unit strides, which is what makes the loads contiguous in either layout).

The backward recomputes ``y1`` tile by tile instead of loading a saved one. Weight and bias
gradients are reduced per program and added with fp32 atomics; the input gradient (a transposed
grouped conv) runs as a second kernel over input pixels that reads ``dL/dy1`` written by the first.
"""

from __future__ import annotations

import triton
import triton.language as tl

from . import configs


@triton.jit
def _primary_tile(
    x_ptr, w1_ptr, b1_ptr,
    n, ho, wo, pmask, l, m, lmask, mmask,
    H, W, sxn, sxc, sxh, sxw,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    M: tl.constexpr, M_IN: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
    HAS_B1: tl.constexpr, BLOCK_P: tl.constexpr, LP: tl.constexpr, MP: tl.constexpr,
):
    """y1[p, l, m] (fp32) of the primary grouped conv for one pixel tile; pads are zero."""
    acc = tl.zeros((BLOCK_P, LP, MP), dtype=tl.float32)
    c1 = l[:, None] * M + m[None, :]  # primary output channel of (l, m)
    wmask = lmask[:, None] & mmask[None, :]
    x_img = x_ptr + n * sxn  # n is int64: batch offsets may pass 2**31 elements
    for kh in tl.static_range(KH):
        hi = ho * stride_h - pad_h + kh * dil_h
        h_ok = pmask & (hi >= 0) & (hi < H)
        for kw in tl.static_range(KW):
            wi = wo * stride_w - pad_w + kw * dil_w
            ok = h_ok & (wi >= 0) & (wi < W)
            x_pix = x_img + hi * sxh + wi * sxw
            xmask = ok[:, None] & lmask[None, :]
            for ci in range(M_IN):
                xv = tl.load(x_pix[:, None] + (l * M_IN + ci)[None, :] * sxc, mask=xmask, other=0.0)
                wv = tl.load(w1_ptr + ((c1 * M_IN + ci) * KH + kh) * KW + kw, mask=wmask, other=0.0)
                acc += xv.to(tl.float32)[:, :, None] * wv.to(tl.float32)[None, :, :]
    if HAS_B1:
        acc += tl.load(b1_ptr + c1, mask=wmask, other=0.0).to(tl.float32)[None, :, :]
    return acc


@triton.jit
def _pixels(pid, P, HO, WO, BLOCK_P: tl.constexpr):
    p = pid * BLOCK_P + tl.arange(0, BLOCK_P)
    wo = p % WO
    t = p // WO
    ho = t % HO
    n = (t // HO).to(tl.int64)
    return p, p < P, n, ho, wo


@triton.autotune(configs=configs.forward(), key=["P", "L", "M", "M_IN", "KH", "KW"])
@triton.jit
def igc_fwd_kernel(
    x_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, res_ptr, out_ptr,
    P, H, W, HO, WO,
    sxn, sxc, sxh, sxw,
    son, soc, soh, sow,
    srn, src, srh, srw,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    L: tl.constexpr, M: tl.constexpr, M_IN: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
    LP: tl.constexpr, MP: tl.constexpr,
    HAS_B1: tl.constexpr, HAS_B2: tl.constexpr, HAS_RES: tl.constexpr,
    SHUFFLE: tl.constexpr, ACT: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    p, pmask, n, ho, wo = _pixels(tl.program_id(0), P, HO, WO, BLOCK_P)
    l = tl.arange(0, LP)
    m = tl.arange(0, MP)
    lmask = l < L
    mmask = m < M
    y1 = _primary_tile(
        x_ptr, w1_ptr, b1_ptr, n, ho, wo, pmask, l, m, lmask, mmask,
        H, W, sxn, sxc, sxh, sxw, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
        M, M_IN, KH, KW, HAS_B1, BLOCK_P, LP, MP,
    )
    # Interleave: secondary group m reads member m of every primary group -> [m, p, l].
    # Rounded to the input dtype like the stock path (tensor cores take fp16/bf16 operands).
    z = tl.permute(y1, (2, 0, 1)).to(x_ptr.dtype.element_ty)
    j = l  # secondary output index inside group m; same padded range as l
    m3 = m[:, None, None]
    # B[m, l, j] = w2[m*L + j, l]
    w2_tile = tl.load(
        w2_ptr + (m3 * L + j[None, None, :]) * L + l[None, :, None],
        mask=mmask[:, None, None] & lmask[None, :, None] & lmask[None, None, :],
        other=0.0,
    )
    s = tl.dot(z, w2_tile, input_precision=DOT_PRECISION, out_dtype=tl.float32)  # [m, p, j]
    cmask = mmask[:, None, None] & lmask[None, None, :]  # [MP, 1, LP]
    sec = m3 * L + j[None, None, :]  # secondary channel m*L + j
    if HAS_B2:
        s += tl.load(b2_ptr + sec, mask=cmask, other=0.0).to(tl.float32)
    if SHUFFLE:
        co = j[None, None, :] * M + m3  # out[:, j*M + m] = s[:, m*L + j]
    else:
        co = sec
    omask = cmask & pmask[None, :, None]
    if HAS_RES:
        r_pix = n * srn + ho * srh + wo * srw
        s += tl.load(res_ptr + r_pix[None, :, None] + co * src, mask=omask, other=0.0).to(tl.float32)
    if ACT == 1:
        s = tl.maximum(s, 0.0)
    o_pix = n * son + ho * soh + wo * sow
    tl.store(out_ptr + o_pix[None, :, None] + co * soc, s.to(out_ptr.dtype.element_ty), mask=omask)


@triton.autotune(
    configs=configs.backward(),
    key=["P", "L", "M", "M_IN", "KH", "KW"],
    # The weight/bias gradients are accumulated with atomics: every benchmarked run must start at 0.
    reset_to_zero=["gw1_ptr", "gb1_ptr", "gw2_ptr", "gb2_ptr"],
)
@triton.jit
def igc_bwd_kernel(
    g_ptr, x_ptr, w1_ptr, b1_ptr, w2_ptr, out_ptr,
    gy1_ptr, gw1_ptr, gb1_ptr, gw2_ptr, gb2_ptr,
    P, H, W, HO, WO,
    sxn, sxc, sxh, sxw,
    sgn, sgc, sgh, sgw,
    son, soc, soh, sow,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    L: tl.constexpr, M: tl.constexpr, M_IN: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
    LP: tl.constexpr, MP: tl.constexpr,
    HAS_B1: tl.constexpr, SHUFFLE: tl.constexpr, ACT: tl.constexpr, DOT_PRECISION: tl.constexpr,
    NEED_GY1: tl.constexpr, NEED_W1: tl.constexpr, NEED_B1: tl.constexpr,
    NEED_W2: tl.constexpr, NEED_B2: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    """Per output-pixel tile: dL/ds (masked by ReLU), the b2/w2/b1/w1 gradients (atomics into
    fp32 buffers) and dL/dy1 for the input-gradient kernel (stored as [pixel, l*M + m])."""
    p, pmask, n, ho, wo = _pixels(tl.program_id(0), P, HO, WO, BLOCK_P)
    l = tl.arange(0, LP)
    m = tl.arange(0, MP)
    lmask = l < L
    mmask = m < M
    j = l
    m3 = m[:, None, None]
    cmask = mmask[:, None, None] & lmask[None, None, :]
    sec = m3 * L + j[None, None, :]
    if SHUFFLE:
        co = j[None, None, :] * M + m3
    else:
        co = sec
    omask = cmask & pmask[None, :, None]
    g_pix = n * sgn + ho * sgh + wo * sgw
    gs = tl.load(g_ptr + g_pix[None, :, None] + co * sgc, mask=omask, other=0.0).to(tl.float32)
    if ACT == 1:
        o_pix = n * son + ho * soh + wo * sow
        o = tl.load(out_ptr + o_pix[None, :, None] + co * soc, mask=omask, other=0.0)
        gs = tl.where(o > 0, gs, 0.0)
    # gs: [m, p, j]; padded rows/columns and pixels past P are exactly zero.
    cmask2 = mmask[:, None] & lmask[None, :]
    if NEED_B2:
        tl.atomic_add(gb2_ptr + m[:, None] * L + j[None, :], tl.sum(gs, axis=1), mask=cmask2, sem="relaxed")
    dt = x_ptr.dtype.element_ty
    if NEED_W2:
        y1 = _primary_tile(
            x_ptr, w1_ptr, b1_ptr, n, ho, wo, pmask, l, m, lmask, mmask,
            H, W, sxn, sxc, sxh, sxw, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
            M, M_IN, KH, KW, HAS_B1, BLOCK_P, LP, MP,
        )
        z = tl.permute(y1, (2, 0, 1)).to(dt)  # [m, p, l]
        # dw2[m*L + j, l] = sum_p gs[m, p, j] * z[m, p, l]
        gw2 = tl.dot(tl.permute(gs.to(dt), (0, 2, 1)), z, input_precision=DOT_PRECISION, out_dtype=tl.float32)
        tl.atomic_add(
            gw2_ptr + (m3 * L + j[None, :, None]) * L + l[None, None, :], gw2,
            mask=mmask[:, None, None] & lmask[None, :, None] & lmask[None, None, :], sem="relaxed",
        )
    if NEED_GY1 or NEED_W1 or NEED_B1:
        # Bt[m, j, l] = w2[m*L + j, l];  dL/dz[m, p, l] = sum_j gs[m, p, j] * w2[m*L + j, l]
        w2t = tl.load(
            w2_ptr + (m3 * L + j[None, :, None]) * L + l[None, None, :],
            mask=mmask[:, None, None] & lmask[None, :, None] & lmask[None, None, :],
            other=0.0,
        )
        gz = tl.dot(gs.to(dt), w2t, input_precision=DOT_PRECISION, out_dtype=tl.float32)  # [m, p, l]
        c1 = l[None, :] * M + m[:, None]  # [MP, LP] primary channel l*M + m
        if NEED_B1:
            tl.atomic_add(gb1_ptr + c1, tl.sum(gz, axis=1), mask=cmask2, sem="relaxed")
        if NEED_GY1:
            C = L * M
            tl.store(
                gy1_ptr + p.to(tl.int64)[None, :, None] * C + c1[:, None, :],
                gz.to(gy1_ptr.dtype.element_ty),
                mask=cmask2[:, None, :] & pmask[None, :, None],
            )
        if NEED_W1:
            gy1 = tl.permute(gz, (1, 2, 0))  # [p, l, m]
            c1t = l[:, None] * M + m[None, :]
            wmask = lmask[:, None] & mmask[None, :]
            x_img = x_ptr + n * sxn
            for kh in tl.static_range(KH):
                hi = ho * stride_h - pad_h + kh * dil_h
                h_ok = pmask & (hi >= 0) & (hi < H)
                for kw in tl.static_range(KW):
                    wi = wo * stride_w - pad_w + kw * dil_w
                    ok = h_ok & (wi >= 0) & (wi < W)
                    x_pix = x_img + hi * sxh + wi * sxw
                    xmask = ok[:, None] & lmask[None, :]
                    for ci in range(M_IN):
                        xv = tl.load(x_pix[:, None] + (l * M_IN + ci)[None, :] * sxc, mask=xmask, other=0.0)
                        part = tl.sum(gy1 * xv.to(tl.float32)[:, :, None], axis=0)  # [l, m]
                        tl.atomic_add(
                            gw1_ptr + ((c1t * M_IN + ci) * KH + kh) * KW + kw, part, mask=wmask, sem="relaxed"
                        )


@triton.autotune(configs=configs.input_grad(), key=["Q", "L", "M", "M_IN", "KH", "KW"])
@triton.jit
def igc_bwd_input_kernel(
    gy1_ptr, w1_ptr, gx_ptr,
    Q, H, W, HO, WO,
    sxn, sxc, sxh, sxw,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    L: tl.constexpr, M: tl.constexpr, M_IN: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
    LP: tl.constexpr, CIP: tl.constexpr,
    BLOCK_Q: tl.constexpr,
):
    """dL/dx as a gather over output pixels (a transposed grouped conv): each input pixel sums
    the taps that reach it, so there are no atomics and the result is deterministic."""
    q = tl.program_id(0) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    qmask = q < Q
    wi = q % W
    t = q // W
    hi = t % H
    n = (t // H).to(tl.int64)
    l = tl.arange(0, LP)
    ci = tl.arange(0, CIP)
    lmask = l < L
    wmask = lmask[:, None] & (ci < M_IN)[None, :]
    C = L * M
    acc = tl.zeros((BLOCK_Q, LP, CIP), dtype=tl.float32)
    for kh in tl.static_range(KH):
        h_num = hi + pad_h - kh * dil_h
        ho = h_num // stride_h
        h_ok = qmask & (h_num >= 0) & (h_num % stride_h == 0) & (ho < HO)
        for kw in tl.static_range(KW):
            w_num = wi + pad_w - kw * dil_w
            wo = w_num // stride_w
            ok = h_ok & (w_num >= 0) & (w_num % stride_w == 0) & (wo < WO)
            row = ((n * HO + ho) * WO + wo) * C
            gmask = ok[:, None] & lmask[None, :]
            for mm in range(M):
                c1 = l * M + mm
                gv = tl.load(gy1_ptr + row[:, None] + c1[None, :], mask=gmask, other=0.0)
                wv = tl.load(w1_ptr + ((c1[:, None] * M_IN + ci[None, :]) * KH + kh) * KW + kw, mask=wmask, other=0.0)
                acc += gv.to(tl.float32)[:, :, None] * wv.to(tl.float32)[None, :, :]
    x_pix = n * sxn + hi * sxh + wi * sxw
    cin = l[:, None] * M_IN + ci[None, :]
    tl.store(
        gx_ptr + x_pix[:, None, None] + cin[None, :, :] * sxc,
        acc.to(gx_ptr.dtype.element_ty),
        mask=qmask[:, None, None] & wmask[None, :, :],
    )
