// Device helpers shared by the forward and backward kernels.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "igc_conv_cuda.h"

// Dynamic shared memory of a kernel. Under IGC_CUDA_EMULATION the kernels are compiled as plain
// C++ and run on the CPU (emulation/cuda_emulation.h: one thread per CUDA thread, a barrier for
// __syncthreads), which lets machines without a GPU execute and test them.
#ifdef IGC_CUDA_EMULATION
#include "emulation/cuda_emulation.h"
#define IGC_DYNAMIC_SMEM(name) unsigned char* name = ::igc_emu::shared_memory()
#else
#define IGC_DYNAMIC_SMEM(name) extern __shared__ __align__(16) unsigned char name[]
#endif

namespace igc {
namespace cuda {

// Conversions of the three activation dtypes to and from the fp32 the kernels compute in.
__device__ __forceinline__ float to_f(float v) { return v; }
__device__ __forceinline__ float to_f(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_f(float v);
template <>
__device__ __forceinline__ float from_f<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ __half from_f<__half>(float v) {
  return __float2half_rn(v);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

__device__ __forceinline__ int64_t offset4(const Strides4& s, int64_t n, int64_t c, int64_t h, int64_t w) {
  return n * s.n + c * s.c + h * s.h + w * s.w;
}

// ReLU that keeps NaN (as torch.relu does): NaN < 0 is false.
__device__ __forceinline__ float relu_f(float v) { return v < 0.f ? 0.f : v; }

// Secondary output channel c2 = m * L + j lands in layer-output channel out_channel (DESIGN 2.4).
__device__ __forceinline__ int out_channel(const KernelShape& s, int m, int j) {
  return s.shuffle ? j * s.M + m : m * s.L + j;
}

// Output pixel index (over N * H_out * W_out, row-major) -> (n, oh, ow).
struct PixelPos {
  int n, oh, ow;
};

__device__ __forceinline__ PixelPos decode_pixel(const KernelShape& s, int64_t pix) {
  const int64_t hw = static_cast<int64_t>(s.H_out) * s.W_out;
  const int64_t n = pix / hw;
  const int64_t r = pix - n * hw;
  const int64_t oh = r / s.W_out;
  return PixelPos{static_cast<int>(n), static_cast<int>(oh), static_cast<int>(r - oh * s.W_out)};
}

// Primary conv output y1[n, c1, oh, ow] (bias included), any kernel size, stride, padding and
// dilation: the general path's building block, also the backward's recompute of y1.
template <typename scalar_t>
__device__ float primary_at(const KernelShape& s, const scalar_t* __restrict__ x, const Strides4& xst,
                            const float* __restrict__ w1, const float* __restrict__ b1, int n, int c1, int oh,
                            int ow) {
  const int l = c1 / s.M;
  float acc = b1 != nullptr ? b1[c1] : 0.f;
  const float* w = w1 + static_cast<int64_t>(c1) * s.M_in * s.kH * s.kW;
  for (int ci = 0; ci < s.M_in; ++ci) {
    const int64_t xc = static_cast<int64_t>(l) * s.M_in + ci;
    for (int kh = 0; kh < s.kH; ++kh) {
      const int ih = oh * s.sH - s.pH + kh * s.dH;
      if (ih < 0 || ih >= s.H) continue;
      for (int kw = 0; kw < s.kW; ++kw) {
        const int iw = ow * s.sW - s.pW + kw * s.dW;
        if (iw < 0 || iw >= s.W) continue;
        acc = fmaf(w[(ci * s.kH + kh) * s.kW + kw], to_f(x[offset4(xst, n, xc, ih, iw)]), acc);
      }
    }
  }
  return acc;
}

// Runs f with the CUDA element type of `dtype` as a (null) pointer argument.
template <typename F>
cudaError_t dispatch_dtype(DType dtype, F&& f) {
  switch (dtype) {
    case DType::kFloat32:
      return f(static_cast<float*>(nullptr));
    case DType::kFloat16:
      return f(static_cast<__half*>(nullptr));
    case DType::kBFloat16:
      return f(static_cast<__nv_bfloat16*>(nullptr));
  }
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace igc
