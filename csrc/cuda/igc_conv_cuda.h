// Interface between the host side of the CUDA backend (igc_conv_cuda.cpp: argument checks, tensor
// allocation, dtype and path choice, op registration) and its kernels (igc_conv_kernel.cu,
// igc_conv_backward_kernel.cu). Plain structs and raw pointers only: the .cu files include no
// ATen headers, which keeps nvcc's per-architecture passes short.
//
// Conventions of every kernel:
// - activations (x, residual, out, grad_out, grad_x) are read and written through their strides, so
//   NCHW, channels_last and non-contiguous tensors all work; the output follows x's memory format.
// - weights and biases arrive as contiguous fp32 (they are tiny; the host converts them once per
//   call) and every sum is accumulated in fp32, whatever the activation dtype (fp32, fp16, bf16).
// - channel maps (interleave, output shuffle) are index arithmetic, never copies.
// - every launch is followed by a launch check; the launch functions return the first error.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace igc {
namespace cuda {

enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

// Element strides of a 4-D tensor in logical (N, C, H, W) order.
struct Strides4 {
  int64_t n = 0, c = 0, h = 0, w = 0;
};

// Sizes and flags of one call (the host checks every size fits in int).
struct KernelShape {
  int N, C_in, H, W, C_out, H_out, W_out;
  int L, M_in, M, kH, kW, sH, sW, pH, pW, dH, dW;
  bool shuffle, relu;
  int64_t total_pix;  // N * H_out * W_out
};

struct ForwardArgs {
  KernelShape s;
  DType dtype;
  const void* x;
  Strides4 xst;
  const float *w1, *b1, *w2, *b2;  // b1, b2 may be null
  const void* res;                 // may be null
  Strides4 rst;
  void* out;
  Strides4 ost;
};

// The paper's layer (k=3, stride 1, dilation 1, L=24, M=M_in=4) has its own kernel.
bool fast_forward_applies(const KernelShape& s);
int fast_forward_smem_bytes(DType dtype);  // dynamic shared memory it needs (opt-in above 48 KiB)
cudaError_t launch_forward_fast(const ForwardArgs& a, cudaStream_t stream);

// Every shape. P output pixels per block, C_out * P * 4 bytes of shared memory.
constexpr int kSmemBudget = 48 * 1024;  // static budget of the general kernels: no opt-in needed
int general_forward_pixels_per_block(int C_out);  // 0 when C_out is too large
cudaError_t launch_forward_general(const ForwardArgs& a, cudaStream_t stream);

// Layout of one row of the backward's partial sums: [grad_w2 | grad_b2 | grad_w1 | grad_b1]; an
// unrequested gradient has an empty segment.
struct Segments {
  int end_w2, end_b2, end_w1, K;  // K = end of grad_b1
  bool need_y1;                   // grad_w2 needs the recomputed primary output
  bool need_gy1;                  // grad_x, grad_w1 and grad_b1 need the gradient of y1
  bool w1_in_mid;                 // false on the fast path: igc_bwd_fast_w1_kernel fills grad_w1
};

struct BackwardArgs {
  KernelShape s;
  DType dtype;
  Segments seg;
  int P;             // output pixels per tile (backward_pixels_per_tile)
  int64_t num_tiles;
  int rows;          // blocks of the first kernel = rows of the partials buffer
  const void* gout;
  Strides4 gst;
  const void* out;   // forward output, for the ReLU mask; may be null without ReLU
  Strides4 ost;
  const void* x;
  Strides4 xst;
  const float *w1, *b1, *w2;  // b1 may be null
  bool fast;                  // the paper's layer: y1 and grad_w1 by 2-D tile kernels (fast_backward_applies)
  float* y1ws;                // [C_mid, total_pix] fp32 recomputed y1; fast path with grad_w2 only, else null
  float* ws;                  // [C_mid, total_pix] fp32 gradient of y1; for grad_x (and grad_w1 when fast)
  float* partial;             // [rows, K] zero-initialised; null when K == 0
  void *gw2, *gb2, *gw1, *gb1;  // contiguous outputs in the activation dtype; null if unrequested
  void* gx;                     // null if unrequested
  Strides4 gxst;
  int64_t gx_numel;
};

int backward_pixels_per_tile(int C_out);  // 0 when C_out is too large
// The paper's layer (same shapes as the fast forward): y1 and grad_w1 come from 2-D tile kernels
// that stage the input tile in shared memory instead of per-thread gathers.
bool fast_backward_applies(const KernelShape& s);
int fast_backward_smem_bytes();
cudaError_t launch_backward(const BackwardArgs& a, cudaStream_t stream);

}  // namespace cuda
}  // namespace igc
