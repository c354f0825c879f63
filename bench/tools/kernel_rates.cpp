// The CPU microkernels alone, on data that stays in L1, at the IGC-VDSR layer's sizes: how close
// each gets to one core's FMA peak before memory enters the picture.
//
//   c++ -O2 -std=c++17 -Icsrc/cpu bench/tools/kernel_rates.cpp csrc/cpu/kernels.cpp -o /tmp/kernel_rates
//   /tmp/kernel_rates [isa ...] [--calls N]        (isa: avx512 | avx2 | generic; default: all)
//
// (bench/kernel_rates.py builds and runs it.) Cases, one thread, fp32:
//   wino   the Winograd primary of one group on one 64-pixel segment: K = 12 taps (4 channels x 3
//          columns) x 6 components -> 4 channels x 4 output rows (the forward at 256x256);
//   rows   the secondary of one group m: 24 output rows from 24 rows of 64 pixels, with bias and ReLU;
//          with avx512, also on AMX tiles at fp32 accuracy (ISA "amxbf16x3", see amx_secondary.h:
//          a probe of whether the tile units would pay, not a library kernel), which must match a
//          double reference as closely as the AVX-512 kernel does (exit status 1 otherwise).
// Each line: kernel, ISA, GFLOP/s of the multiply-adds the kernel does (2 per FMA lane; the
// Winograd transforms' adds not counted), median of 5 timed batches of --calls calls.
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <math.h>

#include <algorithm>
#include <chrono>
#include <vector>

#include "amx_secondary.h"
#include "kernels.h"

using igc::cpu::Kernels;

