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

Tensor igc_conv_chain_cpu(const Tensor& x, at::TensorList w1, const c10::List<c10::optional<Tensor>>& b1,
                          at::TensorList w2, const c10::List<c10::optional<Tensor>>& b2, int64_t groups,
                          at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, bool shuffle,
                          int64_t activation) {
  const size_t n = w1.size();
  TORCH_CHECK(n >= 1, "igc_conv_chain: w1 must hold at least one layer's weight, got none");
  TORCH_CHECK(w2.size() == n && b1.size() == n && b2.size() == n,
              "igc_conv_chain: w1, b1, w2 and b2 must hold one entry per layer, got ", n, ", ", b1.size(), ", ",
              w2.size(), " and ", b2.size());
  std::vector<IGCConvParams> ps;
  std::vector<c10::optional<Tensor>> bias1, bias2;
  // Each layer's input: x, then a view of x's storage with the previous layer's output sizes
  // (zero strides): the checks read sizes, dtype and device only.
  Tensor xin = x;
  for (size_t k = 0; k < n; ++k) {
    bias1.push_back(b1.get(k));
    bias2.push_back(b2.get(k));
    try {
      ps.push_back(make_params(xin, w1[k], bias1[k], w2[k], bias2[k], c10::nullopt, groups, stride, padding, dilation,
                               shuffle, activation));
    } catch (const c10::Error& e) {
      TORCH_CHECK(false, "igc_conv_chain: layer ", k, ": ", e.what_without_backtrace());
    }
    const IGCConvParams& p = ps.back();
    xin = x.as_strided({p.N, p.C_out, p.H_out, p.W_out}, {0, 0, 0, 0});
  }
  return forward_chain(ps, x, w1, bias1, w2, bias2);
}

}  // namespace

TORCH_LIBRARY_IMPL(igc_kernels, CPU, m) {
  m.impl("igc_conv", &igc_conv_cpu);
  m.impl("igc_conv_chain", &igc_conv_chain_cpu);
  m.impl("igc_conv_backward", &igc_conv_backward_cpu);
}

}  // namespace cpu
}  // namespace igc

// 1 when at::parallel_for in this library can use several threads (built with OpenMP where torch
// uses OpenMP), 0 when the build flags make the CPU kernels single-threaded (tests check this).
extern "C" __attribute__((visibility("default"))) int igc_kernels_cpu_multithreaded(void) {
  return IGC_CPU_MULTITHREADED;
}

