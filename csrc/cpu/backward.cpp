// The backward of the fused CPU op (igc_kernels::igc_conv_backward).
//
// One pass over output rows computes, per pixel segment: gs (grad of the secondary output: the
// activation mask applied, the shuffle undone), grad_y1 = the transposed secondary applied to gs,
// and the weight/bias gradients (NT reductions against the recomputed y1 and the packed input).
// grad_y1 rows go to a small ring of rows; as soon as the ring holds every grad_y1 row an input
// row depends on, that row of grad_x is formed (a correlation of the zero-upsampled grad_y1 rows
// with the flipped primary weights) while those rows are still in cache. No activation-size
// temporary exists.
//
// Work split, fixed so results do not depend on scheduling: the N*H_out output rows are cut into
// `chunks` equal ranges, each with its own weight-gradient sums. Input row iy belongs to the chunk
// owning output row last(iy), the last output row it depends on, clamped to the image; a chunk
// also computes grad_y1 (not the weight sums) of the few rows before its range that its input
// rows depend on.
#include <algorithm>
#include <array>
#include <tuple>
#include <utility>
#include <vector>

#include "grad_sums.h"
#include "layer.h"
#include "output_cache.h"

namespace igc {
namespace cpu {
namespace {

// grad_x of input rows, from grad_y1 rows kept with zero margins (Lm left, up to Wg right) so that
// for stride 1 the taps are read in place: the row of tap kw' starts at Lm + base + kw'*dW.
template <typename T, typename S>
struct GradInput {
  const Layer<S>& g;
  const Kernels<S>& kern;
  T* gxp;
  Str gxs;
  bool direct;
  bool stream = false;  // non-temporal stores into grad_x (see RowsArgs::stream)
  int64_t base, Lm, Wg, Wz, Kx;
  LineVec<S> Z, tile;
  // Flipped primary weights per set of valid kernel rows (bit kh): interior rows all share one
  // set, so each table is built once rather than for every row (3.5k scalar writes per row).
  std::vector<std::pair<uint64_t, std::vector<S>>> wg_of;
  std::vector<const S*> srcx;
  std::vector<S*> dst;

  // gx: the 4-D grad_x to write, or an undefined tensor (sizes only).
  GradInput(const Layer<S>& layer, const Kernels<S>& k, const Tensor& gx)
      : g(layer), kern(k), gxp(gx.defined() ? gx.data_ptr<T>() : nullptr) {
    const IGCConvParams& p = g.p;
    gxs = gx.defined() ? strides_of(gx) : Str{0, 0, 0, 0};
    direct = std::is_same<T, S>::value && gxs.w == 1;
    base = p.pW - (p.kW - 1) * p.dW;
    Lm = round_up(std::max<int64_t>(0, -base), kLanes);  // whole vectors: grad_y1 rows are written aligned
    Wg = round_up(Lm + std::max(p.W_out, p.W + p.pW + kLanes), kLanes);
    Wz = round_up(p.W + (p.kW - 1) * p.dW + kLanes, kLanes);
    Kx = p.M * p.kH * p.kW;
    Z.resize(p.sW > 1 ? p.kH * p.C_out * Wz : 0);
    tile.resize(direct ? 0 : p.C_in * kSegX);
    srcx.resize(p.L * Kx);
    dst.resize(p.C_in);
  }
  // The output row that input row iy depends on last (kh = 0), clamped to the image.
  int64_t last(int64_t iy) const {
    const IGCConvParams& p = g.p;
    return std::min(p.H_out - 1, (iy + p.pH) / p.sH);
  }

  // The weights of the rows GEMM for the valid kernel rows `valid` (flipped_primary_weights),
  // built once per set of valid rows.
  const S* weights_for(uint64_t valid) {
    for (const auto& e : wg_of)
      if (e.first == valid) return e.second.data();
    wg_of.emplace_back(valid, flipped_primary_weights(g, valid));
    return wg_of.back().second.data();
  }

