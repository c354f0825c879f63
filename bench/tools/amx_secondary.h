// A probe, not a library kernel: the secondary of one group (24 output rows from 24 rows of 64
// pixels, bias and ReLU) on Intel AMX, at fp32 accuracy, to see whether the tile units would beat
// the AVX-512 rows GEMM (kernel_rates.cpp prints both, on the same data).
//
// AMX multiplies bf16 tiles into fp32 sums. To keep fp32 accuracy each operand is split into three
// bf16 parts (x = xh + xm + xl, each the top 8 significant bits of what is left, exact) and the six
// products down to 2^-16 of the leading one are summed (xh*wh, xh*wm, xm*wh, xh*wl, xl*wh, xm*wm):
// the error stays at fp32's level (checked against a double reference). The six products are laid
// along K (6 x 24 = 144, padded to 160: five K steps of 32), so one tile product per K step and per
// 16 x 16 output tile; the 24 output rows take two tiles of 16 rows (the second 8 rows high), 16
// pixels per tile column, two columns at once: 4 accumulator tiles + 2 weight + 2 data tiles.
//
// Measured on the project's Intel Xeon CI machine (one thread, data in L1, python
// bench/kernel_rates.py --isa avx512): 136-162 GFLOP/s against 141-151 for the AVX-512 kernel, at
// the same accuracy (1.2e-7 against 1.4e-7). In a first version timed part by part, the tile
// products with their loads and the epilogue took two thirds of the time and the split of the data
// into bf16 parts one third. The padding (24 -> 32 rows, 144 -> 160 K) and the six products eat
// AMX's 15x higher multiply rate: no gain at this layer's sizes.
#pragma once

#if defined(__x86_64__) && defined(__GNUC__) && (__GNUC__ >= 11 || defined(__clang__))
#define IGC_AMX_PROBE 1
#include <cpuid.h>
#include <immintrin.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

namespace amx_probe {

constexpr int kL = 24, kP = 64, kSteps = 5;  // K: 6 products x 24 = 144, padded to 5 x 32
// Per K segment of 24 (one product): which part of the data (B) and of the weights (A).
constexpr int kDataPart[6] = {0, 0, 1, 0, 2, 1};
constexpr int kWeightPart[6] = {0, 1, 0, 2, 0, 1};

// Whether the CPU has AMX-TILE and AMX-BF16 and Linux lets this process use the tile registers.
inline bool available() {
  unsigned a, b, c, d;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
  if (!(d & (1u << 24)) || !(d & (1u << 22))) return false;
  constexpr long kReqXcompPerm = 0x1023, kXtileData = 18;
  return syscall(SYS_arch_prctl, kReqXcompPerm, kXtileData) == 0;
}

inline uint32_t bits(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  return u;
}
inline float from_bits(uint32_t u) {
  float f;
  memcpy(&f, &u, 4);
  return f;
}

struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

struct Secondary {
  alignas(64) uint16_t A[2][kSteps][16][32];  // weights: row tile, K step, output row, k
  alignas(64) uint32_t B[4][kSteps][16][16];  // data: pixel tile, K step, pair of k, pixel (bf16 pair)
  alignas(64) float C[4][16][16];
  const float* bias = nullptr;

  // w: weight of (source k, output row i) at w[k * kL + i], as RowsArgs.
  void set_weights(const float* w, const float* b) {
    memset(A, 0, sizeof A);
    for (int i = 0; i < kL; ++i)
      for (int k = 0; k < 6 * kL; ++k) {
        const float v = w[(k % kL) * kL + i];
        const float h = from_bits(bits(v) & 0xffff0000u), r = v - h, m = from_bits(bits(r) & 0xffff0000u);
        const float parts[3] = {h, m, r - m};
        A[i / 16][k / 32][i % 16][k % 32] = uint16_t(bits(parts[kWeightPart[k / kL]]) >> 16);
      }
    bias = b;
  }

