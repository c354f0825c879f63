// Fused IGC forward kernels on CUDA (DESIGN section 2); the host side is igc_conv_cuda.cpp.
//
// Two kernels, picked per call:
// - igc_fwd_fast_kernel: the paper's layer (k=3, stride 1, dilation 1, L=24, M=M_in=4, 96
//   channels, any padding, any layout). One block = an 8x32 output tile of one image; the input
//   tile + 1-pixel halo is staged in shared memory (fp32) one chunk of 8 primary groups at a time;
//   each thread owns one output pixel and keeps its 96 primary outputs in registers, so every
//   primary and secondary MAC is done exactly once; the result is staged in shared memory and
//   written with coalesced stores in the output's layout (NCHW rows or channels_last pixels).
// - igc_fwd_general_kernel: every other shape (any L, M, M_in, kernel, stride, padding, dilation).
//   One block = a run of P output pixels; phase 1 computes y1 for all C_mid channels of those
//   pixels into shared memory, phase 2 the secondary + shuffle + epilogue from there.
//
// Cost of the paper's layer, per output pixel: primary 96 x 36 = 3,456 MAC, secondary 96 x 24 =
// 2,304 MAC, together 5,760 MAC = 11,520 FLOP; memory at least x in + out = 2 x 96 values
// (384 B in fp16/bf16, 768 B in fp32; +192 B per pixel with a residual). At 1x96x1080x1920
// (2.07 M pixels) that is 23.9 GFLOP and 0.80 GB (fp16): on an H200 (~4.8 TB/s) the HBM floor is
// 0.17 ms (at 80% of that bandwidth: 0.21 ms). Doing 23.9 GFLOP in 0.2 ms needs ~120 TFLOP/s, more
// than the H200's fp32 CUDA-core FMA peak (~67 TFLOP/s): with fp32 accumulation on CUDA cores (this
// kernel) the layer is compute-bound at >= 0.36 ms however well memory is handled, and the primary
// issues one shared-memory load per 2 FMAs on top (estimate before measuring: 0.4-0.7 ms; ptxas:
// 128 registers, no spills, at 2 blocks of 256 threads per SM). Reaching the
// HBM floor needs the MACs on tensor cores: the secondary as [pixels x 24] x [24 x 24] mma per
// group (fp16/bf16 in, fp32 accumulate) and the primary as block-diagonal mma over pairs of groups.
// That is the next step once it can be measured on the device; this kernel is the correct,
// layout-aware baseline that step will be checked against.
#include <algorithm>
#include <climits>
#include <type_traits>

#include "igc_conv_device.cuh"
#include "paper_tile.cuh"

