// The fused CPU kernels of igc_kernels::igc_conv and igc_conv_backward.
//
// One work item is one output row (n, oy). Its input rows are packed into "phase buffers"
// (packing reads any strides, converts bf16 -> fp32 and writes explicit zero padding; each thread
// keeps the last kH packed rows, so an input row is packed about once), so every tap
// (ci, kh, kw) of the primary conv is a plain pointer into our own padded buffer and the layer
// becomes two small GEMMs per pixel segment (kernels.h):
//   primary, per group l:   y1[l*M+m][ox]  = b1 + sum_{ci,kh,kw} w1 * src_(ci,kh,kw)[ox]
//   secondary, per group m: s[m*L+j][ox]   = b2 + sum_l w2[m*L+j][l] * y1[l*M+m][ox]
// with the output shuffle, residual and activation applied when s is stored. The y1 tile of one
// segment (C_mid x 64 values) stays in L1/L2, so the forward allocates nothing of activation
// size besides its output.
//
// One primary group (L = 1, a dense conv) folds the per-channel secondary into the primary and
// runs as one GEMM. Outputs of 16 MiB and more are written with non-temporal stores.
//
// The backward recomputes y1 segment by segment, forms grad_y1 through the transposed secondary,
// reduces the weight gradients with the NT kernel (per-chunk accumulators, folded into double)
// and keeps the few grad_y1 rows grad_x needs in a ring, from which each input row of grad_x is
// formed as a correlation of zero-upsampled grad_y1 rows with the flipped primary weights
// (see "Backward" below): it allocates nothing of activation size besides its outputs.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "igc_conv.h"
#include "kernels.h"

// at::parallel_for is an inline template: with torch's OpenMP backend its `#pragma omp parallel`
// is compiled here, so this file must be built with -fopenmp or every kernel runs on one thread.
#if AT_PARALLEL_OPENMP && !defined(_OPENMP)
#pragma message("igc_kernels: csrc/cpu is compiled without -fopenmp; the CPU kernels will run on one thread")
#define IGC_CPU_MULTITHREADED 0
#else
#define IGC_CPU_MULTITHREADED 1
#endif

namespace igc {
namespace cpu {
namespace {

using at::Tensor;

constexpr int64_t kLanes = 16;   // widest vector (floats): packed rows are readable this far past their end
constexpr int64_t kSegF = 64;    // pixels per forward segment (y1 tile: C_mid x 64)
constexpr int64_t kSegB = 128;   // pixels per backward segment (fewer accumulator round trips)
constexpr int64_t kSegX = 64;    // pixels per grad_x segment
constexpr int64_t kFlushPixels = 4096;  // fold float lane accumulators into double this often
// Outputs at least this big are written with non-temporal stores: they cannot stay in the caches
// (32 MiB of L3 on the reference machine) until the next layer reads them, and streaming them
// saves reading every destination line before it is overwritten.
constexpr int64_t kStreamBytes = int64_t(16) << 20;

int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

struct Str {
  int64_t n, c, h, w;
};
Str strides_of(const Tensor& t) { return {t.stride(0), t.stride(1), t.stride(2), t.stride(3)}; }

template <typename S>
const Kernels<S>& kernels();
template <>
const Kernels<float>& kernels<float>() {
  const Kernels<float>* k = float_kernels();
  TORCH_CHECK(k != nullptr, "igc_conv (CPU): environment variable IGC_KERNELS_CPU_ISA=",
              std::getenv("IGC_KERNELS_CPU_ISA"),
              " names an unknown instruction set or one this CPU lacks; expected generic, avx2, avx512 or auto");
  return *k;
}
template <>
const Kernels<double>& kernels<double>() {
  return double_kernels();
}

// Sizes and precomputed tables shared by forward and backward.
template <typename S>
struct Layer {
  IGCConvParams p;
  int64_t K1 = 0;  // taps per primary output: M_in * kH * kW
  int64_t Wp = 0;  // packed row length
  int64_t slot = 0;  // one packed input row, all channels and phases: C_in * sW * Wp
  std::vector<S> w1, w1T, w2, w2T, b1, b2;  // w1T[l][k][m], w2T[m][l][j] (rows-GEMM layouts)
  std::vector<S> w1f, bf;                   // L == 1: w1T and bias with the secondary folded in
  std::vector<int64_t> c2_of_oc;            // secondary channel feeding output channel oc
  std::vector<int64_t> tap_off, tap_kh;     // tap (c, kh, kw) -> offset in its packed row, kh

