// What the fused CPU kernels of igc_kernels::igc_conv and igc_conv_backward share (forward.cpp,
// backward.cpp; ops.cpp registers them).
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
// runs as one GEMM (with few output channels, one per input row: forward.cpp). Big outputs are
// written with non-temporal stores (stream_bytes_checked).
//
// Winograd (forward, float, kH = 3 with vertical stride and dilation 1, L > 1): a work item is four
// output rows. Their six input rows are packed as usual, transformed segment by segment into six
// component rows per channel row (kernels.h), and the primary runs as F(4,3) down the columns:
// 6 multiply-adds per tap (ci, kw) and four output rows instead of 12, which cuts the layer's
// multiply-adds by 30% at the paper's shape (M = 4, L = 24). The secondary is unchanged.
//
// The backward recomputes y1 segment by segment, forms grad_y1 through the transposed secondary,
// reduces the weight gradients with the NT kernel (per-chunk accumulators, folded into double)
// and keeps the few grad_y1 rows grad_x needs in a ring, from which each input row of grad_x is
// formed as a correlation of zero-upsampled grad_y1 rows with the flipped primary weights
// (see backward.cpp): it allocates nothing of activation size besides its outputs. Images up to 48
// pixels wide take backward_plane.cpp instead: the same steps on bands of rows laid out as flat
// planes, so each kernel call covers a whole band rather than one short row.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <cstring>
#include <mutex>
#include <new>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "igc_conv.h"
#include "kernels.h"

// at::parallel_for is an inline template: with torch's OpenMP backend its `#pragma omp parallel`
// is compiled where it is used, so csrc/cpu must be built with -fopenmp or every kernel runs on
// one thread.
#if AT_PARALLEL_OPENMP && !defined(_OPENMP)
#pragma message("igc_kernels: csrc/cpu is compiled without -fopenmp; the CPU kernels will run on one thread")
#define IGC_CPU_MULTITHREADED 0
#else
#define IGC_CPU_MULTITHREADED 1
#endif

namespace igc {
namespace cpu {

using at::Tensor;

constexpr int64_t kLanes = 16;   // widest vector (floats): packed rows are readable this far past their end
constexpr int64_t kHalfLanes = 8;  // its half: AVX-512 rows may end in a half vector (kernels.cpp)
constexpr int64_t kSegF = 64;    // pixels per forward segment (y1 tile: C_mid x 64)
constexpr int64_t kSegB = 128;   // pixels per backward segment (fewer accumulator round trips)
constexpr int64_t kSegX = 64;    // pixels per grad_x segment
constexpr int64_t kPackAhead = 8;  // channels between a packed row and the row prefetched into L1
constexpr int64_t kPackAheadBytes = 256;  // ... for rows of at most this many bytes
constexpr int64_t kFlushPixels = 4096;  // fold float lane accumulators into double this often
// Outputs at least this big are written with non-temporal stores: they cannot stay in the caches
// until the next layer reads them, and streaming them saves reading every destination line before
// it is overwritten. kStreamBytesBase (4 MiB) is the L2 of both cores of the Intel CI machine,
// whose L3 kept little of one layer's output for the next; on AMD cores it is the L3's size
// (kernels.cpp, default_stream_bytes, with the measurements). The forward's output and the plane
// backward's grad_x.
inline int64_t stream_bytes_checked() {
  const int64_t b = stream_bytes();
  TORCH_CHECK(b >= 0, "igc_conv (CPU): environment variable IGC_KERNELS_CPU_STREAM_BYTES=",
              std::getenv("IGC_KERNELS_CPU_STREAM_BYTES"), " is not a byte count; expected an integer >= 0");
  return b;
}
// grad_x of the row-by-row backward (images over 48 pixels wide): from 16 MiB, as measured at
// 1x96x256x256; sizes in between were not measured again.
constexpr int64_t kStreamRowGradXBytes = int64_t(16) << 20;

inline int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

// Storage aligned to a 64-byte cache line. Tiles, rings and accumulators are read and written in
// whole vectors at multiples of 16 floats from their start; an aligned start keeps each of those
// accesses inside one cache line (misaligned, every 64-byte load and store touches two).
template <typename T>
struct LineAllocator {
  typedef T value_type;
  LineAllocator() = default;
  template <typename U>
  LineAllocator(const LineAllocator<U>&) {}
  T* allocate(size_t n) { return static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t(64))); }
  void deallocate(T* p, size_t) { ::operator delete(p, std::align_val_t(64)); }
  template <typename U>
  bool operator==(const LineAllocator<U>&) const { return true; }
  template <typename U>
  bool operator!=(const LineAllocator<U>&) const { return false; }
};
template <typename T>
using LineVec = std::vector<T, LineAllocator<T>>;

