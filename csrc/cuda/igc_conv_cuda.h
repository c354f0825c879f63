// CUDA implementation of the fused IGC op: launchers (defined in igc_conv_kernel.cu and
// igc_conv_backward_kernel.cu) and the small helpers their kernels share.
//
// Conventions of every kernel here:
// - activations (x, residual, out, grad_out, grad_x) are read and written through their strides, so
//   NCHW, channels_last and non-contiguous tensors all work; the output follows x's memory format.
// - weights and biases are converted once per call to contiguous fp32 (they are tiny), and every
//   sum is accumulated in fp32, whatever the activation dtype (fp32, fp16 or bf16).
// - channel maps (interleave, output shuffle) are index arithmetic, never copies.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <array>
#include <cstdint>
#include <tuple>

#include "igc_conv.h"

namespace igc {
namespace cuda {

// The activation dtypes the kernels compute (fp32 accumulation in all three). Few instantiations
// keep the build short.
#define IGC_DISPATCH_CUDA_TYPES(TYPE, NAME, ...)                      \
  AT_DISPATCH_SWITCH(TYPE, NAME, AT_DISPATCH_CASE(at::kFloat, __VA_ARGS__) \
                                     AT_DISPATCH_CASE(at::kHalf, __VA_ARGS__) \
                                     AT_DISPATCH_CASE(at::kBFloat16, __VA_ARGS__))

// Element strides of a 4-D tensor in logical (N, C, H, W) order.
struct Strides4 {
  int64_t n = 0, c = 0, h = 0, w = 0;
};

inline Strides4 strides_of(const at::Tensor& t) {
  return Strides4{t.stride(0), t.stride(1), t.stride(2), t.stride(3)};
}

// Sizes and flags every kernel needs, in plain ints (IGCConvParams minus the host-only parts).
struct KernelShape {
  int N, C_in, H, W, C_out, H_out, W_out;
  int L, M_in, M, kH, kW, sH, sW, pH, pW, dH, dW;
  bool shuffle, relu;
  int64_t total_pix;  // N * H_out * W_out
};

inline KernelShape kernel_shape(const IGCConvParams& p) {
  KernelShape s;
  s.N = static_cast<int>(p.N);
  s.C_in = static_cast<int>(p.C_in);
  s.H = static_cast<int>(p.H);
  s.W = static_cast<int>(p.W);
  s.C_out = static_cast<int>(p.C_out);
  s.H_out = static_cast<int>(p.H_out);
  s.W_out = static_cast<int>(p.W_out);
  s.L = static_cast<int>(p.L);
  s.M_in = static_cast<int>(p.M_in);
  s.M = static_cast<int>(p.M);
  s.kH = static_cast<int>(p.kH);
  s.kW = static_cast<int>(p.kW);
  s.sH = static_cast<int>(p.sH);
  s.sW = static_cast<int>(p.sW);
  s.pH = static_cast<int>(p.pH);
  s.pW = static_cast<int>(p.pW);
  s.dH = static_cast<int>(p.dH);
  s.dW = static_cast<int>(p.dW);
  s.shuffle = p.shuffle;
  s.relu = p.activation == kActRelu;
  s.total_pix = p.N * p.H_out * p.W_out;
  return s;
}

// Checks shared by both launchers: a CUDA tensor of a dtype the kernels compute, sizes that fit
// the kernels' 32-bit per-dimension indices (offsets are 64-bit).
void check_cuda_supported(const IGCConvParams& p, const at::Tensor& x);

at::Tensor igc_conv_cuda(const at::Tensor& x, const at::Tensor& w1, const c10::optional<at::Tensor>& b1,
                         const at::Tensor& w2, const c10::optional<at::Tensor>& b2,
                         const c10::optional<at::Tensor>& residual, int64_t groups, at::IntArrayRef stride,
                         at::IntArrayRef padding, at::IntArrayRef dilation, bool shuffle, int64_t activation);

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> igc_conv_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& w1, const c10::optional<at::Tensor>& b1,
    const at::Tensor& w2, const c10::optional<at::Tensor>& out, int64_t groups, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, bool shuffle, int64_t activation,
    std::array<bool, 5> output_mask);

#ifdef __CUDACC__
// c10::Half and c10::BFloat16 convert to and from float in device code.
template <typename T>
__device__ __forceinline__ float to_f(T v) {
  return static_cast<float>(v);
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
#endif

}  // namespace cuda
}  // namespace igc
