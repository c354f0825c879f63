// The microkernels of kernels.h, compiled once per instruction set from one template.
//
// The library is built for baseline x86-64. kernels_impl.inc (the templates) is included three
// times, each inside its own namespace: once with the baseline flags (portable vector code), once
// inside `#pragma GCC target("avx2,fma")` and once inside the AVX-512 target region, so every
// instantiation is compiled for exactly one ISA. The regions contain only our own templates and
// intrinsics: this file includes no C++ library or torch headers (all includes come before the
// first region), so no shared inline function (std::, c10::) can be emitted with wider-ISA
// instructions and picked by the linker for code that runs on an older CPU (the ODR trap).
// Everything is in an anonymous namespace; the entry points are chosen at run time.
//
// Instruction set choice: the best the CPU supports (AVX-512 > AVX2+FMA > generic), unless the
// environment variable IGC_KERNELS_CPU_ISA = generic | avx2 | avx512 | auto says otherwise (read
// at first use). Two C functions, igc_kernels_cpu_isa() and igc_kernels_cpu_set_isa(name), report
// and switch the choice (used by the tests through ctypes, so every path is tested on one CPU).
#include "kernels.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#define IGC_X86 1
#include <immintrin.h>
#else
#define IGC_X86 0
#endif

#define IGC_AI inline __attribute__((always_inline))

// Target regions: GCC's push_options/target pragmas; clang spells the same as an attribute push
// (the clang branch is not exercised by this project's CI, which builds with GCC).
#if defined(__clang__)
#define IGC_TARGET_AVX2 _Pragma("clang attribute push(__attribute__((target(\"avx2,fma\"))), apply_to = function)")
#define IGC_TARGET_AVX512 \
  _Pragma("clang attribute push(__attribute__((target(\"avx512f,avx512bw,avx512vl,avx512dq,avx2,fma\"))), apply_to = function)")
#define IGC_TARGET_END _Pragma("clang attribute pop")
#else
#define IGC_TARGET_AVX2 _Pragma("GCC push_options") _Pragma("GCC target(\"avx2,fma\")")
#define IGC_TARGET_AVX512 \
  _Pragma("GCC push_options") _Pragma("GCC target(\"avx512f,avx512bw,avx512vl,avx512dq,avx2,fma\")")
#define IGC_TARGET_END _Pragma("GCC pop_options")
#endif

