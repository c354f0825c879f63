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

// A chain end (igc_conv_chain's head or tail) applied to `in`, checked as igc_conv checks a layer.
DenseConv chain_end(const char* name, const Tensor& in, const Tensor& w, const c10::optional<Tensor>& b,
                    int64_t activation, const c10::optional<Tensor>& residual, at::IntArrayRef stride,
                    at::IntArrayRef padding, at::IntArrayRef dilation) {
  TORCH_CHECK(w.dim() == 4, "igc_conv_chain: ", name, "_weight must be a 4-D (C_out, C_in, kH, kW) conv weight, got ",
              w.dim(), " dimensions");
  DenseConv d;
  d.w1 = w;
  d.b1 = b;
  d.residual = residual;
  d.w2 = at::ones({w.size(0), 1, 1, 1}, w.options());
  try {
    d.p = make_params(in, w, b, d.w2, c10::nullopt, residual, 1, stride, padding, dilation, false, activation);
  } catch (const c10::Error& e) {
    TORCH_CHECK(false, "igc_conv_chain: ", name, ": ", e.what_without_backtrace());
  }
  return d;
}

Tensor igc_conv_chain_cpu(const Tensor& x, at::TensorList w1, const c10::List<c10::optional<Tensor>>& b1,
                          at::TensorList w2, const c10::List<c10::optional<Tensor>>& b2, int64_t groups,
                          at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, bool shuffle,
                          int64_t activation, const c10::optional<Tensor>& head_weight,
                          const c10::optional<Tensor>& head_bias, int64_t head_activation,
                          const c10::optional<Tensor>& tail_weight, const c10::optional<Tensor>& tail_bias,
                          int64_t tail_activation, const c10::optional<Tensor>& residual, int64_t chain_length) {
  const size_t n = w1.size();
  TORCH_CHECK(chain_length >= 0, "igc_conv_chain: chain_length must be >= 0 (0: all layers in one chain), got ",
              chain_length);
  TORCH_CHECK(n >= 1, "igc_conv_chain: w1 must hold at least one layer's weight, got none");
  TORCH_CHECK(w2.size() == n && b1.size() == n && b2.size() == n,
              "igc_conv_chain: w1, b1, w2 and b2 must hold one entry per layer, got ", n, ", ", b1.size(), ", ",
              w2.size(), " and ", b2.size());
  TORCH_CHECK(head_weight || !head_bias, "igc_conv_chain: head_bias was given without head_weight");
  TORCH_CHECK(tail_weight || !tail_bias, "igc_conv_chain: tail_bias was given without tail_weight");
  TORCH_CHECK(tail_weight || !residual,
              "igc_conv_chain: residual is added by the tail: it was given without tail_weight");
  // Each layer's input: x, then a view of x's storage with the previous layer's output sizes
  // (zero strides): the checks read sizes, dtype and device only.
  auto view_of = [&](const IGCConvParams& p) { return x.as_strided({p.N, p.C_out, p.H_out, p.W_out}, {0, 0, 0, 0}); };
  c10::optional<DenseConv> head, tail;
  Tensor xin = x;
  if (head_weight) {
    head = chain_end("head", x, *head_weight, head_bias, head_activation, c10::nullopt, stride, padding, dilation);
    xin = view_of(head->p);
  }
  std::vector<IGCConvParams> ps;
  std::vector<c10::optional<Tensor>> bias1, bias2;
  for (size_t k = 0; k < n; ++k) {
    bias1.push_back(b1.get(k));
    bias2.push_back(b2.get(k));
    try {
      ps.push_back(make_params(xin, w1[k], bias1[k], w2[k], bias2[k], c10::nullopt, groups, stride, padding, dilation,
                               shuffle, activation));
    } catch (const c10::Error& e) {
      TORCH_CHECK(false, "igc_conv_chain: layer ", k, ": ", e.what_without_backtrace());
    }
    xin = view_of(ps.back());
  }
  if (tail_weight)
    tail = chain_end("tail", xin, *tail_weight, tail_bias, tail_activation, residual, stride, padding, dilation);
  return forward_chain(ps, x, w1, bias1, w2, bias2, head, tail, chain_length);
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