  Layer(const IGCConvParams& pp, const Tensor& w1t, const c10::optional<Tensor>& b1t, const Tensor& w2t,
        const c10::optional<Tensor>& b2t)
      : p(pp) {
    const auto st = std::is_same<S, double>::value ? at::kDouble : at::kFloat;
    auto vec = [&](const Tensor& t) {
      Tensor c = t.to(st).contiguous();
      return std::vector<S>(c.data_ptr<S>(), c.data_ptr<S>() + c.numel());
    };
    const int64_t L = p.L, M = p.M;
    K1 = p.M_in * p.kH * p.kW;
    Wp = round_up(p.W_out + (p.dW * (p.kW - 1)) / p.sW + kLanes, kLanes);
    slot = p.C_in * p.sW * Wp;
    w1 = vec(w1t);
    w2 = vec(w2t);
    if (b1t) b1 = vec(*b1t);
    if (b2t) b2 = vec(*b2t);
    w1T.resize(w1.size());
    for (int64_t l = 0; l < L; ++l)
      for (int64_t m = 0; m < M; ++m)
        for (int64_t k = 0; k < K1; ++k) w1T[(l * K1 + k) * M + m] = w1[(l * M + m) * K1 + k];
    w2T.resize(w2.size());
    for (int64_t m = 0; m < M; ++m)
      for (int64_t j = 0; j < L; ++j)
        for (int64_t l = 0; l < L; ++l) w2T[(m * L + l) * L + j] = w2[(m * L + j) * L + l];
    c2_of_oc.resize(p.C_out);
    for (int64_t m = 0; m < M; ++m)
      for (int64_t j = 0; j < L; ++j) c2_of_oc[p.out_channel(m, j)] = m * L + j;
    if (L == 1) {  // a dense conv: fold the per-channel secondary into the primary (forward)
      w1f.resize(K1 * M);
      bf.resize(M);
      for (int64_t m = 0; m < M; ++m) {
        for (int64_t k = 0; k < K1; ++k) w1f[k * M + m] = w1T[k * M + m] * w2[m];
        bf[m] = (b1.empty() ? S(0) : b1[m] * w2[m]) + (b2.empty() ? S(0) : b2[m]);
      }
    }
    tap_off.resize(p.C_in * p.kH * p.kW);
    tap_kh.resize(tap_off.size());
    for (int64_t c = 0; c < p.C_in; ++c)
      for (int64_t kh = 0; kh < p.kH; ++kh)
        for (int64_t kw = 0; kw < p.kW; ++kw) {
          const int64_t r = (kw * p.dW) % p.sW, shift = (kw * p.dW) / p.sW;
          tap_off[(c * p.kH + kh) * p.kW + kw] = (c * p.sW + r) * Wp + shift;
          tap_kh[(c * p.kH + kh) * p.kW + kw] = kh;
        }
  }
};

// Packs input row (n, iy) (iy < 0: a zero row): row (c*sW + r) of dst, element j, holds
// x[n, c, iy, j*sW + r - pW], zero outside the image.
template <typename T, typename S>
void pack_row(const Layer<S>& g, const Kernels<S>& kern, const T* x, const Str& xs, int64_t n, int64_t iy, S* dst) {
  const IGCConvParams& p = g.p;
  const int64_t Wp = g.Wp;
  if (iy < 0) {
    std::fill(dst, dst + g.slot, S(0));
    return;
  }
  const T* xr = x + n * xs.n + iy * xs.h;
  if (xs.c == 1 && p.C_in > 1 && p.sW == 1 && std::is_same<T, S>::value) {  // channels_last: a transpose
    const int64_t j0 = std::min(Wp, p.pW), j1 = std::max(j0, std::min(Wp, p.W + p.pW));  // columns inside the image
    TransposeArgs<S> a;
    a.R = j1 - j0;
    a.C = p.C_in;
    a.src = reinterpret_cast<const S*>(xr + (j0 - p.pW) * xs.w);
    a.lds = xs.w;
    a.dst = dst + j0;
    a.ldd = Wp;
    kern.transpose(a);
    for (int64_t c = 0; c < p.C_in; ++c) {
      std::fill(dst + c * Wp, dst + c * Wp + j0, S(0));
      std::fill(dst + c * Wp + j1, dst + (c + 1) * Wp, S(0));
    }
    return;
  }
  if (xs.c == 1 && p.C_in > 1) {  // channels_last, strided or converted: read pixels contiguously, scatter to rows
    for (int64_t r = 0; r < p.sW; ++r)
      for (int64_t j = 0; j < Wp; ++j) {
        const int64_t ix = j * p.sW + r - p.pW;
        const bool in = ix >= 0 && ix < p.W;
        const T* xp = xr + (in ? ix * xs.w : 0);
        S* d = dst + r * Wp + j;
        const int64_t step = p.sW * Wp;
        if (in) {
          for (int64_t c = 0; c < p.C_in; ++c) d[c * step] = S(xp[c]);
        } else {
          for (int64_t c = 0; c < p.C_in; ++c) d[c * step] = S(0);
        }
      }
    return;
  }
  for (int64_t c = 0; c < p.C_in; ++c) {
    const T* xc = xr + c * xs.c;
    for (int64_t r = 0; r < p.sW; ++r) {
      S* b = dst + (c * p.sW + r) * Wp;
      // j with 0 <= j*sW + r - pW < W
      const int64_t j0 = std::min(Wp, std::max<int64_t>(0, (p.pW - r + p.sW - 1) / p.sW));
      const int64_t last = p.W - 1 + p.pW - r;  // j*sW <= last
      const int64_t j1 = std::max(j0, std::min(Wp, last < 0 ? 0 : last / p.sW + 1));
      std::fill(b, b + j0, S(0));
      if (xs.w == 1 && p.sW == 1) {
        const T* src = xc + (j0 - p.pW);
        if (std::is_same<T, S>::value) {
          std::memcpy(b + j0, src, (j1 - j0) * sizeof(S));
        } else {
          for (int64_t j = j0; j < j1; ++j) b[j] = S(src[j - j0]);
        }
      } else {
        for (int64_t j = j0; j < j1; ++j) b[j] = S(xc[(j * p.sW + r - p.pW) * xs.w]);
      }
      std::fill(b + j1, b + Wp, S(0));
    }
  }
}

// The packed input rows of one thread: kH slots, each holding one packed input row, reused
// while consecutive output rows share input rows. prepare() points src at the taps of row (n, oy).
template <typename S>
struct RowCache {
  const Layer<S>& g;
  const Kernels<S>& kern;
  std::vector<S> buf;  // kH slots of one packed input row each
  std::vector<int64_t> tag;  // input row held by each slot: n*H + iy, -1 zero row, -2 nothing
  std::vector<const S*> src;  // per tap (c, kh, kw)
  std::vector<int64_t> want, slot_of;  // scratch of prepare(), per kernel row
  std::vector<char> used;              // scratch of prepare(), per slot