struct Str {
  int64_t n, c, h, w;
};
inline Str strides_of(const Tensor& t) { return {t.stride(0), t.stride(1), t.stride(2), t.stride(3)}; }

template <typename S>
const Kernels<S>& kernels();
template <>
inline const Kernels<float>& kernels<float>() {
  const Kernels<float>* k = float_kernels();
  TORCH_CHECK(k != nullptr, "igc_conv (CPU): environment variable IGC_KERNELS_CPU_ISA=",
              std::getenv("IGC_KERNELS_CPU_ISA"),
              " names an unknown instruction set or one this CPU lacks; expected generic, avx2, avx512 or auto");
  return *k;
}
template <>
inline const Kernels<double>& kernels<double>() {
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
  // The Winograd primary: transformed weights U[l][block of rows][k = ci*kW + kw][j][m] (WinoArgs::w)
  // and the width of one component row of a segment (kSegF pixels + the taps' reach + a vector).
  bool wino = false;
  std::vector<S> U;
  int64_t wseg = 0;

  // winograd: use the Winograd primary where it applies (the forward asks; the backward's weight
  // gradients need the plain rows).
  // extra_cols: packed rows that many columns longer (the chain's rings keep their pixels aligned).
  Layer(const IGCConvParams& pp, const Tensor& w1t, const c10::optional<Tensor>& b1t, const Tensor& w2t,
        const c10::optional<Tensor>& b2t, bool winograd = false, int64_t extra_cols = 0)
      : p(pp) {
    const auto st = std::is_same<S, double>::value ? at::kDouble : at::kFloat;
    auto vec = [&](const Tensor& t) {
      Tensor c = t.to(st).contiguous();
      return std::vector<S>(c.data_ptr<S>(), c.data_ptr<S>() + c.numel());
    };
    const int64_t L = p.L, M = p.M;
    K1 = p.M_in * p.kH * p.kW;
    // Winograd row tiles of four: worth it unless padding rows would waste more than a quarter of the work.
    wino = winograd && std::is_same<S, float>::value && kernels<S>().wino != nullptr && p.kH == 3 && p.sH == 1 &&
           p.dH == 1 && L > 1 && (p.H_out % 4 == 0 || p.H_out >= 12);
    const int64_t reach = (p.dW * (p.kW - 1)) / p.sW;  // columns a row's taps reach past its pixels
    Wp = round_up(p.W_out + reach + kLanes, kLanes);
    // wino_pack reads whole vectors: [p0, p0 + round_up(round_up(len, 16) + reach, 16)).
    if (wino) Wp = std::max(Wp, round_up(p.W_out, kLanes) + round_up(reach, kLanes));
    Wp += extra_cols;
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
    if (wino) {
      wseg = round_up(kSegF + reach, kLanes);
      const int64_t kW = p.kW, K = p.M_in * kW, rb = kernels<S>().wino_rows;
      U.resize(L * K * 6 * M);
      for (int64_t l = 0; l < L; ++l)
        for (int64_t m = 0; m < M; ++m)
          for (int64_t k = 0; k < K; ++k) {  // k = ci * kW + kw: the column w1[l*M + m][ci][0..2][kw]
            const int64_t ci = k / kW, kw = k % kW;
            const S* g0 = w1.data() + (((l * M + m) * p.M_in + ci) * 3) * kW + kw;
            const S a = g0[0], b = g0[kW], c = g0[2 * kW];
            const S u[6] = {a / 4, -(a + b + c) / 6, -(a - b + c) / 6, a / 24 + b / 12 + c / 6, a / 24 - b / 12 + c / 6, c};
            const int64_t i0 = m / rb * rb, mb = std::min(rb, M - i0);  // WinoArgs::w's row blocks
            for (int j = 0; j < 6; ++j) U[l * K * 6 * M + i0 * K * 6 + (k * 6 + j) * mb + m - i0] = u[j];
          }
      // Non-finite weights reach every output either way, but the transforms would turn Inf into NaN.
      for (const S u : U) wino = wino && std::isfinite(u);
    }
  }
};

