// The backward of the fused CPU op for small images: each image is processed in bands of rows
// laid out as flat planes, so every GEMM and reduction runs over a whole band at once.
//
// Why: at the training-patch shape (16x96x36x36) the row-by-row backward (backward.cpp) makes
// five kernel calls per group and row over 36 pixels each, which spends most of its time on call
// overhead, partial vectors and memory waits, not on multiply-adds. Here a band of h rows is one
// "row" of h * Q pixels: each channel's rows sit one after another with a pitch of Q = W + pW, the
// pW columns between them zero, so a tap (kh, kw) of the 'same'-padded conv is one pointer offset
// (kh * Q + kw - pW) and padding needs no special case. Outputs at the gap columns are junk that
// no result reads: the weight sums multiply them by zero gradients (the gap columns of gs and
// grad_y1 are zero) and y1's gap columns are cleared.
//
// Per band [y0, y1) of image n, with ph = pH halo rows (grad_x of a row needs grad_y1 of ph rows
// around it):
//   xp  = the input rows [y0 - ph, y1 + ph), zero outside the image      (C_in planes)
//   gs  = grad_out with the ReLU mask, rows [y0 - ph, y1 + ph)             (C_out planes)
//   gy1 = the transposed secondary applied to gs, same rows                (C_mid planes)
//   y1  = the primary recomputed from xp, rows [y0, y1)                    (C_mid planes)
//   weight sums (NT kernel) over the band; grad_x rows [y0, y1) = gy1 correlated with the
//   flipped primary weights, one group at a time through a small tile.
// Applies to stride 1, dilation 1, odd kernels with 'same' padding, contiguous NCHW tensors of
// float or double (backward.cpp takes everything else).
#include <algorithm>
#include <array>
#include <cstring>
#include <tuple>
#include <vector>

#include "grad_sums.h"
#include "layer.h"
#include "output_cache.h"