namespace igc {
namespace cpu {
namespace {

// ---------------------------------------------------------------------------------------------
// Policies: vector type, lanes, register budget and the few primitives the templates need.
//   MBMAX: output rows per rows-GEMM block; ACC: accumulator registers it may use;
//   BA x BB: entries per NT-reduce block; WMB: output rows per Winograd block (6 accumulators each);
//   WPARK: vectors per Winograd block that runs one component at a time (0: none; WMB x WPARK
//   accumulators).
//   HALF: whether a last vector of at most VL/2 pixels runs at half width (type H, policy Half).
//   ACCL: lanes per NT accumulator entry (VL, except in a Half policy, which adds into the low
//   half of its full policy's entries).

// Portable vectors of 16 bytes (GCC vector extension) for float and double.
template <typename Scalar>
struct Generic {
  typedef Scalar S;
  typedef Scalar V __attribute__((vector_size(16)));
  static constexpr int VL = 16 / sizeof(Scalar), MBMAX = 6, ACC = 12, BA = 3, BB = 4, WMB = 2, ACCL = VL, WPARK = 0;
  static constexpr bool HALF = false;
  typedef V H;
  typedef Generic Half;
  static IGC_AI V load(const S* p) { V v; __builtin_memcpy(&v, p, sizeof(V)); return v; }
  static IGC_AI void store(S* p, V v) { __builtin_memcpy(p, &v, sizeof(V)); }
  static IGC_AI V bcast(S s) { V v = {}; return v + s; }
  static IGC_AI V fma(V a, V b, V c) { return a * b + c; }
  // max(t, 0) that keeps NaN (as torch.relu): t < 0 ? 0 : t.
  static IGC_AI V relu(V t) { const V z = {}; return t < z ? z : t; }
  static IGC_AI V load_partial(const S* p, int64_t rem) {
    S t[VL] = {};
    for (int64_t l = 0; l < rem; ++l) t[l] = p[l];
    return load(t);
  }
  static IGC_AI void store_partial(S* p, V v, int64_t rem) {
    S t[VL];
    store(t, v);
    for (int64_t l = 0; l < rem; ++l) p[l] = t[l];
  }
  static IGC_AI void store_stream(S* p, V v) { store(p, v); }
  static IGC_AI void transpose_block(const S* src, int64_t lds, S* dst, int64_t ldd) {
    for (int i = 0; i < VL; ++i)
      for (int j = 0; j < VL; ++j) dst[j * ldd + i] = src[i * lds + j];
  }
};
typedef Generic<float> GenericF;
typedef Generic<double> GenericD;

// Portable path (baseline flags): SSE2 on x86-64, NEON etc. elsewhere.
namespace gen {
#include "kernels_impl.inc"
}  // namespace gen

#if IGC_X86
IGC_TARGET_AVX2
namespace x2 {
// WPARK = 4: the Winograd primary one component at a time over four vectors (wino_block_parked;
// MB = 2 keeps its 8 accumulators, 4 source vectors and a broadcast within the 16 registers). On a
// Zen 3 the one-vector block (12 accumulators, 6 loads and 12 broadcasts per 12 FMAs) was bound by
// its loads: 44-48 GFLOP/s on data in L1 against 60-78 parked (peak 100), and IGC-VDSR inference at
// 256x256 on 2 threads ran 0.894x the time (median of 30 alternating runs in one process).
struct Avx2 {
  typedef float S;
  typedef __m256 V;
  static constexpr int VL = 8, MBMAX = 6, ACC = 12, BA = 3, BB = 4, WMB = 2, ACCL = VL, WPARK = 4;
  static constexpr bool HALF = false;
  typedef V H;
  typedef Avx2 Half;
  static IGC_AI V load(const S* p) { return _mm256_loadu_ps(p); }
  static IGC_AI void store(S* p, V v) { _mm256_storeu_ps(p, v); }
  static IGC_AI V bcast(S s) { return _mm256_set1_ps(s); }
  static IGC_AI V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  // vmaxps returns its second operand when either is NaN: NaN stays NaN, -0 stays -0.
  static IGC_AI V relu(V t) { return _mm256_max_ps(_mm256_setzero_ps(), t); }
  // Lanes l < rem (1 <= rem < VL): a sliding window over {-1 x 8, 0 x 8} gives the lane mask.
  static IGC_AI __m256i mask(int64_t rem) {
    static const int32_t m[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(m + 8 - rem));
  }
  static IGC_AI V load_partial(const S* p, int64_t rem) { return _mm256_maskload_ps(p, mask(rem)); }
  static IGC_AI void store_partial(S* p, V v, int64_t rem) { _mm256_maskstore_ps(p, mask(rem), v); }
  static IGC_AI void store_stream(S* p, V v) { _mm256_stream_ps(p, v); }  // p 32-byte aligned
  // 8 x 8: interleave row pairs, then pairs of pairs, then swap 128-bit halves.
  static IGC_AI void transpose_block(const S* src, int64_t lds, S* dst, int64_t ldd) {
    V r[8], t[8];
    for (int i = 0; i < 8; ++i) r[i] = load(src + i * lds);
    for (int i = 0; i < 8; i += 2) {
      t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
      t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 8; i += 4) {
      r[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
      r[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
      r[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
      r[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
    }
    for (int i = 0; i < 4; ++i) {
      t[i] = _mm256_permute2f128_ps(r[i], r[i + 4], 0x20);
      t[i + 4] = _mm256_permute2f128_ps(r[i], r[i + 4], 0x31);
    }
    for (int j = 0; j < 8; ++j) store(dst + j * ldd, t[j]);
  }
};

#include "kernels_impl.inc"
}  // namespace x2
IGC_TARGET_END

IGC_TARGET_AVX512
namespace x512 {
// 256-bit halves of AVX-512 vectors, for a row's last few pixels: Zen 4 runs a 512-bit operation
// as two 256-bit halves, so a 36-pixel row costs 2.5 instead of 3 full-width operations (on cores
// with full-width units the half costs the same as a full vector, never more). The AVX2 policy's
// primitives (AVX-512 targets include AVX2) with masks from AVX-512VL and the full policy's NT
// blocks; its NT sums go into the low half of the full policy's 16-lane accumulators.
struct Avx512Half : x2::Avx2 {
  static constexpr int BA = 4, BB = 6, ACCL = 16;
  typedef Avx512Half Half;
  static IGC_AI V load_partial(const S* p, int64_t rem) { return _mm256_maskz_loadu_ps(__mmask8((1u << rem) - 1), p); }
  static IGC_AI void store_partial(S* p, V v, int64_t rem) { _mm256_mask_storeu_ps(p, __mmask8((1u << rem) - 1), v); }
};

struct Avx512 {
  typedef float S;
  typedef __m512 V;
  static constexpr int VL = 16, MBMAX = 12, ACC = 24, BA = 4, BB = 6, WMB = 4, ACCL = VL, WPARK = 4;
  static constexpr bool HALF = true;
  typedef __m256 H;
  typedef Avx512Half Half;
  static IGC_AI H lo(V v) { return _mm512_castps512_ps256(v); }
  static IGC_AI V load(const S* p) { return _mm512_loadu_ps(p); }
  static IGC_AI void store(S* p, V v) { _mm512_storeu_ps(p, v); }
  static IGC_AI V bcast(S s) { return _mm512_set1_ps(s); }
  static IGC_AI V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static IGC_AI V relu(V t) { return _mm512_max_ps(_mm512_setzero_ps(), t); }  // as Avx2::relu
  // Lanes l < rem: masked, so lanes past the end are never touched (zero when loaded).
  static IGC_AI V load_partial(const S* p, int64_t rem) { return _mm512_maskz_loadu_ps(__mmask16((1u << rem) - 1), p); }
  static IGC_AI void store_partial(S* p, V v, int64_t rem) { _mm512_mask_storeu_ps(p, __mmask16((1u << rem) - 1), v); }
  static IGC_AI void store_stream(S* p, V v) { _mm512_stream_ps(p, v); }  // p 64-byte aligned
  // 16 x 16: interleave row pairs, then pairs of pairs, then two rounds of 128-bit lane shuffles.
  static IGC_AI void transpose_block(const S* src, int64_t lds, S* dst, int64_t ldd) {
    V r[16], t[16];
    for (int i = 0; i < 16; ++i) r[i] = load(src + i * lds);
    for (int i = 0; i < 16; i += 2) {
      t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
      t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) {
      r[i] = _mm512_shuffle_ps(t[i], t[i + 2], 0x44);
      r[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], 0xEE);
      r[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0x44);
      r[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
    }
    for (int h = 0; h < 16; h += 8)
      for (int i = 0; i < 4; ++i) {
        t[h + i] = _mm512_shuffle_f32x4(r[h + i], r[h + i + 4], 0x88);
        t[h + i + 4] = _mm512_shuffle_f32x4(r[h + i], r[h + i + 4], 0xdd);
      }
    for (int i = 0; i < 8; ++i) {
      r[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
      r[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xdd);
    }
    for (int j = 0; j < 16; ++j) store(dst + j * ldd, r[j]);
  }
};
#include "kernels_impl.inc"
}  // namespace x512
IGC_TARGET_END
#endif

// ---------------------------------------------------------------------------------------------
// Entry points, one per ISA.

void rows_generic_f(const RowsArgs<float>& a) { gen::rows_impl<GenericF>(a); }
void nt_generic_f(const NtArgs<float>& a) { gen::nt_impl<GenericF>(a); }
void rows_generic_d(const RowsArgs<double>& a) { gen::rows_impl<GenericD>(a); }
void nt_generic_d(const NtArgs<double>& a) { gen::nt_impl<GenericD>(a); }

void transpose_generic_f(const TransposeArgs<float>& a) { gen::transpose_impl<GenericF>(a); }
void transpose_generic_d(const TransposeArgs<double>& a) { gen::transpose_impl<GenericD>(a); }

void copy_rows_generic_f(const float* s, const float* m, int64_t lds, float* d, int64_t ldd, int64_t n, int64_t rows) {
  gen::copy_rows_impl<GenericF>(s, m, lds, d, ldd, n, rows);
}
void copy_rows_generic_d(const double* s, const double* m, int64_t lds, double* d, int64_t ldd, int64_t n,
                         int64_t rows) {
  gen::copy_rows_impl<GenericD>(s, m, lds, d, ldd, n, rows);
}
void copy_stream_generic_f(float* d, const float* s, int64_t n) { gen::copy_stream_impl<GenericF>(d, s, n); }
void copy_stream_generic_d(double* d, const double* s, int64_t n) { gen::copy_stream_impl<GenericD>(d, s, n); }
int copy_rows_finite_generic_f(const float* s, int64_t lds, float* d, int64_t ldd, int64_t n, int64_t rows) {
  return gen::copy_rows_impl<GenericF, true>(s, nullptr, lds, d, ldd, n, rows);
}
int copy_rows_finite_generic_d(const double* s, int64_t lds, double* d, int64_t ldd, int64_t n, int64_t rows) {
  return gen::copy_rows_impl<GenericD, true>(s, nullptr, lds, d, ldd, n, rows);
}

int wino_pack_generic_f(const WinoPackArgs<float>& a) { return gen::wino_pack_impl<GenericF>(a); }
void wino_generic_f(const WinoArgs<float>& a) { gen::wino_impl<GenericF>(a); }

void no_fence() {}

const Kernels<float> kGenericF = {"generic",           GenericF::VL,          rows_generic_f,      nt_generic_f,
                                  no_fence,            transpose_generic_f,   copy_rows_generic_f, copy_stream_generic_f,
                                  copy_rows_finite_generic_f,
                                  wino_pack_generic_f, wino_generic_f,        GenericF::WMB};
const Kernels<double> kGenericD = {"generic",           GenericD::VL,          rows_generic_d,      nt_generic_d,
                                   no_fence,            transpose_generic_d,   copy_rows_generic_d, copy_stream_generic_d,
                                   copy_rows_finite_generic_d,
                                   nullptr,             nullptr,               0};

#if IGC_X86
__attribute__((target("avx2,fma"))) void rows_avx2(const RowsArgs<float>& a) { x2::rows_impl<x2::Avx2>(a); }
__attribute__((target("avx2,fma"))) void nt_avx2(const NtArgs<float>& a) { x2::nt_impl<x2::Avx2>(a); }
__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma"))) void rows_avx512(const RowsArgs<float>& a) {
  x512::rows_impl<x512::Avx512>(a);
}
__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma"))) void nt_avx512(const NtArgs<float>& a) {
  x512::nt_impl<x512::Avx512>(a);
}

__attribute__((target("avx2,fma"))) void transpose_avx2(const TransposeArgs<float>& a) {
  x2::transpose_impl<x2::Avx2>(a);
}
__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma"))) void transpose_avx512(
    const TransposeArgs<float>& a) {
  x512::transpose_impl<x512::Avx512>(a);
}

__attribute__((target("avx2,fma"))) void copy_rows_avx2(const float* s, const float* m, int64_t lds, float* d,
                                                        int64_t ldd, int64_t n, int64_t rows) {
  x2::copy_rows_impl<x2::Avx2>(s, m, lds, d, ldd, n, rows);
}
__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma"))) void copy_rows_avx512(
    const float* s, const float* m, int64_t lds, float* d, int64_t ldd, int64_t n, int64_t rows) {
  x512::copy_rows_impl<x512::Avx512>(s, m, lds, d, ldd, n, rows);
}
__attribute__((target("avx2,fma"))) void copy_stream_avx2(float* d, const float* s, int64_t n) {
  x2::copy_stream_impl<x2::Avx2>(d, s, n);
}
__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma"))) void copy_stream_avx512(float* d,
                                                                                             const float* s,
                                                                                             int64_t n) {
  x512::copy_stream_impl<x512::Avx512>(d, s, n);
}

__attribute__((target("avx2,fma"))) int copy_rows_finite_avx2(const float* s, int64_t lds, float* d, int64_t ldd,
                                                               int64_t n, int64_t rows) {
  return x2::copy_rows_impl<x2::Avx2, true>(s, nullptr, lds, d, ldd, n, rows);
}
__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma"))) int copy_rows_finite_avx512(
    const float* s, int64_t lds, float* d, int64_t ldd, int64_t n, int64_t rows) {
  return x512::copy_rows_impl<x512::Avx512, true>(s, nullptr, lds, d, ldd, n, rows);
}

__attribute__((target("avx2,fma"))) int wino_pack_avx2(const WinoPackArgs<float>& a) {
  return x2::wino_pack_impl<x2::Avx2>(a);
}
__attribute__((target("avx2,fma"))) void wino_avx2(const WinoArgs<float>& a) { x2::wino_impl<x2::Avx2>(a); }
__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma"))) int wino_pack_avx512(
    const WinoPackArgs<float>& a) {
  return x512::wino_pack_impl<x512::Avx512>(a);
}
__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma"))) void wino_avx512(const WinoArgs<float>& a) {
  x512::wino_impl<x512::Avx512>(a);
}