// Prefetch of one cache line into L1 (kL2 false) or L2. An asm statement because GCC drops
// __builtin_prefetch loops it deems side-effect free.
template <bool kL2>
inline void prefetch_line(const void* a) {
#if defined(__x86_64__) || defined(__i386__)
  if (kL2) {
    asm volatile("prefetcht1 %0" : : "m"(*static_cast<const char*>(a)));
  } else {
    asm volatile("prefetcht0 %0" : : "m"(*static_cast<const char*>(a)));
  }
#else
  __builtin_prefetch(a, 0, kL2 ? 2 : 3);
#endif
}
inline void prefetch_l2(const void* a) { prefetch_line<true>(a); }
inline void prefetch_l1(const void* a) { prefetch_line<false>(a); }

// Whether pack_row can pack a row's channels in parts (planar rows: a loop over channels).
inline bool pack_in_parts(const IGCConvParams& p, const Str& xs) { return !(xs.c == 1 && p.C_in > 1); }

// Packs input row (n, iy) (iy < 0: a zero row): row (c*sW + r) of dst, element j, holds
// x[n, c, iy, j*sW + r - pW], zero outside the image. dst is a RowCache slot: zeroed when the
// cache is built, and outside the image's columns never written with anything but zeros.
// Channels [c0, c1) only when the input is planar (pack_in_parts); other layouts pack every
// channel at c0 == 0 and nothing at c0 > 0.
template <typename T, typename S>
void pack_row(const Layer<S>& g, const Kernels<S>& kern, const T* x, const Str& xs, int64_t n, int64_t iy, S* dst,
              int64_t c0 = 0, int64_t c1 = -1) {
  const IGCConvParams& p = g.p;
  const int64_t Wp = g.Wp;
  if (c1 < 0) c1 = p.C_in;
  if (iy < 0) {
    std::fill(dst + c0 * p.sW * Wp, dst + c1 * p.sW * Wp, S(0));
    return;
  }
  const T* xr = x + n * xs.n + iy * xs.h;
  if (!pack_in_parts(p, xs) && c0 > 0) return;
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
  // Short planar rows: the channels' rows in one strided copy (columns [j0, j1) inside the image;
  // the others only ever hold zeros, see below). A memcpy and an L1 prefetch per 36-pixel row
  // made the forward at 16x96x36x36 about 10% slower; rows over kPackAheadBytes stay with memcpy
  // (no gain measured at 256 pixels).
  const int64_t j0s = std::min(Wp, p.pW), j1s = std::max(j0s, std::min(Wp, p.W + p.pW));
  if (xs.w == 1 && p.sW == 1 && std::is_same<T, S>::value && (j1s - j0s) * int64_t(sizeof(T)) <= kPackAheadBytes) {
    if (c1 > c0 && j1s > j0s)
      kern.copy_rows(reinterpret_cast<const S*>(xr + c0 * xs.c + (j0s - p.pW)), nullptr, xs.c, dst + c0 * Wp + j0s,
                     Wp, j1s - j0s, c1 - c0);
    return;
  }
  for (int64_t c = c0; c < c1; ++c) {
    const T* xc = xr + c * xs.c;
    for (int64_t r = 0; r < p.sW; ++r) {
      S* b = dst + (c * p.sW + r) * Wp;
      // j with 0 <= j*sW + r - pW < W
      const int64_t j0 = std::min(Wp, std::max<int64_t>(0, (p.pW - r + p.sW - 1) / p.sW));
      const int64_t last = p.W - 1 + p.pW - r;  // j*sW <= last
      const int64_t j1 = std::max(j0, std::min(Wp, last < 0 ? 0 : last / p.sW + 1));
      // Columns outside [j0, j1) are the same for every row and only ever hold zeros: the slots
      // start zeroed and no path writes anything else there, so they are not refilled (two memset
      // calls per channel row cost more than the copy of a 36-pixel row).
      if (xs.w == 1 && p.sW == 1) {
        const T* src = xc + (j0 - p.pW);
        // (Short rows get here only when converted to S, e.g. from bfloat16.) The row a few
        // channels on, into L1: the copies of short rows otherwise wait on L2 one after the other
        // (the rows were prefetched into L2 while the previous rows were computed).
        // Longer rows keep enough loads in flight by themselves; prefetching them too stalls on
        // full fill buffers (a tenth of the tail conv's forward at 256x256).
        if (c + kPackAhead < c1 && (j1 - j0) * int64_t(sizeof(T)) <= kPackAheadBytes)
          for (int64_t j = 0; j < (j1 - j0) * int64_t(sizeof(T)); j += 64)
            prefetch_l1(reinterpret_cast<const char*>(src + kPackAhead * xs.c) + j);
        if (std::is_same<T, S>::value) {
          std::memcpy(b + j0, src, (j1 - j0) * sizeof(S));
        } else {
          for (int64_t j = j0; j < j1; ++j) b[j] = S(src[j - j0]);
        }
      } else {
        for (int64_t j = j0; j < j1; ++j) b[j] = S(xc[(j * p.sW + r - p.pW) * xs.w]);
      }
    }
  }
}

