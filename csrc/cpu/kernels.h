// SIMD microkernels of the fused CPU IGC op, and the run-time choice of instruction set.
//
// Two building blocks carry all the arithmetic (see layer.h for how the layer maps onto them);
// a blocked transpose moves channels_last rows in and out, and row copies (plain, ReLU-masked,
// checked for Inf and NaN, or streamed past the caches) move rows between tensors and the
// kernels' padded rows and planes:
//   rows GEMM:  dst[i][p] = bias[i] + sum_k w[k*ldw + i] * src[k][soff + p]   (+ res[i][p], relu)
//               MB output rows from K source rows (pointers, so a row can be any tap of the packed
//               input), register-blocked over output rows x pixel vectors.
//   NT reduce:  acc[i][j] += sum_s sum_p a_s[i][aoff + p] * b_s[j][boff + p]   (weight gradients)
//               kept as per-lane partial sums (acc holds VL lanes per entry) so no horizontal sum
//               is needed per segment; the caller folds the lanes into double now and then.
//
// This header holds only the argument structs and the dispatch table: no STL, so nothing here
// can be compiled with ISA flags that leak into other translation units (see kernels.cpp).
#pragma once

#include <stdint.h>

namespace igc {
namespace cpu {

template <typename S>
struct RowsArgs {
  int64_t MB = 0, K = 0, P = 0;
  const S* w = nullptr;  // weight of (source k, output row i) at w[k * ldw + i]
  int64_t ldw = 0;
  const S* bias = nullptr;           // MB values, or null
  const S* const* src = nullptr;     // K rows; each readable on [soff, soff + round_up(P, 16))
  int64_t soff = 0;
  S* const* dst = nullptr;           // MB rows, written on [0, P)
  const S* const* res = nullptr;     // MB rows added before the activation, read on [0, P); or null
  bool relu = false;
  // Non-temporal stores for whole vectors at aligned addresses: for outputs too big to stay in
  // cache, they skip the read-for-ownership of each destination line. Callers must run the
  // kernels' store_fence() before other threads read dst.
  bool stream = false;
};

template <typename S>
struct NtArgs {
  int64_t MA = 0, NB = 0, P = 0;
  const S* const* a = nullptr;  // MA rows, read on [aoff, aoff + P)
  int64_t aoff = 0;
  const S* const* b = nullptr;  // NB rows, read on [boff, boff + P)
  int64_t boff = 0;
  // Several segments summed in one call (short rows: the accumulators stay in registers over all
  // of them): segment s reads rows a[s * sa + i] and b[s * sb + j], on the same ranges.
  int64_t nseg = 1, sa = 0, sb = 0;
  S* acc = nullptr;  // lanes of entry (i, j) at acc[(i * ld + j) * lanes]
  int64_t ld = 0;
};

// dst[j * ldd + i] = src[i * lds + j] for i < R, j < C: between channel rows (NCHW) and pixel
// rows (channels_last).
template <typename S>
struct TransposeArgs {
  int64_t R = 0, C = 0;
  const S* src = nullptr;
  int64_t lds = 0;
  S* dst = nullptr;
  int64_t ldd = 0;
};

// Winograd F(4,3) down the columns (the primary conv when kH = 3 with vertical stride and dilation
// 1): output rows 4t..4t+3 ("a row tile") come from the input rows 4t..4t+5, per column as
//   y = A^T [(G g) . (B^T d)]
// so each of the kW taps along a row costs six multiply-adds per four output rows instead of
// twelve. wino_pack transforms six packed input rows into six component rows B^T d; wino
// multiplies them with the transformed weights G g (summed over the taps (ci, kw), each a shift
// along the row as in the direct primary) and applies A^T and the bias: four output rows at once,
// all in whole vectors of pixels (no shuffles).

// out[j * ldo + i] = (B^T d)[j] with d = (in[0][i], ..., in[5][i]), for j < 6, i < n (a multiple of 8).
// wino_pack returns nonzero when an input was Inf or NaN (or the transform overflowed): the
// transforms mix rows, so a non-finite input would reach output rows the direct conv keeps finite
// (and turn Inf into NaN); the caller computes those rows with the direct primary instead.
template <typename S>
struct WinoPackArgs {
  const S* in[6] = {};
  int64_t n = 0;
  S* out = nullptr;
  int64_t ldo = 0;
};

// dst[r * MB + i][p] = bias[i] + (A^T sum_k U[k][.][i] * src[k*6 + .][soff + p])[r] for r < 4, p < P.
template <typename S>
struct WinoArgs {
  int64_t MB = 0, K = 0, P = 0;
  // Transformed weight of (tap k, component j, output row i): rows go in blocks of Kernels::wino_rows
  // (the last block may be smaller, mb rows); row i of the block at i0 at w[i0*K*6 + (k*6 + j)*mb + i - i0].
  const S* w = nullptr;
  const S* bias = nullptr;        // MB values, or null
  const S* const* src = nullptr;  // K * 6 component rows, readable on [soff, soff + round_up(P, 16))
  int64_t soff = 0;
  S* const* dst = nullptr;  // 4 * MB rows, written on [0, P) (so a tile's rows may lie one after another)
};

template <typename S>
struct Kernels {
  const char* name;
  int64_t lanes;  // lanes per accumulator entry of nt()
  void (*rows)(const RowsArgs<S>&);
  void (*nt)(const NtArgs<S>&);
  void (*store_fence)();  // orders this thread's non-temporal stores (see RowsArgs::stream)
  void (*transpose)(const TransposeArgs<S>&);
  // Rows of n values: d[r * ldd + i] = s[r * lds + i], or with the ReLU's gradient mask m (not
  // null) s[...] where m[r * lds + i] > 0 and 0 elsewhere (NaN in m masks to 0, as in torch's
  // threshold_backward), for r < rows, i < n. d may be s (same strides).
  void (*copy_rows)(const S* s, const S* m, int64_t lds, S* d, int64_t ldd, int64_t n, int64_t rows);
  // dst[i] = src[i] for i < n, with non-temporal stores on dst's whole aligned vectors and plain
  // ones at its ends (RowsArgs::stream: callers run store_fence() before other threads read dst).
  void (*copy_stream)(S* dst, const S* src, int64_t n);
  // copy_rows without a mask that also returns nonzero when a copied value is Inf or NaN: the
  // plane backward checks x as it copies it, instead of in a pass of its own that waited on DRAM.
  int (*copy_rows_finite)(const S* s, int64_t lds, S* d, int64_t ldd, int64_t n, int64_t rows);
  int (*wino_pack)(const WinoPackArgs<S>&);  // null: no Winograd path (float64)
  void (*wino)(const WinoArgs<S>&);
  int64_t wino_rows;  // output rows per block of wino()
};

// The float kernels for the instruction set chosen at first use: the best the CPU supports, or
// the one named by the environment variable IGC_KERNELS_CPU_ISA (generic | avx2 | avx512 | auto).
// Null when that variable names an unknown instruction set or one this CPU lacks.
const Kernels<float>* float_kernels();
// The double kernels (gradcheck precision; portable vector code, no ISA dispatch).
const Kernels<double>& double_kernels();
// Switches the float kernels (same names as the environment variable); false if the name is
// unknown or the CPU lacks that instruction set.
bool set_isa(const char* name);
// Whether float layers with kH = 3 (vertical stride and dilation 1) use the Winograd primary
// (default yes; the environment variable IGC_KERNELS_CPU_WINOGRAD=0 turns it off at first use).
bool winograd_enabled();
void set_winograd(bool on);
// Outputs of at least this many bytes are written with non-temporal stores (RowsArgs::stream):
// kStreamBytesBase, or the L3's size on AMD cores (kernels.cpp, default_stream_bytes), or the
// environment variable IGC_KERNELS_CPU_STREAM_BYTES (read at first use); -1 when that variable is
// not a byte count. set_stream_bytes: a byte count, or a negative number for the CPU's default.
constexpr int64_t kStreamBytesBase = int64_t(4) << 20;
int64_t stream_bytes();
void set_stream_bytes(int64_t bytes);
// Whether the backward of small images (backward_plane.cpp) processes bands of rows as flat planes
// (default yes; IGC_KERNELS_CPU_PLANE_BACKWARD=0 turns it off at first use): the tests run both.
bool plane_backward_enabled();
void set_plane_backward(bool on);

}  // namespace cpu
}  // namespace igc