void sfence() { _mm_sfence(); }

const Kernels<float> kAvx2 = {"avx2",         x2::Avx2::VL,   rows_avx2,      nt_avx2,   sfence,
                              transpose_avx2, copy_rows_avx2, copy_stream_avx2, copy_rows_finite_avx2,
                              wino_pack_avx2, wino_avx2,      x2::Avx2::WMB};
const Kernels<float> kAvx512 = {"avx512",         x512::Avx512::VL, rows_avx512,      nt_avx512,   sfence,
                                transpose_avx512, copy_rows_avx512, copy_stream_avx512, copy_rows_finite_avx512,
                                wino_pack_avx512, wino_avx512,      x512::Avx512::WMB};

bool has_avx2() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}
bool has_avx512() {
  __builtin_cpu_init();
  return has_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
}
#endif

// The kernels for a name (null: unknown name or unsupported by this CPU).
const Kernels<float>* lookup(const char* name) {
  const bool best = name == nullptr || name[0] == '\0' || strcmp(name, "auto") == 0;
#if IGC_X86
  if ((best && has_avx512()) || (name && strcmp(name, "avx512") == 0 && has_avx512())) return &kAvx512;
  if ((best && has_avx2()) || (name && strcmp(name, "avx2") == 0 && has_avx2())) return &kAvx2;
#endif
  if (best || strcmp(name, "generic") == 0) return &kGenericF;
  return nullptr;
}

