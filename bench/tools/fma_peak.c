/* The machine's fp32 FMA peak, the denominator of the benchmarks' "% of peak".
 *
 *   cc -O2 -march=native -pthread bench/tools/fma_peak.c -o /tmp/fma_peak && /tmp/fma_peak 2
 *
 * Each thread runs 12 independent chains of vector FMAs (enough to cover the FMA latency on
 * current x86 cores) on the widest vectors -march=native allows, and the program prints the
 * GFLOP/s of each thread and their sum. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

/* The widest vectors the target has: a wider GCC vector type is split into several registers per
 * chain, and 12 chains of two ymm halves each no longer fit in AVX2's 16 registers (the spills made
 * a Zen 3 measure 7 GFLOP/s). */
#if defined(__AVX512F__)
#define VEC_BYTES 64
#elif defined(__AVX__)
#define VEC_BYTES 32
#else
#define VEC_BYTES 16
#endif
typedef float vec __attribute__((vector_size(VEC_BYTES)));
enum { CHAINS = 12, LANES = sizeof(vec) / sizeof(float) };
static const long kIters = 100000000;

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + 1e-9 * t.tv_nsec;
}

static void* run(void* out) {
  vec a[CHAINS], b, c;
  for (int l = 0; l < LANES; ++l) {
    b[l] = 1.0000001f;
    c[l] = 1e-7f;
  }
  for (int i = 0; i < CHAINS; ++i) a[i] = b * (float)i;
  const double t0 = now();
  for (long k = 0; k < kIters; ++k)
#pragma GCC unroll 12
    for (int i = 0; i < CHAINS; ++i) a[i] = a[i] * b + c;  // unrolled: the chains live in registers
  const double s = now() - t0;
  float sink = 0;
  for (int i = 0; i < CHAINS; ++i) sink += a[i][0];
  *(double*)out = kIters * CHAINS * LANES * 2.0 / s / 1e9 + 0 * sink;
  return NULL;
}

int main(int argc, char** argv) {
  const int threads = argc > 1 ? atoi(argv[1]) : 1;
  if (threads < 1 || threads > 256) {
    fprintf(stderr, "usage: fma_peak [threads 1..256], got %s\n", argv[1]);
    return 2;
  }
  pthread_t tid[256];
  double g[256], sum = 0;
  for (int i = 0; i < threads; ++i) pthread_create(&tid[i], NULL, run, &g[i]);
  for (int i = 0; i < threads; ++i) {
    pthread_join(tid[i], NULL);
    printf("thread %d: %.1f GFLOP/s\n", i, g[i]);
    sum += g[i];
  }
  printf("fp32 FMA peak, %d thread(s): %.1f GFLOP/s\n", threads, sum);
  return 0;
}