  RowCache(const Layer<S>& layer, const Kernels<S>& k)
      : g(layer),
        kern(k),
        buf(layer.p.kH * layer.slot),
        tag(layer.p.kH, -2),
        src(layer.tap_off.size()),
        want(layer.p.kH),
        slot_of(layer.p.kH),
        used(layer.p.kH) {}

  template <typename T>
  void prepare(const T* x, const Str& xs, int64_t n, int64_t oy) {
    const IGCConvParams& p = g.p;
    const int64_t kH = p.kH;
    std::fill(slot_of.begin(), slot_of.end(), -1);
    std::fill(used.begin(), used.end(), 0);
    for (int64_t kh = 0; kh < kH; ++kh) {
      const int64_t iy = oy * p.sH - p.pH + kh * p.dH;
      want[kh] = iy >= 0 && iy < p.H ? n * p.H + iy : -1;
      for (int64_t s = 0; s < kH; ++s)
        if (tag[s] == want[kh]) {
          slot_of[kh] = s;
          used[s] = 1;
          break;
        }
    }
    for (int64_t kh = 0; kh < kH; ++kh) {
      if (slot_of[kh] >= 0) continue;
      int64_t s = 0;
      while (used[s]) ++s;  // a free slot exists: kH slots, at most kH distinct rows wanted
      used[s] = 1;
      tag[s] = want[kh];
      pack_row<T, S>(g, kern, x, xs, n, want[kh] < 0 ? -1 : want[kh] - n * p.H, buf.data() + s * g.slot);
      for (int64_t k2 = kh; k2 < kH; ++k2)
        if (want[k2] == want[kh]) slot_of[k2] = s;
    }
    for (size_t t = 0; t < src.size(); ++t) src[t] = buf.data() + slot_of[g.tap_kh[t]] * g.slot + g.tap_off[t];
  }
};

// An asm statement because GCC drops __builtin_prefetch loops it deems side-effect free.
inline void prefetch_l2(const void* a) {
#if defined(__x86_64__) || defined(__i386__)
  asm volatile("prefetcht1 %0" : : "m"(*static_cast<const char*>(a)));
#else
  __builtin_prefetch(a, 0, 2);
#endif
}

// Software prefetch (into L2) of one tensor row that the next output row will read, spread over
// the kernel calls of the current row. Rows of activations are read once and each channel's run
// lies in its own page, so the hardware prefetchers do not fetch them ahead; without this the
// forward's packing of each new input row waited on DRAM (about a quarter of the forward at
// 1x96x256x256), and so did the backward's reads of grad_out and out.
// fetch(p0, len, part, parts): piece `part` of `parts` of the columns that output segment
// [p0, p0 + len) reads (columns scale * [p0, p0 + len)); planar rows split by channel,
// channels_last rows split their contiguous pixels. Other layouts are not prefetched.
template <typename T>
struct RowPrefetch {
  const T* row = nullptr;  // row (n, y) of the tensor; null: nothing to fetch
  int64_t cs = 0, C = 0, W = 0, scale = 1;
  bool planar = true;
  int64_t cached_parts = 0, per = 0, extra = 0;  // planar: channels per part