namespace igc {
namespace cpu {
namespace {

constexpr int64_t kLead = kLanes;  // zero elements before a padded plane (taps reach back pW)
// Images at most this wide take this path (the row path's calls are long enough beyond it).
constexpr int64_t kPlaneMaxWidth = 48;
// Rows per band: at most about this many bytes of planes (xp, gs, gy1, y1). Whole 36-row images
// (2.2 MB at 96 channels) measured faster than bands that fit in L2: 11.9 ms against 13.1 ms (two
// bands) and 17.1 ms (256 KiB bands) on one thread, as each band recomputes grad_y1 of its halo.
constexpr int64_t kPlaneBandBytes = int64_t(4) << 20;

// Whether v[0..n) holds no Inf or NaN: an OR over "exponent all ones", which vectorizes (a loop
// over std::isfinite does not).
template <typename S>
bool all_finite(const S* v, int64_t n) {
  using U = typename std::conditional<sizeof(S) == 4, uint32_t, uint64_t>::type;
  constexpr U exp_mask = sizeof(S) == 4 ? U(0x7f800000u) : U(0x7ff0000000000000ull);
  U bad = 0;
  for (int64_t i = 0; i < n; ++i) {
    U b;
    std::memcpy(&b, v + i, sizeof(S));
    bad |= (b & exp_mask) == exp_mask;
  }
  return bad == 0;
}

// Rows [r0, r1) of a plane of pitch Q: the rows [ra, rb) lie in the image and get W values each
// from src (pitch W; masked by m as Kernels::copy_rows does, when m is not null), the others zeros.
// nonfinite (not null, m null): set when a copied value is Inf or NaN.
template <typename S>
void band_rows(const Kernels<S>& kern, const S* src, const S* m, S* plane, int64_t Q, int64_t W, int64_t r0,
               int64_t ra, int64_t rb, int64_t r1, int* nonfinite = nullptr) {
  for (int64_t r = r0; r < ra; ++r) std::fill_n(plane + r * Q, W, S(0));
  if (rb > ra && nonfinite) {
    *nonfinite |= kern.copy_rows_finite(src, W, plane + ra * Q, Q, W, rb - ra);
  } else if (rb > ra) {
    kern.copy_rows(src, m, W, plane + ra * Q, Q, W, rb - ra);
  }
  for (int64_t r = std::max(ra, rb); r < r1; ++r) std::fill_n(plane + r * Q, W, S(0));
}

// One thread's planes, kept from call to call for the same geometry: allocated afresh, their 2 MB
// or so per thread came from new mappings on most calls (glibc maps big blocks and returns them
// when freed), and faulting in and zeroing those pages cost a quarter of the backward at
// 16x96x36x36. The zeros the planes rely on (gap columns, lead and slack) are never overwritten,
// so a reused set is as good as a fresh one.
template <typename S>
struct PlaneBuffers {
  std::array<int64_t, 6> geometry{};  // Q, padded, flat, C_in, C_out, M_in
  LineVec<S> XP, GS, GY1, Y1, GX;
};

// The calling thread's planes for `geometry`. A few geometries are kept (a network alternates its
// head, body and tail layers), the least recently used dropped first, within kKeptBytes per thread
// (bands are sized so that one set is a few MiB at most).
constexpr int64_t kKeptBytes = int64_t(16) << 20;
template <typename S>
PlaneBuffers<S>& plane_buffers(const std::array<int64_t, 6>& geometry) {
  thread_local std::vector<PlaneBuffers<S>> kept;  // most recently used first
  for (size_t i = 0; i < kept.size(); ++i)
    if (kept[i].geometry == geometry) {
      std::rotate(kept.begin(), kept.begin() + i, kept.begin() + i + 1);
      return kept[0];
    }
  const int64_t padded = geometry[1], flat = geometry[2];
  const int64_t bytes = ((geometry[3] + geometry[4]) * padded + (2 * geometry[4] + geometry[5]) * flat) * int64_t(sizeof(S));
  int64_t total = bytes;
  size_t keep = 0;  // how many of the kept sets fit beside the new one
  while (keep < kept.size()) {
    const PlaneBuffers<S>& k = kept[keep];
    total += int64_t((k.XP.size() + k.GS.size() + k.GY1.size() + k.Y1.size() + k.GX.size()) * sizeof(S));
    if (total > kKeptBytes) break;
    ++keep;
  }
  kept.resize(keep);
  kept.insert(kept.begin(), PlaneBuffers<S>());
  PlaneBuffers<S>& b = kept[0];
  b.geometry = geometry;
  b.XP.assign(geometry[3] * padded, S(0));
  b.GS.assign(geometry[4] * flat, S(0));
  b.GY1.assign(geometry[4] * padded, S(0));
  b.Y1.assign(geometry[4] * flat, S(0));
  b.GX.assign(geometry[5] * flat, S(0));
  return b;
}

template <typename S>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> plane_impl(const IGCConvParams& p, const Tensor& grad_out,
                                                             const Tensor& x, const Tensor& w1,
                                                             const c10::optional<Tensor>& b1, const Tensor& w2,
                                                             const c10::optional<Tensor>& out,
                                                             const std::array<bool, 5>& mask) {
  const Kernels<S>& kern = kernels<S>();
  const Layer<S> g(p, w1, b1, w2, c10::nullopt);
  const int64_t L = p.L, M = p.M, Min = p.M_in, C = p.C_out, Cin = p.C_in, K1 = g.K1, lanes = kern.lanes;
  const int64_t H = p.H, W = p.W, ph = p.pH, pw = p.pW, kH = p.kH, kW = p.kW, Kx = M * kH * kW;
  const bool relu = p.activation == kActRelu;
  const bool need_y1 = mask[3], need_gy1 = mask[0] || mask[1] || mask[2], need_pack = need_y1 || mask[1];
  const S* xp = x.data_ptr<S>();
  const S* gp = grad_out.data_ptr<S>();
  const S* op = relu ? out->data_ptr<S>() : nullptr;
  Tensor empty = at::empty({0}, x.options());
  Tensor gx = mask[0] ? empty_output(x.sizes(), x.options(), at::MemoryFormat::Contiguous) : empty;
  S* gxp = mask[0] ? gx.data_ptr<S>() : nullptr;
  const bool emit_gx = mask[0] && gx.numel() > 0;
  // grad_x bigger than the caches goes out with non-temporal stores (see stream_bytes_checked), each
  // channel's rows of a band as one run, gathered from the tile first so that the run's lines are
  // written whole.
  const bool stream_gx = gx.nbytes() >= stream_bytes_checked() && emit_gx;

  const int64_t Q = W + pw;  // plane pitch: pw shared zero columns after each row
  const int64_t row_bytes = (Cin + 3 * C) * Q * int64_t(sizeof(S));
  const int64_t rmax = std::max<int64_t>(1, std::min(H, kPlaneBandBytes / row_bytes));
  // Enough bands for every thread when there are few images (but bands of at least 8 rows).
  const int64_t nthreads = at::get_num_threads();
  const int64_t want = std::max((H + rmax - 1) / rmax, std::min((nthreads + p.N - 1) / p.N, H / 8));
  const int64_t hmax = (H + want - 1) / want, nbands = (H + hmax - 1) / hmax;  // no band left empty
  const int64_t hh = hmax + 2 * ph;  // rows of a band with its halo
  // Padded planes (xp, gy1): row r of the band's halo range at kLead + r * Q; taps read up to pw
  // before and, rounded to whole vectors, up to pw + kLanes after.
  const int64_t padded = round_up(kLead + hh * Q + pw + kLanes, kLanes);
  const int64_t flat = round_up(hh * Q + kLanes, kLanes);  // gs, y1, grad_x tiles
  const int64_t items = p.N * nbands;
  const int64_t cost = H * W * C * (3 * K1 + 2 * L);
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>({nthreads, items, p.N * cost >> 20}));