const Kernels<float>* g_float = nullptr;  // set at first use; atomics keep set_isa() race-free
bool g_init = false;
int g_winograd = -1;  // -1: not read yet from IGC_KERNELS_CPU_WINOGRAD
int g_plane = -1;     // -1: not read yet from IGC_KERNELS_CPU_PLANE_BACKWARD

// A switch read from an environment variable at first use ("0" turns it off).
bool env_switch(int* state, const char* name) {
  int on = __atomic_load_n(state, __ATOMIC_ACQUIRE);
  if (on < 0) {
    const char* v = getenv(name);
    on = v != nullptr && strcmp(v, "0") == 0 ? 0 : 1;
    __atomic_store_n(state, on, __ATOMIC_RELEASE);
  }
  return on == 1;
}

// The size of the last-level cache this CPU's first core sees (sysfs: the L3 of its CCD on AMD,
// where sysconf(_SC_LEVEL3_CACHE_SIZE) gives the whole package's), or 0 where it cannot be read.
int64_t l3_bytes() {
  for (int i = 0; i < 8; ++i) {
    char path[96], buf[32];
    snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu0/cache/index%d/level", i);
    FILE* f = fopen(path, "r");
    if (!f) return 0;
    const bool l3 = fgets(buf, sizeof buf, f) && atoi(buf) == 3;
    fclose(f);
    if (!l3) continue;
    snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu0/cache/index%d/size", i);
    f = fopen(path, "r");
    if (!f) return 0;
    int64_t bytes = 0;
    if (fgets(buf, sizeof buf, f)) {
      char* end = nullptr;
      bytes = strtoll(buf, &end, 10);
      if (end && *end == 'K') bytes <<= 10;
      if (end && *end == 'M') bytes <<= 20;
    }
    fclose(f);
    return bytes;
  }
  return 0;
}

