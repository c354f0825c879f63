// The CPU implementations of the op schemas (csrc/igc_kernels.cpp): argument checks, then the
// fused kernels of forward.cpp and backward.cpp (their shared scheme: layer.h).
#include <torch/library.h>

#include <array>
#include <tuple>

#include "layer.h"

namespace igc {
namespace cpu {
namespace {

Tensor igc_conv_cpu(const Tensor& x, const Tensor& w1, const c10::optional<Tensor>& b1, const Tensor& w2,
                    const c10::optional<Tensor>& b2, const c10::optional<Tensor>& residual, int64_t groups,
                    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, bool shuffle,
                    int64_t activation) {
  const IGCConvParams p =
      make_params(x, w1, b1, w2, b2, residual, groups, stride, padding, dilation, shuffle, activation);
  return forward(p, x, w1, b1, w2, b2, residual);
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> igc_conv_backward_cpu(
    const Tensor& grad_out, const Tensor& x, const Tensor& w1, const c10::optional<Tensor>& b1, const Tensor& w2,
    const c10::optional<Tensor>& out, int64_t groups, at::IntArrayRef stride, at::IntArrayRef padding,
    at::IntArrayRef dilation, bool shuffle, int64_t activation, std::array<bool, 5> output_mask) {
  const IGCConvParams p =
      make_params(x, w1, b1, w2, c10::nullopt, c10::nullopt, groups, stride, padding, dilation, shuffle, activation);
  check_backward_args(p, grad_out, out, x);
  return backward(p, grad_out, x, w1, b1, w2, out, output_mask);
}

}  // namespace

TORCH_LIBRARY_IMPL(igc_kernels, CPU, m) {
  m.impl("igc_conv", &igc_conv_cpu);
  m.impl("igc_conv_backward", &igc_conv_backward_cpu);
}

}  // namespace cpu
}  // namespace igc

// 1 when at::parallel_for in this library can use several threads (built with OpenMP where torch
// uses OpenMP), 0 when the build flags make the CPU kernels single-threaded (tests check this).
extern "C" __attribute__((visibility("default"))) int igc_kernels_cpu_multithreaded(void) {
  return IGC_CPU_MULTITHREADED;
}