namespace igc {
namespace cuda {
namespace {

// ---------------------------------------------------------------------------------------------
// Fast path: the paper's layer. Tile geometry, w1 and input staging and the primary inner loop
// are in paper_tile.cuh, shared with the backward's recompute of y1.
namespace fast {
using namespace paper;

// Shared memory: w1 as float4 over the 4 members m (one broadcast load feeds 4 FMAs), w2, biases,
// then one region used first for the input tile and then for the output stage.
constexpr int kOffW2 = kW1Bytes;
constexpr int kOffB1 = kOffW2 + kC * kL * 4;
constexpr int kOffB2 = kOffB1 + kC * 4;
constexpr int kOffRegion = kOffB2 + kC * 4;
static_assert(kOffRegion % 16 == 0, "shared-memory region must stay 16-byte aligned");

template <typename scalar_t>
constexpr int stage_stride() {  // odd number of 32-bit words per staged pixel: conflict-free
  return sizeof(scalar_t) == 2 ? kC + 2 : kC + 1;
}

template <typename scalar_t>
constexpr int smem_bytes() {
  constexpr int stage_bytes = kTileThreads * stage_stride<scalar_t>() * static_cast<int>(sizeof(scalar_t));
  return kOffRegion + (kXBytes > stage_bytes ? kXBytes : stage_bytes);
}

template <typename scalar_t>
__global__ void __launch_bounds__(kTileThreads, 2)
    igc_fwd_fast_kernel(KernelShape s, const scalar_t* __restrict__ x, Strides4 xst, const float* __restrict__ w1,
                        const float* __restrict__ b1, const float* __restrict__ w2, const float* __restrict__ b2,
                        const scalar_t* __restrict__ res, Strides4 rst, scalar_t* __restrict__ out, Strides4 ost) {
  IGC_DYNAMIC_SMEM(smem);
  float4* w1s = reinterpret_cast<float4*>(smem);
  float* w2s = reinterpret_cast<float*>(smem + kOffW2);
  float* b1s = reinterpret_cast<float*>(smem + kOffB1);
  float* b2s = reinterpret_cast<float*>(smem + kOffB2);
  float* xs = reinterpret_cast<float*>(smem + kOffRegion);
  scalar_t* stage = reinterpret_cast<scalar_t*>(smem + kOffRegion);

  const int tid = threadIdx.x;
  const int n = blockIdx.z, oh0 = blockIdx.y * kTH, ow0 = blockIdx.x * kTW;

  stage_w1(w1s, w1);
  for (int i = tid; i < kC * kL; i += kTileThreads) w2s[i] = w2[i];  // [m][j][l], as w2 is stored
  for (int i = tid; i < kC; i += kTileThreads) {
    b1s[i] = b1 != nullptr ? b1[i] : 0.f;
    b2s[i] = b2 != nullptr ? b2[i] : 0.f;
  }

  const int ty = tid / kTW, tx = tid - ty * kTW;
  float y1[kC];  // this pixel's primary outputs, channel l*4 + m

#pragma unroll
  for (int chunk = 0; chunk < kChunks; ++chunk) {
    __syncthreads();  // the previous chunk's readers are done with xs
    load_x_chunk(s, x, xst, xs, n, oh0, ow0, chunk);
    __syncthreads();
#pragma unroll
    for (int g = 0; g < kGroupsPerChunk; ++g) {
      const int l = chunk * kGroupsPerChunk + g;
      const float4 a = primary_group4(xs, w1s, b1s, ty, tx, chunk, g);
      y1[l * kM + 0] = a.x;
      y1[l * kM + 1] = a.y;
      y1[l * kM + 2] = a.z;
      y1[l * kM + 3] = a.w;
    }
  }
  __syncthreads();  // xs is overwritten by the output stage below

  // Secondary group m mixes z[m*L + l] = y1[l*M + m] (the interleave is this index map).
  constexpr int SS = stage_stride<scalar_t>();
#pragma unroll
  for (int m = 0; m < kM; ++m) {
    for (int j = 0; j < kL; ++j) {
      const float4* wrow = reinterpret_cast<const float4*>(w2s + (m * kL + j) * kL);
      float acc = b2s[m * kL + j];
#pragma unroll
      for (int q = 0; q < kL / 4; ++q) {
        const float4 w = wrow[q];
        acc = fmaf(w.x, y1[(4 * q + 0) * kM + m], acc);
        acc = fmaf(w.y, y1[(4 * q + 1) * kM + m], acc);
        acc = fmaf(w.z, y1[(4 * q + 2) * kM + m], acc);
        acc = fmaf(w.w, y1[(4 * q + 3) * kM + m], acc);
      }
      const int o = s.shuffle ? j * kM + m : m * kL + j;
      stage[tid * SS + o] = from_f<scalar_t>(acc);
    }
  }
  __syncthreads();

  // Epilogue with coalesced stores: consecutive threads take consecutive channels of a pixel
  // (channels_last) or consecutive pixels of a row (NCHW).
  const bool o_cl = ost.c == 1;
  for (int i = tid; i < kTileThreads * kC; i += kTileThreads) {
    int o, pix;
    if (o_cl) {
      o = i % kC;
      pix = i / kC;
    } else {
      pix = i % kTileThreads;
      o = i / kTileThreads;
    }
    const int oh = oh0 + pix / kTW, ow = ow0 + pix % kTW;
    if (oh < s.H_out && ow < s.W_out) {
      float v = to_f(stage[pix * SS + o]);
      if (res != nullptr) v += to_f(res[offset4(rst, n, o, oh, ow)]);
      if (s.relu) v = relu_f(v);
      out[offset4(ost, n, o, oh, ow)] = from_f<scalar_t>(v);
    }
  }
}
}  // namespace fast

// ---------------------------------------------------------------------------------------------
// General path: every shape.
constexpr int kGeneralThreads = 256;

template <typename scalar_t>
__global__ void __launch_bounds__(kGeneralThreads)
    igc_fwd_general_kernel(KernelShape s, int P, int64_t num_tiles, const scalar_t* __restrict__ x, Strides4 xst,
                           const float* __restrict__ w1, const float* __restrict__ b1, const float* __restrict__ w2,
                           const float* __restrict__ b2, const scalar_t* __restrict__ res, Strides4 rst,
                           scalar_t* __restrict__ out, Strides4 ost) {
  IGC_DYNAMIC_SMEM(smem);
  float* y1s = reinterpret_cast<float*>(smem);  // [C_mid][P]: consecutive threads, consecutive pixels
  const int CP = s.C_out * P;
  for (int64_t tile = blockIdx.x; tile < num_tiles; tile += gridDim.x) {
    const int64_t pix0 = tile * P;
    for (int i = threadIdx.x; i < CP; i += blockDim.x) {
      const int c1 = i / P, pp = i - c1 * P;
      const int64_t pix = pix0 + pp;
      float v = 0.f;
      if (pix < s.total_pix) {
        const PixelPos q = decode_pixel(s, pix);
        v = primary_at(s, x, xst, w1, b1, q.n, c1, q.oh, q.ow);
      }
      y1s[i] = v;
    }
    __syncthreads();
    for (int i = threadIdx.x; i < CP; i += blockDim.x) {
      const int o = i / P, pp = i - o * P;
      const int64_t pix = pix0 + pp;
      if (pix >= s.total_pix) continue;
      // Output channel o holds secondary channel c2 = m*L + j (inverse of out_channel).
      const int m = s.shuffle ? o % s.M : o / s.L;
      const int j = s.shuffle ? o / s.M : o % s.L;
      const int c2 = m * s.L + j;
      float acc = b2 != nullptr ? b2[c2] : 0.f;
      const float* wrow = w2 + static_cast<int64_t>(c2) * s.L;
      for (int l = 0; l < s.L; ++l) acc = fmaf(wrow[l], y1s[(l * s.M + m) * P + pp], acc);
      const PixelPos q = decode_pixel(s, pix);
      if (res != nullptr) acc += to_f(res[offset4(rst, q.n, o, q.oh, q.ow)]);
      if (s.relu) acc = relu_f(acc);
      out[offset4(ost, q.n, o, q.oh, q.ow)] = from_f<scalar_t>(acc);
    }
    __syncthreads();  // y1s is rewritten by the next tile
  }
}

}  // namespace

bool fast_forward_applies(const KernelShape& s) { return paper::tile_applies(s); }

int fast_forward_smem_bytes(DType dtype) {
  return dtype == DType::kFloat32 ? fast::smem_bytes<float>() : fast::smem_bytes<__half>();
}

int general_forward_pixels_per_block(int C_out) {
  if (static_cast<int64_t>(C_out) * 4 > kSmemBudget) return 0;
  int P = 64;  // as many pixels as fit y1 of all channels into the static budget
  while (P > 1 && static_cast<int64_t>(C_out) * P * 4 > kSmemBudget) P /= 2;
  return P;
}

#ifndef IGC_CUDA_EMULATION  // the emulation launches the kernels itself
cudaError_t launch_forward_fast(const ForwardArgs& a, cudaStream_t stream) {
  return dispatch_dtype(a.dtype, [&](auto* tag) {
    using scalar_t = std::remove_pointer_t<decltype(tag)>;
    constexpr int smem = fast::smem_bytes<scalar_t>();
    auto kernel = fast::igc_fwd_fast_kernel<scalar_t>;
    cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    if (err != cudaSuccess) return err;
    const KernelShape& s = a.s;
    const dim3 grid((s.W_out + paper::kTW - 1) / paper::kTW, (s.H_out + paper::kTH - 1) / paper::kTH, s.N);
    kernel<<<grid, paper::kTileThreads, smem, stream>>>(s, static_cast<const scalar_t*>(a.x), a.xst, a.w1, a.b1,
                                                        a.w2, a.b2, static_cast<const scalar_t*>(a.res), a.rst,
                                                        static_cast<scalar_t*>(a.out), a.ost);
    return cudaGetLastError();
  });
}

cudaError_t launch_forward_general(const ForwardArgs& a, cudaStream_t stream) {
  const KernelShape& s = a.s;
  const int P = general_forward_pixels_per_block(s.C_out);
  if (P == 0) return cudaErrorInvalidValue;  // the host checks this first, with a clear message
  const int64_t num_tiles = (s.total_pix + P - 1) / P;
  const int grid = static_cast<int>(std::min<int64_t>(num_tiles, INT_MAX));
  return dispatch_dtype(a.dtype, [&](auto* tag) {
    using scalar_t = std::remove_pointer_t<decltype(tag)>;
    igc_fwd_general_kernel<scalar_t><<<grid, kGeneralThreads, s.C_out * P * 4, stream>>>(
        s, P, num_tiles, static_cast<const scalar_t*>(a.x), a.xst, a.w1, a.b1, a.w2, a.b2,
        static_cast<const scalar_t*>(a.res), a.rst, static_cast<scalar_t*>(a.out), a.ost);
    return cudaGetLastError();
  });
}
#endif  // IGC_CUDA_EMULATION

}  // namespace cuda
}  // namespace igc
