// Fused IGC forward on CUDA (DESIGN section 2) and the CUDA registration of both ops.
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
// 0.17 ms (80% of it: 0.21 ms). Doing 23.9 GFLOP in 0.2 ms needs ~120 TFLOP/s, more than the
// H200's fp32 CUDA-core FMA peak (~67 TFLOP/s): with fp32 accumulation on CUDA cores (this
// kernel) the layer is compute-bound at >= 0.36 ms however well memory is handled. Reaching the
// HBM floor needs the MACs on tensor cores: the secondary as [pixels x 24] x [24 x 24] mma per
// group (fp16/bf16 in, fp32 accumulate) and the primary as block-diagonal mma over pairs of groups.
// That is the next step once it can be measured on the device; this kernel is the correct,
// layout-aware baseline that step will be checked against.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <climits>
#include <cstdlib>
#include <cstring>

#include "igc_conv_cuda.h"

namespace igc {
namespace cuda {
namespace {

// ---------------------------------------------------------------------------------------------
// Fast path: the paper's layer.
namespace fast {
constexpr int kL = 24, kM = 4, kMi = 4, kC = kL * kM;  // primary groups, members, inputs per group
constexpr int kTH = 8, kTW = 32, kThreads = kTH * kTW;   // output tile, one pixel per thread
constexpr int kIH = kTH + 2, kIW = kTW + 2;              // input tile with the 3x3 halo
constexpr int kGroupsPerChunk = 8, kChunkC = kGroupsPerChunk * kMi;  // input channels staged at once
constexpr int kXS = kChunkC + 1;  // per-pixel stride of the staged input: odd, so no bank conflicts

// Shared memory: w1 as float4 over the 4 members m (one broadcast load feeds 4 FMAs), w2, biases,
// then one region used first for the input tile and then for the output stage.
constexpr int kOffW2 = kL * kMi * 9 * 16;
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
  constexpr int x_bytes = kIH * kIW * kXS * 4;
  constexpr int stage_bytes = kThreads * stage_stride<scalar_t>() * static_cast<int>(sizeof(scalar_t));
  return kOffRegion + (x_bytes > stage_bytes ? x_bytes : stage_bytes);
}

bool applies(const IGCConvParams& p) {
  return p.kH == 3 && p.kW == 3 && p.sH == 1 && p.sW == 1 && p.dH == 1 && p.dW == 1 && p.L == kL && p.M == kM &&
         p.M_in == kMi && p.N <= 65535 && (p.H_out + kTH - 1) / kTH <= 65535;
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads, 2)
    igc_fwd_fast_kernel(KernelShape s, const scalar_t* __restrict__ x, Strides4 xst, const float* __restrict__ w1,
                        const float* __restrict__ b1, const float* __restrict__ w2, const float* __restrict__ b2,
                        const scalar_t* __restrict__ res, Strides4 rst, scalar_t* __restrict__ out, Strides4 ost) {
  extern __shared__ __align__(16) unsigned char smem[];
  float4* w1s = reinterpret_cast<float4*>(smem);
  float* w2s = reinterpret_cast<float*>(smem + kOffW2);
  float* b1s = reinterpret_cast<float*>(smem + kOffB1);
  float* b2s = reinterpret_cast<float*>(smem + kOffB2);
  float* xs = reinterpret_cast<float*>(smem + kOffRegion);
  scalar_t* stage = reinterpret_cast<scalar_t*>(smem + kOffRegion);

  const int tid = threadIdx.x;
  const int n = blockIdx.z, oh0 = blockIdx.y * kTH, ow0 = blockIdx.x * kTW;

  // w1[c1, ci, kh, kw] (c1 = l*4 + m) -> w1s[(l*4 + ci)*9 + kh*3 + kw].{m}
  float* w1f = reinterpret_cast<float*>(w1s);
  for (int i = tid; i < kC * kMi * 9; i += kThreads) {
    const int c1 = i / (kMi * 9), r = i - c1 * (kMi * 9);
    w1f[((c1 / kM) * (kMi * 9) + r) * 4 + (c1 % kM)] = w1[i];
  }
  for (int i = tid; i < kC * kL; i += kThreads) w2s[i] = w2[i];  // [m][j][l], as w2 is stored
  for (int i = tid; i < kC; i += kThreads) {
    b1s[i] = b1 != nullptr ? b1[i] : 0.f;
    b2s[i] = b2 != nullptr ? b2[i] : 0.f;
  }

  const int ty = tid / kTW, tx = tid - ty * kTW;
  const bool x_cl = xst.c == 1 && s.C_in > 1;  // channels_last: load channel-fastest to coalesce
  float y1[kC];                                 // this pixel's primary outputs, channel l*4 + m

#pragma unroll
  for (int chunk = 0; chunk < kL / kGroupsPerChunk; ++chunk) {
    __syncthreads();  // the previous chunk's readers are done with xs
    for (int i = tid; i < kIH * kIW * kChunkC; i += kThreads) {
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
      float v = 0.f;  // zero padding
      if (ih >= 0 && ih < s.H && iw >= 0 && iw < s.W) v = to_f(x[offset4(xst, n, chunk * kChunkC + c, ih, iw)]);
      xs[(r * kIW + col) * kXS + c] = v;
    }
    __syncthreads();
#pragma unroll
    for (int g = 0; g < kGroupsPerChunk; ++g) {
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
      y1[l * kM + 0] = a0;
      y1[l * kM + 1] = a1;
      y1[l * kM + 2] = a2;
      y1[l * kM + 3] = a3;
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
      stage[tid * SS + o] = static_cast<scalar_t>(acc);
    }
  }
  __syncthreads();

  // Epilogue with coalesced stores: consecutive threads take consecutive channels of a pixel
  // (channels_last) or consecutive pixels of a row (NCHW).
  const bool o_cl = ost.c == 1;
  for (int i = tid; i < kThreads * kC; i += kThreads) {
    int o, pix;
    if (o_cl) {
      o = i % kC;
      pix = i / kC;
    } else {
      pix = i % kThreads;
      o = i / kThreads;
    }
    const int oh = oh0 + pix / kTW, ow = ow0 + pix % kTW;
    if (oh < s.H_out && ow < s.W_out) {
      float v = to_f(stage[pix * SS + o]);
      if (res != nullptr) v += to_f(res[offset4(rst, n, o, oh, ow)]);
      if (s.relu) v = relu_f(v);
      out[offset4(ost, n, o, oh, ow)] = static_cast<scalar_t>(v);
    }
  }
}
}  // namespace fast

// ---------------------------------------------------------------------------------------------
// General path: every shape.
constexpr int kGeneralThreads = 256;
constexpr int kSmemBudget = 48 * 1024;  // no opt-in needed on any architecture

template <typename scalar_t>
__global__ void __launch_bounds__(kGeneralThreads)
    igc_fwd_general_kernel(KernelShape s, int P, int64_t num_tiles, const scalar_t* __restrict__ x, Strides4 xst,
                           const float* __restrict__ w1, const float* __restrict__ b1, const float* __restrict__ w2,
                           const float* __restrict__ b2, const scalar_t* __restrict__ res, Strides4 rst,
                           scalar_t* __restrict__ out, Strides4 ost) {
  extern __shared__ __align__(16) unsigned char smem[];
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
      out[offset4(ost, q.n, o, q.oh, q.ow)] = static_cast<scalar_t>(acc);
    }
    __syncthreads();  // y1s is rewritten by the next tile
  }
}

