"""Autograd and fake (meta) kernels shared by the fused IGC ops (C++/CUDA and Triton).

Every fused forward op has the schema of ``igc_kernels::igc_conv`` and a backward op that returns
(grad_x, grad_w1, grad_b1, grad_w2, grad_b2). What the backward saves is the memory story of the
fused layer: the input x, the weights, and the output (only when the activation needs its mask).
The primary conv's output is recomputed tile by tile instead of saved.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch._prims_common import suggest_memory_format

NUM_FWD_ARGS = 12  # x, w1, b1, w2, b2, residual, groups, stride, padding, dilation, shuffle, activation


def output_shape(x, w1, stride, padding, dilation) -> tuple[int, int, int, int]:
    n, _, h, w = x.shape
    c_out, _, kh, kw = w1.shape
    h_out = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    w_out = (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    return (n, c_out, h_out, w_out)


def memory_format_of(x: torch.Tensor) -> torch.memory_format:
    """Outputs follow the input's layout: channels_last in, channels_last out (the same rule as
    ATen's Tensor::suggest_memory_format, which the C++ kernels use)."""
    return suggest_memory_format(x)


def fake_forward(x, w1, b1, w2, b2, residual, groups, stride, padding, dilation, shuffle, activation):
    return x.new_empty(output_shape(x, w1, stride, padding, dilation)).contiguous(
        memory_format=memory_format_of(x)
    )


def fake_backward(grad_out, x, w1, b1, w2, out, groups, stride, padding, dilation, shuffle, activation, output_mask):
    empty = x.new_empty((0,))
    gx = torch.empty_like(x, memory_format=memory_format_of(x)) if output_mask[0] else empty
    gw1 = torch.empty_like(w1, memory_format=torch.contiguous_format) if output_mask[1] else empty
    gb1 = x.new_empty((w1.shape[0],)) if output_mask[2] else empty
    gw2 = torch.empty_like(w2, memory_format=torch.contiguous_format) if output_mask[3] else empty
    gb2 = x.new_empty((w1.shape[0],)) if output_mask[4] else empty
    return gx, gw1, gb1, gw2, gb2


def fake_chain(x, w1, b1, w2, b2, groups, stride, padding, dilation, shuffle, activation, head_weight=None,
               head_bias=None, head_activation=0, tail_weight=None, tail_bias=None, tail_activation=0,
               residual=None, chain_length=0):
    n, c, h, w = x.shape
    weights = ([head_weight] if head_weight is not None else []) + list(w1) + \
        ([tail_weight] if tail_weight is not None else [])
    for weight in weights:
        c, _, kh, kw = weight.shape
        h = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
        w = (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    return x.new_empty((n, c, h, w)).contiguous(memory_format=memory_format_of(x))


def chain_backward(ctx, grad_out):
    raise RuntimeError(
        "igc_kernels::igc_conv_chain has no backward (an inference op): for gradients run the "
        "layers with igc_conv, as igc_kernels.ops.igc_conv_chain does whenever a gradient is needed"
    )


def register_chain(op_name: str) -> None:
    """Fake kernel of the chain op, and a backward that says it has none."""
    torch.library.register_fake(op_name)(fake_chain)
    torch.library.register_autograd(op_name, chain_backward, setup_context=lambda ctx, inputs, output: None)


def setup_context(ctx, inputs, output) -> None:
    x, w1, b1, w2, b2, residual, groups, stride, padding, dilation, shuffle, activation = inputs
    # The output is saved only for the ReLU mask; in a network it is the next layer's input, which
    # autograd keeps anyway, so it costs no extra memory.
    ctx.save_for_backward(x, w1, b1, w2, output if activation != 0 else None)
    ctx.conf = (groups, stride, padding, dilation, shuffle, activation)
    ctx.has_b1 = b1 is not None
    ctx.has_b2 = b2 is not None
    ctx.has_residual = residual is not None


def make_backward(backward_op: Callable) -> Callable:
    """Autograd backward for a fused forward op whose backward op is ``backward_op``."""

    def backward(ctx, grad_out):
        x, w1, b1, w2, out = ctx.saved_tensors
        groups, stride, padding, dilation, shuffle, activation = ctx.conf
        need = ctx.needs_input_grad
        mask = [need[0], need[1], need[2] and ctx.has_b1, need[3], need[4] and ctx.has_b2]
        grads = [None] * 5
        if any(mask):
            results = backward_op(
                grad_out, x, w1, b1, w2, out, groups, stride, padding, dilation, shuffle, activation, mask
            )
            grads = [g if m else None for g, m in zip(results, mask)]
        grad_residual = None
        if ctx.has_residual and need[5]:
            grad_residual = grad_out * (out > 0) if activation == 1 else grad_out
        return (*grads, grad_residual) + (None,) * (NUM_FWD_ARGS - 6)

    return backward


def register(forward_op_name: str, backward_op_name: str, backward_op: Callable) -> None:
    """Register fake kernels for both ops and the autograd formula of the forward op."""
    torch.library.register_fake(forward_op_name)(fake_forward)
    torch.library.register_fake(backward_op_name)(fake_backward)
    torch.library.register_autograd(forward_op_name, make_backward(backward_op), setup_context=setup_context)
