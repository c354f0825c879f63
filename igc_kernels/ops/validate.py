"""Argument checks of the IGC op, run before any backend, with messages that name the argument,
what was expected and what came (the C++ op repeats them for direct callers)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Union

import torch

Pair = Union[int, Sequence[int]]

ACTIVATIONS = {"none": 0, "identity": 0, "relu": 1}


def pair(value: Pair, name: str, minimum: int) -> tuple[int, int]:
    """Normalise an int or a 2-sequence of ints and check its range."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if isinstance(value, int):
        out = (value, value)
    else:
        try:
            out = tuple(value)
        except TypeError:
            raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}") from None
        if len(out) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in out):
            raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if min(out) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return out  # type: ignore[return-value]


def activation_code(activation: Union[str, int, None]) -> int:
    """'none' / 'relu' (or None, or 0 / 1) to the op's integer code."""
    if activation is None:
        return 0
    if isinstance(activation, int) and not isinstance(activation, bool) and activation in (0, 1):
        return activation
    if isinstance(activation, str) and activation.lower() in ACTIVATIONS:
        return ACTIVATIONS[activation.lower()]
    raise ValueError(f"activation must be one of 'none', 'relu', got {activation!r}")


@dataclass(frozen=True)
class IGCShape:
    """Sizes derived from the arguments (see DESIGN.md section 2)."""

    L: int
    M_in: int
    M: int
    c_out: int
    h_out: int
    w_out: int


def _check_tensor(t: torch.Tensor, name: str, x: torch.Tensor) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.device != x.device:
        raise ValueError(f"{name} must be on the same device as x ({x.device}), got {t.device}")
    if t.dtype != x.dtype:
        raise TypeError(f"{name} must have the dtype of x ({x.dtype}), got {t.dtype}")


def check_igc_args(
    x: torch.Tensor,
    w1: torch.Tensor,
    b1: torch.Tensor | None,
    w2: torch.Tensor,
    b2: torch.Tensor | None,
    residual: torch.Tensor | None,
    groups: int,
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
) -> IGCShape:
    """Validate the op's tensors against each other; return the derived sizes."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"x must be a 4-D (N, C, H, W) tensor, got {x.dim()}-D with shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got {x.dtype}")
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ValueError(f"groups (primary groups L) must be a positive int, got {groups!r}")
    L = groups
    n, c_in, h, w = x.shape
    if c_in % L:
        raise ValueError(f"x.shape[1] (in channels) must be divisible by groups L={L}, got {c_in}")
    M_in = c_in // L
    _check_tensor(w1, "w1", x)
    if w1.dim() != 4:
        raise ValueError(f"w1 must be 4-D (L*M, C_in/L, kH, kW), got shape {tuple(w1.shape)}")
    c_out = w1.shape[0]
    if c_out < 1 or c_out % L:
        raise ValueError(f"w1.shape[0] (L*M) must be a positive multiple of groups L={L}, got {c_out}")
    M = c_out // L
    if w1.shape[1] != M_in:
        raise ValueError(f"w1.shape[1] must be C_in/L={M_in}, got {w1.shape[1]}")
    _check_tensor(w2, "w2", x)
    if tuple(w2.shape) != (c_out, L, 1, 1):
        raise ValueError(f"w2 must have shape (M*L, L, 1, 1) = {(c_out, L, 1, 1)}, got {tuple(w2.shape)}")
    for name, b in (("b1", b1), ("b2", b2)):
        if b is not None:
            _check_tensor(b, name, x)
            if tuple(b.shape) != (c_out,):
                raise ValueError(f"{name} must have shape ({c_out},), got {tuple(b.shape)}")
    kh, kw = w1.shape[2], w1.shape[3]
    eff_h, eff_w = dilation[0] * (kh - 1) + 1, dilation[1] * (kw - 1) + 1
    if h + 2 * padding[0] < eff_h or w + 2 * padding[1] < eff_w:
        raise ValueError(
            f"padded input ({h + 2 * padding[0]}x{w + 2 * padding[1]}) is smaller than the dilated "
            f"kernel ({eff_h}x{eff_w})"
        )
    h_out = (h + 2 * padding[0] - eff_h) // stride[0] + 1
    w_out = (w + 2 * padding[1] - eff_w) // stride[1] + 1
    if residual is not None:
        _check_tensor(residual, "residual", x)
        if tuple(residual.shape) != (n, c_out, h_out, w_out):
            raise ValueError(
                f"residual must have the output's shape {(n, c_out, h_out, w_out)}, got {tuple(residual.shape)}"
            )
    return IGCShape(L=L, M_in=M_in, M=M, c_out=c_out, h_out=h_out, w_out=w_out)
