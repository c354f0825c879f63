// The forward of the fused CPU op (igc_kernels::igc_conv): see layer.h for the scheme.
#include <algorithm>
#include <atomic>
#include <memory>
#include <thread>
#include <vector>

#include "layer.h"
#include "output_cache.h"

namespace igc {
namespace cpu {
namespace {

// The tests' switches (see kChainRing): chains with staggered tiles (1, the default) or tiles at
// rows 4i in every stage; and the lead of the one-layer Winograd forward, whose tiles then start
// at the rows lead + 4i, as those of a chain's stage with that lead.
std::atomic<int> g_chain_stagger{1};
std::atomic<int> g_wino_lead{0};

// The secondary (grouped 1x1 conv) of P pixels: per group m, a rows GEMM from the y1 rows
// y1src[m * L ..] (secondary order) to the output rows dst[m * L ..] (+ res[m * L ..] when res is
// not null); b carries the epilogue (P, relu, stream).
template <typename S>
void secondary(const Layer<S>& g, const Kernels<S>& kern, RowsArgs<S> b, const S* const* y1src, S* const* dst,
               const S* const* res) {
  const int64_t L = g.p.L;
  b.MB = L;
  b.K = L;
  b.ldw = L;
  b.soff = 0;
  for (int64_t m = 0; m < g.p.M; ++m) {
    b.w = g.w2T.data() + m * L * L;
    b.bias = g.b2.empty() ? nullptr : g.b2.data() + m * L;
    b.src = y1src + m * L;
    b.dst = dst + m * L;
    b.res = res ? res + m * L : nullptr;
    kern.rows(b);
  }
}

// One thread's scratch of the Winograd forward (layer.h), for layers of one shape: the primary of
// one segment of a tile of four output rows. Per primary group, the group's channel rows of the
// tile's six packed input rows are transformed into component rows (comp: component j of the
// group's channel row c at comp + (j * grows + c) * wseg, column 0 = packed column p0; a few KiB
// that stay in L1 for the primary that reads them), and the primary writes the group's four y1
// rows. A group whose input rows hold an Inf or NaN in the segment gets its four y1 rows from the
// direct primary (taps of the packed rows, as in the row-by-row forward), so non-finite values
// reach exactly the outputs they reach in the direct conv.
// join: the image is one segment wide and the output (and residual) rows lie one after another,
// so a whole tile's secondary is one run of 4 * W_out pixels: y1 keeps each channel's four rows
// one after another too, and the caller finishes once per tile instead of once per row (36-pixel
// training patches: whole vectors, and a quarter of the GEMM calls and their K = L loops).
template <typename S>
struct WinoTile {
  const Kernels<S>& kern;
  const IGCConvParams& p;  // the shape (every layer run through this scratch has it)
  const bool join;
  const int64_t grows, wseg, ntaps;
  // y1 row r of channel c = l * M + m: at y1 + c * ly + r * W_out when joined (ly: the four rows
  // and the vector a row's reads may run past them), else at y1 + (r * C + m * L + l) * kSegF, so
  // the L rows that secondary group m reads lie one after another rather than M * kSegF apart (the
  // tile, 4 x C x kSegF values, outgrows L1). A small gain: IGC-VDSR inference at 256x256 ran
  // 0.973-0.993x the time in three A/B runs on a Zen 3 (2 threads, alternating in one process).
  const int64_t ly;
  LineVec<S> comp, y1;
  std::vector<const S*> taps, y1src, rtaps;
  std::vector<S*> y1dst;
  bool rtaps_built = false;  // rtaps hold this tile's taps
  WinoPackArgs<S> pk;
  WinoArgs<S> a;

  WinoTile(const Layer<S>& g, const Kernels<S>& k, bool join_)
      : kern(k),
        p(g.p),
        join(join_),
        grows(g.p.M_in * g.p.sW),
        wseg(g.wseg),
        ntaps(g.p.C_in * g.p.kH * g.p.kW),
        ly(round_up(4 * g.p.W_out, kLanes) + kLanes),
        comp(6 * grows * wseg, S(0)),
        y1(join ? g.p.C_out * ly : 4 * g.p.C_out * kSegF, S(0)),
        taps(g.p.M_in * g.p.kW * 6),
        y1src(4 * g.p.C_out),
        rtaps(4 * ntaps),
        y1dst(4 * g.p.C_out) {
    const int64_t L = p.L, M = p.M, C = p.C_out;
    for (int64_t ci = 0; ci < p.M_in; ++ci)  // tap (ci, kw) of any group, component j: (ci * kW + kw) * 6 + j
      for (int64_t kw = 0; kw < p.kW; ++kw) {
        const int64_t r = (kw * p.dW) % p.sW, shift = (kw * p.dW) / p.sW;
        for (int64_t j = 0; j < 6; ++j) taps[(ci * p.kW + kw) * 6 + j] = comp.data() + (j * grows + ci * p.sW + r) * wseg + shift;
      }
    for (int64_t l = 0; l < L; ++l)  // y1dst: group l's 4 x M rows (WinoArgs::dst); y1src: per output row
      for (int64_t r = 0; r < 4; ++r)
        for (int64_t m = 0; m < M; ++m) {
          S* row = y1.data() + (join ? (l * M + m) * ly + r * p.W_out : (r * C + m * L + l) * kSegF);
          y1dst[(l * 4 + r) * M + m] = row;
          y1src[r * C + m * L + l] = row;
        }
    pk.ldo = grows * wseg;
    a.MB = M;
    a.K = p.M_in * p.kW;
    a.soff = 0;
    a.src = taps.data();  // every group's component rows sit in comp, at the same places
  }

  // A new tile: the direct primary's taps are built again when the tile needs them.
  void new_tile() { rtaps_built = false; }

  // row_taps for rows in segments (sW = dW = 1): tap (c, kh, kw) of output row r0 reads column kw
  // of channel c's part of the segment at `off` in rows[r0 + kh].
  void segment_taps(const S* const* rows, int64_t r0, int64_t off, int64_t sw, const S** out) const {
    for (int64_t kh = 0; kh < p.kH; ++kh)
      for (int64_t c = 0; c < p.C_in; ++c)
        for (int64_t kw = 0; kw < p.kW; ++kw) out[(c * p.kH + kh) * p.kW + kw] = rows[r0 + kh] + off + c * sw + kw;
  }

