// Host side of the CUDA backend: argument checks, output allocation, the choice of kernel, and
// the CUDA registration of both ops. The kernels are in igc_conv_kernel.cu (forward) and
// igc_conv_backward_kernel.cu (backward); igc_conv_cuda.h is the interface between them.
//
// Launcher checklist (torchvision's): device guard, current stream, early return on empty input,
// dtype dispatch with fp32 accumulation, a launch check after every launch (the launch functions
// return the first CUDA error, raised here with C10_CUDA_CHECK).
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <tuple>

#include "igc_conv.h"
#include "igc_conv_cuda.h"

namespace igc {
namespace cuda {
namespace {

// A CUDA tensor of a dtype the kernels compute, with sizes that fit their 32-bit per-dimension
// indices (offsets are 64-bit).
DType check_supported(const IGCConvParams& p, const at::Tensor& x) {
  TORCH_CHECK(x.is_cuda(), "igc_conv (CUDA): x must be a CUDA tensor, got one on ", x.device());
  for (int64_t v : {p.N, p.C_in, p.H, p.W, p.C_out, p.H_out, p.W_out}) {
    TORCH_CHECK(v <= INT_MAX, "igc_conv (CUDA): every dimension of x and the output must be < 2^31, got ", v);
  }
  const auto st = x.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kHalf || st == at::kBFloat16,
              "igc_conv (CUDA): x must be float32, float16 or bfloat16, got ", st);
  return st == at::kFloat ? DType::kFloat32 : st == at::kHalf ? DType::kFloat16 : DType::kBFloat16;
}

KernelShape kernel_shape(const IGCConvParams& p) {
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

Strides4 strides_of(const at::Tensor& t) { return Strides4{t.stride(0), t.stride(1), t.stride(2), t.stride(3)}; }

// Weights and biases are tiny: one fp32 contiguous copy per call (none when already so).
at::Tensor to_float_contig(const at::Tensor& t) { return t.contiguous().to(at::kFloat); }

const float* float_ptr_or_null(const at::Tensor& t) { return t.defined() ? t.data_ptr<float>() : nullptr; }

void* ptr_or_null(at::Tensor& t) { return t.numel() > 0 ? t.data_ptr() : nullptr; }

// IGC_KERNELS_CUDA_PATH=general forces the general kernels, forward and backward (tests and
// benchmarks compare them with the fast ones).
bool force_general() {
  const char* v = std::getenv("IGC_KERNELS_CUDA_PATH");
  return v != nullptr && std::strcmp(v, "general") == 0;
}

}  // namespace

at::Tensor igc_conv_cuda(const at::Tensor& x, const at::Tensor& w1, const c10::optional<at::Tensor>& b1,
                         const at::Tensor& w2, const c10::optional<at::Tensor>& b2,
                         const c10::optional<at::Tensor>& residual, int64_t groups, at::IntArrayRef stride,
                         at::IntArrayRef padding, at::IntArrayRef dilation, bool shuffle, int64_t activation) {
  const IGCConvParams p =
      make_params(x, w1, b1, w2, b2, residual, groups, stride, padding, dilation, shuffle, activation);
  const DType dtype = check_supported(p, x);
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor out =
      at::empty({p.N, p.C_out, p.H_out, p.W_out}, x.options().memory_format(x.suggest_memory_format()));
  if (out.numel() == 0) return out;

  ForwardArgs a;
  a.s = kernel_shape(p);
  a.dtype = dtype;
  const at::Tensor w1f = to_float_contig(w1), w2f = to_float_contig(w2);
  const at::Tensor b1f = b1.has_value() ? to_float_contig(*b1) : at::Tensor();
  const at::Tensor b2f = b2.has_value() ? to_float_contig(*b2) : at::Tensor();
  a.x = x.data_ptr();
  a.xst = strides_of(x);
  a.w1 = w1f.data_ptr<float>();
  a.w2 = w2f.data_ptr<float>();
  a.b1 = float_ptr_or_null(b1f);
  a.b2 = float_ptr_or_null(b2f);
  a.res = residual.has_value() ? residual->data_ptr() : nullptr;
  a.rst = residual.has_value() ? strides_of(*residual) : Strides4{};
  a.out = out.data_ptr();
  a.ost = strides_of(out);
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();

  const auto* props = at::cuda::getCurrentDeviceProperties();
  if (fast_forward_applies(a.s) && !force_general() &&
      static_cast<size_t>(fast_forward_smem_bytes(dtype)) <= props->sharedMemPerBlockOptin) {
    C10_CUDA_CHECK(launch_forward_fast(a, stream));
    return out;
  }
  TORCH_CHECK(general_forward_pixels_per_block(a.s.C_out) > 0, "igc_conv (CUDA): w1.shape[0] (L*M) must be <= ",
              kSmemBudget / 4, " for the CUDA kernel, got ", p.C_out);
  C10_CUDA_CHECK(launch_forward_general(a, stream));
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> igc_conv_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& w1, const c10::optional<at::Tensor>& b1,
    const at::Tensor& w2, const c10::optional<at::Tensor>& out, int64_t groups, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, bool shuffle, int64_t activation,
    std::array<bool, 5> output_mask) {
  const IGCConvParams p = make_params(x, w1, b1, w2, c10::nullopt, c10::nullopt, groups, stride, padding, dilation,
                                      shuffle, activation);
  check_backward_args(p, grad_out, out, x);
  const DType dtype = check_supported(p, x);
  const c10::cuda::CUDAGuard guard(x.device());

  const bool need_gx = output_mask[0], need_w1 = output_mask[1], need_b1 = output_mask[2];
  const bool need_w2 = output_mask[3], need_b2 = output_mask[4];
  // Unrequested gradients: distinct 0-element tensors (outputs of an op must not alias).
  const auto empty = [&] { return at::empty({0}, x.options()); };
  const auto contig = at::MemoryFormat::Contiguous;
  at::Tensor gx = need_gx ? at::empty(x.sizes(), x.options().memory_format(x.suggest_memory_format())) : empty();
  at::Tensor gw1 = need_w1 ? at::empty(w1.sizes(), w1.options().memory_format(contig)) : empty();
  at::Tensor gb1 = need_b1 ? at::empty({p.C_out}, x.options()) : empty();
  at::Tensor gw2 = need_w2 ? at::empty(w2.sizes(), w2.options().memory_format(contig)) : empty();
  at::Tensor gb2 = need_b2 ? at::empty({p.C_out}, x.options()) : empty();
  const auto result = [&] { return std::make_tuple(gx, gw1, gb1, gw2, gb2); };
  if (!(need_gx || need_w1 || need_b1 || need_w2 || need_b2)) return result();

  BackwardArgs a;
  a.s = kernel_shape(p);
  a.dtype = dtype;
  if (a.s.total_pix == 0) {  // empty batch: every gradient is a sum over nothing
    for (at::Tensor* t : {&gx, &gw1, &gb1, &gw2, &gb2}) {
      if (t->numel() > 0) t->zero_();
    }
    return result();
  }

  TORCH_CHECK(2 * p.C_out * (p.L + 1) + w1.numel() < INT_MAX,
              "igc_conv_backward (CUDA): too many weights for the CUDA kernel (", w1.numel(), " in w1)");
  Segments& seg = a.seg;
  seg.end_w2 = need_w2 ? static_cast<int>(p.C_out * p.L) : 0;
  seg.end_b2 = seg.end_w2 + (need_b2 ? static_cast<int>(p.C_out) : 0);
  seg.end_w1 = seg.end_b2 + (need_w1 ? static_cast<int>(w1.numel()) : 0);
  seg.K = seg.end_w1 + (need_b1 ? static_cast<int>(p.C_out) : 0);
  seg.need_y1 = need_w2;
  seg.need_gy1 = need_gx || need_w1 || need_b1;
  const auto* props = at::cuda::getCurrentDeviceProperties();
  a.fast = fast_backward_applies(a.s) && !force_general() &&
           static_cast<size_t>(fast_backward_smem_bytes()) <= props->sharedMemPerBlockOptin;
  seg.w1_in_mid = !a.fast;

  a.P = backward_pixels_per_tile(a.s.C_out);
  TORCH_CHECK(a.P > 0, "igc_conv_backward (CUDA): w1.shape[0] (L*M) is too large for the CUDA kernel, got ",
              p.C_out);
  a.num_tiles = (a.s.total_pix + a.P - 1) / a.P;
  // A fixed number of blocks (a few per SM) walks all tiles, which keeps the partials buffer small.
  a.rows = static_cast<int>(std::min<int64_t>(a.num_tiles, 4 * static_cast<int64_t>(props->multiProcessorCount)));

  const at::Tensor w1f = to_float_contig(w1), w2f = to_float_contig(w2);
  const at::Tensor b1f = b1.has_value() ? to_float_contig(*b1) : at::Tensor();
  const auto fopts = x.options().dtype(at::kFloat);
  at::Tensor partial = seg.K > 0 ? at::zeros({a.rows, seg.K}, fopts) : at::Tensor();
  // fp32 workspaces [C_mid, pixels]: the gradient of y1 (for grad_x, and grad_w1 on the fast path)
  // and, on the fast path, the recomputed y1 for grad_w2.
  at::Tensor ws = (need_gx || (a.fast && need_w1)) ? at::empty({p.C_out, a.s.total_pix}, fopts) : at::Tensor();
  at::Tensor y1ws = (a.fast && need_w2) ? at::empty({p.C_out, a.s.total_pix}, fopts) : at::Tensor();
  a.gout = grad_out.data_ptr();
  a.gst = strides_of(grad_out);
  a.out = out.has_value() ? out->data_ptr() : nullptr;
  a.ost = out.has_value() ? strides_of(*out) : Strides4{};
  a.x = x.data_ptr();
  a.xst = strides_of(x);
  a.w1 = w1f.data_ptr<float>();
  a.w2 = w2f.data_ptr<float>();
  a.b1 = float_ptr_or_null(b1f);
  a.ws = ws.defined() ? ws.data_ptr<float>() : nullptr;
  a.y1ws = y1ws.defined() ? y1ws.data_ptr<float>() : nullptr;
  a.partial = partial.defined() ? partial.data_ptr<float>() : nullptr;
  a.gw2 = ptr_or_null(gw2);
  a.gb2 = ptr_or_null(gb2);
  a.gw1 = ptr_or_null(gw1);
  a.gb1 = ptr_or_null(gb1);
  a.gx = need_gx ? ptr_or_null(gx) : nullptr;
  a.gxst = need_gx ? strides_of(gx) : Strides4{};
  a.gx_numel = need_gx ? gx.numel() : 0;
  C10_CUDA_CHECK(launch_backward(a, at::cuda::getCurrentCUDAStream()));
  return result();
}

}  // namespace cuda
}  // namespace igc

TORCH_LIBRARY_IMPL(igc_kernels, CUDA, m) {
  m.impl("igc_conv", &igc::cuda::igc_conv_cuda);
  m.impl("igc_conv_backward", &igc::cuda::igc_conv_backward_cuda);
}