  // Row iy of image n; rows_of(oy) is the margined grad_y1 row of channel 0, output row oy (the
  // rows of channels c1 > 0 follow Wg apart).
  template <typename RowsOf>
  void emit(int64_t n, int64_t iy, const RowsOf& rows_of) {
    const IGCConvParams& p = g.p;
    const int64_t L = p.L, M = p.M, C = p.C_out, Min = p.M_in;
    uint64_t valid = 0;
    for (int64_t kh = 0; kh < p.kH; ++kh) {
      const int64_t t = iy + p.pH - kh * p.dH;
      if (t >= 0 && t % p.sH == 0 && t / p.sH < p.H_out) valid |= uint64_t(1) << kh;
    }
    const S* wg = weights_for(valid);
    int64_t nv = 0;
    for (int64_t kh = 0; kh < p.kH; ++kh) {
      if (!(valid >> kh & 1)) continue;
      const int64_t oy = (iy + p.pH - kh * p.dH) / p.sH;
      const S* rows = rows_of(oy);
      // Stride 1: taps read the margined rows in place. Stride sW > 1: zero-upsample first.
      for (int64_t c1 = 0; c1 < C && p.sW > 1; ++c1) {
        S* z = Z.data() + (nv * C + c1) * Wz;
        const S* gr = rows + c1 * Wg + Lm;
        for (int64_t t2 = 0; t2 < Wz; ++t2) {
          const int64_t q = t2 + base;
          z[t2] = q >= 0 && q % p.sW == 0 && q / p.sW < p.W_out ? gr[q / p.sW] : S(0);
        }
      }
      // Sources of this valid kernel row, appended after the earlier ones.
      const S* first = p.sW > 1 ? Z.data() + nv * C * Wz : rows + Lm + base;  // channel 0, kw = 0
      const int64_t cs = p.sW > 1 ? Wz : Wg;
      for (int64_t l = 0; l < L; ++l)
        for (int64_t m = 0; m < M; ++m) {
          const S* c1row = first + (l * M + m) * cs;
          const S** out = srcx.data() + l * Kx + (nv * M + m) * p.kW;
          for (int64_t kw = 0; kw < p.kW; ++kw) out[kw] = c1row + kw * p.dW;
        }
      ++nv;
    }
    for (int64_t p0 = 0; p0 < p.W; p0 += kSegX) {
      const int64_t len = std::min(kSegX, p.W - p0);
      for (int64_t c = 0; c < p.C_in; ++c)
        dst[c] = direct ? reinterpret_cast<S*>(gxp + n * gxs.n + c * gxs.c + iy * gxs.h + p0) : tile.data() + c * kSegX;
      RowsArgs<S> a;  // nv == 0 (a row no output depends on): K = 0 writes zeros
      a.MB = Min;
      a.K = nv * M * p.kW;
      a.P = len;
      a.ldw = Min;
      a.soff = p0;
      a.stream = stream;
      for (int64_t l = 0; l < L; ++l) {
        a.w = wg + l * Kx * Min;
        a.src = srcx.data() + l * Kx;
        a.dst = dst.data() + l * Min;
        kern.rows(a);
      }
      if (direct) continue;
      auto store = [&](int64_t c, int64_t i) {
        gxp[n * gxs.n + c * gxs.c + iy * gxs.h + (p0 + i) * gxs.w] = T(tile[c * kSegX + i]);
      };
      if (gxs.c == 1 && std::is_same<T, S>::value) {  // channels_last: a transpose of the tile
        TransposeArgs<S> t;
        t.R = p.C_in;
        t.C = len;
        t.src = tile.data();
        t.lds = kSegX;
        t.dst = reinterpret_cast<S*>(gxp + n * gxs.n + iy * gxs.h + p0 * gxs.w);
        t.ldd = gxs.w;
        kern.transpose(t);
      } else if (gxs.w == 1) {
        for (int64_t c = 0; c < p.C_in; ++c)
          for (int64_t i = 0; i < len; ++i) store(c, i);
      } else {
        for (int64_t i = 0; i < len; ++i)
          for (int64_t c = 0; c < p.C_in; ++c) store(c, i);
      }
    }
  }
};

template <typename T, typename S>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> backward_impl(const IGCConvParams& p, const Tensor& grad_out,
                                                                 const Tensor& x, const Tensor& w1,
                                                                 const c10::optional<Tensor>& b1, const Tensor& w2,
                                                                 const c10::optional<Tensor>& out,
                                                                 const std::array<bool, 5>& mask) {
  const Kernels<S>& kern = kernels<S>();
  const Layer<S> g(p, w1, b1, w2, c10::nullopt);
  const int64_t L = p.L, M = p.M, C = p.C_out, K1 = g.K1, lanes = kern.lanes;
  const bool need_y1 = mask[3], need_gy1 = mask[0] || mask[1] || mask[2], need_pack = need_y1 || mask[1];
  const bool relu = p.activation == kActRelu;
  const T* xp = x.data_ptr<T>();
  const T* gp = grad_out.data_ptr<T>();
  const T* outp = relu ? out->data_ptr<T>() : nullptr;
  const Str xs = strides_of(x), gs_ = strides_of(grad_out), os = relu ? strides_of(*out) : Str{0, 0, 0, 0};
  const int64_t rows = p.N * p.H_out;
  Tensor empty = at::empty({0}, x.options());
  Tensor gx = mask[0] ? empty_output(x.sizes(), x.options(), x.suggest_memory_format()) : empty;
  const bool emit_gx = mask[0] && gx.numel() > 0;
  // Short rows (one segment each) are summed into the weight gradients `batch` rows at a time,
  // so the NT kernel's accumulators make one round trip per batch instead of one per row.
  const int64_t batch = p.W_out <= kSegB / 2 ? std::min<int64_t>(8, std::max<int64_t>(1, 320 / p.W_out)) : 1;
  // grad_y1 rows an input row depends on span at most this many consecutive output rows; the
  // rows of a pending batch stay too.
  const int64_t ring = std::max(batch, emit_gx ? (p.kH - 1) * p.dH / p.sH + 2 : 1);
  const int64_t ld = std::min(kSegB, round_up(p.W_out, kLanes));  // row stride of the gs / y1 tiles

  // Software prefetch of the next row's x, grad_out and out pays only for short rows: with rows of
  // 64 pixels and more the hardware prefetchers keep up, and the bursts of prefetches (a few per
  // line of 4 channels' rows per kernel call) stalled on full fill buffers. Measured on the 2-core
  // Intel Xeon CI machine, 1 thread: without them 5-12% faster at 64, 128 and 256 pixels, with them
  // 8-20% faster at 36 (16x96x36x36).
  const bool prefetch_x = short_row<T>(p.W), prefetch_out = short_row<T>(p.W_out);
  const int64_t cost = p.W_out * C * (K1 + L) * 4;
  int64_t chunks = std::min<int64_t>(at::get_num_threads(), std::max<int64_t>(1, rows * cost >> 20));
  chunks = std::max<int64_t>(1, std::min(chunks, rows));
  std::vector<GradSums<S>> accs(chunks);
  at::parallel_for(0, chunks, 1, [&](int64_t cb, int64_t ce) {
    for (int64_t ch = cb; ch < ce; ++ch) {
      GradSums<S>& A = accs[ch];
      A.init(p, K1, lanes, mask);
      RowCache<S> cache(g, kern, (batch - 1) * p.kH);
      RowPrefetch<T> pf_x, pf_g, pf_o;
      GradInput<T, S> gin(g, kern, emit_gx ? gx : Tensor());
      // As the forward's output: a big grad_x cannot stay in cache until the next layer's backward
      // reads it (1 thread at 1x96x256x256: 3-8% faster; no change at 16x96x36x36, 8 MB).
      gin.stream = gin.direct && gx.nbytes() >= kStreamRowGradXBytes;
      const int64_t Wg = gin.Wg, Lm = gin.Lm;
      const std::vector<const S*>& src = cache.src;
      // Per batch slot b: the gs and y1 tiles (C rows of ld), their row lists, and the grad_y1 rows
      // and taps that the weight sums of the row in slot b read.
      LineVec<S> y1(need_y1 ? batch * C * ld : 0, S(0)), gs(batch * C * ld, S(0));
      LineVec<S> om(relu && gs_.c == 1 ? C * ld : 0);  // channels_last out, transposed (ReLU mask)
      LineVec<S> gy1(need_gy1 ? ring * C * Wg : 0, S(0));  // margins stay zero: only [Lm, Lm+W_out) is written
      std::vector<const S*> y1src(batch * C), gsrow(batch * C), gy1row(batch * C), taps(batch * L * K1);
      std::vector<S*> y1dst(batch * C), gy1dst(C);
      for (int64_t b = 0; b < batch; ++b) {
        for (int64_t l = 0; l < L && need_y1; ++l)
          for (int64_t m = 0; m < M; ++m) {
            y1dst[b * C + l * M + m] = y1.data() + (b * C + l * M + m) * ld;
            y1src[b * C + m * L + l] = y1.data() + (b * C + l * M + m) * ld;
          }
        // gs holds its rows in output-channel order (as grad_out has them); gsrow lists them in
        // secondary-channel order c2 = m*L + j (the shuffle undone).
        for (int64_t c2 = 0; c2 < C; ++c2) gsrow[b * C + c2] = gs.data() + (b * C + p.out_channel(c2 / L, c2 % L)) * ld;
      }
      // The ring's grad_y1 row of channel 0, output row oy; channel c1's row lies c1 * Wg further.
      auto gy1_rows = [&](int64_t oy) { return gy1.data() + (oy % ring) * C * Wg; };
      // Bias gradients are row sums: the NT kernel against a row of ones (vectorized, lane sums).
      const std::vector<S> ones(kSegB + kLanes, S(1));
      const S* ones_row = ones.data();
      // NT arguments for segments of `len` pixels in `nseg` batch slots: a's rows of slot s start at
      // a[s * C], b's at b[s * sb]; the result is MA x NB (ld NB).
      auto nt_args = [&](int64_t MA, int64_t NB, int64_t len, int64_t nseg, int64_t sb) {
        NtArgs<S> a = nt_sum<S>(MA, NB, len);
        a.nseg = nseg;
        a.sa = C;
        a.sb = sb;
        return a;
      };
      auto row_sums = [&](const S* const* rows_, int64_t len, int64_t nseg, S* acc) {
        NtArgs<S> a = nt_args(C, 1, len, nseg, 0);
        a.a = rows_;
        a.b = &ones_row;
        a.acc = acc;
        kern.nt(a);
      };

      // The weight and bias sums of the nb segments waiting in batch slots 0..nb-1 (each `len`
      // pixels; their taps read from column boff).
      int64_t nb = 0, nb_len = 0, nb_boff = 0;
      auto weight_sums = [&] {
        if (nb == 0) return;
        const int64_t len = nb_len;
        if (mask[4]) row_sums(gsrow.data(), len, nb, A.accb2.data());
        if (mask[3]) {  // grad_w2[m*L+j][l] += sum_px gs[m*L+j] * y1[l*M+m]
          NtArgs<S> a = nt_args(L, L, len, nb, C);
          for (int64_t m = 0; m < M; ++m) {
            a.a = gsrow.data() + m * L;
            a.b = y1src.data() + m * L;
            a.acc = A.accw2.data() + m * L * L * lanes;
            kern.nt(a);
          }
        }
        if (mask[2]) row_sums(gy1row.data(), len, nb, A.accb1.data());
        if (mask[1]) {  // grad_w1[l*M+m][k] += sum_px gy1[l*M+m] * src_k
          NtArgs<S> b = nt_args(M, K1, len, nb, L * K1);
          b.boff = nb_boff;
          for (int64_t l = 0; l < L; ++l) {
            b.a = gy1row.data() + l * M;
            b.b = taps.data() + l * K1;
            b.acc = A.accw1.data() + l * M * K1 * lanes;
            kern.nt(b);
          }
        }
        A.added(nb * len);
        nb = 0;
      };

      // Output row oy of image n: gs, grad_y1 (into the ring), and when `owned` the weight sums.
      auto output_row = [&](int64_t n, int64_t oy, bool owned) {
        if (owned && need_pack) cache.template prepare<T>(xp, xs, n, oy);
        // What the next output row reads first: its new input row, its grad_out and out rows.
        const bool more = oy + 1 < p.H_out;
        pf_x.set(need_pack && prefetch_x ? xp : nullptr, xs, p.C_in, p.H, p.W, n,
                 more ? (oy + 1) * p.sH - p.pH + (p.kH - 1) * p.dH : -1, p.sW);
        pf_g.set(prefetch_out ? gp : nullptr, gs_, C, p.H_out, p.W_out, n, more ? oy + 1 : -1, 1);
        pf_o.set(prefetch_out ? outp : nullptr, os, C, p.H_out, p.W_out, n, more ? oy + 1 : -1, 1);
        auto prefetch = [&](int64_t p0, int64_t len, int64_t part, int64_t parts) {
          pf_x.fetch(p0, len, part, parts);
          pf_g.fetch(p0, len, part, parts);
          pf_o.fetch(p0, len, part, parts);
        };
        for (int64_t p0 = 0; p0 < p.W_out; p0 += kSegB) {
          const int64_t len = std::min(kSegB, p.W_out - p0);
          const int64_t slot = nb;  // batch slot of this segment's tiles (nb < batch here)
          S* gst = gs.data() + slot * C * ld;
          if (owned && need_y1) {  // recompute y1
            primary_segment(g, kern, src.data(), y1dst.data() + slot * C, p0, len,
                            [&](int64_t l) { prefetch(p0, len, l, L); });
          } else {
            prefetch(p0, len, 0, 1);
          }
          auto load = [&](int64_t oc, int64_t i) {
            const int64_t px = p0 + i;
            S v = S(gp[n * gs_.n + oc * gs_.c + oy * gs_.h + px * gs_.w]);
            if (relu) v = S(outp[n * os.n + oc * os.c + oy * os.h + px * os.w]) > S(0) ? v : S(0);
            gst[oc * ld + i] = v;
          };
          if (gs_.w == 1 && (!relu || os.w == 1)) {  // contiguous rows: vectorizable
            for (int64_t oc = 0; oc < C; ++oc) {
              const T* gr = gp + n * gs_.n + oc * gs_.c + oy * gs_.h + p0;
              S* d = gst + oc * ld;
              if (relu) {
                const T* orow = outp + n * os.n + oc * os.c + oy * os.h + p0;
                if constexpr (std::is_same<T, S>::value) {
                  kern.copy_rows(reinterpret_cast<const S*>(gr), reinterpret_cast<const S*>(orow), 0, d, 0, len, 1);
                } else {
                  for (int64_t i = 0; i < len; ++i) {  // both loads unconditional: a select, no branch
                    const S gv = S(gr[i]);
                    d[i] = S(orow[i]) > S(0) ? gv : S(0);
                  }
                }
              } else {
                for (int64_t i = 0; i < len; ++i) d[i] = S(gr[i]);
              }
            }
          } else if (gs_.c == 1 && std::is_same<T, S>::value && (!relu || os.c == 1)) {  // channels_last
            auto transpose_in = [&](const T* base, const Str& st_, S* dst) {
              TransposeArgs<S> t;
              t.R = len;
              t.C = C;
              t.src = reinterpret_cast<const S*>(base + n * st_.n + oy * st_.h + p0 * st_.w);
              t.lds = st_.w;
              t.dst = dst;
              t.ldd = ld;
              kern.transpose(t);
            };
            transpose_in(gp, gs_, gst);
            if (relu) {
              transpose_in(outp, os, om.data());
              kern.copy_rows(gst, om.data(), ld, gst, ld, len, C);  // in place
            }
          } else if (gs_.w == 1) {
            for (int64_t oc = 0; oc < C; ++oc)
              for (int64_t i = 0; i < len; ++i) load(oc, i);
          } else {
            for (int64_t i = 0; i < len; ++i)
              for (int64_t oc = 0; oc < C; ++oc) load(oc, i);
          }
          if (need_gy1 && (owned || emit_gx)) {
            S* const row0 = gy1_rows(oy) + Lm + p0;
            for (int64_t l = 0; l < L; ++l)
              for (int64_t m = 0; m < M; ++m) {
                S* r = row0 + (l * M + m) * Wg;
                gy1row[slot * C + l * M + m] = r;
                gy1dst[m * L + l] = r;
              }
            if (L == 1) {  // a per-channel scale (VDSR's head and tail): cheaper than C calls of a 1x1 GEMM
              for (int64_t m = 0; m < M; ++m) {
                const S wv = g.w2[m];
                const S* __restrict s = gsrow[slot * C + m];
                S* __restrict d = gy1dst[m];
                for (int64_t i = 0; i < len; ++i) d[i] = wv * s[i];
              }
            } else {
              RowsArgs<S> a;  // gy1[l*M+m] = sum_j w2[m*L+j][l] * gs[m*L+j]
              a.MB = L;
              a.K = L;
              a.P = len;
              a.ldw = L;
              for (int64_t m = 0; m < M; ++m) {
                a.w = g.w2.data() + m * L * L;
                a.src = gsrow.data() + slot * C + m * L;
                a.dst = gy1dst.data() + m * L;
                kern.rows(a);
              }
            }
          }
          if (owned) {  // this segment's weight sums: now, or with the next rows of the batch
            std::copy(src.begin(), src.end(), taps.begin() + slot * L * K1);
            nb_len = len;
            nb_boff = p0;
            if (++nb == batch) weight_sums();
          }
        }
      };

      // This chunk's output rows, image by image.
      const int64_t r0 = rows * ch / chunks, r1 = rows * (ch + 1) / chunks;
      for (int64_t n = r0 / p.H_out; n * p.H_out < r1; ++n) {
        const int64_t o0 = std::max(r0, n * p.H_out) - n * p.H_out, o1 = std::min(r1, (n + 1) * p.H_out) - n * p.H_out;
        // Input rows [i0, i1) with last(iy) in [o0, o1) (last is non-decreasing), and the output
        // rows [lo, o1) they depend on.
        int64_t i0 = 0, i1 = 0, lo = o0;
        if (emit_gx) {
          while (i0 < p.H && gin.last(i0) < o0) ++i0;
          i1 = i0;
          while (i1 < p.H && gin.last(i1) < o1) ++i1;
          if (i1 > i0) lo = std::min(o0, std::max<int64_t>(0, (i0 + p.pH - (p.kH - 1) * p.dH) / p.sH));
        }
        int64_t iy = i0;
        for (int64_t oy = lo; oy < o1; ++oy) {
          output_row(n, oy, oy >= o0);
          for (; iy < i1 && gin.last(iy) <= oy; ++iy) gin.emit(n, iy, gy1_rows);
        }
        weight_sums();  // a batch never spans images: the ring and the row cache move on
      }
      weight_sums();
      A.flush();
      if (gin.stream) kern.store_fence();
    }
  });

  Tensor gw1, gb1, gw2, gb2;
  std::tie(gw1, gb1, gw2, gb2) = reduce_grad_sums(accs, x, w1, w2, mask);
  return {gx, gw1, gb1, gw2, gb2};
}

}  // namespace

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> backward(const IGCConvParams& p, const Tensor& grad_out,
                                                            const Tensor& x, const Tensor& w1,
                                                            const c10::optional<Tensor>& b1, const Tensor& w2,
                                                            const c10::optional<Tensor>& out,
                                                            const std::array<bool, 5>& mask) {
  if (plane_backward_applies(p, grad_out, x, w1, w2, out)) return backward_plane(p, grad_out, x, w1, b1, w2, out, mask);
  IGC_CPU_DISPATCH(x.scalar_type(), "igc_conv_backward",
                   [&] { return backward_impl<T, S>(p, grad_out, x, w1, b1, w2, out, mask); })
}

}  // namespace cpu
}  // namespace igc
