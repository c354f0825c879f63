// The CPU microkernels alone, on data that stays in L1, at the IGC-VDSR layer's sizes: how close
// each gets to one core's FMA peak before memory enters the picture.
//
//   c++ -O2 -std=c++17 -Icsrc/cpu bench/tools/kernel_rates.cpp csrc/cpu/kernels.cpp -o /tmp/kernel_rates
//   /tmp/kernel_rates [isa ...] [--calls N]        (isa: avx512 | avx2 | generic; default: all)
//
// (bench/kernel_rates.py builds and runs it.) Cases, one thread, fp32:
//   wino   the Winograd primary of one group on one 64-pixel segment: K = 12 taps (4 channels x 3
//          columns) x 6 components -> 4 channels x 4 output rows (the forward at 256x256);
//   rows   the secondary of one group m: 24 output rows from 24 rows of 64 pixels, with bias and ReLU.
// Each line: kernel, ISA, GFLOP/s of the multiply-adds the kernel does (2 per FMA lane; the
// Winograd transforms' adds not counted), median of 5 timed batches of --calls calls.
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <algorithm>
#include <chrono>
#include <vector>

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

void rows_rate(const Kernels<float>& k, long calls) {
  Buffer y1(kL * kP), w(kL * kL), bias(kL), out(kL * kP);
  std::vector<const float*> src(kL);
  std::vector<float*> dst(kL);
  for (int64_t i = 0; i < kL; ++i) {
    src[i] = y1.p + i * kP;
    dst[i] = out.p + i * kP;
  }
  igc::cpu::RowsArgs<float> a;
  a.MB = kL;
  a.K = kL;
  a.P = kP;
  a.w = w.p;
  a.ldw = kL;
  a.bias = bias.p;
  a.src = src.data();
  a.dst = dst.data();
  a.relu = true;
  const double s = median_seconds([&] { k.rows(a); }, calls);
  printf("rows  %-8s %7.1f GFLOP/s\n", k.name, 2.0 * kL * kL * kP * calls / s * 1e-9);
}

}  // namespace

int main(int argc, char** argv) {
  long calls = 100000;
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
  }
  return 0;
}