// The taps (c, kh, kw) of the output row whose kH kernel rows are the packed rows rows[r0 ..
// r0 + kH), in the order of Layer::tap_off.
// Runs once per output row over C_in * kH * kW taps (as many as the tail conv's GEMM has
// sources), so everything it reads is held in locals: stores through `out` cannot alias them.
template <typename S>
void row_taps(const Layer<S>& g, const S* const* rows, int64_t r0, const S** __restrict out) {
  const IGCConvParams& p = g.p;
  const int64_t C = p.C_in, kH = p.kH, kW = p.kW;
  const int64_t* __restrict off = g.tap_off.data();
  for (int64_t kh = 0; kh < kH; ++kh) {
    const S* const row = rows[r0 + kh];
    for (int64_t c = 0; c < C; ++c) {
      const int64_t t = (c * kH + kh) * kW;
      for (int64_t kw = 0; kw < kW; ++kw) out[t + kw] = row + off[t + kw];
    }
  }
}

// The packed input rows of one thread: kH (+ extra) slots, each holding one packed input row,
// reused while consecutive output rows share input rows. prepare() points src at the taps of row
// (n, oy).
//
// For the Winograd primary (wino_tiles) a prepare() call serves a tile of four output rows: it
// holds the tile's six input rows, and `rows` points at them (src is not built).
template <typename S>
struct RowCache {
  const Layer<S>& g;
  const Kernels<S>& kern;
  int64_t kH, sH, dH;  // input rows per prepare() call (kernel rows), their step and spacing
  int64_t slots;
  std::vector<S> buf;  // `slots` slots of one packed input row each
  std::vector<int64_t> tag;    // input row held by each slot: n*H + iy, -1 zero row, -2 nothing
  std::vector<int64_t> stamp;  // prepare() call that last used each slot (-1: never)
  int64_t calls = 0;
  std::vector<const S*> src;   // per tap (c, kh, kw)
  std::vector<const S*> rows;  // per kernel row: its packed input row
  std::vector<int64_t> want, slot_of;  // scratch of prepare(), per kernel row
  std::vector<char> used;              // scratch of prepare(), per slot
  // deferred: prepare() only assigns the new rows their slots; pack(c0, c1) then fills channels
  // [c0, c1) of them, so a caller working group by group packs each group's rows just before it
  // reads them (from L1, not L2).
  bool deferred = false;
  std::vector<std::pair<int64_t, int64_t>> fresh;  // (slot, input row or -1) still to pack
  const void* fresh_x = nullptr;
  Str fresh_xs{0, 0, 0, 0};
  int64_t fresh_n = 0;