// Outputs of at least kStreamBytesBase are streamed, except on AMD cores, whose L3 keeps the lines
// the L2 evicts: there an output that fits in the L3 is read by the next layer from it. Measured:
// on the Intel Xeon CI machine the training step's layer outputs (16x96x36x36, 8 MB) streamed made
// the body layers' forward 2.7 -> 1.9 ms and its grad_x 5.7 -> 5.3 ms (layer.h); on a Zen 3 (32 MiB
// L3 per CCD) IGC-VDSR inference at 256x256 (25 MB outputs) took 0.92x the time with them cached
// (two A/B runs alternating in one process, 2 threads), and the training step was unchanged (0.99-1.00x).
int64_t default_stream_bytes() {
  const int64_t base = kStreamBytesBase;
#if IGC_X86
  __builtin_cpu_init();
  if (__builtin_cpu_is("amd")) {
    const int64_t l3 = l3_bytes();
    if (l3 > base) return l3;
  }
#endif
  return base;
}

int64_t g_stream = -2;  // -2: not read yet; -1: IGC_KERNELS_CPU_STREAM_BYTES is not a byte count

}  // namespace

const Kernels<float>* float_kernels() {
  if (!__atomic_load_n(&g_init, __ATOMIC_ACQUIRE)) {
    const Kernels<float>* k = lookup(getenv("IGC_KERNELS_CPU_ISA"));
    __atomic_store_n(&g_float, k, __ATOMIC_RELEASE);
    __atomic_store_n(&g_init, true, __ATOMIC_RELEASE);
  }
  return __atomic_load_n(&g_float, __ATOMIC_ACQUIRE);
}