  // grad_x's weights with every kernel row valid: the source of tap (kh, m, kw) is gy1 shifted by
  // (ph - kh, kw - pw).
  const std::vector<S> wgx = flipped_primary_weights(g, (uint64_t(1) << kH) - 1);

  std::vector<GradSums<S>> sums(chunks);
  at::parallel_for(0, chunks, 1, [&](int64_t cb, int64_t ce) {
    for (int64_t ch = cb; ch < ce; ++ch) {
      GradSums<S>& A = sums[ch];
      A.init(p, K1, lanes, mask);
      PlaneBuffers<S>& buf = plane_buffers<S>({Q, padded, flat, Cin, C, Min});
      LineVec<S>&XP = buf.XP, &GS = buf.GS, &GY1 = buf.GY1, &Y1 = buf.Y1, &GX = buf.GX;
      const std::vector<S> ones(flat, S(1));
      const S* ones_row = ones.data();
      // Row lists: taps of the packed input (c, kh, kw); gs in secondary-channel order; y1 and
      // gy1 in mid-channel order, and as the secondary's rows GEMM writes them (m*L + l).
      std::vector<const S*> taps(Cin * kH * kW), gsrow(C), y1src(C), gy1row(C), gxsrc(L * Kx);
      std::vector<S*> y1dst(C), gy1dst(C), gxdst(Min);
      for (int64_t c = 0; c < Cin && need_pack; ++c)
        for (int64_t kh = 0; kh < kH; ++kh)
          for (int64_t kw = 0; kw < kW; ++kw) taps[(c * kH + kh) * kW + kw] = XP.data() + c * padded + kLead + kh * Q + kw - pw;
      for (int64_t c2 = 0; c2 < C; ++c2) gsrow[c2] = GS.data() + p.out_channel(c2 / L, c2 % L) * flat;
      for (int64_t l = 0; l < L; ++l)
        for (int64_t m = 0; m < M; ++m) {
          const int64_t c1 = l * M + m;
          if (need_y1) {
            y1dst[c1] = Y1.data() + c1 * flat;
            y1src[m * L + l] = y1dst[c1];
          }
          if (need_gy1) {
            gy1row[c1] = GY1.data() + c1 * padded + kLead;  // row 0 of the halo range
            gy1dst[m * L + l] = GY1.data() + c1 * padded + kLead;
            for (int64_t kh = 0; kh < kH; ++kh)
              for (int64_t kw = 0; kw < kW; ++kw)
                gxsrc[l * Kx + (kh * M + m) * kW + kw] = gy1row[c1] + (2 * ph - kh) * Q + kw - pw;
          }
        }
      for (int64_t ci = 0; ci < Min; ++ci) gxdst[ci] = GX.data() + ci * flat;
      LineVec<S> gxrun(stream_gx ? hmax * W : 0);

      auto nt = [&](int64_t MA, int64_t NB, const S* const* a, int64_t aoff, const S* const* b, int64_t boff,
                    int64_t P, S* acc) {
        NtArgs<S> t = nt_sum<S>(MA, NB, P);
        t.a = a;
        t.aoff = aoff;
        t.b = b;
        t.boff = boff;
        t.acc = acc;
        kern.nt(t);
      };

      const int64_t i0 = items * ch / chunks, i1 = items * (ch + 1) / chunks;
      for (int64_t it = i0; it < i1; ++it) {
        const int64_t n = it / nbands, y0 = it % nbands * hmax, h = std::min(H, y0 + hmax) - y0, P = h * Q;
        // The rows of the halo range [r0, r1) this band reads: all of them for grad_x, else its own.
        const int64_t r0 = emit_gx ? 0 : ph, r1 = emit_gx ? h + 2 * ph : h + ph;
        bool finite = true;  // a non-finite input times a junk column's zero gradient is NaN (grad_w1)
        if (need_pack) {
          // The band's rows inside the image, [ya, yb): one run of each channel, checked for Inf and
          // NaN as it is copied (a pass of its own over x waited on DRAM for data the copy then read
          // from cache: about 3% of the IGC-VDSR training step).
          const int64_t ya = std::max<int64_t>(0, y0 - ph), yb = std::min(H, y0 + h + ph);
          int nonfinite = 0;
          for (int64_t c = 0; c < Cin; ++c) {
            const S* run = xp + ((n * Cin + c) * H + ya) * W;
            // Row r of the halo range at XP + c * padded + kLead + r * Q (image row y0 - ph + r).
            band_rows<S>(kern, run, nullptr, XP.data() + c * padded + kLead, Q, W, 0, ya - y0 + ph, yb - y0 + ph,
                         h + 2 * ph, &nonfinite);
          }
          finite = nonfinite == 0;
        }
        // gs: grad_out with the activation's mask, zero rows outside the image; rows [r0, r1) of
        // the halo range, of which [ra, rb) lie in the image.
        {
          const int64_t ra = std::max(r0, ph - y0), rb = std::min(r1, H - y0 + ph);
          for (int64_t oc = 0; oc < C; ++oc) {
            const int64_t off = ((n * C + oc) * H + y0 - ph + ra) * W;
            band_rows<S>(kern, gp + off, relu ? op + off : nullptr, GS.data() + oc * flat, Q, W, r0, ra, rb, r1);
          }
        }
        if (need_gy1) {  // gy1[l*M+m] = sum_j w2[m*L+j][l] * gs[m*L+j], over the rows [r0, r1)
          const int64_t Pg = (r1 - r0) * Q;
          if (L == 1) {  // a per-channel scale (VDSR's head and tail)
            for (int64_t m = 0; m < M; ++m) {
              const S wv = g.w2[m];
              const S* __restrict s = gsrow[m] + r0 * Q;
              S* __restrict d = gy1dst[m] + r0 * Q;
              for (int64_t i = 0; i < Pg; ++i) d[i] = wv * s[i];
            }
          } else {
            RowsArgs<S> a;
            a.MB = L;
            a.K = L;
            a.P = Pg;
            a.ldw = L;
            a.soff = r0 * Q;
            std::vector<S*> d(L);
            for (int64_t m = 0; m < M; ++m) {
              for (int64_t l = 0; l < L; ++l) d[l] = gy1dst[m * L + l] + r0 * Q;
              a.w = g.w2.data() + m * L * L;
              a.src = gsrow.data() + m * L;
              a.dst = d.data();
              kern.rows(a);
            }
          }
        }
        if (need_y1) {  // recompute y1 over the band, then clear its junk columns
          for (int64_t l = 0; l < L; ++l) {
            primary_group(g, kern, l, taps.data() + l * K1, y1dst.data() + l * M, 0, P);
          }
          for (int64_t c1 = 0; c1 < C; ++c1)
            for (int64_t r = 0; r < h; ++r) std::fill(y1dst[c1] + r * Q + W, y1dst[c1] + (r + 1) * Q, S(0));
        }
        // Weight and bias sums over the band's own rows (gs and gy1 from halo row ph on).
        if (mask[4]) nt(C, 1, gsrow.data(), ph * Q, &ones_row, 0, P, A.accb2.data());
        if (mask[3])
          for (int64_t m = 0; m < M; ++m)
            nt(L, L, gsrow.data() + m * L, ph * Q, y1src.data() + m * L, 0, P, A.accw2.data() + m * L * L * lanes);
        if (mask[2]) nt(C, 1, gy1row.data(), ph * Q, &ones_row, 0, P, A.accb1.data());
        if (mask[1])
          for (int64_t l = 0; l < L; ++l) {
            S* acc = A.accw1.data() + l * M * K1 * lanes;
            if (finite) {
              nt(M, K1, gy1row.data() + l * M, ph * Q, taps.data() + l * K1, 0, P, acc);
            } else {  // row by row, so no junk column meets the input (exact NaN/Inf as the reference)
              for (int64_t r = 0; r < h; ++r) nt(M, K1, gy1row.data() + l * M, (ph + r) * Q, taps.data() + l * K1, r * Q, W, acc);
            }
          }
        A.added(P);
        if (emit_gx) {  // grad_x rows [y0, y1), one group's M_in channels at a time
          RowsArgs<S> a;
          a.MB = Min;
          a.K = Kx;
          a.P = P;
          a.ldw = Min;
          a.dst = gxdst.data();
          for (int64_t l = 0; l < L; ++l) {
            a.w = wgx.data() + l * Kx * Min;
            a.src = gxsrc.data() + l * Kx;
            kern.rows(a);
            for (int64_t ci = 0; ci < Min; ++ci) {
              S* run = gxp + ((n * Cin + l * Min + ci) * H + y0) * W;
              S* rows = stream_gx ? gxrun.data() : run;
              kern.copy_rows(gxdst[ci], nullptr, Q, rows, W, W, h);
              if (stream_gx) kern.copy_stream(run, rows, h * W);
            }
          }
        }
      }
      if (stream_gx) kern.store_fence();
      A.flush();
    }
  });