  __attribute__((target("avx512f,avx512bw,amx-tile,amx-bf16"))) static void configure() {
    TileConfig cfg;
    for (int t = 0; t < 8; ++t) {
      cfg.colsb[t] = 64;
      cfg.rows[t] = 16;
    }
    cfg.rows[2] = cfg.rows[3] = cfg.rows[5] = 8;  // output rows 16..23 and their weights
    // GCC's _tile_loadconfig tells the compiler it reads 8 bytes of cfg: without this barrier -O3
    // dropped the stores of the rest, and the first tile instruction faulted.
    asm volatile("" : : "r"(&cfg) : "memory");
    _tile_loadconfig(&cfg);
  }
  __attribute__((target("avx512f,avx512bw,amx-tile,amx-bf16"))) static void release() { _tile_release(); }

  // dst[i][p] = relu(bias[i] + sum_k w[k][i] * src[k][p]) for i < 24, p < 64.
  __attribute__((target("avx512f,avx512bw,amx-tile,amx-bf16"))) void run(const float* const* src, float* const* dst) {
    const __m512i top = _mm512_set1_epi32(int(0xffff0000u));
    for (int t = 0; t < 4; ++t) {  // split the data into bf16 parts, pairs of rows interleaved
      uint32_t* b = &B[t][0][0][0];
      for (int j = 0; j < kL / 2; ++j) {
        const __m512i x0 = _mm512_castps_si512(_mm512_loadu_ps(src[2 * j] + 16 * t));
        const __m512i x1 = _mm512_castps_si512(_mm512_loadu_ps(src[2 * j + 1] + 16 * t));
        const __m512i h0 = _mm512_and_si512(x0, top), h1 = _mm512_and_si512(x1, top);
        const __m512 r0 = _mm512_sub_ps(_mm512_castsi512_ps(x0), _mm512_castsi512_ps(h0));
        const __m512 r1 = _mm512_sub_ps(_mm512_castsi512_ps(x1), _mm512_castsi512_ps(h1));
        const __m512i m0 = _mm512_and_si512(_mm512_castps_si512(r0), top);
        const __m512i m1 = _mm512_and_si512(_mm512_castps_si512(r1), top);
        const __m512i l0 = _mm512_castps_si512(_mm512_sub_ps(r0, _mm512_castsi512_ps(m0)));
        const __m512i l1 = _mm512_castps_si512(_mm512_sub_ps(r1, _mm512_castsi512_ps(m1)));
        // A pair of k: the even row's bf16 in the low half, the odd row's in the high half.
        const __m512i H = _mm512_or_si512(h1, _mm512_srli_epi32(h0, 16));
        const __m512i M = _mm512_or_si512(m1, _mm512_srli_epi32(m0, 16));
        const __m512i Lo = _mm512_or_si512(_mm512_and_si512(l1, top), _mm512_srli_epi32(l0, 16));
        const __m512i part[3] = {H, M, Lo};
        for (int s = 0; s < 6; ++s) _mm512_store_si512(b + (s * kL / 2 + j) * 16, part[kDataPart[s]]);
      }
      for (int q = 6 * kL / 2; q < kSteps * 16; ++q) _mm512_store_si512(b + q * 16, _mm512_setzero_si512());
    }
    for (int t = 0; t < 4; t += 2) {  // two pixel tiles x two row tiles per pass
      _tile_zero(0);
      _tile_zero(1);
      _tile_zero(2);
      _tile_zero(3);
      for (int s = 0; s < kSteps; ++s) {
        _tile_loadd(4, A[0][s], 64);
        _tile_loadd(5, A[1][s], 64);
        _tile_loadd(6, B[t][s], 64);
        _tile_loadd(7, B[t + 1][s], 64);
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
        _tile_dpbf16ps(2, 5, 6);
        _tile_dpbf16ps(3, 5, 7);
      }
      _tile_stored(0, C[0], 64);
      _tile_stored(1, C[1], 64);
      _tile_stored(2, C[2], 64);
      _tile_stored(3, C[3], 64);
      const __m512 zero = _mm512_setzero_ps();
      for (int i = 0; i < kL; ++i) {
        const __m512 b = _mm512_set1_ps(bias[i]);
        for (int u = 0; u < 2; ++u) {
          const __m512 v = _mm512_add_ps(_mm512_load_ps(C[(i / 16) * 2 + u][i % 16]), b);
          _mm512_storeu_ps(dst[i] + 16 * (t + u), _mm512_max_ps(v, zero));
        }
      }
    }
  }
};

}  // namespace amx_probe
#endif