  // extra = (b - 1) * kH keeps the taps of the last b output rows valid (the backward sums the
  // weight gradients of several short rows at once).
  RowCache(const Layer<S>& layer, const Kernels<S>& k, int64_t extra = 0, bool wino_tiles = false)
      : g(layer),
        kern(k),
        kH(wino_tiles ? 6 : layer.p.kH),
        sH(wino_tiles ? 4 : layer.p.sH),
        dH(wino_tiles ? 1 : layer.p.dH),
        slots(kH + extra),
        buf(slots * layer.slot),
        tag(slots, -2),
        stamp(slots, -1),
        src(wino_tiles ? 0 : layer.tap_off.size()),
        rows(kH),
        want(kH),
        slot_of(kH),
        used(slots) {}

  // The input rows of output row oy (with wino_tiles: of the tile of output rows 4 oy .. 4 oy + 3).
  template <typename T>
  void prepare(const T* x, const Str& xs, int64_t n, int64_t oy) {
    prepare_from(x, xs, n, oy * sH - g.p.pH);
  }

  // The same for the kernel rows iy0, iy0 + dH, ... (input rows before padding; those outside the
  // image read zeros): with wino_tiles, a tile of four output rows that starts at any row.
  template <typename T>
  void prepare_from(const T* x, const Str& xs, int64_t n, int64_t iy0) {
    const IGCConvParams& p = g.p;
    ++calls;
    fresh.clear();
    fresh_x = x;
    fresh_xs = xs;
    fresh_n = n;
    std::fill(slot_of.begin(), slot_of.end(), -1);
    std::fill(used.begin(), used.end(), 0);
    for (int64_t kh = 0; kh < kH; ++kh) {
      const int64_t iy = iy0 + kh * dH;
      want[kh] = iy >= 0 && iy < p.H ? n * p.H + iy : -1;
      for (int64_t s = 0; s < slots; ++s)
        if (tag[s] == want[kh]) {
          slot_of[kh] = s;
          used[s] = 1;
          break;
        }
    }
    for (int64_t kh = 0; kh < kH; ++kh) {
      if (slot_of[kh] >= 0) continue;
      // The least recently used slot this row does not use: rows the previous output rows read
      // were used more recently than any row none of them reads (at most kH distinct rows are
      // wanted per call, so such a slot exists).
      int64_t s = -1;
      for (int64_t t = 0; t < slots; ++t)
        if (!used[t] && (s < 0 || stamp[t] < stamp[s])) s = t;
      used[s] = 1;
      tag[s] = want[kh];
      const int64_t iy = want[kh] < 0 ? -1 : want[kh] - n * p.H;
      if (deferred) {
        fresh.emplace_back(s, iy);
      } else {
        pack_row<T, S>(g, kern, x, xs, n, iy, buf.data() + s * g.slot);
      }
      for (int64_t k2 = kh; k2 < kH; ++k2)
        if (want[k2] == want[kh]) slot_of[k2] = s;
    }
    for (int64_t kh = 0; kh < kH; ++kh) {
      stamp[slot_of[kh]] = calls;
      rows[kh] = buf.data() + slot_of[kh] * g.slot;
    }
    if (!src.empty()) taps_from(0, src.data());
  }

  // Channels [c0, c1) of the rows the last prepare() call (deferred) left to pack.
  template <typename T>
  void pack(int64_t c0, int64_t c1) {
    for (const auto& f : fresh)
      pack_row<T, S>(g, kern, static_cast<const T*>(fresh_x), fresh_xs, fresh_n, f.second, buf.data() + f.first * g.slot, c0, c1);
  }

  // The taps (c, kh, kw) of the output row whose kernel rows are rows[r0 .. r0 + kH) (r0 = 0: the
  // prepared row; with wino_tiles, where the rows are consecutive input rows and dH is 1: output row
  // r0 of the tile, for the direct primary).
  void taps_from(int64_t r0, const S** __restrict out) const { row_taps(g, rows.data(), r0, out); }
};

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

// Whether a planar row of W elements is short enough for software prefetch of the next rows (the
// backward and the Winograd forward): under four cache lines. Longer rows are left to the hardware
// prefetchers (see backward.cpp).
constexpr int64_t kPrefetchRowBytes = 256;
template <typename T>
inline bool short_row(int64_t W) { return W * int64_t(sizeof(T)) < kPrefetchRowBytes; }