// IGC_KERNELS_CUDA_PATH=general forces the general kernel (tests and benchmarks compare the two).
bool force_general() {
  const char* v = std::getenv("IGC_KERNELS_CUDA_PATH");
  return v != nullptr && std::strcmp(v, "general") == 0;
}

at::Tensor to_float_contig(const at::Tensor& t) { return t.contiguous().to(at::kFloat); }

}  // namespace

void check_cuda_supported(const IGCConvParams& p, const at::Tensor& x) {
  TORCH_CHECK(x.is_cuda(), "igc_conv (CUDA): x must be a CUDA tensor, got one on ", x.device());
  const auto st = x.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kHalf || st == at::kBFloat16,
              "igc_conv (CUDA): x must be float32, float16 or bfloat16, got ", st);
  for (int64_t v : {p.N, p.C_in, p.H, p.W, p.C_out, p.H_out, p.W_out}) {
    TORCH_CHECK(v <= INT_MAX, "igc_conv (CUDA): every dimension of x and the output must be < 2^31, got ", v);
  }
}

at::Tensor igc_conv_cuda(const at::Tensor& x, const at::Tensor& w1, const c10::optional<at::Tensor>& b1,
                         const at::Tensor& w2, const c10::optional<at::Tensor>& b2,
                         const c10::optional<at::Tensor>& residual, int64_t groups, at::IntArrayRef stride,
                         at::IntArrayRef padding, at::IntArrayRef dilation, bool shuffle, int64_t activation) {
  const IGCConvParams p =
      make_params(x, w1, b1, w2, b2, residual, groups, stride, padding, dilation, shuffle, activation);
  check_cuda_supported(p, x);
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor out =
      at::empty({p.N, p.C_out, p.H_out, p.W_out}, x.options().memory_format(x.suggest_memory_format()));
  if (out.numel() == 0) return out;

  const KernelShape s = kernel_shape(p);
  const at::Tensor w1f = to_float_contig(w1), w2f = to_float_contig(w2);
  const at::Tensor b1f = b1.has_value() ? to_float_contig(*b1) : at::Tensor();
  const at::Tensor b2f = b2.has_value() ? to_float_contig(*b2) : at::Tensor();
  const float* b1p = b1f.defined() ? b1f.data_ptr<float>() : nullptr;
  const float* b2p = b2f.defined() ? b2f.data_ptr<float>() : nullptr;
  const Strides4 xst = strides_of(x), ost = strides_of(out);
  const Strides4 rst = residual.has_value() ? strides_of(*residual) : Strides4{};
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const auto* props = at::cuda::getCurrentDeviceProperties();

  IGC_DISPATCH_CUDA_TYPES(x.scalar_type(), "igc_conv_cuda", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* rp = residual.has_value() ? residual->const_data_ptr<scalar_t>() : nullptr;
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    constexpr int fast_smem = fast::smem_bytes<scalar_t>();
    if (fast::applies(p) && !force_general() && static_cast<size_t>(fast_smem) <= props->sharedMemPerBlockOptin) {
      auto kernel = fast::igc_fwd_fast_kernel<scalar_t>;
      C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, fast_smem));
      const dim3 grid((s.W_out + fast::kTW - 1) / fast::kTW, (s.H_out + fast::kTH - 1) / fast::kTH, s.N);
      kernel<<<grid, fast::kThreads, fast_smem, stream>>>(s, xp, xst, w1f.data_ptr<float>(), b1p,
                                                           w2f.data_ptr<float>(), b2p, rp, rst, op, ost);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      return;
    }
    // P output pixels per block: as many as fit y1 of all channels into the static budget.
    TORCH_CHECK(s.C_out * 4 <= kSmemBudget, "igc_conv (CUDA): w1.shape[0] (L*M) must be <= ", kSmemBudget / 4,
                " for the CUDA kernel, got ", s.C_out);
    int P = 64;
    while (P > 1 && s.C_out * P * 4 > kSmemBudget) P /= 2;
    const int64_t num_tiles = (s.total_pix + P - 1) / P;
    const int grid = static_cast<int>(std::min<int64_t>(num_tiles, INT_MAX));
    igc_fwd_general_kernel<scalar_t><<<grid, kGeneralThreads, s.C_out * P * 4, stream>>>(
        s, P, num_tiles, xp, xst, w1f.data_ptr<float>(), b1p, w2f.data_ptr<float>(), b2p, rp, rst, op, ost);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace cuda
}  // namespace igc

TORCH_LIBRARY_IMPL(igc_kernels, CUDA, m) {
  m.impl("igc_conv", &igc::cuda::igc_conv_cuda);
  m.impl("igc_conv_backward", &igc::cuda::igc_conv_backward_cuda);
}
