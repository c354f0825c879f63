// The forward of the fused CPU op (igc_kernels::igc_conv): see layer.h for the scheme.
#include <algorithm>
#include <vector>

#include "layer.h"
#include "output_cache.h"

namespace igc {
namespace cpu {
namespace {

// The Winograd forward (layer.h): work items are tiles of four output rows. Per segment of kSegF
// pixels and primary group, the group's channel rows of the tile's six packed input rows are
// transformed into component rows (comp: component j of the group's channel row c at
// comp + (j * grows + c) * wseg, column 0 = packed column p0; a few KiB that stay in L1 for the
// primary that reads them), the primary writes the group's four y1 tiles, and finish_segment does
// the rest of each output row. A group whose input rows hold an Inf or NaN in the segment gets
// its four y1 rows from the direct primary (taps of the packed rows, as in the row-by-row
// forward), so non-finite values reach exactly the outputs they reach in the direct conv.
// Transforming straight from x (masked loads for the padding) instead of packed rows measured
// slower: 9.3-11.1 against 8.9-9.0 ms at 1x96x256x256 on one thread. x's channel rows lie a power
// of two apart and evict each other from L2 before the next tile reads its two shared rows again,
// and the packing's row copies keep more DRAM reads in flight.
// join: the image is one segment wide and the output (and residual) rows lie one after another,
// so a whole tile's secondary is one run of 4 * W_out pixels: y1 keeps each channel's four rows
// one after another too, and finish_segment runs once per tile instead of once per row (36-pixel
// training patches: whole vectors, and a quarter of the GEMM calls and their K = L loops).
template <typename T, typename S, typename Finish>
void winograd_rows(const Layer<S>& g, const Kernels<S>& kern, const T* xp, const Str& xs, Finish&& finish_segment,
                   bool direct, bool stream, bool join) {
  const IGCConvParams& p = g.p;
  const int64_t L = p.L, M = p.M, C = p.C_out, K = p.M_in * p.kW, tiles = (p.H_out + 3) / 4;
  const int64_t grows = p.M_in * p.sW, wseg = g.wseg;  // packed channel rows per group
  at::parallel_for(0, p.N * tiles, grain_for(4 * p.W_out * C * (g.K1 + L)), [&](int64_t begin, int64_t end) {
    RowCache<S> cache(g, kern, 0, /*wino_tiles=*/true);
    // Each group's channels of the tile's new rows are packed just before the group's transform
    // reads them (the first segment), so it reads them from L1 (1 thread at 1x96x256x256: 5%
    // faster; no change on 2 threads or at 16x96x36x36).
    cache.deferred = pack_in_parts(p, xs);
    std::array<RowPrefetch<T>, 4> next;  // the input rows the next tile adds to the cache
    // Only short rows, as in the backward (short_row): at 1x96x256x256 the prefetches stalled on
    // full fill buffers and the forward ran 2.5% (2 threads) to 4% (1 thread) faster without them;
    // at 16x96x36x36 they make it 6% faster (A/B in one process, Intel Xeon CI machine).
    const bool prefetch = short_row<T>(p.W);
    // y1 row r of channel c: at y1 + c * ly + r * W_out when joined (ly: the four rows and the
    // vector a row's reads may run past them), else at y1 + (r * C + c) * kSegF.
    const int64_t ly = round_up(4 * p.W_out, kLanes) + kLanes;
    LineVec<S> comp(6 * grows * wseg, S(0)), y1(join ? C * ly : 4 * C * kSegF, S(0)), st(direct ? 0 : C * kSegF, S(0));
    std::vector<const S*> taps(K * 6), y1src(4 * C), res(C);
    std::vector<S*> y1dst(4 * C), dst(C);
    for (int64_t ci = 0; ci < p.M_in; ++ci)  // tap (ci, kw) of any group, component j: (ci * kW + kw) * 6 + j
      for (int64_t kw = 0; kw < p.kW; ++kw) {
        const int64_t r = (kw * p.dW) % p.sW, shift = (kw * p.dW) / p.sW;
        for (int64_t j = 0; j < 6; ++j) taps[(ci * p.kW + kw) * 6 + j] = comp.data() + (j * grows + ci * p.sW + r) * wseg + shift;
      }
    for (int64_t l = 0; l < L; ++l)  // y1dst: group l's 4 x M rows (WinoArgs::dst); y1src: per output row
      for (int64_t r = 0; r < 4; ++r)
        for (int64_t m = 0; m < M; ++m) {
          S* row = y1.data() + (join ? (l * M + m) * ly + r * p.W_out : (r * C + l * M + m) * kSegF);
          y1dst[(l * 4 + r) * M + m] = row;
          y1src[r * C + m * L + l] = row;
        }
    // The direct primary's taps (c, kh, kw) of output row r of the tile (the non-finite fallback),
    // built when a tile first needs them.
    const int64_t ntaps = p.C_in * p.kH * p.kW;
    std::vector<const S*> rtaps(4 * ntaps);
    int64_t rtaps_item = -1;
    WinoPackArgs<S> pk;
    pk.ldo = grows * wseg;
    WinoArgs<S> a;
    a.MB = M;
    a.K = K;
    a.soff = 0;
    a.src = taps.data();  // every group's component rows sit in comp, at the same places
    for (int64_t item = begin; item < end; ++item) {
      const int64_t n = item / tiles, t = item % tiles;
      cache.template prepare<T>(xp, xs, n, t);
      for (int64_t r = 0; r < 4; ++r)  // rows 4t + 6 .. 4t + 9 (before padding): the next tile's new rows
        next[r].set(prefetch ? xp : nullptr, xs, p.C_in, p.H, p.W, n, item + 1 < end && t + 1 < tiles ? 4 * t + 6 + r - p.pH : -1, p.sW);
      for (int64_t p0 = 0; p0 < p.W_out; p0 += kSegF) {
        const int64_t len = std::min(kSegF, p.W_out - p0);
        // Columns the segment's taps read: [p0, p0 + round_up(len, 8) + reach) of each packed row
        // when the kernels end a row with a half vector (and no more than that of the next 8 columns
        // otherwise: vectors of 4 or 8 pixels, or 16 with a row's last 1-8 pixels at half width).
        pk.n = round_up(round_up(len, kHalfLanes) + (p.dW * (p.kW - 1)) / p.sW, kHalfLanes);
        a.P = len;
        for (int64_t l = 0; l < L; ++l) {
          if (p0 == 0 && cache.deferred) cache.template pack<T>(l * p.M_in, (l + 1) * p.M_in);
          int nonfinite = 0;
          for (int64_t c = 0; c < grows; ++c) {
            for (int64_t kh = 0; kh < 6; ++kh) pk.in[kh] = cache.rows[kh] + (l * grows + c) * g.Wp + p0;
            pk.out = comp.data() + c * wseg;
            nonfinite |= kern.wino_pack(pk);
            // One of the next tile's new rows per transform: bursts of all four stalled on full
            // miss buffers.
            if (c < 4) next[c].fetch(p0, len, l, L);
          }
          for (int64_t r = grows; r < 4; ++r) next[r].fetch(p0, len, l, L);
          if (nonfinite) {
            if (rtaps_item != item) {
              for (int64_t r = 0; r < 4; ++r) cache.taps_from(r, rtaps.data() + r * ntaps);
              rtaps_item = item;
            }
            for (int64_t r = 0; r < 4; ++r)
              primary_group(g, kern, l, rtaps.data() + r * ntaps + l * g.K1, y1dst.data() + (l * 4 + r) * M, p0, len);
            continue;
          }
          a.w = g.U.data() + l * K * 6 * M;
          a.bias = g.b1.empty() ? nullptr : g.b1.data() + l * M;
          a.dst = y1dst.data() + l * 4 * M;
          kern.wino(a);
        }
        if (join && 4 * t + 3 < p.H_out) {
          finish_segment(n, 4 * t, 0, 4 * p.W_out, y1src.data(), nullptr, res, dst, st);
        } else {
          for (int64_t r = 0; r < 4 && 4 * t + r < p.H_out; ++r)
            finish_segment(n, 4 * t + r, p0, len, y1src.data() + r * C, nullptr, res, dst, st);
        }
      }
    }
    if (stream) kern.store_fence();
  });
}

// A dense conv with few output channels (L = 1 and M * kH <= kFewOutputRows: VDSR's 96 -> 1 tail),
// input row by input row. Output row by output row (the general path), every source vector of the
// K = C_in * kH * kW GEMM feeds only M multiply-adds: at M = 1, one load from L2 per multiply-add,
// and each input row is read kH times. Here each packed input row goes through one GEMM whose
// M * kH output rows are its parts of the kH output rows it reaches,
//   part[kh][m] = sum over (c, kw) of w[m][c][kh][kw] * tap (c, kw),
// so each source vector feeds M * kH multiply-adds and each input row is read once. Output row oy
// is then bias + the parts of its kH input rows (+ residual, activation): per output channel a
// rows GEMM of its kH parts with weights of 1, which gives it the kernels' epilogue and streaming
// stores. (One call per channel: zero weights on the other channels' parts would turn an Inf part
// into NaN.) Every weight-input product is the one the direct conv forms, zero rows of padding
// included, only summed in another order, so Inf and NaN reach the same outputs.
// VDSR's tail at 1x96x256x256, 2 threads, its input fresh from DRAM: 2.9-3.2 -> 2.0-2.2 ms.
constexpr int64_t kFewOutputRows = 12;

inline bool few_outputs_apply(const IGCConvParams& p, bool direct) {
  return direct && p.L == 1 && p.sH == 1 && p.dH == 1 && p.kH >= 2 && p.M * p.kH <= kFewOutputRows;
}

template <typename T, typename S>
void few_outputs_by_input_rows(const Layer<S>& g, const Kernels<S>& kern, const T* xp, const Str& xs, T* op,
                               const Str& os, const T* rp, const Str& rs, bool relu, bool stream) {
  const IGCConvParams& p = g.p;
  const int64_t M = p.M, kH = p.kH, kW = p.kW, MB = M * kH, K = p.C_in * kW;
  std::vector<S> w(K * MB), ones(kH, S(1));  // rows-GEMM layout: w[k * ldw + i]
  for (int64_t c = 0; c < p.C_in; ++c)
    for (int64_t kh = 0; kh < kH; ++kh)
      for (int64_t kw = 0; kw < kW; ++kw)
        for (int64_t m = 0; m < M; ++m) w[(c * kW + kw) * MB + kh * M + m] = g.w1f[((c * kH + kh) * kW + kw) * M + m];
  const int64_t Wq = round_up(p.W_out, kLanes) + kLanes;  // a part row, readable a vector past W_out
  at::parallel_for(0, p.N * p.H_out, grain_for(p.W_out * K * MB), [&](int64_t begin, int64_t end) {
    LineVec<S> packed(g.slot, S(0)), parts((kH + 1) * MB * Wq, S(0));  // kH input rows' parts + a zero row's
    std::vector<const S*> taps(K), sums(kH);
    std::vector<S*> part_rows(MB);
    S* dst = nullptr;
    const S* res = nullptr;
    for (int64_t c = 0; c < p.C_in; ++c)
      for (int64_t kw = 0; kw < kW; ++kw) taps[c * kW + kw] = packed.data() + g.tap_off[c * kH * kW + kw];
    RowsArgs<S> a;  // input row -> its parts
    a.MB = MB;
    a.K = K;
    a.P = p.W_out;
    a.w = w.data();
    a.ldw = MB;
    a.src = taps.data();
    a.dst = part_rows.data();
    RowsArgs<S> b;  // parts -> one channel of an output row
    b.MB = 1;
    b.K = kH;
    b.P = p.W_out;
    b.w = ones.data();
    b.ldw = 1;
    b.src = sums.data();
    b.dst = &dst;
    b.res = rp ? &res : nullptr;
    b.relu = relu;
    b.stream = stream;
    S* const zero_parts = parts.data() + kH * MB * Wq;  // 0 * w: not 0 where a weight is Inf or NaN
    auto parts_of = [&](int64_t iy) { return iy < 0 || iy >= p.H ? zero_parts : parts.data() + iy % kH * MB * Wq; };
    auto run_parts = [&](S* set) {
      for (int64_t i = 0; i < MB; ++i) part_rows[i] = set + i * Wq;
      kern.rows(a);
    };
    run_parts(zero_parts);  // `packed` holds zeros until the first row is packed
    for (int64_t row = begin; row < end;) {
      const int64_t n = row / p.H_out, oy0 = row % p.H_out, oy1 = std::min(p.H_out, oy0 + (end - row));
      int64_t next = std::max<int64_t>(0, oy0 - p.pH);  // the next input row to run
      for (int64_t oy = oy0; oy < oy1; ++oy) {
        for (; next < std::min(p.H, oy - p.pH + kH); ++next) {
          pack_row<T, S>(g, kern, xp, xs, n, next, packed.data());
          run_parts(parts_of(next));
        }
        for (int64_t oc = 0; oc < M; ++oc) {
          const int64_t m = g.c2_of_oc[oc];
          for (int64_t kh = 0; kh < kH; ++kh) sums[kh] = parts_of(oy - p.pH + kh) + (kh * M + m) * Wq;
          dst = reinterpret_cast<S*>(op + n * os.n + oc * os.c + oy * os.h);
          if (rp) res = reinterpret_cast<const S*>(rp + n * rs.n + oc * rs.c + oy * rs.h);
          b.bias = g.bf.data() + m;
          kern.rows(b);
        }
      }
      row += oy1 - oy0;
    }
    if (stream) kern.store_fence();
  });
}

template <typename T, typename S>
Tensor forward_impl(const IGCConvParams& p, const Tensor& x, const Tensor& w1, const c10::optional<Tensor>& b1,
                    const Tensor& w2, const c10::optional<Tensor>& b2, const c10::optional<Tensor>& residual) {
  Tensor out = empty_output({p.N, p.C_out, p.H_out, p.W_out}, x.options(), x.suggest_memory_format());
  if (out.numel() == 0) return out;
  const Kernels<S>& kern = kernels<S>();
  const Layer<S> g(p, w1, b1, w2, b2, winograd_enabled());
  const int64_t L = p.L, M = p.M, C = p.C_out, K1 = g.K1;
  const T* xp = x.data_ptr<T>();
  const Str xs = strides_of(x), os = strides_of(out);
  T* op = out.data_ptr<T>();
  const T* rp = residual ? residual->data_ptr<T>() : nullptr;
  const Str rs = residual ? strides_of(*residual) : Str{0, 0, 0, 0};
  // Direct stores from the kernel when the output (and residual) rows are contiguous in S.
  const bool direct = std::is_same<T, S>::value && os.w == 1 && (!rp || rs.w == 1);
  const bool relu = p.activation == kActRelu;
  // join: see winograd_rows.
  const bool join = g.wino && direct && p.W_out <= kSegF && os.h == p.W_out && (!rp || rs.h == p.W_out);
  // Streaming only where the kernels' stores cover whole cache lines: every channel plane starts
  // on a line, and the rows are whole vectors or a joined tile's four rows are (W_out % 4 == 0).
  // Elsewhere only the rows that happen to start on a line would stream, next to plain stores into
  // the lines they share with their neighbours (not measured to be worth it).
  const bool whole_lines =
      os.c % kLanes == 0 && (p.W_out % kLanes == 0 || (join && p.W_out % 4 == 0 && p.H_out % 4 == 0));
  const bool stream = direct && whole_lines && out.nbytes() >= kStreamBytes;
  const int64_t rows = p.N * p.H_out;

  // The secondary and the output of row (n, oy), pixels [p0, p0 + len), from the y1 tile rows
  // y1src (in secondary order: m*L + l); L == 1: the one GEMM straight from the packed input taps.
  auto finish_segment = [&](int64_t n, int64_t oy, int64_t p0, int64_t len, const S* const* y1src,
                            const S* const* taps, std::vector<const S*>& res, std::vector<S*>& dst, LineVec<S>& st) {
    for (int64_t oc = 0; oc < C; ++oc) {
      const int64_t c2 = g.c2_of_oc[oc];
      if (direct) {
        dst[c2] = reinterpret_cast<S*>(op + n * os.n + oc * os.c + oy * os.h + p0);
        if (rp) res[c2] = reinterpret_cast<const S*>(rp + n * rs.n + oc * rs.c + oy * rs.h + p0);
      } else {
        dst[c2] = st.data() + oc * kSegF;  // the tile in output-channel order
      }
    }
    RowsArgs<S> b;  // the output rows: shared fields, then the GEMM(s) that write them
    b.P = len;
    b.relu = relu && (direct || !rp);  // else the epilogue adds the residual, then the ReLU
    b.stream = stream;
    if (L == 1) {  // one GEMM straight from the packed input: K1 taps -> M output rows
      b.MB = M;
      b.K = K1;
      b.ldw = M;
      b.soff = p0;
      b.w = g.w1f.data();
      b.bias = g.bf.data();
      b.src = taps;
      b.dst = dst.data();
      b.res = direct && rp ? res.data() : nullptr;
      kern.rows(b);
    } else {  // the secondary, per group m, from the y1 tile
      b.MB = L;
      b.K = L;
      b.ldw = L;
      b.soff = 0;
      for (int64_t m = 0; m < M; ++m) {
        b.w = g.w2T.data() + m * L * L;
        b.bias = g.b2.empty() ? nullptr : g.b2.data() + m * L;
        b.src = y1src + m * L;
        b.dst = dst.data() + m * L;
        b.res = direct && rp ? res.data() + m * L : nullptr;
        kern.rows(b);
      }
    }
    if (direct) return;
    // General epilogue from the tile: residual, activation, rounding to T, any output strides.
    const bool late_relu = relu && rp;
    auto finish = [&](S v, int64_t oc, int64_t i) {
      if (rp) v += S(rp[n * rs.n + oc * rs.c + oy * rs.h + (p0 + i) * rs.w]);
      if (late_relu) v = v < S(0) ? S(0) : v;
      return T(v);
    };
    if (os.w == 1) {
      for (int64_t oc = 0; oc < C; ++oc) {
        T* o = op + n * os.n + oc * os.c + oy * os.h + p0;
        const S* t = st.data() + oc * kSegF;
        for (int64_t i = 0; i < len; ++i) o[i] = finish(t[i], oc, i);
      }
    } else if (os.c == 1 && std::is_same<T, S>::value && (!rp || rs.c == 1)) {  // channels_last: a transpose
      S* o = reinterpret_cast<S*>(op + n * os.n + oy * os.h + p0 * os.w);
      TransposeArgs<S> a;
      a.R = C;
      a.C = len;
      a.src = st.data();
      a.lds = kSegF;
      a.dst = o;
      a.ldd = os.w;
      kern.transpose(a);
      if (rp) {
        for (int64_t i = 0; i < len; ++i) {
          S* oi = o + i * os.w;
          const S* r = reinterpret_cast<const S*>(rp + n * rs.n + oy * rs.h + (p0 + i) * rs.w);
          for (int64_t oc = 0; oc < C; ++oc) {
            const S v = oi[oc] + r[oc];
            oi[oc] = late_relu && v < S(0) ? S(0) : v;
          }
        }
      }
    } else {
      for (int64_t i = 0; i < len; ++i)
        for (int64_t oc = 0; oc < C; ++oc)
          op[n * os.n + oc * os.c + oy * os.h + (p0 + i) * os.w] = finish(st[oc * kSegF + i], oc, i);
    }
  };

  if (few_outputs_apply(p, direct)) {
    few_outputs_by_input_rows<T, S>(g, kern, xp, xs, op, os, rp, rs, relu, stream);
    return out;
  }
  if (g.wino) {
    winograd_rows(g, kern, xp, xs, finish_segment, direct, stream, join);
    return out;
  }

  at::parallel_for(0, rows, grain_for(p.W_out * C * (K1 + L)), [&](int64_t begin, int64_t end) {
    RowCache<S> cache(g, kern);
    RowPrefetch<T> next;  // the input row the next output row adds to the cache
    LineVec<S> y1(L > 1 ? C * kSegF : 0, S(0)), st(direct ? 0 : C * kSegF, S(0));  // L == 1: no y1 tile
    std::vector<const S*> y1src(C), res(C);
    std::vector<S*> y1dst(C), dst(C);
    for (int64_t l = 0; l < L && L > 1; ++l)
      for (int64_t m = 0; m < M; ++m) {
        y1dst[l * M + m] = y1.data() + (l * M + m) * kSegF;
        y1src[m * L + l] = y1.data() + (l * M + m) * kSegF;
      }
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / p.H_out, oy = row % p.H_out;
      cache.template prepare<T>(xp, xs, n, oy);
      next.set(xp, xs, p.C_in, p.H, p.W, n, row + 1 < end && oy + 1 < p.H_out ? (oy + 1) * p.sH - p.pH + (p.kH - 1) * p.dH : -1,
               p.sW);
      for (int64_t p0 = 0; p0 < p.W_out; p0 += kSegF) {
        const int64_t len = std::min(kSegF, p.W_out - p0);
        if (L > 1) {
          primary_segment(g, kern, cache.src.data(), y1dst.data(), p0, len, [&](int64_t l) { next.fetch(p0, len, l, L); });
        } else {
          next.fetch(p0, len, 0, 1);
        }
        finish_segment(n, oy, p0, len, y1src.data(), cache.src.data(), res, dst, st);
      }
    }
    if (stream) kern.store_fence();
  });
  return out;
}

}  // namespace

Tensor forward(const IGCConvParams& p, const Tensor& x, const Tensor& w1, const c10::optional<Tensor>& b1,
               const Tensor& w2, const c10::optional<Tensor>& b2, const c10::optional<Tensor>& residual) {
  IGC_CPU_DISPATCH(x.scalar_type(), "igc_conv", [&] { return forward_impl<T, S>(p, x, w1, b1, w2, b2, residual); })
}

}  // namespace cpu
}  // namespace igc