  void set(const T* base, const Str& s, int64_t C_, int64_t H, int64_t W_, int64_t n, int64_t y, int64_t scale_) {
    planar = s.w == 1;
    const bool layout_ok = planar || (s.c == 1 && s.w == C_);
    row = base && layout_ok && y >= 0 && y < H ? base + n * s.n + y * s.h : nullptr;
    cs = s.c;
    if (C != C_) cached_parts = 0;
    C = C_;
    W = W_;
    scale = scale_;
  }
  void fetch(int64_t p0, int64_t len, int64_t part, int64_t parts) {
    if (!row) return;
    constexpr int64_t line = 64 / sizeof(T);
    const int64_t x0 = std::min(W, p0 * scale), x1 = std::min(W, (p0 + len) * scale);
    if (planar) {
      if (parts != cached_parts) {  // called once per kernel call: no divisions in the common case
        cached_parts = parts;
        per = C / parts;
        extra = C % parts;
      }
      const int64_t c0 = part * per + std::min(part, extra), c1 = c0 + per + (part < extra ? 1 : 0);
      for (int64_t c = c0; c < c1; ++c)
        for (int64_t ix = x0; ix < x1; ix += line) prefetch_l2(row + c * cs + ix);
    } else {
      const T* a = row + x0 * C;
      const int64_t total = (x1 - x0) * C;
      for (int64_t i = part * total / parts / line * line; i < (part + 1) * total / parts; i += line) prefetch_l2(a + i);
    }
  }
};

// Work items per parallel chunk: enough that tiny layers run on one thread.
int64_t grain_for(int64_t cost_per_item) { return std::max<int64_t>(1, (int64_t(1) << 18) / std::max<int64_t>(1, cost_per_item)); }

// The primary conv of one row segment [p0, p0 + len): for each group l, y1 rows l*M .. l*M+M-1
// (+ b1) from the group's K1 packed taps. Shared by the forward and the backward's recompute.
// `between(l)` runs before group l (the forward's prefetch).
template <typename S, typename Between>
void primary_segment(const Layer<S>& g, const Kernels<S>& kern, const S* const* src, S* const* y1dst, int64_t p0,
                     int64_t len, Between&& between) {
  const int64_t M = g.p.M, K1 = g.K1;
  RowsArgs<S> a;
  a.MB = M;
  a.K = K1;
  a.P = len;
  a.ldw = M;
  a.soff = p0;
  for (int64_t l = 0; l < g.p.L; ++l) {
    between(l);
    a.w = g.w1T.data() + l * K1 * M;
    a.bias = g.b1.empty() ? nullptr : g.b1.data() + l * M;
    a.src = src + l * K1;
    a.dst = y1dst + l * M;
    kern.rows(a);
  }
}

// ---------------------------------------------------------------------------------------------
// Forward.

template <typename T, typename S>
Tensor forward_impl(const IGCConvParams& p, const Tensor& x, const Tensor& w1, const c10::optional<Tensor>& b1,
                    const Tensor& w2, const c10::optional<Tensor>& b2, const c10::optional<Tensor>& residual) {
  Tensor out = at::empty({p.N, p.C_out, p.H_out, p.W_out}, x.options().memory_format(x.suggest_memory_format()));
  if (out.numel() == 0) return out;
  const Kernels<S>& kern = kernels<S>();
  const Layer<S> g(p, w1, b1, w2, b2);
  const int64_t L = p.L, M = p.M, C = p.C_out, K1 = g.K1;
  const T* xp = x.data_ptr<T>();
  const Str xs = strides_of(x), os = strides_of(out);
  T* op = out.data_ptr<T>();
  const T* rp = residual ? residual->data_ptr<T>() : nullptr;
  const Str rs = residual ? strides_of(*residual) : Str{0, 0, 0, 0};
  // Direct stores from the kernel when the output (and residual) rows are contiguous in S.
  const bool direct = std::is_same<T, S>::value && os.w == 1 && (!rp || rs.w == 1);
  const bool relu = p.activation == kActRelu;
  const bool stream = direct && out.nbytes() >= kStreamBytes;
  const int64_t rows = p.N * p.H_out;

  at::parallel_for(0, rows, grain_for(p.W_out * C * (K1 + L)), [&](int64_t begin, int64_t end) {
    RowCache<S> cache(g, kern);
    RowPrefetch<T> next;  // the input row the next output row adds to the cache
    const std::vector<const S*>& src = cache.src;
    std::vector<S> y1(L > 1 ? C * kSegF : 0, S(0)), st(direct ? 0 : C * kSegF, S(0));  // L == 1: no y1 tile
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
          primary_segment(g, kern, src.data(), y1dst.data(), p0, len, [&](int64_t l) { next.fetch(p0, len, l, L); });
        } else {
          next.fetch(p0, len, 0, 1);
        }
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
          b.src = src.data();
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
            b.src = y1src.data() + m * L;
            b.dst = dst.data() + m * L;
            b.res = direct && rp ? res.data() + m * L : nullptr;
            kern.rows(b);
          }
        }
        if (direct) continue;
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
          for (int64_t i = 0; i < len && rp; ++i) {
            S* oi = o + i * os.w;
            const S* r = reinterpret_cast<const S*>(rp + n * rs.n + oy * rs.h + (p0 + i) * rs.w);
            for (int64_t oc = 0; oc < C; ++oc) {
              const S v = oi[oc] + r[oc];
              oi[oc] = late_relu && v < S(0) ? S(0) : v;
            }
          }
        } else {
          for (int64_t i = 0; i < len; ++i)
            for (int64_t oc = 0; oc < C; ++oc)
              op[n * os.n + oc * os.c + oy * os.h + (p0 + i) * os.w] = finish(st[oc * kSegF + i], oc, i);
        }
      }
    }
    if (stream) kern.store_fence();
  });
  return out;
}

