// Argument checks of the IGC op, shared by the CPU and CUDA implementations. The Python layer
// (igc_kernels/ops/validate.py) raises the same messages before any backend runs; these checks
// guard C++ callers and direct torch.ops calls.
#include "igc_conv.h"

#include <c10/util/Exception.h>

namespace igc {
namespace {

void check_pair(at::IntArrayRef v, const char* name, int64_t min_value) {
  TORCH_CHECK(v.size() == 2, "igc_conv: ", name, " must have 2 elements (height, width), got ", v.size());
  for (auto e : v) {
    TORCH_CHECK(e >= min_value, "igc_conv: ", name, " must be >= ", min_value, ", got ", v);
  }
}

void check_like(const at::Tensor& t, const at::Tensor& x, const char* name) {
  TORCH_CHECK(t.device() == x.device(), "igc_conv: ", name, " must be on the same device as x (", x.device(),
              "), got ", t.device());
  TORCH_CHECK(t.scalar_type() == x.scalar_type(), "igc_conv: ", name, " must have the dtype of x (",
              x.scalar_type(), "), got ", t.scalar_type());
}

}  // namespace

IGCConvParams make_params(const at::Tensor& x, const at::Tensor& w1, const c10::optional<at::Tensor>& b1,
                          const at::Tensor& w2, const c10::optional<at::Tensor>& b2,
                          const c10::optional<at::Tensor>& residual, int64_t groups, at::IntArrayRef stride,
                          at::IntArrayRef padding, at::IntArrayRef dilation, bool shuffle, int64_t activation) {
  TORCH_CHECK(x.dim() == 4, "igc_conv: x must be a 4-D (N, C, H, W) tensor, got ", x.dim(), "-D");
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), "igc_conv: x must be a floating-point tensor, got ",
              x.scalar_type());
  TORCH_CHECK(groups >= 1, "igc_conv: groups (primary groups L) must be >= 1, got ", groups);
  check_pair(stride, "stride", 1);
  check_pair(padding, "padding", 0);
  check_pair(dilation, "dilation", 1);
  TORCH_CHECK(activation == kActNone || activation == kActRelu,
              "igc_conv: activation must be 0 (none) or 1 (relu), got ", activation);

  IGCConvParams p;
  p.N = x.size(0);
  p.C_in = x.size(1);
  p.H = x.size(2);
  p.W = x.size(3);
  p.L = groups;
  TORCH_CHECK(p.C_in % p.L == 0, "igc_conv: x.shape[1] (in channels) must be divisible by groups L=", p.L,
              ", got ", p.C_in);
  p.M_in = p.C_in / p.L;

  check_like(w1, x, "w1");
  TORCH_CHECK(w1.dim() == 4, "igc_conv: w1 must be 4-D (L*M, C_in/L, kH, kW), got ", w1.dim(), "-D");
  p.C_out = w1.size(0);
  TORCH_CHECK(p.C_out >= 1 && p.C_out % p.L == 0, "igc_conv: w1.shape[0] (L*M) must be a positive multiple of groups L=",
              p.L, ", got ", p.C_out);
  p.M = p.C_out / p.L;
  TORCH_CHECK(w1.size(1) == p.M_in, "igc_conv: w1.shape[1] must be C_in/L=", p.M_in, ", got ", w1.size(1));
  p.kH = w1.size(2);
  p.kW = w1.size(3);
  TORCH_CHECK(p.kH >= 1 && p.kW >= 1, "igc_conv: w1 kernel size must be >= 1, got ", w1.sizes());

  check_like(w2, x, "w2");
  TORCH_CHECK(w2.dim() == 4 && w2.size(0) == p.C_out && w2.size(1) == p.L && w2.size(2) == 1 && w2.size(3) == 1,
              "igc_conv: w2 must have shape (M*L, L, 1, 1) = (", p.C_out, ", ", p.L, ", 1, 1), got ", w2.sizes());
  if (b1.has_value()) {
    check_like(*b1, x, "b1");
    TORCH_CHECK(b1->dim() == 1 && b1->size(0) == p.C_out, "igc_conv: b1 must have shape (", p.C_out, ",), got ",
                b1->sizes());
  }
  if (b2.has_value()) {
    check_like(*b2, x, "b2");
    TORCH_CHECK(b2->dim() == 1 && b2->size(0) == p.C_out, "igc_conv: b2 must have shape (", p.C_out, ",), got ",
                b2->sizes());
  }
  p.sH = stride[0];
  p.sW = stride[1];
  p.pH = padding[0];
  p.pW = padding[1];
  p.dH = dilation[0];
  p.dW = dilation[1];
  const int64_t eff_h = p.dH * (p.kH - 1) + 1, eff_w = p.dW * (p.kW - 1) + 1;
  TORCH_CHECK(p.H + 2 * p.pH >= eff_h && p.W + 2 * p.pW >= eff_w, "igc_conv: padded input (",
              p.H + 2 * p.pH, "x", p.W + 2 * p.pW, ") is smaller than the dilated kernel (", eff_h, "x", eff_w, ")");
  p.H_out = (p.H + 2 * p.pH - eff_h) / p.sH + 1;
  p.W_out = (p.W + 2 * p.pW - eff_w) / p.sW + 1;
  p.shuffle = shuffle;
  p.activation = activation;
  p.has_b1 = b1.has_value();
  p.has_b2 = b2.has_value();
  p.has_residual = residual.has_value();
  if (residual.has_value()) {
    check_like(*residual, x, "residual");
    TORCH_CHECK(residual->dim() == 4 && residual->size(0) == p.N && residual->size(1) == p.C_out &&
                    residual->size(2) == p.H_out && residual->size(3) == p.W_out,
                "igc_conv: residual must have the output's shape (", p.N, ", ", p.C_out, ", ", p.H_out, ", ", p.W_out,
                "), got ", residual->sizes());
  }
  return p;
}

void check_backward_args(const IGCConvParams& p, const at::Tensor& grad_out, const c10::optional<at::Tensor>& out,
                         const at::Tensor& x) {
  auto expect = [&](const at::Tensor& t, const char* name) {
    check_like(t, x, name);
    TORCH_CHECK(t.dim() == 4 && t.size(0) == p.N && t.size(1) == p.C_out && t.size(2) == p.H_out &&
                    t.size(3) == p.W_out,
                "igc_conv_backward: ", name, " must have the output's shape (", p.N, ", ", p.C_out, ", ", p.H_out,
                ", ", p.W_out, "), got ", t.sizes());
  };
  expect(grad_out, "grad_out");
  if (p.activation != kActNone) {
    TORCH_CHECK(out.has_value(), "igc_conv_backward: out (the forward output) is required when activation != none");
    expect(*out, "out");
  }
}

}  // namespace igc
