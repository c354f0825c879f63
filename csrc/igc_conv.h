// Shared definitions of the fused interleaved group convolution (IGC) op.
//
// The layer (../DESIGN section 2): primary grouped conv (groups = L) -> interleave -> secondary
// 1x1 grouped conv (groups = M) -> optional output shuffle -> + bias, + residual -> activation.
// Every backend receives its sizes through IGCConvParams instead of a dozen loose integers.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <cstdint>

namespace igc {

enum Activation : int64_t { kActNone = 0, kActRelu = 1 };

struct IGCConvParams {
  int64_t N = 0;
  int64_t C_in = 0, H = 0, W = 0;        // input
  int64_t C_out = 0, H_out = 0, W_out = 0;  // output (C_mid == C_out == L * M)
  int64_t L = 0;     // primary groups
  int64_t M_in = 0;  // input channels per primary group (C_in / L)
  int64_t M = 0;     // output channels per primary group = secondary groups (C_out / L)
  int64_t kH = 1, kW = 1, sH = 1, sW = 1, pH = 0, pW = 0, dH = 1, dW = 1;
  bool shuffle = true;
  int64_t activation = kActNone;
  bool has_b1 = false, has_b2 = false, has_residual = false;

  // Channel of the layer output that secondary output channel c2 = m * L + j lands in.
  inline int64_t out_channel(int64_t m, int64_t j) const { return shuffle ? j * M + m : m * L + j; }
};

// Validates every argument of the op (shapes, dtypes, devices, values) with messages that name
// the argument and the expectation, and returns the derived sizes.
IGCConvParams make_params(const at::Tensor& x, const at::Tensor& w1, const c10::optional<at::Tensor>& b1,
                          const at::Tensor& w2, const c10::optional<at::Tensor>& b2,
                          const c10::optional<at::Tensor>& residual, int64_t groups, at::IntArrayRef stride,
                          at::IntArrayRef padding, at::IntArrayRef dilation, bool shuffle, int64_t activation);

// Extra checks of the backward op's own tensors (grad_out, and out when the activation needs it).
void check_backward_args(const IGCConvParams& p, const at::Tensor& grad_out, const c10::optional<at::Tensor>& out,
                         const at::Tensor& x);

}  // namespace igc
