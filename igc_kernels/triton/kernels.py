"""Triton kernels of the fused IGC layer (DESIGN.md sections 2 and 3).

One program owns a tile of BLOCK_P output pixels (flattened over N, H_out, W_out) and *all*
channels, so the whole layer happens on chip and the activation crosses HBM once:

* primary grouped conv, on tensor cores through packing: G = 16 / M primary groups share one
  block-diagonal [G*M_in x G*M] weight tile per tap (16 x 16 at M = M_in = 4), so each tap is one
  batched ``tl.dot`` over the QP packs, ``[QP, P, 16] x [QP, 16, 16]``. The per-group product
  (4 x 4) is far below the 16 x 16 x 16 minimum of ``tl.dot``, and as CUDA-core FMAs it would
  need one scalar load per channel and tap and a layout shuffle per product (an offline compile
  for sm_90 of that version used 190-255 registers and spilled); packed, the x operand of a pack is
  G*M_in consecutive channels, one 16-byte vector load in channels_last. The block-diagonal zeros
  cost 4x the primary's MACs, which tensor cores have to spare at this size;
* interleave + secondary 1x1 grouped conv: per secondary group m a ``[pixels x L] x [L x L]``
  product, written as one batched ``tl.dot`` over m (``[M, P, L] x [M, L, L]``), with L padded to a
  power of two >= 16 (24 -> 32);
* output shuffle, biases, residual and activation in the epilogue. No permutation moves data in
  memory: the interleave is a reshape/permute of the register tile and the shuffle is the index
  map of the store (``out[:, j*M + m] = s[:, m*L + j]``).

Accumulation is fp32; fp16/bf16 operands feed the tensor cores, fp32 operands use IEEE fp32 dots.
Strides are kernel arguments, so one kernel serves NCHW and channels_last (Triton specialises
unit strides, which is what makes the channel loads contiguous in channels_last; NCHW works but
gathers channels element by element).

The backward is three kernels. A persistent one walks output tiles: dL/ds (masked by the ReLU),
dL/dy1 (stored pixel-major for the next two), and the w2/b1/b2 gradients, with ``y1`` recomputed
tile by tile for dL/dw2 instead of being saved; those sums stay in registers and are added once per
program with fp32 atomics. dL/dw1 is a packed product per tap too (``x_tap^T [QP, 16, P] x
dL/dy1 [QP, P, 16]``), one program per (tap, chunk of tiles). The input gradient (a transposed
grouped conv) gathers dL/dy1 over the taps that reach each input pixel: no atomics.
"""

from __future__ import annotations

import triton
import triton.language as tl

from . import configs


@triton.jit
def _mma(a, b, acc, IEEE: tl.constexpr):
    """a @ b (+ acc), fp32 accumulation. fp32 operands stay fp32 (IEEE) instead of TF32: the op
    promises 1e-4 relative in fp32. (A bool, not the precision string, because torch.compile's
    user-kernel codegen reads str arguments as buffer names.)"""
    if IEEE:
        acc = tl.dot(a, b, acc, input_precision="ieee", out_dtype=tl.float32)
    else:
        acc = tl.dot(a, b, acc, out_dtype=tl.float32)
    return acc