// ---------------------------------------------------------------------------------------------
// Backward.
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

template <typename S>
struct GradAcc {  // one chunk's weight-gradient sums
  std::vector<double> w1, b1, w2, b2;
};

// grad_x of input rows, from grad_y1 rows kept with zero margins (Lm left, up to Wg right) so that
// for stride 1 the taps are read in place: the row of tap kw' starts at Lm + base + kw'*dW.
template <typename T, typename S>
struct GradInput {
  const Layer<S>& g;
  const Kernels<S>& kern;
  T* gxp;
  Str gxs;
  bool direct;
  int64_t base, Lm, Wg, Wz, Kx;
  std::vector<S> Z, tile;
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
    Lm = std::max<int64_t>(0, -base);
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

  // The weights of the rows GEMM for the valid kernel rows `valid`, in the order emit appends
  // their sources: entry ((l * Kx + k) * M_in + ci), k = (nv * M + m) * kW + kw, nv counting the
  // valid rows before kh, holds w1[l*M+m][ci][kh][kW-1-kw].
  const S* weights_for(uint64_t valid) {
    for (const auto& e : wg_of)
      if (e.first == valid) return e.second.data();
    const IGCConvParams& p = g.p;
    const int64_t M = p.M, Min = p.M_in;
    std::vector<S> wg(p.L * Kx * Min, S(0));
    int64_t nv = 0;
    for (int64_t kh = 0; kh < p.kH; ++kh) {
      if (!(valid >> kh & 1)) continue;
      for (int64_t l = 0; l < p.L; ++l)
        for (int64_t m = 0; m < M; ++m)
          for (int64_t kw = 0; kw < p.kW; ++kw)
            for (int64_t ci = 0; ci < Min; ++ci)
              wg[(l * Kx + (nv * M + m) * p.kW + kw) * Min + ci] =
                  g.w1[(((l * M + m) * Min + ci) * p.kH + kh) * p.kW + (p.kW - 1 - kw)];
      ++nv;
    }
    wg_of.emplace_back(valid, std::move(wg));
    return wg_of.back().second.data();
  }

