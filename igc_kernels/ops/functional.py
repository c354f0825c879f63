"""``igc_conv``: the functional face of the fused IGC layer."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import backends
from ._ext import has_kernel
from .reference import igc_conv_reference
from .validate import Pair, activation_code, check_igc_args, pair


def _autocast(*tensors):
    """Autocast does not cast the inputs of custom ops, so do what it does for conv2d: inside an
    enabled autocast region, floating inputs other than float64 run in the autocast dtype (the
    casts are differentiable, so fp32 parameters get fp32 gradients)."""
    x = tensors[0]
    if not isinstance(x, torch.Tensor) or not torch.is_autocast_enabled(x.device.type):
        return tensors
    dtype = torch.get_autocast_dtype(x.device.type)

    def cast(t):
        if isinstance(t, torch.Tensor) and t.is_floating_point() and t.dtype != torch.float64:
            return t.to(dtype)
        return t

    return tuple(cast(t) for t in tensors)


def _hyperparameters(stride, padding, dilation, shuffle, activation):
    """The op's stride, padding and dilation pairs and activation code, checked."""
    if not isinstance(shuffle, bool):
        raise TypeError(f"shuffle must be a bool, got {shuffle!r}")
    return pair(stride, "stride", 1), pair(padding, "padding", 0), pair(dilation, "dilation", 1), \
        activation_code(activation)