@triton.jit
def _pack_channels(QP: tl.constexpr, KP: tl.constexpr, G: tl.constexpr, L: tl.constexpr,
                   M_IN: tl.constexpr, MINP: tl.constexpr):
    """Input channel of each packed column: ch[q, 0, k] = (q*G + g)*M_in + ci for k = g*MINP + ci,
    and which columns are real (not padding)."""
    q = tl.arange(0, QP)[:, None, None]
    k = tl.arange(0, KP)[None, None, :]
    if M_IN == MINP:
        ch = q * (G * M_IN) + k  # stays provably contiguous along k: vector loads in channels_last
        kmask = (k < G * M_IN) & (ch < L * M_IN)
    else:
        ch = (q * G + k // MINP) * M_IN + k % MINP
        kmask = (k < G * MINP) & (k % MINP < M_IN) & (q * G + k // MINP < L)
    return ch, kmask


@triton.jit
def _load_tap(x_img, ho, wo, pmask, ch, kmask, H, W, sxc, sxh, sxw,
              stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, kh, kw):
    """The x operand of one tap, [QP, P, KP]: x at the tap's input pixel, packed channels; pads are 0."""
    hi = ho * stride_h - pad_h + kh * dil_h
    wi = wo * stride_w - pad_w + kw * dil_w
    ok = pmask & (hi >= 0) & (hi < H) & (wi >= 0) & (wi < W)
    x_pix = x_img + hi * sxh + wi * sxw
    return tl.load(x_pix[None, :, None] + ch * sxc, mask=ok[None, :, None] & kmask, other=0.0)


@triton.jit
def _weight_offsets(QP: tl.constexpr, KP: tl.constexpr, NP: tl.constexpr):
    """Offsets of one tap's packed weights [QP, KP, NP] (see pack_w1)."""
    return (tl.arange(0, QP)[:, None, None] * KP + tl.arange(0, KP)[None, :, None]) * NP \
        + tl.arange(0, NP)[None, None, :]


@triton.jit
def _interleave(acc, b1_ptr, L: tl.constexpr, M: tl.constexpr, G: tl.constexpr, QP: tl.constexpr,
                MP: tl.constexpr, HAS_B1: tl.constexpr, BLOCK_P: tl.constexpr):
    """acc[q, p, g*MP + m] (y1 of group l = q*G + g, member m) -> z[m, p, l], plus b1."""
    z = tl.reshape(tl.permute(tl.reshape(acc, (QP, BLOCK_P, G, MP)), (3, 1, 0, 2)), (MP, BLOCK_P, QP * G))
    if HAS_B1:
        m = tl.arange(0, MP)[:, None, None]
        l = tl.arange(0, QP * G)[None, None, :]
        z += tl.load(b1_ptr + l * M + m, mask=(m < M) & (l < L), other=0.0).to(tl.float32)
    return z


@triton.jit
def _primary_z(
    x_ptr, w1p_ptr, b1_ptr,
    n, ho, wo, pmask,
    H, W, sxn, sxc, sxh, sxw,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    L: tl.constexpr, M: tl.constexpr, M_IN: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
    G: tl.constexpr, QP: tl.constexpr, KP: tl.constexpr, MINP: tl.constexpr, MP: tl.constexpr,
    HAS_B1: tl.constexpr, BLOCK_P: tl.constexpr, IEEE: tl.constexpr,
):
    """The primary conv of one pixel tile, returned interleaved: z[m, p, l] = y1[p, l*M + m] (fp32).

    G primary groups are packed into one block-diagonal [G*M_in, G*M] tile per tap (see
    pack_w1), so that each tap is one batched tl.dot over the QP packs: [QP, P, KP] x [QP, KP, NP]
    with every dimension >= 16. The x operand of a pack is G*M_in consecutive channels, which
    channels_last makes contiguous (vector loads)."""
    NP: tl.constexpr = G * MP
    ch, kmask = _pack_channels(QP, KP, G, L, M_IN, MINP)
    w_off = _weight_offsets(QP, KP, NP)
    dt = x_ptr.dtype.element_ty
    acc = tl.zeros((QP, BLOCK_P, NP), dtype=tl.float32)
    x_img = x_ptr + n * sxn  # n is int64: batch offsets may pass 2**31 elements
    for kh in tl.static_range(KH):
        for kw in tl.static_range(KW):
            a = _load_tap(x_img, ho, wo, pmask, ch, kmask, H, W, sxc, sxh, sxw,
                          stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, kh, kw)
            b = tl.load(w1p_ptr + (kh * KW + kw) * (QP * KP * NP) + w_off)
            acc = _mma(a.to(dt), b.to(dt), acc, IEEE)
    return _interleave(acc, b1_ptr, L, M, G, QP, MP, HAS_B1, BLOCK_P)


@triton.jit
def _pixels(pid, P, HO, WO, BLOCK_P: tl.constexpr):
    p = pid * BLOCK_P + tl.arange(0, BLOCK_P)
    wo = p % WO
    t = p // WO
    ho = t % HO
    n = (t // HO).to(tl.int64)
    return p, p < P, n, ho, wo


@triton.autotune(configs=configs.forward(), key=["P", "L", "M", "M_IN", "KH", "KW", "sxc"])
@triton.jit
def igc_fwd_kernel(
    x_ptr, w1p_ptr, b1_ptr, w2_ptr, b2_ptr, res_ptr, out_ptr,
    P, H, W, HO, WO,
    sxn, sxc, sxh, sxw,
    son, soc, soh, sow,
    srn, src, srh, srw,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    L: tl.constexpr, M: tl.constexpr, M_IN: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
    G: tl.constexpr, QP: tl.constexpr, KP: tl.constexpr, MINP: tl.constexpr, MP: tl.constexpr,
    HAS_B1: tl.constexpr, HAS_B2: tl.constexpr, HAS_RES: tl.constexpr,
    SHUFFLE: tl.constexpr, ACT: tl.constexpr, IEEE: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    _, pmask, n, ho, wo = _pixels(tl.program_id(0), P, HO, WO, BLOCK_P)
    LP: tl.constexpr = QP * G
    l = tl.arange(0, LP)
    m = tl.arange(0, MP)
    lmask = l < L
    mmask = m < M
    # Interleave: secondary group m reads member m of every primary group -> z[m, p, l].
    # Rounded to the input dtype like the stock path (tensor cores take fp16/bf16 operands).
    z = _primary_z(
        x_ptr, w1p_ptr, b1_ptr, n, ho, wo, pmask,
        H, W, sxn, sxc, sxh, sxw, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
        L, M, M_IN, KH, KW, G, QP, KP, MINP, MP, HAS_B1, BLOCK_P, IEEE,
    ).to(x_ptr.dtype.element_ty)
    j = l  # secondary output index inside group m; same padded range as l
    m3 = m[:, None, None]
    # B[m, l, j] = w2[m*L + j, l]
    w2_tile = tl.load(
        w2_ptr + (m3 * L + j[None, None, :]) * L + l[None, :, None],
        mask=mmask[:, None, None] & lmask[None, :, None] & lmask[None, None, :],
        other=0.0,
    )
    s = _mma(z, w2_tile, None, IEEE)  # [m, p, j]
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
    key=["P", "L", "M", "M_IN", "KH", "KW", "sxc"],
    # The weight/bias gradients are added with atomics: every benchmarked run must start at 0.
    reset_to_zero=["gb1_ptr", "gw2_ptr", "gb2_ptr"],
)
@triton.jit
def igc_bwd_kernel(
    g_ptr, x_ptr, w1p_ptr, b1_ptr, w2_ptr, out_ptr,
    gy1_ptr, gb1_ptr, gw2_ptr, gb2_ptr,
    P, H, W, HO, WO,
    sxn, sxc, sxh, sxw,
    sgn, sgc, sgh, sgw,
    son, soc, soh, sow,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    L: tl.constexpr, M: tl.constexpr, M_IN: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
    G: tl.constexpr, QP: tl.constexpr, KP: tl.constexpr, MINP: tl.constexpr, MP: tl.constexpr,
    HAS_B1: tl.constexpr, SHUFFLE: tl.constexpr, ACT: tl.constexpr, IEEE: tl.constexpr,
    NEED_GY1: tl.constexpr, NEED_B1: tl.constexpr, NEED_W2: tl.constexpr, NEED_B2: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    """Persistent over output-pixel tiles: dL/ds (masked by ReLU); the b2, w2 and b1 gradients,
    summed in registers across the program's tiles and added once with fp32 atomics; and dL/dy1
    (stored as [pixel, l*M + m]) for the w1- and input-gradient kernels."""
    LP: tl.constexpr = QP * G
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
    cmask2 = mmask[:, None] & lmask[None, :]
    c1 = l[None, :] * M + m[:, None]  # [MP, LP] primary channel l*M + m
    w2mask = mmask[:, None, None] & lmask[None, :, None] & lmask[None, None, :]
    # Bt[m, j, l] = w2[m*L + j, l]
    w2t = tl.load(w2_ptr + (m3 * L + j[None, :, None]) * L + l[None, None, :], mask=w2mask, other=0.0)
    dt = x_ptr.dtype.element_ty
    acc_b2 = tl.zeros((MP, LP), dtype=tl.float32)
    acc_b1 = tl.zeros((MP, LP), dtype=tl.float32)
    acc_w2 = tl.zeros((MP, LP, LP), dtype=tl.float32)
    for tile in range(tl.program_id(0), tl.cdiv(P, BLOCK_P), tl.num_programs(0)):
        p, pmask, n, ho, wo = _pixels(tile, P, HO, WO, BLOCK_P)
        omask = cmask & pmask[None, :, None]
        g_pix = n * sgn + ho * sgh + wo * sgw
        gs = tl.load(g_ptr + g_pix[None, :, None] + co * sgc, mask=omask, other=0.0).to(tl.float32)
        if ACT == 1:
            o_pix = n * son + ho * soh + wo * sow
            o = tl.load(out_ptr + o_pix[None, :, None] + co * soc, mask=omask, other=0.0)
            gs = tl.where(o > 0, gs, 0.0)
        # gs: [m, p, j]; padded rows/columns and pixels past P are exactly zero.
        if NEED_B2:
            acc_b2 += tl.sum(gs, axis=1)
        if NEED_GY1 or NEED_B1:
            gz = _mma(gs.to(dt), w2t, None, IEEE)  # dL/dz[m, p, l] = sum_j gs[m, p, j] w2[m*L + j, l]
            if NEED_B1:
                acc_b1 += tl.sum(gz, axis=1)
            if NEED_GY1:
                tl.store(
                    gy1_ptr + p.to(tl.int64)[None, :, None] * (L * M) + c1[:, None, :],
                    gz.to(gy1_ptr.dtype.element_ty),
                    mask=cmask2[:, None, :] & pmask[None, :, None],
                )
        if NEED_W2:
            z = _primary_z(  # recomputed, not saved: [m, p, l]
                x_ptr, w1p_ptr, b1_ptr, n, ho, wo, pmask,
                H, W, sxn, sxc, sxh, sxw, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
                L, M, M_IN, KH, KW, G, QP, KP, MINP, MP, HAS_B1, BLOCK_P, IEEE,
            ).to(dt)
            # dw2[m*L + j, l] = sum_p gs[m, p, j] * z[m, p, l]
            acc_w2 = _mma(tl.permute(gs.to(dt), (0, 2, 1)), z, acc_w2, IEEE)
    if NEED_B2:
        tl.atomic_add(gb2_ptr + m[:, None] * L + j[None, :], acc_b2, mask=cmask2, sem="relaxed")
    if NEED_B1:
        tl.atomic_add(gb1_ptr + c1, acc_b1, mask=cmask2, sem="relaxed")
    if NEED_W2:
        tl.atomic_add(gw2_ptr + (m3 * L + j[None, :, None]) * L + l[None, None, :], acc_w2, mask=w2mask,
                      sem="relaxed")


@triton.jit
def igc_bwd_w1_kernel(
    x_ptr, gy1_ptr, gw1_ptr,
    P, H, W, HO, WO, TILES_PER_CHUNK,
    sxn, sxc, sxh, sxw,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    L: tl.constexpr, M: tl.constexpr, M_IN: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
    G: tl.constexpr, QP: tl.constexpr, KP: tl.constexpr, MINP: tl.constexpr, MP: tl.constexpr,
    IEEE: tl.constexpr, BLOCK_P: tl.constexpr,
):
    """dL/dw1 of one tap (grid axis 0) over one chunk of pixel tiles (axis 1), in the packed layout:
    sum over pixels of x_tap^T [QP, KP, P] x dL/dy1 [QP, P, NP], kept in registers across the
    chunk and added once (block diagonal only) with fp32 atomics. The taps of a chunk are
    neighbouring programs, so the chunk's dL/dy1 comes from HBM once and then from L2."""
    NP: tl.constexpr = G * MP
    C: tl.constexpr = L * M
    tap = tl.program_id(0)
    kh = tap // KW
    kw = tap % KW
    pk = tl.arange(0, QP)[:, None, None]
    kk = tl.arange(0, KP)[None, :, None]
    nn = tl.arange(0, NP)[None, None, :]
    if M == MP:
        c1 = pk * (G * M) + nn  # contiguous along nn: vector loads of dL/dy1
        nmask = c1 < C
    else:
        c1 = (pk * G + nn // MP) * M + nn % MP
        nmask = (nn % MP < M) & (pk * G + nn // MP < L)
    ch, kmask = _pack_channels(QP, KP, G, L, M_IN, MINP)
    dt = x_ptr.dtype.element_ty
    acc = tl.zeros((QP, KP, NP), dtype=tl.float32)
    for i in range(TILES_PER_CHUNK):
        p, pmask, n, ho, wo = _pixels(tl.program_id(1) * TILES_PER_CHUNK + i, P, HO, WO, BLOCK_P)
        a = _load_tap(x_ptr + n * sxn, ho, wo, pmask, ch, kmask, H, W, sxc, sxh, sxw,
                      stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, kh, kw).to(dt)
        gyq = tl.load(gy1_ptr + p.to(tl.int64)[None, :, None] * C + c1, mask=pmask[None, :, None] & nmask,
                      other=0.0).to(dt)
        acc = _mma(tl.permute(a, (0, 2, 1)), gyq, acc, IEEE)
    # Only the block diagonal of a packed tile is a weight: g(k) == g(n).
    diag = (kk // MINP == nn // MP) & (kk < G * MINP) & (kk % MINP < M_IN) & (nn % MP < M) \
        & (pk * G + kk // MINP < L)
    tl.atomic_add(gw1_ptr + tap * (QP * KP * NP) + _weight_offsets(QP, KP, NP), acc, mask=diag, sem="relaxed")


@triton.autotune(configs=configs.input_grad(), key=["Q", "L", "M", "M_IN", "KH", "KW", "sxc"])
@triton.jit
def igc_bwd_input_kernel(
    gy1_ptr, w1p_ptr, gx_ptr,
    Q, H, W, HO, WO,
    sxn, sxc, sxh, sxw,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    L: tl.constexpr, M: tl.constexpr, M_IN: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
    G: tl.constexpr, QP: tl.constexpr, KP: tl.constexpr, MINP: tl.constexpr, MP: tl.constexpr,
    IEEE: tl.constexpr,
    BLOCK_Q: tl.constexpr,
):
    """dL/dx as a gather over output pixels (a transposed grouped conv): each input pixel sums
    the taps that reach it, so there are no atomics and the result is deterministic. Per tap it is
    the primary's packed product transposed: [QP, P, NP] x [QP, NP, KP]."""
    NP: tl.constexpr = G * MP
    C: tl.constexpr = L * M
    qpix = tl.program_id(0) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    qmask = qpix < Q
    wi = qpix % W
    t = qpix // W
    hi = t % H
    n = (t // H).to(tl.int64)
    pk = tl.arange(0, QP)[:, None, None]
    nn = tl.arange(0, NP)[None, None, :]
    if M == MP:
        c1 = pk * (G * M) + nn  # contiguous along nn: vector loads of dL/dy1
        nmask = c1 < C
    else:
        c1 = (pk * G + nn // MP) * M + nn % MP
        nmask = (nn % MP < M) & (pk * G + nn // MP < L)
    # The packed weights of a tap, transposed: [QP, NP, KP]
    wt_off = (pk * KP + tl.arange(0, KP)[None, None, :]) * NP + tl.arange(0, NP)[None, :, None]
    dt = gx_ptr.dtype.element_ty
    acc = tl.zeros((QP, BLOCK_Q, KP), dtype=tl.float32)
    for kh in tl.static_range(KH):
        h_num = hi + pad_h - kh * dil_h
        ho = h_num // stride_h
        h_ok = qmask & (h_num >= 0) & (h_num % stride_h == 0) & (ho < HO)
        for kw in tl.static_range(KW):
            w_num = wi + pad_w - kw * dil_w
            wo = w_num // stride_w
            ok = h_ok & (w_num >= 0) & (w_num % stride_w == 0) & (wo < WO)
            row = ((n * HO + ho) * WO + wo) * C
            a = tl.load(gy1_ptr + row[None, :, None] + c1, mask=ok[None, :, None] & nmask, other=0.0)
            b = tl.load(w1p_ptr + (kh * KW + kw) * (QP * KP * NP) + wt_off)
            acc = _mma(a.to(dt), b.to(dt), acc, IEEE)
    ch, kmask = _pack_channels(QP, KP, G, L, M_IN, MINP)
    x_pix = n * sxn + hi * sxh + wi * sxw
    tl.store(gx_ptr + x_pix[None, :, None] + ch * sxc, acc.to(dt), mask=qmask[None, :, None] & kmask)
