// Op schemas of igc_kernels, declared once. Each device registers its implementation with
// TORCH_LIBRARY_IMPL (cpu/, cuda/); fake kernels and autograd are registered in Python
// (igc_kernels/ops/), so torch.compile traces both the forward and the backward op.
#include <torch/library.h>

TORCH_LIBRARY(igc_kernels, m) {
  // activation: 0 = none, 1 = relu. residual (optional) is added before the activation.
  m.def(
      "igc_conv(Tensor x, Tensor w1, Tensor? b1, Tensor w2, Tensor? b2, Tensor? residual, int groups, "
      "int[2] stride, int[2] padding, int[2] dilation, bool shuffle, int activation) -> Tensor");
  // Gradients of x, w1, b1, w2, b2 (grad of the residual is grad_out masked by the activation,
  // computed by the caller). out is the forward output, needed only for activation != none.
  // output_mask selects which gradients are computed; the others come back as empty (0-element)
  // tensors, so the op always returns five defined tensors (as fake kernels and opcheck expect).
  m.def(
      "igc_conv_backward(Tensor grad_out, Tensor x, Tensor w1, Tensor? b1, Tensor w2, Tensor? out, int groups, "
      "int[2] stride, int[2] padding, int[2] dilation, bool shuffle, int activation, bool[5] output_mask) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  // Inference through a chain of IGC layers with the same hyperparameters, no residual: layer k
  // (weights w1[k], b1[k], w2[k], b2[k]) applied to layer k - 1's output, as igc_conv would, so a
  // backend may fuse the layers (the CPU keeps the activations between them in the caches). No
  // autograd: for tensors that need no gradient.
  // Optional ends, dense convs (groups 1) with the layers' stride, padding and dilation, each run
  // as FusedConv2d runs it (igc_conv with the identity secondary, no shuffle): a head applied to x
  // before the first layer, and a tail applied after the last, with the residual added before its
  // activation (VDSR's first and last convs and its global residual). chain_length > 0: the backend
  // may fuse the layers in chains of that many (the CPU runs them all in one parallel region).
  m.def(
      "igc_conv_chain(Tensor x, Tensor[] w1, Tensor?[] b1, Tensor[] w2, Tensor?[] b2, int groups, "
      "int[2] stride, int[2] padding, int[2] dilation, bool shuffle, int activation, "
      "Tensor? head_weight=None, Tensor? head_bias=None, int head_activation=0, "
      "Tensor? tail_weight=None, Tensor? tail_bias=None, int tail_activation=0, Tensor? residual=None, "
      "int chain_length=0) -> Tensor");
}