  Tensor gw1, gb1, gw2, gb2;
  std::tie(gw1, gb1, gw2, gb2) = reduce_grad_sums(sums, x, w1, w2, mask);
  return {gx, gw1, gb1, gw2, gb2};
}

}  // namespace

bool plane_backward_applies(const IGCConvParams& p, const Tensor& grad_out, const Tensor& x, const Tensor& w1,
                            const Tensor& w2, const c10::optional<Tensor>& out) {
  if (!plane_backward_enabled()) return false;
  if (x.scalar_type() != at::kFloat && x.scalar_type() != at::kDouble) return false;
  if (p.sH != 1 || p.sW != 1 || p.dH != 1 || p.dW != 1 || p.kH % 2 == 0 || p.kW % 2 == 0) return false;
  if (p.pH != (p.kH - 1) / 2 || p.pW != (p.kW - 1) / 2 || p.pW >= kLead || p.kH >= 64) return false;  // kH: a bit mask
  if (p.W > kPlaneMaxWidth || p.N == 0 || p.H == 0 || p.W == 0) return false;
  if (!x.is_contiguous() || !grad_out.is_contiguous() || grad_out.scalar_type() != x.scalar_type()) return false;
  if (p.activation == kActRelu && (!out || !out->is_contiguous() || out->scalar_type() != x.scalar_type())) return false;
  // Junk columns meet the weights (0 * Inf); non-finite weights keep the row path's exact NaN/Inf.
  // A loop over the few weights: at::isfinite(w).all() took about 1.4 ms of a 20-layer training step.
  auto finite = [](const Tensor& w) {
    const Tensor c = w.contiguous();
    return c.scalar_type() == at::kDouble ? all_finite(c.data_ptr<double>(), c.numel())
                                          : all_finite(c.data_ptr<float>(), c.numel());
  };
  return finite(w1) && finite(w2);
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> backward_plane(const IGCConvParams& p, const Tensor& grad_out,
                                                                  const Tensor& x, const Tensor& w1,
                                                                  const c10::optional<Tensor>& b1, const Tensor& w2,
                                                                  const c10::optional<Tensor>& out,
                                                                  const std::array<bool, 5>& mask) {
  if (x.scalar_type() == at::kDouble) return plane_impl<double>(p, grad_out, x, w1, b1, w2, out, mask);
  return plane_impl<float>(p, grad_out, x, w1, b1, w2, out, mask);
}

}  // namespace cpu
}  // namespace igc