namespace {

constexpr int64_t kK = 12, kMB = 4, kP = 64, kSeg = 96, kL = 24;

// 64-byte aligned buffers (the kernels' rows are, in the library).
struct Buffer {
  float* p;
  explicit Buffer(size_t n) : p(static_cast<float*>(aligned_alloc(64, (n * sizeof(float) + 63) / 64 * 64))) {
    for (size_t i = 0; i < n; ++i) p[i] = 0.5f + 1e-3f * float(i % 97);
  }
  ~Buffer() { free(p); }
};

template <typename F>
double median_seconds(F&& call, long calls) {
  std::vector<double> t;
  for (int batch = 0; batch < 6; ++batch) {
    const auto t0 = std::chrono::steady_clock::now();
    for (long i = 0; i < calls; ++i) call();
    t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  t.erase(t.begin());  // the first batch warms up
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

void wino_rate(const Kernels<float>& k, long calls) {
  if (!k.wino) return;
  // Component rows as the forward lays them out: component j of channel c at (j * 4 + c) * kSeg;
  // tap (c, kw) reads them kw columns on.
  Buffer comp(6 * 4 * kSeg + 16), U(kL * kK * 6 * kMB), y1(4 * kMB * kP);
  std::vector<const float*> src(kK * 6);
  for (int64_t c = 0; c < 4; ++c)
    for (int64_t kw = 0; kw < 3; ++kw)
      for (int64_t j = 0; j < 6; ++j) src[(c * 3 + kw) * 6 + j] = comp.p + (j * 4 + c) * kSeg + kw;
  std::vector<float*> dst(4 * kMB);
  for (int64_t i = 0; i < 4 * kMB; ++i) dst[i] = y1.p + i * kP;
  igc::cpu::WinoArgs<float> a;
  a.MB = kMB;
  a.K = kK;
  a.P = kP;
  a.w = U.p;
  a.src = src.data();
  a.dst = dst.data();
  const double s = median_seconds([&] { k.wino(a); }, calls);
  printf("wino  %-8s %7.1f GFLOP/s\n", k.name, 2.0 * kK * 6 * kMB * kP * calls / s * 1e-9);
}

// The secondary of one group: its buffers and the rows GEMM's arguments (bias and ReLU).
struct SecondaryCase {
  Buffer y1{kL * kP}, w{kL * kL}, bias{kL}, out{kL * kP};
  std::vector<const float*> src = std::vector<const float*>(kL);
  std::vector<float*> dst = std::vector<float*>(kL);
  igc::cpu::RowsArgs<float> a;
  SecondaryCase() {
    for (int64_t i = 0; i < kL; ++i) {
      src[i] = y1.p + i * kP;
      dst[i] = out.p + i * kP;
    }
    a.MB = kL;
    a.K = kL;
    a.P = kP;
    a.w = w.p;
    a.ldw = kL;
    a.bias = bias.p;
    a.src = src.data();
    a.dst = dst.data();
    a.relu = true;
  }
};

void rows_rate(const Kernels<float>& k, long calls) {
  SecondaryCase c;
  const double s = median_seconds([&] { k.rows(c.a); }, calls);
  printf("rows  %-8s %7.1f GFLOP/s\n", k.name, 2.0 * kL * kL * kP * calls / s * 1e-9);
}

// Largest |out - reference| / sum of |terms| over the secondary's outputs (relu(bias + w^T y), in double).
double rows_error(const float* y1, const float* w, const float* bias, const float* out) {
  double worst = 0;
  for (int64_t i = 0; i < kL; ++i)
    for (int64_t p = 0; p < kP; ++p) {
      double ref = bias[i], scale = fabs(bias[i]);
      for (int64_t k = 0; k < kL; ++k) {
        ref += double(w[k * kL + i]) * y1[k * kP + p];
        scale += fabs(double(w[k * kL + i]) * y1[k * kP + p]);
      }
      worst = std::max(worst, fabs(out[i * kP + p] - std::max(ref, 0.0)) / std::max(scale, 1e-30));
    }
  return worst;
}

// The rows case on AMX (amx_secondary.h) beside the AVX-512 kernel k, on the same random data.
// Returns false when the AMX result is less accurate than fp32 allows.
bool amx_rows_rate(const Kernels<float>& k, long calls) {
#ifdef IGC_AMX_PROBE
  if (amx_probe::available()) {
    SecondaryCase c;  // the AVX-512 kernel's result in c.out, AMX's in amx_out
    srand(7);
    auto uniform = [] { return float(rand()) / float(RAND_MAX) - 0.5f; };
    for (int64_t i = 0; i < kL * kP; ++i) c.y1.p[i] = 2 * uniform() + 0.5f;
    for (int64_t i = 0; i < kL * kL; ++i) c.w.p[i] = 0.4f * uniform();
    for (int64_t i = 0; i < kL; ++i) c.bias.p[i] = 0.1f * uniform();
    k.rows(c.a);
    Buffer amx_out(kL * kP);
    std::vector<float*> dst(kL);
    for (int64_t i = 0; i < kL; ++i) dst[i] = amx_out.p + i * kP;
    amx_probe::Secondary amx;
    amx.set_weights(c.w.p, c.bias.p);
    amx_probe::Secondary::configure();
    amx.run(c.src.data(), dst.data());
    const double s = median_seconds([&] { amx.run(c.src.data(), dst.data()); }, calls);
    amx_probe::Secondary::release();
    const double err = rows_error(c.y1.p, c.w.p, c.bias.p, amx_out.p);
    const double err_ref = rows_error(c.y1.p, c.w.p, c.bias.p, c.out.p);
    printf("rows  %-8s %7.1f GFLOP/s\n", "amxbf16x3", 2.0 * kL * kL * kP * calls / s * 1e-9);
    printf("      error against double, relative to the sum of |terms|: amxbf16x3 %.1e, %s %.1e\n", err, k.name,
           err_ref);
    return err <= std::max(4 * err_ref, 1e-6);
  }
#endif
  (void)k;
  (void)calls;
  printf("%-5s %-8s unavailable on this CPU (or compiler, or kernel)\n", "-", "amxbf16x3");
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  long calls = 100000;
  bool ok = true;
  std::vector<const char*> isas;
  for (int i = 1; i < argc; ++i) {
    if (strcmp(argv[i], "--calls") == 0 && i + 1 < argc) {
      calls = atol(argv[++i]);
      if (calls < 1) {
        fprintf(stderr, "--calls must be a positive integer, got %s\n", argv[i]);
        return 2;
      }
    } else {
      isas.push_back(argv[i]);
    }
  }
  if (isas.empty()) isas = {"avx512", "avx2", "generic"};
  for (const char* isa : isas) {
    if (!igc::cpu::set_isa(isa)) {
      printf("%-5s %-8s unavailable on this CPU (or unknown)\n", "-", isa);
      continue;
    }
    const Kernels<float>& k = *igc::cpu::float_kernels();
    wino_rate(k, calls);
    rows_rate(k, calls);
    if (strcmp(isa, "avx512") == 0 && !amx_rows_rate(k, calls)) ok = false;
  }
  return ok ? 0 : 1;
}
