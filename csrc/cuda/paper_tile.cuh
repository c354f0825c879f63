// The 8x32 output tile of the paper's layer (k=3, stride 1, dilation 1, L=24, M=M_in=4, 96
// channels), shared by the fast forward (igc_conv_kernel.cu) and the backward's tile kernels
// (igc_conv_backward_kernel.cu: the y1 recompute and grad_w1).
//
// Why one header: the backward recomputes y1 with the forward's exact arithmetic, so the tile
// geometry, the shared-memory staging of w1 and of the input, and the primary inner loop must be
// the same code in both. The helpers are __forceinline__ and keep the original operation order,
// so the kernels that use them compute bit-for-bit what they computed with the code inline.
//
// Every helper is a block-wide or per-thread piece of a kernel launched with kTileThreads threads
// (one output pixel per thread); the callers own the __syncthreads around them.
#pragma once

#include "igc_conv_device.cuh"

namespace igc {
namespace cuda {
namespace paper {

constexpr int kL = 24, kM = 4, kMi = 4, kC = kL * kM;  // primary groups, members, inputs per group
constexpr int kTH = 8, kTW = 32, kTileThreads = kTH * kTW;  // output tile, one pixel per thread
constexpr int kIH = kTH + 2, kIW = kTW + 2;                 // input tile with the 3x3 halo
// The input is staged in chunks of 8 groups (32 channels, 44,880 B in fp32), not all 96 at once.
constexpr int kGroupsPerChunk = 8, kChunkC = kGroupsPerChunk * kMi, kChunks = kL / kGroupsPerChunk;
constexpr int kXS = kChunkC + 1;  // per-pixel stride of the staged input: odd, so no bank conflicts
constexpr int kXBytes = kIH * kIW * kXS * 4;  // the staged input chunk (fp32)
constexpr int kW1Bytes = kL * kMi * 9 * 16;   // w1 as float4 over the 4 members m
static_assert(kL % kGroupsPerChunk == 0, "the input is staged in whole chunks of groups");
static_assert(kW1Bytes % 16 == 0, "what follows the staged w1 must stay 16-byte aligned");

// The shape test of both fast paths: the paper's layer, and a grid (x: width tiles, y: height
// tiles, z: images) within CUDA's 65535 limit on y and z.
inline bool tile_applies(const KernelShape& s) {
  return s.kH == 3 && s.kW == 3 && s.sH == 1 && s.sW == 1 && s.dH == 1 && s.dW == 1 && s.L == kL && s.M == kM &&
         s.M_in == kMi && s.N <= 65535 && (s.H_out + kTH - 1) / kTH <= 65535;
}

// w1[c1, ci, kh, kw] (c1 = l*4 + m) -> w1s[(l*4 + ci)*9 + kh*3 + kw].{m}: the 4 members of a
// group share each input value, so one broadcast float4 load feeds 4 FMAs in primary_group4.
__device__ __forceinline__ void stage_w1(float4* w1s, const float* __restrict__ w1) {
  float* w1f = reinterpret_cast<float*>(w1s);
  for (int i = threadIdx.x; i < kC * kMi * 9; i += kTileThreads) {
    const int c1 = i / (kMi * 9), r = i - c1 * (kMi * 9);
    w1f[((c1 / kM) * (kMi * 9) + r) * 4 + (c1 % kM)] = w1[i];
  }
}

// Input channels [chunk*32, chunk*32 + 32) of the tile at (n, oh0, ow0) and its halo into
// xs[(r*kIW + col)*kXS + c], as fp32 (0 = zero padding). Consecutive threads read consecutive
// addresses of x in either layout: channel-fastest for channels_last, column-fastest for NCHW.
template <typename scalar_t>
__device__ __forceinline__ void load_x_chunk(const KernelShape& s, const scalar_t* __restrict__ x,
                                             const Strides4& xst, float* xs, int n, int oh0, int ow0, int chunk) {
  const bool x_cl = xst.c == 1 && s.C_in > 1;
  for (int i = threadIdx.x; i < kIH * kIW * kChunkC; i += kTileThreads) {
    int c, r, col;
    if (x_cl) {
      c = i % kChunkC;
      const int rc = i / kChunkC;
      col = rc % kIW;
      r = rc / kIW;
    } else {
      col = i % kIW;
      const int rc = i / kIW;
      r = rc % kIH;
      c = rc / kIH;
    }
    const int ih = oh0 - s.pH + r, iw = ow0 - s.pW + col;
    float v = 0.f;
    if (ih >= 0 && ih < s.H && iw >= 0 && iw < s.W) v = to_f(x[offset4(xst, n, chunk * kChunkC + c, ih, iw)]);
    xs[(r * kIW + col) * kXS + c] = v;
  }
}

// Primary outputs y1[l*4 + m], m = 0..3 (bias included, as .x .. .w), of the tile pixel (ty, tx)
// for group l = chunk*kGroupsPerChunk + g, from the staged input chunk xs, the staged w1s and the
// biases b1s. The FMAs run in the order ci, kh, kw: the forward and the backward's recompute
// must agree bit for bit.
__device__ __forceinline__ float4 primary_group4(const float* xs, const float4* w1s, const float* b1s, int ty, int tx,
                                                 int chunk, int g) {
  const int l = chunk * kGroupsPerChunk + g;
  float a0 = b1s[l * kM + 0], a1 = b1s[l * kM + 1], a2 = b1s[l * kM + 2], a3 = b1s[l * kM + 3];
#pragma unroll
  for (int ci = 0; ci < kMi; ++ci) {
#pragma unroll
    for (int kh = 0; kh < 3; ++kh) {
#pragma unroll
      for (int kw = 0; kw < 3; ++kw) {
        const float xv = xs[((ty + kh) * kIW + tx + kw) * kXS + g * kMi + ci];
        const float4 w = w1s[(l * kMi + ci) * 9 + kh * 3 + kw];
        a0 = fmaf(w.x, xv, a0);
        a1 = fmaf(w.y, xv, a1);
        a2 = fmaf(w.z, xv, a2);
        a3 = fmaf(w.w, xv, a3);
      }
    }
  }
  return make_float4(a0, a1, a2, a3);
}

}  // namespace paper
}  // namespace cuda
}  // namespace igc