// Work items per parallel chunk: enough that tiny layers run on one thread.
inline int64_t grain_for(int64_t cost_per_item) { return std::max<int64_t>(1, (int64_t(1) << 18) / std::max<int64_t>(1, cost_per_item)); }

// Work items [0, n) for the threads in contiguous bands whose ends move: each thread starts with
// one band of about n / threads items and runs them in order; a thread that runs out takes the
// back half of the largest band left, if at least min_steal items remain there. Why: the items of
// a band share state (packed rows, rings) that a jump must rebuild, so they go in order, yet a
// static split left the faster thread idle for whatever the other took longer. On the 2-core CI VM
// one core at a time slows down for seconds: with static bands, one of the two threads spent about
// a fifth of its time waiting in libgomp at the ends of the fused chains (perf, IGC-VDSR inference
// at 256x256). Stolen bands made that inference 0.7-8% faster (medians of per-round ratios, 30-40
// alternating rounds in one process; up to 9-13% at the third quartile, no change in quiet rounds)
// and left the training step on 16x1x36x36 unchanged (0.995).
// For the tests: items the schedulers' threads took from another thread's band, and a switch that
// gives every item to the first band, so that the other threads start by taking from it.
extern std::atomic<int64_t> g_band_steals;
extern std::atomic<int> g_band_skew;

class BandScheduler {
 public:
  // Bands for items [0, n): one per thread, but no more than at::parallel_for's chunks of grain.
  BandScheduler(int64_t n, int64_t grain, int64_t min_steal) : min_steal_(std::max<int64_t>(2, min_steal)) {
    const int64_t threads = at::in_parallel_region() ? 1 : at::get_num_threads();
    const int64_t g = std::max<int64_t>(1, grain);
    const int64_t bands = std::max<int64_t>(1, std::min(threads, (n + g - 1) / g));
    const bool skew = g_band_skew.load(std::memory_order_relaxed) != 0;
    for (int64_t b = 0; b < bands; ++b)
      band_.push_back(skew ? Band{b == 0 ? 0 : n, n} : Band{n * b / bands, n * (b + 1) / bands});
  }
  int64_t bands() const { return int64_t(band_.size()); }

  // Runs band b's items, then stolen ones, as run(item, jumped): jumped when the item does not
  // follow the previous one this call ran. Call once per band, from at::parallel_for over bands().
  template <typename Run>
  void work(int64_t b, Run&& run) {
    int64_t last = -2;
    for (;;) {
      const int64_t item = next(b);
      if (item < 0) return;
      run(item, item != last + 1);
      last = item;
    }
  }

 private:
  int64_t next(int64_t b) {
    // Once per item, rarely contended: tens of nanoseconds against items of microseconds (a tile of
    // a 36-pixel-wide patch) to milliseconds.
    std::lock_guard<std::mutex> lock(mu_);
    Band& own = band_[b];
    if (own.next < own.end) return own.next++;
    Band* victim = nullptr;
    for (Band& v : band_)
      if (v.end - v.next >= min_steal_ && (!victim || v.end - v.next > victim->end - victim->next)) victim = &v;
    if (!victim) return -1;
    const int64_t mid = victim->next + (victim->end - victim->next + 1) / 2;  // the owner keeps the front half
    own = {mid + 1, victim->end};
    victim->end = mid;
    g_band_steals.fetch_add(1, std::memory_order_relaxed);
    return mid;
  }

  struct Band {
    int64_t next, end;
  };
  std::mutex mu_;
  std::vector<Band> band_;
  const int64_t min_steal_;
};