const Kernels<double>& double_kernels() { return kGenericD; }

bool set_isa(const char* name) {
  const Kernels<float>* k = lookup(name);
  if (k == nullptr) return false;
  __atomic_store_n(&g_float, k, __ATOMIC_RELEASE);
  __atomic_store_n(&g_init, true, __ATOMIC_RELEASE);
  return true;
}

bool winograd_enabled() { return env_switch(&g_winograd, "IGC_KERNELS_CPU_WINOGRAD"); }
void set_winograd(bool on) { __atomic_store_n(&g_winograd, on ? 1 : 0, __ATOMIC_RELEASE); }

int64_t stream_bytes() {
  int64_t v = __atomic_load_n(&g_stream, __ATOMIC_ACQUIRE);
  if (v == -2) {
    const char* e = getenv("IGC_KERNELS_CPU_STREAM_BYTES");
    if (e == nullptr || e[0] == '\0') {
      v = default_stream_bytes();
    } else {
      char* end = nullptr;
      const long long n = strtoll(e, &end, 10);
      v = end != e && *end == '\0' && n >= 0 ? n : -1;
    }
    __atomic_store_n(&g_stream, v, __ATOMIC_RELEASE);
  }
  return v;
}
void set_stream_bytes(int64_t bytes) {
  __atomic_store_n(&g_stream, bytes < 0 ? default_stream_bytes() : bytes, __ATOMIC_RELEASE);
}

bool plane_backward_enabled() { return env_switch(&g_plane, "IGC_KERNELS_CPU_PLANE_BACKWARD"); }
void set_plane_backward(bool on) { __atomic_store_n(&g_plane, on ? 1 : 0, __ATOMIC_RELEASE); }

}  // namespace cpu
}  // namespace igc

extern "C" {
// Name of the float kernels in use ("avx512", "avx2", "generic"), or "invalid" when
// IGC_KERNELS_CPU_ISA names an instruction set this CPU lacks.
__attribute__((visibility("default"))) const char* igc_kernels_cpu_isa(void) {
  const igc::cpu::Kernels<float>* k = igc::cpu::float_kernels();
  return k ? k->name : "invalid";
}
// Switches the float kernels; returns 1 on success, 0 for an unknown or unsupported name.
__attribute__((visibility("default"))) int igc_kernels_cpu_set_isa(const char* name) {
  return igc::cpu::set_isa(name) ? 1 : 0;
}
// Whether the forward uses the Winograd primary for kW = 3 rows (1) or the direct one (0); set it
// with igc_kernels_cpu_set_winograd (used by the tests to check both on one CPU).
__attribute__((visibility("default"))) int igc_kernels_cpu_winograd(void) { return igc::cpu::winograd_enabled() ? 1 : 0; }
__attribute__((visibility("default"))) void igc_kernels_cpu_set_winograd(int on) { igc::cpu::set_winograd(on != 0); }
// Bytes from which outputs are written with non-temporal stores (see default_stream_bytes), -1 when
// the environment variable IGC_KERNELS_CPU_STREAM_BYTES is not a byte count; the setter takes a
// byte count, or a negative number for the CPU's default (used by the tests).
__attribute__((visibility("default"))) int64_t igc_kernels_cpu_stream_bytes(void) { return igc::cpu::stream_bytes(); }
__attribute__((visibility("default"))) void igc_kernels_cpu_set_stream_bytes(int64_t bytes) {
  igc::cpu::set_stream_bytes(bytes);
}
// Whether the backward of images up to 48 pixels wide runs on flat planes (1) or row by row (0).
__attribute__((visibility("default"))) int igc_kernels_cpu_plane_backward(void) {
  return igc::cpu::plane_backward_enabled() ? 1 : 0;
}
__attribute__((visibility("default"))) void igc_kernels_cpu_set_plane_backward(int on) {
  igc::cpu::set_plane_backward(on != 0);
}
}