  // The y1 rows of layer g's tile whose six packed input rows are rows[0..5], pixels [p0, p0 + len).
  // before(l) runs before group l's transform (the deferred packing of its channels); after(l, c)
  // after the transform of its channel row c (the prefetch of the next tile's rows).
  // sw = 0: packed rows (channel c's column j - pW at c * Wp + j, for every j); sw > 0: rows in
  // segments (kChainSegW), channel c's window of the segment at p0 at (p0 / kSegF) * C_in * sw + c * sw.
  template <typename Before, typename After>
  void segment(const Layer<S>& g, const S* const* rows, int64_t p0, int64_t len, int64_t sw, Before&& before,
               After&& after) {
    // Columns the segment's taps read: [p0, p0 + round_up(len, 8) + reach) of each packed row
    // when the kernels end a row with a half vector (and no more than that of the next 8 columns
    // otherwise: vectors of 4 or 8 pixels, or 16 with a row's last 1-8 pixels at half width).
    pk.n = round_up(round_up(len, kHalfLanes) + (p.dW * (p.kW - 1)) / p.sW, kHalfLanes);
    a.P = len;
    const int64_t L = p.L, M = p.M, K = a.K;
    const int64_t off = sw > 0 ? (p0 / kSegF) * p.C_in * sw : p0, cs = sw > 0 ? sw : g.Wp;
    if (sw > 0) rtaps_built = false;  // the direct primary's taps hold the segment's offset
    for (int64_t l = 0; l < L; ++l) {
      before(l);
      int nonfinite = 0;
      for (int64_t c = 0; c < grows; ++c) {
        for (int64_t kh = 0; kh < 6; ++kh) pk.in[kh] = rows[kh] + off + (l * grows + c) * cs;
        pk.out = comp.data() + c * wseg;
        nonfinite |= kern.wino_pack(pk);
        after(l, c);
      }
      if (nonfinite) {
        if (!rtaps_built) {
          for (int64_t r = 0; r < 4; ++r) {
            if (sw > 0) {
              segment_taps(rows, r, off, sw, rtaps.data() + r * ntaps);
            } else {
              row_taps(g, rows, r, rtaps.data() + r * ntaps);
            }
          }
          rtaps_built = true;
        }
        for (int64_t r = 0; r < 4; ++r)
          primary_group(g, kern, l, rtaps.data() + r * ntaps + l * g.K1, y1dst.data() + (l * 4 + r) * M, p0, len,
                        sw > 0 ? 0 : p0);
        continue;
      }
      a.w = g.U.data() + l * K * 6 * M;
      a.bias = g.b1.empty() ? nullptr : g.b1.data() + l * M;
      a.dst = y1dst.data() + l * 4 * M;
      kern.wino(a);
    }
  }
};

// The Winograd forward of one layer: work items are tiles of four output rows; finish_segment
// does the rest of each output row from its y1 rows.
// Transforming straight from x (masked loads for the padding) instead of packed rows measured
// slower: 9.3-11.1 against 8.9-9.0 ms at 1x96x256x256 on one thread. x's channel rows lie a power
// of two apart and evict each other from L2 before the next tile reads its two shared rows again,
// and the packing's row copies keep more DRAM reads in flight.
template <typename T, typename S, typename Finish>
void winograd_rows(const Layer<S>& g, const Kernels<S>& kern, const T* xp, const Str& xs, Finish&& finish_segment,
                   bool direct, bool stream, bool join) {
  const IGCConvParams& p = g.p;
  // Tile t's output rows: 4t - top .. 4t - top + 3 (top > 0 only with the tests' g_wino_lead).
  const int64_t top = (4 - g_wino_lead.load(std::memory_order_relaxed) % 4) % 4;
  const int64_t L = p.L, C = p.C_out, tiles = (p.H_out + top + 3) / 4;
  // A jump to another band's tile costs the packing of two more input rows.
  BandScheduler sched(p.N * tiles, grain_for(4 * p.W_out * C * (g.K1 + L)), 2);
  at::parallel_for(0, sched.bands(), 1, [&](int64_t band0, int64_t band1) {
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
    WinoTile<S> wt(g, kern, join);
    LineVec<S> st(direct ? 0 : C * kSegF, S(0));
    std::vector<const S*> res(C);
    std::vector<S*> dst(C);
    auto run_tile = [&](int64_t item, bool) {
      const int64_t n = item / tiles, t = item % tiles, a = 4 * t - top;
      cache.template prepare_from<T>(xp, xs, n, a - p.pH);
      wt.new_tile();
      // Rows a + 6 .. a + 9 (before padding): the next tile's new rows (wasted if another thread
      // takes that tile).
      for (int64_t r = 0; r < 4; ++r)
        next[r].set(prefetch ? xp : nullptr, xs, p.C_in, p.H, p.W, n, t + 1 < tiles ? a + 6 + r - p.pH : -1, p.sW);
      for (int64_t p0 = 0; p0 < p.W_out; p0 += kSegF) {
        const int64_t len = std::min(kSegF, p.W_out - p0);
        wt.segment(
            g, cache.rows.data(), p0, len, /*sw=*/0,
            [&](int64_t l) {
              if (p0 == 0 && cache.deferred) cache.template pack<T>(l * p.M_in, (l + 1) * p.M_in);
            },
            // One of the next tile's new rows per transform: bursts of all four stalled on full
            // miss buffers (groups of fewer than 4 channel rows fetch the rest after their last).
            [&](int64_t l, int64_t c) {
              if (c < 4) next[c].fetch(p0, len, l, L);
              if (c + 1 == wt.grows)
                for (int64_t r = wt.grows; r < 4; ++r) next[r].fetch(p0, len, l, L);
            });
        if (join && a >= 0 && a + 3 < p.H_out) {
          finish_segment(n, a, 0, 4 * p.W_out, wt.y1src.data(), nullptr, res, dst, st);
        } else {
          for (int64_t r = std::max<int64_t>(0, -a); r < 4 && a + r < p.H_out; ++r)
            finish_segment(n, a + r, p0, len, wt.y1src.data() + r * C, nullptr, res, dst, st);
        }
      }
    };
    for (int64_t b = band0; b < band1; ++b) sched.work(b, run_tile);
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

// One thread's parts of few_outputs_by_input_rows: slots input rows' parts (and a zero row's),
// the GEMM that makes an input row's parts and the one that sums an output row. The chain's tail
// (chain_forward) uses it too, so both sum the same products in the same order.
template <typename S>
struct FewOutputRows {
  const Layer<S>& g;
  const Kernels<S>& kern;
  const int64_t M, kH, MB, K, Wq, slots;
  std::vector<S> w, ones;  // rows-GEMM layout: w[k * ldw + i]
  LineVec<S> parts;        // slot s's MB part rows at s * MB * Wq; then the zero row's
  std::vector<S*> part_rows;
  std::vector<const S*> sums;
  S* dst = nullptr;
  const S* res = nullptr;
  RowsArgs<S> a;  // input row -> its parts
  RowsArgs<S> b;  // parts -> one channel of an output row

  FewOutputRows(const Layer<S>& layer, const Kernels<S>& k, int64_t slots_, bool has_res, bool relu, bool stream)
      : g(layer),
        kern(k),
        M(layer.p.M),
        kH(layer.p.kH),
        MB(M * kH),
        K(layer.p.C_in * layer.p.kW),
        Wq(round_up(layer.p.W_out, kLanes) + kLanes),  // a part row, readable a vector past W_out
        slots(slots_),
        w(K * MB),
        ones(kH, S(1)),
        parts((slots + 1) * MB * Wq, S(0)),
        part_rows(MB),
        sums(kH) {
    const IGCConvParams& p = g.p;
    for (int64_t c = 0; c < p.C_in; ++c)
      for (int64_t kh = 0; kh < kH; ++kh)
        for (int64_t kw = 0; kw < p.kW; ++kw)
          for (int64_t m = 0; m < M; ++m)
            w[(c * p.kW + kw) * MB + kh * M + m] = g.w1f[((c * kH + kh) * p.kW + kw) * M + m];
    a.MB = MB;
    a.K = K;
    a.P = p.W_out;
    a.w = w.data();
    a.ldw = MB;
    a.dst = part_rows.data();
    b.MB = 1;
    b.K = kH;
    b.P = p.W_out;
    b.w = ones.data();
    b.ldw = 1;
    b.src = sums.data();
    b.dst = &dst;
    b.res = has_res ? &res : nullptr;
    b.relu = relu;
    b.stream = stream;
  }
  S* set(int64_t s) { return parts.data() + s * MB * Wq; }
  S* zero_parts() { return set(slots); }  // 0 * w: not 0 where a weight is Inf or NaN
  // The parts of the input row whose taps (c, kw) are taps[c * kW + kw], into `into`.
  void input_row(const S* const* taps, S* into) {
    for (int64_t i = 0; i < MB; ++i) part_rows[i] = into + i * Wq;
    a.src = taps;
    kern.rows(a);
  }
  // Output channel oc of the output row whose kH input rows' parts are rows[0 .. kH): into out
  // (+ the residual row r when the residual is on).
  void output_channel(S* const* rows, int64_t oc, S* out, const S* r) {
    const int64_t m = g.c2_of_oc[oc];
    for (int64_t kh = 0; kh < kH; ++kh) sums[kh] = rows[kh] + (kh * M + m) * Wq;
    dst = out;
    res = r;
    b.bias = g.bf.data() + m;
    kern.rows(b);
  }
};

template <typename T, typename S>
void few_outputs_by_input_rows(const Layer<S>& g, const Kernels<S>& kern, const T* xp, const Str& xs, T* op,
                               const Str& os, const T* rp, const Str& rs, bool relu, bool stream) {
  const IGCConvParams& p = g.p;
  const int64_t M = p.M, kH = p.kH, kW = p.kW, K = p.C_in * kW;
  at::parallel_for(0, p.N * p.H_out, grain_for(p.W_out * K * M * kH), [&](int64_t begin, int64_t end) {
    FewOutputRows<S> f(g, kern, kH, rp != nullptr, relu, stream);
    LineVec<S> packed(g.slot, S(0));
    std::vector<const S*> taps(K);
    std::vector<S*> rows(kH);
    for (int64_t c = 0; c < p.C_in; ++c)
      for (int64_t kw = 0; kw < kW; ++kw) taps[c * kW + kw] = packed.data() + g.tap_off[c * kH * kW + kw];
    auto parts_of = [&](int64_t iy) { return iy < 0 || iy >= p.H ? f.zero_parts() : f.set(iy % kH); };
    f.input_row(taps.data(), f.zero_parts());  // `packed` holds zeros until the first row is packed
    for (int64_t row = begin; row < end;) {
      const int64_t n = row / p.H_out, oy0 = row % p.H_out, oy1 = std::min(p.H_out, oy0 + (end - row));
      int64_t next = std::max<int64_t>(0, oy0 - p.pH);  // the next input row to run
      for (int64_t oy = oy0; oy < oy1; ++oy) {
        for (; next < std::min(p.H, oy - p.pH + kH); ++next) {
          pack_row<T, S>(g, kern, xp, xs, n, next, packed.data());
          f.input_row(taps.data(), parts_of(next));
        }
        for (int64_t kh = 0; kh < kH; ++kh) rows[kh] = parts_of(oy - p.pH + kh);
        for (int64_t oc = 0; oc < M; ++oc)
          f.output_channel(rows.data(), oc, reinterpret_cast<S*>(op + n * os.n + oc * os.c + oy * os.h),
                           rp ? reinterpret_cast<const S*>(rp + n * rs.n + oc * rs.c + oy * rs.h) : nullptr);
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
  const bool stream = int64_t(out.nbytes()) >= stream_bytes_checked() && direct && whole_lines;
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
      secondary(g, kern, b, y1src, dst.data(), direct && rp ? res.data() : nullptr);
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

// Inference through a chain of IGC layers, depth first: each thread runs its band of the last
// layer's row tiles, and computes each earlier layer's tiles just before the next layer needs them,
// into a ring of that layer's output rows laid out as the next layer's packed input rows (a
// RowCache slot each). Only the first layer reads x from memory and only the last writes `out`:
// the activations in between stay in the caches and need no packing. (Handing the activations
// from chain to chain as padded packed rows, which the next chain's first layer reads in place
// instead of copying them into its cache, measured no faster: IGC-VDSR at 256x256 1.00x on a
// Zen 3; the copy's time moves to the loads of the first transform.) Every value is computed as
// the layer-by-layer forward computes it (the same kernels on the same packed rows, with the
// tiles starting at the same rows: see the staggered tiles below), so the result is bitwise that
// of running the layers one by one with those tiles, whatever the threads. A thread's band
// recomputes a few tiles of the earlier layers at its top edge (the rows its first tiles read of
// the previous band).
// For layers that chain_applies() to; the caller runs the others layer by layer.
// Row bands rather than column strips: one strip per thread, all threads going down the image
// together on shared rings (no tile computed twice, and a thread's part of each ring row a strip),
// took 1.06-1.18x the time of a chain of three at 1x96x256x256 on a Zen 3 (2 threads, rings of 9
// to 25 rows, alternating in one process): a strip's tiles wait on its neighbours' (it reads one
// of their columns), and the threads waited some 10,000 times per call. Bands finish within about
// 0.3 ms of each other there (of 16 ms), and the recomputed tiles are 3 of 192.
// Staggered tiles: stage s's tiles start a row below stage s + 1's (its lead is one more), so a
// consumer's tile, rows a .. a + 3, reads rows a - 1 .. a + 4 of its producer, whose latest tile
// ended at a + 4. The ring of a layer's output rows then holds the six rows a tile reads, and the
// consumer reads the four rows the producer has just written. With tiles aligned across stages
// (kChainRingAligned, the tests' switch g_chain_stagger) the producer runs a tile ahead, rows up to
// a + 7, and the ring holds nine. IGC-VDSR inference at 256x256 ran 0.952-0.981x the time of
// aligned tiles (chains of three; medians of per-round ratios, 30-40 rounds alternating in one
// process, five runs; Zen 3, 2 threads; the most where other tenants load the L3), and the smaller
// rings made chains of four pay (igc_kernels/nn/chain.py). The tiles of a stage with a lead start
// above the image: their rows outside it are neither finished nor stored. Winograd tiles that
// start at other rows round differently, so the chain equals its layers run one by one with
// the same leads (g_wino_lead), and not bitwise those run with tiles at rows 4i.
constexpr int64_t kChainRing = 6;
constexpr int64_t kChainRingAligned = 9;
// A packed row's pixels (the head's and the tail's rows) start at this column of each channel's row
// (an aligned vector: the rows GEMM's stores into it are whole vectors), and its packed input row
// at kChainCol - pW.
constexpr int64_t kChainCol = kLanes;
// The layers' ring rows hold their pixels in windows of segments: channel c's window of the segment
// at p0 lies at (p0 / kSegF) * C * kChainSegW + c * kChainSegW and holds the columns p0 - 1 ..
// p0 - 1 + kChainSegW - 1 (the chain's pW = 1): the segment's own pixels from window column 1, a
// copy of each neighbour's pixel next to them, and zeros (the image's padding, and the columns
// past what the segment's taps reach, which the input transform reads in whole vectors). A
// consumer's group of channels then reads one run of memory per row, where packed rows (a row per
// channel: at 256 columns the segment's 72 of every 280) have it read one short run per channel.
// IGC-VDSR inference at 256x256 ran 0.957x, 0.933x and 0.946x the time of packed ring rows
// (medians of per-round ratios, 30-40 rounds alternating in one process, Zen 3, 2 threads), with
// the same result bitwise. Software prefetch of the packed rows' runs (into L1 or L2, a group
// ahead, spread over the primary's kernel call) had measured 1.00-1.04x: the longer runs help,
// likely through the hardware prefetchers, where issuing the fetches by hand did not.
constexpr int64_t kChainSegW = (kSegF + 2 + kHalfLanes - 1) / kHalfLanes * kHalfLanes;

std::atomic<int64_t> g_chain_runs{0};  // fused chain calls, for the tests (igc_kernels_cpu_chain_runs)

template <typename S>
bool chain_applies(const std::vector<Layer<S>>& gs, const Tensor& x) {
  if (gs.empty() || !std::is_same<S, float>::value || x.scalar_type() != at::kFloat) return false;
  const IGCConvParams& p = gs[0].p;
  for (const Layer<S>& g : gs) {
    const IGCConvParams& q = g.p;
    if (!g.wino || q.has_residual || q.C_in != q.C_out || q.H_out != q.H || q.W_out != q.W || q.sW != 1 || q.pH != 1 ||
        q.pW != 1 || q.kW != 3 || q.dW != 1 || q.C_in != p.C_in || q.L != p.L || q.H != p.H || q.W != p.W ||
        q.shuffle != p.shuffle || g.Wp != gs[0].Wp)
      return false;
  }
  return true;
}

// Whether a dense conv (L = 1) can run as the head of the chain gs (its output their input) or as
// its tail (their output its input): 3x3, stride, padding and dilation 1, and for the head a conv
// the row-by-row forward runs as one GEMM per row, for the tail one it runs by input rows
// (few_outputs_by_input_rows), so that the chain computes what the layer computes alone.
template <typename S>
bool dense_end_applies(const Layer<S>& e, const std::vector<Layer<S>>& gs, bool head) {
  const IGCConvParams& q = e.p;
  const IGCConvParams& p = gs[0].p;
  if (q.L != 1 || q.kH != 3 || q.kW != 3 || q.sH != 1 || q.sW != 1 || q.pH != 1 || q.pW != 1 || q.dH != 1 ||
      q.dW != 1 || q.H != p.H || q.W != p.W || q.N != p.N)
    return false;
  if (head) return q.C_out == p.C_in && !q.has_residual && !few_outputs_apply(q, true);
  return q.C_in == p.C_out && few_outputs_apply(q, true);
}

// One thread's rings, packed rows of the chain's ends and zero row, kept between calls of one
// geometry (whose rows then hold zeros wherever no pixel is written): filling 1-2 MB with zeros,
// fresh pages each, in every call cost more than the data it held. Up to kChainKeepBytes are kept
// per thread (96 channels in chains of four with a head and a tail: rows up to about 320 pixels,
// 256 included; wider images get theirs per call, a smaller share of their time).
constexpr size_t kChainKeepBytes = size_t(4) << 20;
template <typename S>
struct ChainScratch {
  LineVec<S> ring, ends, zero;  // the layers' rows in segments, the head's and tail's packed rows
  int64_t slot = -1, Wp = -1, W = -1;  // the geometry whose zeros the buffers hold

  void prepare(int64_t need_ring, int64_t need_ends, int64_t slot_, int64_t Wp_, int64_t W_) {
    if (slot != slot_ || Wp != Wp_ || W != W_ || int64_t(ring.size()) < need_ring || int64_t(ends.size()) < need_ends) {
      ring.assign(need_ring, S(0));
      ends.assign(need_ends, S(0));
      zero.assign(slot_, S(0));
      slot = slot_;
      Wp = Wp_;
      W = W_;
    }
  }
  void trim() {
    if ((ring.size() + ends.size() + zero.size()) * sizeof(S) > kChainKeepBytes) {
      LineVec<S>().swap(ring);
      LineVec<S>().swap(ends);
      LineVec<S>().swap(zero);
      slot = -1;
    }
  }
};
template <typename S>
ChainScratch<S>& chain_scratch() {
  thread_local ChainScratch<S> scratch;
  return scratch;
}

// A dense head runs row by row, each row just before the first layer's tile that reads it first:
// rows a - 1 .. a + 4 for the tile at row a, so six rows (slot iy % kHeadRows) hold all a tile reads.
constexpr int64_t kHeadRows = 6;

// Which rows of a chain's output are written, per image row n * H + oy: how chains that run in one
// parallel region (chains_forward) hand their rows to the next chain. A thread waits only for
// the rows its tile reads, which another thread wrote at the start of its band or long before.
class RowsDone {
 public:
  RowsDone(int64_t N, int64_t H) : done_(new std::atomic<int>[N * H]()), H_(H) {}
  void set(int64_t n, int64_t oy) { done_[n * H_ + oy].store(1, std::memory_order_release); }
  void wait(int64_t n, int64_t oy) const {
    for (int64_t spins = 0; !done_[n * H_ + oy].load(std::memory_order_acquire); ++spins) {
      if (spins < 4096) {
        cpu_relax();
      } else {
        std::this_thread::yield();
      }
    }
  }

 private:
  static void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
  }
  std::unique_ptr<std::atomic<int>[]> done_;
  const int64_t H_;
};

// The chain with its optional dense ends. The stages are the IGC layers gs, then the tail (if
// any): stage s < NL - 1 writes its output rows into ring s, the last IGC layer writes `out`, or
// with a tail four rows (a tile's) that it turns into the tail's parts at once, and the tail
// writes `out`. A head writes its rows into a ring of kHeadRows that the first layer reads instead
// of x. Both ends keep the rows they read in the caches where alone they would read a whole
// activation from memory (and the head write one): IGC-VDSR inference ran 0.959x the time of the
// chains with head and tail on their own at 256x256 (quartiles 0.925-0.996), 0.949x at 512x512,
// 0.992x at 36x36 (Zen 3, 2 threads, alternating in one process). Head and tail as stages of their own,
// each a tile ahead into a ring of nine rows like a layer's then (aligned tiles), measured 0.974x:
// their rings cost more.
// One chain: its IGC layers gs[0 .. NL), then the tail (if any), from x into out; run_bands is
// what each thread runs (its bands of the last stage's row tiles, then those it steals).
// wait_in: the rows of x that another chain of the same parallel region writes (null: x is
// whole); done_out: where this chain marks its rows of out as written (null: nobody waits).
template <typename S>
struct ChainRun {
  const Layer<S>* const gs;
  const int64_t NL, NS;
  const Layer<S>* const head;
  const Layer<S>* const tail;
  const Layer<S>& g0;  // the geometry of the rings' rows: the IGC layers' packed input rows
  const IGCConvParams& p;
  const Tensor x, out, residual;  // residual undefined: none
  const Kernels<S>& kern;
  const int64_t L, C, tiles, slot, Wp, nseg;
  bool stream = false;
  int64_t RR = 0, tail_rows = 0, ring_rows = 0, ends_rows = 0;
  std::vector<int64_t> lead;
  std::unique_ptr<BandScheduler> sched;
  const RowsDone* wait_in = nullptr;
  RowsDone* done_out = nullptr;

  ChainRun(const Layer<S>* gs_, int64_t nl, const Layer<S>* head_, const Layer<S>* tail_, const Tensor& x_,
           const Tensor* residual_, const Tensor& out_)
      : gs(gs_),
        NL(nl),
        NS(nl + (tail_ ? 1 : 0)),
        head(head_),
        tail(tail_),
        g0(gs_[0]),
        p(g0.p),
        x(x_),
        out(out_),
        residual(residual_ ? *residual_ : Tensor()),
        kern(kernels<S>()),
        L(p.L),
        C(p.C_out),
        tiles((p.H_out + 3) / 4),
        slot(g0.slot),
        Wp(g0.Wp),
        nseg((p.W_out + kSegF - 1) / kSegF) {
    const Str os = strides_of(out);
    stream = int64_t(out.nbytes()) >= stream_bytes_checked() && os.c % kLanes == 0 && p.W_out % kLanes == 0;
    // Stage s's tiles start at the rows lead[s] + 4i (any integer i; see kChainRing), and a ring
    // holds RR rows.
    const bool stagger = g_chain_stagger.load(std::memory_order_relaxed) != 0;
    RR = stagger ? kChainRing : kChainRingAligned;
    lead.resize(NS);
    for (int64_t s = 0; s < NS; ++s) lead[s] = stagger ? NS - 1 - s : 0;
    // Ring rows (in segments): RR per layer but the last; packed rows at the ends: kHeadRows for
    // the head, then 4 before the tail.
    ring_rows = (NL - 1) * RR;
    tail_rows = head ? kHeadRows : 0;
    ends_rows = tail_rows + (tail ? 4 : 0);
    // A band's first tile recomputes the earlier stages' tiles above it (NS - 1 - s of stage s):
    // a band is split only where that stays small against the tiles it moves.
    sched.reset(new BandScheduler(p.N * tiles, grain_for(4 * p.W_out * C * (g0.K1 + L) * NL), 2 * NS));
  }
  int64_t bands() const { return sched->bands(); }
  // The first row of stage s's tile that holds row `row` (>= 0).
  int64_t tile_of(int64_t s, int64_t row) const { return lead[s] + 4 * ((row - lead[s] + 4 * NS) / 4 - NS); }

  void run_bands(int64_t band0, int64_t band1) {
    if (band0 >= band1) return;
    const S* xp = x.data_ptr<S>();
    const Str xs = strides_of(x), os = strides_of(out);
    S* const op = out.data_ptr<S>();
    const S* const rp = residual.defined() ? residual.data_ptr<S>() : nullptr;
    const Str rs = residual.defined() ? strides_of(residual) : Str{0, 0, 0, 0};
    const int64_t C_out = out.size(1);
    BandScheduler& sched = *this->sched;
    // x's rows: packed for the head's rows (three per row) or for the first layer's tiles.
    RowCache<S> cache(head ? *head : g0, kern, 0, /*wino_tiles=*/head == nullptr);
    cache.deferred = !head && pack_in_parts(p, xs);
    WinoTile<S> wt(g0, kern, /*join=*/false);
    // Row iy of layer k < NL - 1, as layer k + 1's input row: ring row k * RR + iy % RR, in
    // segments (kChainSegW). The ring holds only such rows and `ends` only packed rows, so the
    // columns no pixel is written to stay zero from call to call.
    ChainScratch<S>& scratch = chain_scratch<S>();
    const int64_t blk = C * kChainSegW, rslot = nseg * blk;  // a segment's C windows; a ring row: nseg segments
    scratch.prepare(ring_rows * rslot + kLanes, ends_rows * slot + kLanes, std::max(slot, rslot) + kLanes, Wp, p.W);
    S* const ring = scratch.ring.data();
    S* const ends = scratch.ends.data();
    const S* const zero = scratch.zero.data();
    auto ring_row = [&](int64_t k, int64_t iy) { return ring + (k * RR + iy % RR) * rslot; };
    auto ends_at = [&](int64_t r) { return ends + r * slot; };
    std::vector<int64_t> next(NS, 0);  // the first row of each stage's next tile
    std::vector<const S*> rows(6);
    std::vector<S*> dst(C);
    // The head's rows: image row n * H + iy in packed row iy % kHeadRows of ends (head_row_of).
    std::vector<int64_t> head_row_of(kHeadRows, -1);
    RowsArgs<S> hb;  // one segment of a head row: the row-by-row forward's L == 1 GEMM
    if (head) {
      hb.MB = head->p.M;
      hb.K = head->K1;
      hb.ldw = head->p.M;
      hb.w = head->w1f.data();
      hb.bias = head->bf.data();
      hb.src = cache.src.data();
      hb.dst = dst.data();
      hb.relu = head->p.activation == kActRelu;
    }
    auto head_row = [&](int64_t n, int64_t iy) -> const S* {
      S* const row = ends_at(iy % kHeadRows);
      if (head_row_of[iy % kHeadRows] != n * p.H + iy) {
        cache.template prepare<S>(xp, xs, n, iy);
        for (int64_t p0 = 0; p0 < p.W_out; p0 += kSegF) {
          for (int64_t oc = 0; oc < C; ++oc) dst[head->c2_of_oc[oc]] = row + kChainCol + p0 + oc * Wp;
          hb.P = std::min(kSegF, p.W_out - p0);
          hb.soff = p0;
          kern.rows(hb);
        }
        head_row_of[iy % kHeadRows] = n * p.H + iy;
      }
      return row + kChainCol - p.pW;
    };
    // The tail: the parts of the last layer's row iy in parts slot iy % RR (the tail's tile at
    // row a reads rows a - 1 .. a + 4), made as the row is done.
    std::unique_ptr<FewOutputRows<S>> few;
    std::vector<const S*> ttaps(tail ? tail->p.C_in * 3 : 0);
    std::vector<S*> trows(3);
    auto tail_taps = [&](const S* packed) {
      for (int64_t c = 0; c < tail->p.C_in; ++c)
        for (int64_t kw = 0; kw < 3; ++kw) ttaps[c * 3 + kw] = packed + c * Wp + kw;
    };
    if (tail) {
      few.reset(new FewOutputRows<S>(*tail, kern, RR, rp != nullptr, tail->p.activation == kActRelu, stream));
      tail_taps(zero + kChainCol - p.pW);
      few->input_row(ttaps.data(), few->zero_parts());
    }
    auto parts_of = [&](int64_t iy) { return iy < 0 || iy >= p.H ? few->zero_parts() : few->set(iy % RR); };
    // The tail's tile at row a of image n: output rows a .. a + 3 (as few_outputs_by_input_rows).
    auto run_tail = [&](int64_t n, int64_t a) {
      for (int64_t oy = std::max<int64_t>(a, 0); oy < std::min(a + 4, p.H_out); ++oy) {
        for (int64_t kh = 0; kh < 3; ++kh) trows[kh] = parts_of(oy - 1 + kh);
        for (int64_t oc = 0; oc < C_out; ++oc)
          few->output_channel(trows.data(), oc, op + n * os.n + oc * os.c + oy * os.h,
                              rp ? rp + n * rs.n + oc * rs.c + oy * rs.h : nullptr);
        if (done_out) {
          if (stream) kern.store_fence();
          done_out->set(n, oy);
        }
      }
    };
    // The tile at row a of stage s of image n, its input rows ready.
    auto run = [&](int64_t s, int64_t n, int64_t a) {
      if (s == NL) return run_tail(n, a);
      const Layer<S>& g = gs[s];
      const S* const* in = rows.data();
      if (s == 0 && !head) {
        if (wait_in)  // the previous chain's rows this tile reads
          for (int64_t iy = std::max<int64_t>(0, a - p.pH); iy < std::min(p.H, a - p.pH + 6); ++iy) wait_in->wait(n, iy);
        cache.template prepare_from<S>(xp, xs, n, a - p.pH);
        in = cache.rows.data();
      } else {
        for (int64_t r = 0; r < 6; ++r) {
          const int64_t iy = a + r - p.pH;
          rows[r] = iy < 0 || iy >= p.H ? zero : s == 0 ? head_row(n, iy) : ring_row(s - 1, iy);
        }
      }
      const bool last = s == NL - 1;
      wt.new_tile();
      RowsArgs<S> b;  // the epilogue of the secondary
      b.relu = g.p.activation == kActRelu;
      b.stream = last && !tail && stream;
      for (int64_t p0 = 0; p0 < p.W_out; p0 += kSegF) {
        const int64_t len = std::min(kSegF, p.W_out - p0);
        wt.segment(
            g, in, p0, len, s == 0 ? 0 : kChainSegW,
            [&](int64_t l) {
              if (s == 0 && p0 == 0 && cache.deferred) cache.template pack<S>(l * p.M_in, (l + 1) * p.M_in);
            },
            [](int64_t, int64_t) {});
        b.P = len;
        for (int64_t r = 0; r < 4; ++r) {
          const int64_t oy = a + r;
          if (oy < 0 || oy >= p.H_out) continue;
          // Non-last stages: channel 0's pixels of this segment in the ring row (kChainSegW).
          S* const own = last ? nullptr : ring_row(s, oy) + (p0 / kSegF) * blk + p.pW;
          if (last && !tail) {
            for (int64_t oc = 0; oc < C; ++oc) dst[g.c2_of_oc[oc]] = op + n * os.n + oc * os.c + oy * os.h + p0;
          } else if (last) {
            S* const orow = ends_at(tail_rows + r) + kChainCol + p0;
            for (int64_t oc = 0; oc < C; ++oc) dst[g.c2_of_oc[oc]] = orow + oc * Wp;
          } else {
            for (int64_t oc = 0; oc < C; ++oc) dst[g.c2_of_oc[oc]] = own + oc * kChainSegW;
          }
          secondary<S>(g, kern, b, wt.y1src.data() + r * C, dst.data(), nullptr);
          if (!last) {  // the segment's first and last pixel into its neighbours' windows, a segment away
            const bool left = p0 > 0, right = p0 + kSegF < p.W_out;
            for (int64_t oc = 0; oc < C; ++oc) {
              S* const w = own + oc * kChainSegW;
              if (left) w[kSegF - blk] = w[0];
              if (right) w[blk - p.pW] = w[kSegF - 1];
            }
          }
        }
      }
      if (last && tail) {
        for (int64_t r = 0; r < 4; ++r) {
          if (a + r < 0 || a + r >= p.H_out) continue;
          tail_taps(ends_at(tail_rows + r) + kChainCol - p.pW);
          few->input_row(ttaps.data(), parts_of(a + r));
        }
      } else if (last && done_out) {
        if (stream) kern.store_fence();
        for (int64_t oy = std::max<int64_t>(a, 0); oy < std::min(a + 4, p.H_out); ++oy) done_out->set(n, oy);
      }
    };
    // Stage s's rows through `last` of image n done, each tile's input rows before it (the previous
    // stage's rows through four below the tile's first).
    auto ensure = [&](auto& self, int64_t s, int64_t n, int64_t last) -> void {
      last = std::min(last, p.H_out - 1);
      for (; next[s] <= last; next[s] += 4) {
        if (s > 0) self(self, s - 1, n, next[s] + 4);
        run(s, n, next[s]);
      }
    };
    int64_t cur = -1;
    for (int64_t b = band0; b < band1; ++b)
      sched.work(b, [&](int64_t item, bool jumped) {
        const int64_t n = item / tiles, t = item % tiles;
        if (jumped || n != cur) {  // a band's first tile in this image: each earlier stage starts higher
          cur = n;
          int64_t need = 4 * t;  // the first row stage s must produce
          for (int64_t s = NS - 1; s >= 0; --s) {
            next[s] = tile_of(s, std::max<int64_t>(need, 0));
            need = next[s] - 1;
          }
        }
        ensure(ensure, NS - 1, n, 4 * t + 3);
      });
    scratch.trim();
    if (stream) kern.store_fence();
  }
};

// The chain with its optional dense ends (see ChainRun), on the threads of one parallel region.
template <typename S>
Tensor chain_forward(const Layer<S>* gs, int64_t NL, const Layer<S>* head, const Layer<S>* tail, const Tensor& x,
                     const Tensor* residual) {
  const IGCConvParams& p = gs[0].p;
  const int64_t C_out = tail ? tail->p.C_out : p.C_out;
  Tensor out = empty_output({p.N, C_out, p.H_out, p.W_out}, x.options(), at::MemoryFormat::Contiguous);
  if (out.numel() == 0) return out;
  ChainRun<S> run(gs, NL, head, tail, x, residual, out);
  at::parallel_for(0, run.bands(), 1, [&](int64_t band0, int64_t band1) { run.run_bands(band0, band1); });
  return out;
}

// Intermediate activations of up to this many bytes let chains_forward run all its chains in one
// parallel region (it keeps them all); more, and the chains run one region each (the tests set
// it with igc_kernels_cpu_set_chains_keep_bytes to take that path).
constexpr int64_t kChainsKeepBytes = int64_t(1) << 30;
std::atomic<int64_t> g_chains_keep_bytes{kChainsKeepBytes};

// The layers gs in chains of `per`, the head with the first, the tail with the last, all in one
// parallel region: a thread that finishes its part of one chain starts on the next, waiting only
// for the rows of the previous chain's output that its tiles read (RowsDone), instead of every
// thread waiting at the end of each chain for the last one to finish its band.
template <typename S>
Tensor chains_forward(const std::vector<Layer<S>>& gs, int64_t per, const Layer<S>* head, const Layer<S>* tail,
                      const Tensor& x, const Tensor* residual) {
  const int64_t NL = gs.size(), chains = (NL + per - 1) / per;
  const IGCConvParams& p = gs[0].p;
  // Chain c: its layers, the head if first, the tail and the residual if last.
  struct Part {
    const Layer<S>* gs;
    int64_t NL;
    const Layer<S>* head;
    const Layer<S>* tail;
    const Tensor* residual;
  };
  auto part = [&](int64_t c) {
    const int64_t k0 = c * per;
    const bool first = c == 0, last = c + 1 == chains;
    return Part{gs.data() + k0, std::min(NL, k0 + per) - k0, first ? head : nullptr, last ? tail : nullptr,
                last ? residual : nullptr};
  };
  const int64_t between = (chains - 1) * p.N * p.C_out * p.H_out * p.W_out * int64_t(sizeof(S));
  if (chains == 1 || between > g_chains_keep_bytes.load(std::memory_order_relaxed)) {  // one region per chain
    Tensor h = x;
    for (int64_t c = 0; c < chains; ++c) {
      const Part q = part(c);
      h = chain_forward<S>(q.gs, q.NL, q.head, q.tail, h, q.residual);
    }
    return h;
  }
  std::vector<std::unique_ptr<ChainRun<S>>> runs;
  std::vector<std::unique_ptr<RowsDone>> done;
  Tensor h = x;
  for (int64_t c = 0; c < chains; ++c) {
    const Part q = part(c);
    const int64_t C_out = q.tail ? q.tail->p.C_out : p.C_out;
    Tensor out = empty_output({p.N, C_out, p.H_out, p.W_out}, x.options(), at::MemoryFormat::Contiguous);
    runs.emplace_back(new ChainRun<S>(q.gs, q.NL, q.head, q.tail, h, q.residual, out));
    if (c + 1 < chains) {
      done.emplace_back(new RowsDone(p.N, p.H_out));
      runs.back()->done_out = done.back().get();
    }
    if (c > 0) runs.back()->wait_in = done[c - 1].get();
    h = out;
  }
  if (h.numel() == 0) return h;
  int64_t bands = 0;
  for (const auto& r : runs) bands = std::max(bands, r->bands());
  at::parallel_for(0, bands, 1, [&](int64_t band0, int64_t band1) {
    for (const auto& r : runs) r->run_bands(std::min(band0, r->bands()), std::min(band1, r->bands()));
  });
  return h;
}

}  // namespace

// Layer k of ps applied to layer k - 1's output (igc_conv_chain's CPU implementation), after the
// head and before the tail where given: fused where chain_applies, in chains of chain_length
// layers (0: all in one; with the head and the tail where dense_end_applies, else they run on
// their own), else layer by layer.
Tensor forward_chain(const std::vector<IGCConvParams>& ps, const Tensor& x, at::TensorList w1,
                     const std::vector<c10::optional<Tensor>>& b1, at::TensorList w2,
                     const std::vector<c10::optional<Tensor>>& b2, const c10::optional<DenseConv>& head,
                     const c10::optional<DenseConv>& tail, int64_t chain_length) {
  auto run_alone = [](const DenseConv& d, const Tensor& in) {
    return forward(d.p, in, d.w1, d.b1, d.w2, c10::nullopt, d.residual);
  };
  // Channels_last inputs keep their layout layer by layer (the chain writes NCHW).
  const bool planar_float =
      x.scalar_type() == at::kFloat && x.suggest_memory_format() == at::MemoryFormat::Contiguous;
  if (planar_float) {
    std::vector<Layer<float>> gs;
    gs.reserve(ps.size());
    for (size_t k = 0; k < ps.size(); ++k)
      gs.emplace_back(ps[k], w1[k], b1[k], w2[k], b2[k], winograd_enabled(), kChainCol);
    const bool fuse = chain_applies(gs, x);
    // The ends' tables only where the chain may take them (an end that runs alone builds its own).
    c10::optional<Layer<float>> hl, tl;
    if (fuse && head) hl.emplace(head->p, head->w1, head->b1, head->w2, c10::nullopt, winograd_enabled());
    if (fuse && tail) tl.emplace(tail->p, tail->w1, tail->b1, tail->w2, c10::nullopt, winograd_enabled());
    const bool with_head = hl && dense_end_applies(*hl, gs, true);
    // The tail writes the chain's output: its residual as that output's rows (contiguous NCHW).
    const bool with_tail = tl && dense_end_applies(*tl, gs, false) &&
                           (!tail->residual || (tail->residual->scalar_type() == at::kFloat &&
                                                tail->residual->is_contiguous()));
    const int64_t NL = gs.size(), per = chain_length > 0 ? std::min(chain_length, NL) : NL;
    if (fuse && NL + with_head + with_tail >= 2) {
      g_chain_runs.fetch_add((NL + per - 1) / per, std::memory_order_relaxed);
      // Without a fused head the chain reads the head's output: a new tensor, contiguous NCHW.
      const Tensor in = head && !with_head ? run_alone(*head, x) : x;
      const Tensor res = with_tail && tail->residual ? *tail->residual : Tensor();
      Tensor h = chains_forward<float>(gs, per, with_head ? &*hl : nullptr, with_tail ? &*tl : nullptr, in,
                                       res.defined() ? &res : nullptr);
      return tail && !with_tail ? run_alone(*tail, h) : h;
    }
  }
  Tensor h = head ? run_alone(*head, x) : x;
  for (size_t k = 0; k < ps.size(); ++k) h = forward(ps[k], h, w1[k], b1[k], w2[k], b2[k], c10::nullopt);
  return tail ? run_alone(*tail, h) : h;
}

Tensor forward(const IGCConvParams& p, const Tensor& x, const Tensor& w1, const c10::optional<Tensor>& b1,
               const Tensor& w2, const c10::optional<Tensor>& b2, const c10::optional<Tensor>& residual) {
  IGC_CPU_DISPATCH(x.scalar_type(), "igc_conv", [&] { return forward_impl<T, S>(p, x, w1, b1, w2, b2, residual); })
}

std::atomic<int64_t> g_band_steals{0};
std::atomic<int> g_band_skew{0};

}  // namespace cpu
}  // namespace igc

// How many items the band schedulers' threads took from other threads' bands (BandScheduler), and
// the tests' switch that gives all items to the first band (returns the old setting).
extern "C" __attribute__((visibility("default"))) int64_t igc_kernels_cpu_band_steals(void) {
  return igc::cpu::g_band_steals.load(std::memory_order_relaxed);
}
extern "C" __attribute__((visibility("default"))) int igc_kernels_cpu_set_band_skew(int on) {
  return igc::cpu::g_band_skew.exchange(on ? 1 : 0);
}

// The tests' switches of the Winograd tiles (forward.cpp, kChainRing): staggered tiles in the
// fused chains (on by default), and the lead of the one-layer forward's tiles (0 by default);
// each returns the old setting.
extern "C" __attribute__((visibility("default"))) int igc_kernels_cpu_set_chain_stagger(int on) {
  return igc::cpu::g_chain_stagger.exchange(on ? 1 : 0);
}
extern "C" __attribute__((visibility("default"))) int igc_kernels_cpu_set_wino_lead(int lead) {
  return igc::cpu::g_wino_lead.exchange(lead < 0 ? 0 : lead);
}

// The tests' switch of the bytes of intermediate activations up to which chains run in one parallel
// region (negative: the default); returns the old setting.
extern "C" __attribute__((visibility("default"))) int64_t igc_kernels_cpu_set_chains_keep_bytes(int64_t bytes) {
  return igc::cpu::g_chains_keep_bytes.exchange(bytes < 0 ? igc::cpu::kChainsKeepBytes : bytes);
}

// How many chains ran fused (the layers of the others ran one by one): the tests' check that the
// cases they mean to fuse are fused.
extern "C" __attribute__((visibility("default"))) int64_t igc_kernels_cpu_chain_runs(void) {
  return igc::cpu::g_chain_runs.load(std::memory_order_relaxed);
}