// The direct primary conv of group l on one row segment [p0, p0 + len): its M y1 rows `dst`
// (+ b1) from its K1 packed taps `src`, read from column soff (p0 unless given: taps into rows
// that hold the segment alone).
template <typename S>
void primary_group(const Layer<S>& g, const Kernels<S>& kern, int64_t l, const S* const* src, S* const* dst,
                   int64_t p0, int64_t len, int64_t soff = -1) {
  const int64_t M = g.p.M, K1 = g.K1;
  RowsArgs<S> a;
  a.MB = M;
  a.K = K1;
  a.P = len;
  a.ldw = M;
  a.soff = soff < 0 ? p0 : soff;
  a.w = g.w1T.data() + l * K1 * M;
  a.bias = g.b1.empty() ? nullptr : g.b1.data() + l * M;
  a.src = src;
  a.dst = dst;
  kern.rows(a);
}

// The primary conv of one row segment [p0, p0 + len): for each group l, y1 rows l*M .. l*M+M-1
// (+ b1) from the group's K1 packed taps. Shared by the forward and the backward's recompute.
// `between(l)` runs before group l (the forward's prefetch).
template <typename S, typename Between>
void primary_segment(const Layer<S>& g, const Kernels<S>& kern, const S* const* src, S* const* y1dst, int64_t p0,
                     int64_t len, Between&& between) {
  for (int64_t l = 0; l < g.p.L; ++l) {
    between(l);
    primary_group(g, kern, l, src + l * g.K1, y1dst + l * g.p.M, p0, len);
  }
}

// The weights of grad_x's rows GEMM (the backward's correlation of grad_y1 with the flipped
// primary) for the kernel rows in `valid` (bit kh), in the order the backward appends their
// sources: entry ((l * Kx + k) * M_in + ci), Kx = M * kH * kW, k = (nv * M + m) * kW + kw with nv
// counting the valid rows before kh, holds w1[l*M+m][ci][kh][kW-1-kw]; entries of rows past the
// valid ones are zero.
template <typename S>
std::vector<S> flipped_primary_weights(const Layer<S>& g, uint64_t valid) {
  const IGCConvParams& p = g.p;
  const int64_t M = p.M, Min = p.M_in, Kx = M * p.kH * p.kW;
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
  return wg;
}

// float32 and float64 compute in their own type; bfloat16 is read and written as bf16 and
// computed in float32.
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

// The entry points (forward.cpp, backward.cpp), for parameters ops.cpp has checked.
Tensor forward(const IGCConvParams& p, const Tensor& x, const Tensor& w1, const c10::optional<Tensor>& b1,
               const Tensor& w2, const c10::optional<Tensor>& b2, const c10::optional<Tensor>& residual);
// A dense conv at one end of a chain (igc_conv_chain's head or tail): an IGC layer with one
// primary group and the identity secondary w2 (ones), as FusedConv2d runs a conv; the tail may
// take a residual.
struct DenseConv {
  IGCConvParams p;
  Tensor w1, w2;
  c10::optional<Tensor> b1, residual;
};
// Layer k of ps applied to layer k - 1's output, after head and before tail where given
// (forward.cpp: fused where chain_applies, in chains of chain_length layers, 0: one chain).
Tensor forward_chain(const std::vector<IGCConvParams>& ps, const Tensor& x, at::TensorList w1,
                     const std::vector<c10::optional<Tensor>>& b1, at::TensorList w2,
                     const std::vector<c10::optional<Tensor>>& b2, const c10::optional<DenseConv>& head,
                     const c10::optional<DenseConv>& tail, int64_t chain_length);
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> backward(const IGCConvParams& p, const Tensor& grad_out,
                                                            const Tensor& x, const Tensor& w1,
                                                            const c10::optional<Tensor>& b1, const Tensor& w2,
                                                            const c10::optional<Tensor>& out,
                                                            const std::array<bool, 5>& mask);
// The flat-plane backward for small images (backward_plane.cpp), and whether it takes this call.
bool plane_backward_applies(const IGCConvParams& p, const Tensor& grad_out, const Tensor& x, const Tensor& w1,
                            const Tensor& w2, const c10::optional<Tensor>& out);
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> backward_plane(const IGCConvParams& p, const Tensor& grad_out,
                                                                  const Tensor& x, const Tensor& w1,
                                                                  const c10::optional<Tensor>& b1, const Tensor& w2,
                                                                  const c10::optional<Tensor>& out,
                                                                  const std::array<bool, 5>& mask);

}  // namespace cpu
}  // namespace igc