  // Row iy of image n; row_of(c1, oy) is the margined grad_y1 row of channel c1, output row oy.
  template <typename RowOf>
  void emit(int64_t n, int64_t iy, const RowOf& row_of) {
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
      // Stride 1: taps read the margined rows in place. Stride sW > 1: zero-upsample first.
      for (int64_t c1 = 0; c1 < C && p.sW > 1; ++c1) {
        S* z = Z.data() + (nv * C + c1) * Wz;
        const S* gr = row_of(c1, oy) + Lm;
        for (int64_t t2 = 0; t2 < Wz; ++t2) {
          const int64_t q = t2 + base;
          z[t2] = q >= 0 && q % p.sW == 0 && q / p.sW < p.W_out ? gr[q / p.sW] : S(0);
        }
      }
      // Sources of this valid kernel row, appended after the earlier ones.
      for (int64_t l = 0; l < L; ++l)
        for (int64_t m = 0; m < M; ++m)
          for (int64_t kw = 0; kw < p.kW; ++kw) {
            const int64_t k = (nv * M + m) * p.kW + kw;
            const int64_t c1 = l * M + m;
            srcx[l * Kx + k] = p.sW > 1 ? Z.data() + (nv * C + c1) * Wz + kw * p.dW
                                        : row_of(c1, oy) + Lm + base + kw * p.dW;
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
  Tensor gx = mask[0] ? at::empty_like(x, x.options().memory_format(x.suggest_memory_format())) : empty;
  const bool emit_gx = mask[0] && gx.numel() > 0;
  // grad_y1 rows an input row depends on span at most this many consecutive output rows.
  const int64_t ring = emit_gx ? (p.kH - 1) * p.dH / p.sH + 2 : 1;

  const int64_t cost = p.W_out * C * (K1 + L) * 4;
  int64_t chunks = std::min<int64_t>(at::get_num_threads(), std::max<int64_t>(1, rows * cost >> 20));
  chunks = std::max<int64_t>(1, std::min(chunks, rows));
  std::vector<GradAcc<S>> accs(chunks);
  at::parallel_for(0, chunks, 1, [&](int64_t cb, int64_t ce) {
    for (int64_t ch = cb; ch < ce; ++ch) {
      GradAcc<S>& A = accs[ch];
      A.w1.assign(mask[1] ? C * K1 : 0, 0.0);
      A.b1.assign(mask[2] ? C : 0, 0.0);
      A.w2.assign(mask[3] ? C * L : 0, 0.0);
      A.b2.assign(mask[4] ? C : 0, 0.0);
      RowCache<S> cache(g, kern);
      RowPrefetch<T> pf_x, pf_g, pf_o;
      GradInput<T, S> gin(g, kern, emit_gx ? gx : Tensor());
      const int64_t Wg = gin.Wg, Lm = gin.Lm;
      const std::vector<const S*>& src = cache.src;
      std::vector<S> y1(need_y1 ? C * kSegB : 0, S(0)), gs(C * kSegB, S(0));
      std::vector<S> om(relu && gs_.c == 1 ? C * kSegB : 0);  // channels_last out, transposed (ReLU mask)
      std::vector<S> gy1(need_gy1 ? ring * C * Wg : 0, S(0));  // margins stay zero: only [Lm, Lm+W_out) is written
      std::vector<S> accw1(mask[1] ? C * K1 * lanes : 0, S(0)), accw2(mask[3] ? C * L * lanes : 0, S(0));
      std::vector<S> accb1(mask[2] ? C * lanes : 0, S(0)), accb2(mask[4] ? C * lanes : 0, S(0));
      std::vector<const S*> y1src(C), gsrow(C), gy1row(C);
      std::vector<S*> y1dst(C), gy1dst(C);
      for (int64_t l = 0; l < L; ++l)
        for (int64_t m = 0; m < M; ++m)
          if (need_y1) {
            y1dst[l * M + m] = y1.data() + (l * M + m) * kSegB;
            y1src[m * L + l] = y1.data() + (l * M + m) * kSegB;
          }
      // gs holds its rows in output-channel order (as grad_out has them); gsrow lists them in
      // secondary-channel order c2 = m*L + j (the shuffle undone).
      for (int64_t c2 = 0; c2 < C; ++c2) gsrow[c2] = gs.data() + p.out_channel(c2 / L, c2 % L) * kSegB;
      auto gy1_row = [&](int64_t c1, int64_t oy) { return gy1.data() + ((oy % ring) * C + c1) * Wg; };
      // Bias gradients are row sums: the NT kernel against a row of ones (vectorized, lane sums).
      const std::vector<S> ones(kSegB + kLanes, S(1));
      const S* ones_row = ones.data();
      auto row_sums = [&](const S* const* rows_, int64_t len, S* acc) {
        NtArgs<S> a;
        a.MA = C;
        a.NB = 1;
        a.P = len;
        a.a = rows_;
        a.b = &ones_row;
        a.acc = acc;
        a.ld = 1;
        kern.nt(a);
      };
      auto flush = [&](std::vector<S>& acc, std::vector<double>& dst) {
        for (size_t e = 0; e < dst.size(); ++e) {
          double s = 0;
          for (int64_t v = 0; v < lanes; ++v) s += double(acc[e * lanes + v]);
          dst[e] += s;
        }
        std::fill(acc.begin(), acc.end(), S(0));
      };
      auto flush_all = [&] {
        if (mask[1]) flush(accw1, A.w1);
        if (mask[2]) flush(accb1, A.b1);
        if (mask[3]) flush(accw2, A.w2);
        if (mask[4]) flush(accb2, A.b2);
      };
      int64_t pending = 0;

      // Output row oy of image n: gs, grad_y1 (into the ring), and when `owned` the weight sums.
      auto output_row = [&](int64_t n, int64_t oy, bool owned) {
        if (owned && need_pack) cache.template prepare<T>(xp, xs, n, oy);
        // What the next output row reads first: its new input row, its grad_out and out rows.
        const bool more = oy + 1 < p.H_out;
        pf_x.set(need_pack ? xp : nullptr, xs, p.C_in, p.H, p.W, n, more ? (oy + 1) * p.sH - p.pH + (p.kH - 1) * p.dH : -1,
                 p.sW);
        pf_g.set(gp, gs_, C, p.H_out, p.W_out, n, more ? oy + 1 : -1, 1);
        pf_o.set(outp, os, C, p.H_out, p.W_out, n, more ? oy + 1 : -1, 1);
        auto prefetch = [&](int64_t p0, int64_t len, int64_t part, int64_t parts) {
          pf_x.fetch(p0, len, part, parts);
          pf_g.fetch(p0, len, part, parts);
          pf_o.fetch(p0, len, part, parts);
        };
        for (int64_t p0 = 0; p0 < p.W_out; p0 += kSegB) {
          const int64_t len = std::min(kSegB, p.W_out - p0);
          if (owned && need_y1) {  // recompute y1
            primary_segment(g, kern, src.data(), y1dst.data(), p0, len, [&](int64_t l) { prefetch(p0, len, l, L); });
          } else {
            prefetch(p0, len, 0, 1);
          }
          auto load = [&](int64_t oc, int64_t i) {
            const int64_t px = p0 + i;
            S v = S(gp[n * gs_.n + oc * gs_.c + oy * gs_.h + px * gs_.w]);
            if (relu) v = S(outp[n * os.n + oc * os.c + oy * os.h + px * os.w]) > S(0) ? v : S(0);
            gs[oc * kSegB + i] = v;
          };
          if (gs_.w == 1 && (!relu || os.w == 1)) {  // contiguous rows: vectorizable
            for (int64_t oc = 0; oc < C; ++oc) {
              const T* gr = gp + n * gs_.n + oc * gs_.c + oy * gs_.h + p0;
              S* d = gs.data() + oc * kSegB;
              if (relu) {
                const T* orow = outp + n * os.n + oc * os.c + oy * os.h + p0;
                for (int64_t i = 0; i < len; ++i) {  // both loads unconditional: a select, no branch
                  const S gv = S(gr[i]);
                  d[i] = S(orow[i]) > S(0) ? gv : S(0);
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
              t.ldd = kSegB;
              kern.transpose(t);
            };
            transpose_in(gp, gs_, gs.data());
            if (relu) {
              transpose_in(outp, os, om.data());
              for (int64_t oc = 0; oc < C; ++oc) {
                S* d = gs.data() + oc * kSegB;
                const S* o = om.data() + oc * kSegB;
                for (int64_t i = 0; i < len; ++i) d[i] = o[i] > S(0) ? d[i] : S(0);
              }
            }
          } else if (gs_.w == 1) {
            for (int64_t oc = 0; oc < C; ++oc)
              for (int64_t i = 0; i < len; ++i) load(oc, i);
          } else {
            for (int64_t i = 0; i < len; ++i)
              for (int64_t oc = 0; oc < C; ++oc) load(oc, i);
          }
          if (owned && mask[4]) row_sums(gsrow.data(), len, accb2.data());
          if (owned && mask[3]) {  // grad_w2[m*L+j][l] += sum_px gs[m*L+j] * y1[l*M+m]
            NtArgs<S> a;
            a.MA = L;
            a.NB = L;
            a.P = len;
            a.ld = L;
            for (int64_t m = 0; m < M; ++m) {
              a.a = gsrow.data() + m * L;
              a.b = y1src.data() + m * L;
              a.acc = accw2.data() + m * L * L * lanes;
              kern.nt(a);
            }
          }
          if (need_gy1 && (owned || emit_gx)) {
            for (int64_t l = 0; l < L; ++l)
              for (int64_t m = 0; m < M; ++m) {
                S* r = gy1_row(l * M + m, oy) + Lm + p0;
                gy1row[l * M + m] = r;
                gy1dst[m * L + l] = r;
              }
            RowsArgs<S> a;  // gy1[l*M+m] = sum_j w2[m*L+j][l] * gs[m*L+j]
            a.MB = L;
            a.K = L;
            a.P = len;
            a.ldw = L;
            for (int64_t m = 0; m < M; ++m) {
              a.w = g.w2.data() + m * L * L;
              a.src = gsrow.data() + m * L;
              a.dst = gy1dst.data() + m * L;
              kern.rows(a);
            }
            if (owned && mask[2]) row_sums(gy1row.data(), len, accb1.data());
            if (owned && mask[1]) {  // grad_w1[l*M+m][k] += sum_px gy1[l*M+m] * src_k
              NtArgs<S> b;
              b.MA = M;
              b.NB = K1;
              b.P = len;
              b.ld = K1;
              b.boff = p0;
              for (int64_t l = 0; l < L; ++l) {
                b.a = gy1row.data() + l * M;
                b.b = src.data() + l * K1;
                b.acc = accw1.data() + l * M * K1 * lanes;
                kern.nt(b);
              }
            }
          }
          if (owned) pending += len;
          if (pending >= kFlushPixels) {
            flush_all();
            pending = 0;
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
          for (; iy < i1 && gin.last(iy) <= oy; ++iy) gin.emit(n, iy, gy1_row);
        }
      }
      flush_all();
    }
  });

  auto reduce = [&](std::vector<double> GradAcc<S>::*field, const Tensor& like) {
    Tensor r = at::empty(like.sizes(), x.options().dtype(at::kDouble));
    double* rp = r.data_ptr<double>();
    std::fill(rp, rp + r.numel(), 0.0);
    for (const auto& A : accs)
      for (int64_t e = 0; e < r.numel(); ++e) rp[e] += (A.*field)[e];
    return r.to(x.scalar_type());
  };
  Tensor b_like = at::empty({C}, x.options());
  Tensor gw1 = mask[1] ? reduce(&GradAcc<S>::w1, w1) : empty;
  Tensor gb1 = mask[2] ? reduce(&GradAcc<S>::b1, b_like) : empty;
  Tensor gw2 = mask[3] ? reduce(&GradAcc<S>::w2, w2) : empty;
  Tensor gb2 = mask[4] ? reduce(&GradAcc<S>::b2, b_like) : empty;
  return {gx, gw1, gb1, gw2, gb2};
}

// ---------------------------------------------------------------------------------------------
// Op entry points.

#define IGC_CPU_DISPATCH(dtype, NAME, ...)                                                              \
  switch (dtype) {                                                                                      \
    case at::kFloat: {                                                                                  \
      using T = float;                                                                                  \
      using S = float;                                                                                  \
      return __VA_ARGS__();                                                                             \
    }                                                                                                   \
    case at::kDouble: {                                                                                 \
      using T = double;                                                                                 \
      using S = double;                                                                                 \
      return __VA_ARGS__();                                                                             \
    }                                                                                                   \
    case at::kBFloat16: {                                                                               \
      using T = c10::BFloat16;                                                                          \
      using S = float;                                                                                  \
      return __VA_ARGS__();                                                                             \
    }                                                                                                   \
    default:                                                                                            \
      TORCH_CHECK(false, NAME " (CPU): x must be float32, float64 or bfloat16, got ", dtype);          \
  }

Tensor igc_conv_cpu(const Tensor& x, const Tensor& w1, const c10::optional<Tensor>& b1, const Tensor& w2,
                    const c10::optional<Tensor>& b2, const c10::optional<Tensor>& residual, int64_t groups,
                    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, bool shuffle,
                    int64_t activation) {
  const IGCConvParams p =
      make_params(x, w1, b1, w2, b2, residual, groups, stride, padding, dilation, shuffle, activation);
  IGC_CPU_DISPATCH(x.scalar_type(), "igc_conv", [&] { return forward_impl<T, S>(p, x, w1, b1, w2, b2, residual); })
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> igc_conv_backward_cpu(
    const Tensor& grad_out, const Tensor& x, const Tensor& w1, const c10::optional<Tensor>& b1, const Tensor& w2,
    const c10::optional<Tensor>& out, int64_t groups, at::IntArrayRef stride, at::IntArrayRef padding,
    at::IntArrayRef dilation, bool shuffle, int64_t activation, std::array<bool, 5> output_mask) {
  const IGCConvParams p =
      make_params(x, w1, b1, w2, c10::nullopt, c10::nullopt, groups, stride, padding, dilation, shuffle, activation);
  check_backward_args(p, grad_out, out, x);
  IGC_CPU_DISPATCH(x.scalar_type(), "igc_conv_backward",
                   [&] { return backward_impl<T, S>(p, grad_out, x, w1, b1, w2, out, output_mask); })
}

}  // namespace

TORCH_LIBRARY_IMPL(igc_kernels, CPU, m) {
  m.impl("igc_conv", &igc_conv_cpu);
  m.impl("igc_conv_backward", &igc_conv_backward_cpu);
}

}  // namespace cpu
}  // namespace igc

// 1 when at::parallel_for in this library can use several threads (built with OpenMP where torch
// uses OpenMP), 0 when the build flags make the CPU kernels single-threaded (tests check this).
extern "C" __attribute__((visibility("default"))) int igc_kernels_cpu_multithreaded(void) {
  return IGC_CPU_MULTITHREADED;
}