def igc_conv(
    x: torch.Tensor,
    w1: torch.Tensor,
    w2: torch.Tensor,
    b1: torch.Tensor | None = None,
    b2: torch.Tensor | None = None,
    *,
    groups: int | None = None,
    stride: Pair = 1,
    padding: Pair = 0,
    dilation: Pair = 1,
    shuffle: bool = True,
    activation: str = "none",
    residual: torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Interleaved group convolution in one pass.

    Computes, for ``x`` of shape (N, L*M_in, H, W):
      1. primary grouped conv ``conv2d(x, w1, b1, stride, padding, dilation, groups=L)``,
         w1: (L*M, M_in, kH, kW), output channel l*M + m;
      2. interleave: z[:, m*L + l] = y1[:, l*M + m];
      3. secondary grouped 1x1 conv ``conv2d(z, w2, b2, groups=M)``, w2: (M*L, L, 1, 1);
      4. output shuffle (if ``shuffle``): out[:, l*M + m] = s[:, m*L + l];
      5. ``+ residual`` (same shape as the output), then ``activation`` ('none' or 'relu').

    ``groups`` (L) defaults to ``w2.shape[1]``. Returns (N, L*M, H_out, W_out) in x's memory
    format (channels_last in, channels_last out).

    Example::

        x = torch.randn(1, 96, 64, 64)
        w1 = torch.randn(96, 4, 3, 3) * 0.1   # L=24 groups, M=4
        w2 = torch.randn(96, 24, 1, 1) * 0.2
        y = igc_conv(x, w1, w2, padding=1, activation="relu")
    """
    if groups is None:
        if not isinstance(w2, torch.Tensor) or w2.dim() != 4:
            raise ValueError("w2 must be a 4-D (M*L, L, 1, 1) tensor to infer groups; pass groups=L")
        groups = int(w2.shape[1])
    stride_, padding_, dilation_, act = _hyperparameters(stride, padding, dilation, shuffle, activation)
    x, w1, w2, b1, b2, residual = _autocast(x, w1, w2, b1, b2, residual)
    check_igc_args(x, w1, b1, w2, b2, residual, groups, stride_, padding_, dilation_)
    args = (x, w1, b1, w2, b2, residual, groups, list(stride_), list(padding_), list(dilation_), shuffle, act)
    chosen = backends.resolve(backend, x)
    if chosen == "reference":
        return igc_conv_reference(*args)
    if chosen == "triton":
        return torch.ops.igc_kernels.igc_conv_triton(*args)
    return torch.ops.igc_kernels.igc_conv(*args)


DENSE_BACKENDS = ("auto", "stock", "cpu", "cuda", "triton", "reference")


def dense_backend(backend: str, x: torch.Tensor) -> str:
    """Who runs ``dense_conv(x, backend=backend)``: 'stock' (PyTorch's conv) or a backend of igc_conv."""
    if backend not in DENSE_BACKENDS:
        raise ValueError(f"backend must be one of {DENSE_BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "cpu" if isinstance(x, torch.Tensor) and x.device.type == "cpu" and has_kernel("CPU") else "stock"
    return backend


def dense_conv(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    stride: Pair = 1,
    padding: Pair = 0,
    dilation: Pair = 1,
    activation: str = "none",
    residual: torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """A dense conv (groups 1, ``weight`` in ``nn.Conv2d``'s layout) + ``residual``, then
    ``activation``: what ``FusedConv2d`` computes. ``backend`` 'auto': the fused CPU kernel for CPU
    tensors when it is built (an IGC layer with one primary group and an identity secondary), else
    PyTorch's conv (cuDNN is the better choice on GPUs); 'stock': always PyTorch's conv; 'cpu',
    'cuda', 'triton', 'reference': that backend of ``igc_conv``."""
    act = activation_code(activation)
    backend = dense_backend(backend, x)
    if backend == "stock":
        y = F.conv2d(x, weight, bias, stride, padding, dilation)
        if residual is not None:
            y = y + residual
        return F.relu(y) if act == 1 else y
    identity = torch.ones(weight.shape[0], 1, 1, 1, dtype=weight.dtype, device=weight.device)
    return igc_conv(x, weight, identity, bias, None, groups=1, stride=stride, padding=padding, dilation=dilation,
                    shuffle=False, activation="relu" if act == 1 else "none", residual=residual, backend=backend)


def _dense_end(name: str, end) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A chain end given as ``(weight, bias)`` (bias may be None), checked for its form."""
    if not isinstance(end, (tuple, list)) or len(end) != 2:
        raise ValueError(f"{name} must be a (weight, bias) tuple of a dense conv, got {type(end).__name__}")
    weight, bias = end
    if not isinstance(weight, torch.Tensor) or weight.dim() != 4:
        raise ValueError(f"{name}[0] (weight) must be a 4-D (C_out, C_in, kH, kW) tensor, got "
                         f"{tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__}")
    if bias is not None and not isinstance(bias, torch.Tensor):
        raise TypeError(f"{name}[1] (bias) must be a tensor or None, got {type(bias).__name__}")
    return weight, bias


def igc_conv_chain(
    x: torch.Tensor,
    layers,
    *,
    groups: int,
    stride: Pair = 1,
    padding: Pair = 0,
    dilation: Pair = 1,
    shuffle: bool = True,
    activation: str = "none",
    backend: str = "auto",
    head=None,
    head_activation: str = "none",
    tail=None,
    tail_activation: str = "none",
    residual: torch.Tensor | None = None,
    chain_length: int | None = None,
) -> torch.Tensor:
    """A chain of IGC layers with the same hyperparameters: ``layers`` is a sequence of
    ``(w1, w2, b1, b2)``, and the result is that of ``igc_conv`` applied layer after layer.

    Optional dense convs (groups 1, the layers' stride, padding and dilation) at its ends, each
    ``(weight, bias)`` in ``nn.Conv2d``'s layout: ``head`` is applied to ``x`` first (then
    ``head_activation``), ``tail`` to the last layer's output, plus ``residual`` before
    ``tail_activation``. They compute what ``FusedConv2d(backend=backend)`` computes
    (``dense_conv``), so VDSR's first and last convs and its global residual can join the chains.

    For inference: where no gradient is needed and the chain runs on the fused CPU kernel, the
    layers run as one op (``igc_kernels::igc_conv_chain``) that keeps the activations between them
    in the caches; otherwise (autograd, other backends, autocast) layer by layer.
    ``chain_length`` (None: all layers) fuses them in chains of that many layers instead (the head
    with the first, the tail with the last), which the CPU runs in one parallel region: a thread
    that is done with its part of one chain goes on to the next. The fused op
    starts each layer's Winograd row tiles a row lower than the next layer's (so a layer reads the
    rows the layer before it has just written), which rounds differently from the layers run one
    by one: the two agree to float32 rounding (about 1e-6 relative), not bitwise.

    Example::

        layers = [(torch.randn(96, 4, 3, 3) * 0.2, torch.randn(96, 24, 1, 1) * 0.2, None, None)] * 2
        with torch.no_grad():
            y = igc_conv_chain(torch.randn(1, 96, 64, 64), layers, groups=24, padding=1, activation="relu")
    """
    layers = list(layers)
    if not layers:
        raise ValueError("layers must hold at least one (w1, w2, b1, b2) tuple, got none")
    if chain_length is not None and (isinstance(chain_length, bool) or not isinstance(chain_length, int) or
                                     chain_length < 1):
        raise ValueError(f"chain_length must be a positive int or None, got {chain_length!r}")
    for k, layer in enumerate(layers):
        if not isinstance(layer, (tuple, list)) or len(layer) != 4:
            raise ValueError(f"layers[{k}] must be a (w1, w2, b1, b2) tuple, got {type(layer).__name__}")
    head = None if head is None else _dense_end("head", head)
    tail = None if tail is None else _dense_end("tail", tail)
    if residual is not None and tail is None:
        raise ValueError("residual is added by the tail: pass tail=(weight, bias) with it")
    kwargs = dict(groups=groups, stride=stride, padding=padding, dilation=dilation, shuffle=shuffle,
                  activation=activation)
    ends = [t for end in (head, tail) if end is not None for t in end if t is not None]
    tensors = [x, residual] + ends + [t for layer in layers for t in layer if t is not None]
    needs_grad = torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad for t in tensors)
    autocast = isinstance(x, torch.Tensor) and torch.is_autocast_enabled(x.device.type)
    if (len(layers) == 1 and head is None and tail is None) or needs_grad or autocast or \
            not isinstance(x, torch.Tensor) or backends.resolve(backend, x) != "cpu":

        def dense(h, end, act, res=None):  # as FusedConv2d(backend=backend) runs it
            return dense_conv(h, end[0], end[1], stride=stride, padding=padding, dilation=dilation,
                              activation=act, residual=res, backend=backend)

        if head is not None:
            x = dense(x, head, head_activation)
        for w1, w2, b1, b2 in layers:
            x = igc_conv(x, w1, w2, b1, b2, backend=backend, **kwargs)
        return x if tail is None else dense(x, tail, tail_activation, residual)
    stride_, padding_, dilation_, act = _hyperparameters(stride, padding, dilation, shuffle, activation)
    head_act, tail_act = activation_code(head_activation), activation_code(tail_activation)

    def view(shape):  # the next layer's input, for the checks: x's storage with those sizes (no copy)
        return x.as_strided((x.shape[0], shape.c_out, shape.h_out, shape.w_out), (0, 0, 0, 0))

    def check(where, h, w1, b1, w2, b2, res, groups_):
        try:
            return check_igc_args(h, w1, b1, w2, b2, res, groups_, stride_, padding_, dilation_)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"{where}: {exc}") from None

    def identity(weight):  # the ends' secondary, as dense_conv passes it
        return weight.new_ones((weight.shape[0], 1, 1, 1))

    h = x
    if head is not None:
        h = view(check("head", h, head[0], head[1], identity(head[0]), None, None, 1))
    for k, (w1, w2, b1, b2) in enumerate(layers):
        h = view(check(f"layers[{k}]", h, w1, b1, w2, b2, None, groups))
    if tail is not None:
        check("tail", h, tail[0], tail[1], identity(tail[0]), None, residual, 1)  # and the residual's shape
    return torch.ops.igc_kernels.igc_conv_chain(
        x, [layer[0] for layer in layers], [layer[2] for layer in layers], [layer[1] for layer in layers],
        [layer[3] for layer in layers], groups, list(stride_), list(padding_), list(dilation_), shuffle, act,
        head_weight=None if head is None else head[0], head_bias=None if head is None else head[1],
        head_activation=head_act, tail_weight=None if tail is None else tail[0],
        tail_bias=None if tail is None else tail[1], tail_activation=tail_act, residual=residual,
        chain_length=chain_length or 0,
    )
