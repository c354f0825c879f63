"""Helpers shared by tests/ and bench/: random IGC problems, the naive float64 oracle, tolerances."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace

import numpy as np
import torch


@dataclass(frozen=True)
class IGCCase:
    """One IGC problem: sizes and options of a layer call."""

    N: int = 2
    L: int = 3
    M_in: int = 2
    M: int = 2
    H: int = 7
    W: int = 9
    k: tuple[int, int] = (3, 3)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (1, 1)
    dilation: tuple[int, int] = (1, 1)
    shuffle: bool = True
    activation: int = 1
    bias1: bool = True
    bias2: bool = True
    residual: bool = False
    channels_last: bool = False

    @property
    def c_in(self) -> int:
        return self.L * self.M_in

    @property
    def c_out(self) -> int:
        return self.L * self.M

    @property
    def out_hw(self) -> tuple[int, int]:
        h = (self.H + 2 * self.padding[0] - self.dilation[0] * (self.k[0] - 1) - 1) // self.stride[0] + 1
        w = (self.W + 2 * self.padding[1] - self.dilation[1] * (self.k[1] - 1) - 1) // self.stride[1] + 1
        return h, w

    def with_(self, **kw) -> "IGCCase":
        return replace(self, **kw)

    def make(self, dtype=torch.float32, device="cpu", seed: int | None = None, requires_grad: bool = False):
        """Fresh random tensors (never zeros): returns the op's 12 positional arguments."""
        gen = torch.Generator().manual_seed(seed) if seed is not None else None

        def rnd(*shape, scale=1.0):
            t = (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(dtype=dtype, device=device)
            return t.requires_grad_(requires_grad)

        kh, kw = self.k
        x = rnd(self.N, self.c_in, self.H, self.W)
        if self.channels_last:
            x = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_(requires_grad)
        w1 = rnd(self.c_out, self.M_in, kh, kw, scale=(self.M_in * kh * kw) ** -0.5)
        w2 = rnd(self.c_out, self.L, 1, 1, scale=self.L**-0.5)
        b1 = rnd(self.c_out, scale=0.5) if self.bias1 else None
        b2 = rnd(self.c_out, scale=0.5) if self.bias2 else None
        res = rnd(self.N, self.c_out, *self.out_hw) if self.residual else None
        return [x, w1, b1, w2, b2, res, self.L, list(self.stride), list(self.padding), list(self.dilation),
                self.shuffle, self.activation]


def random_cases(count: int, seed: int, max_hw: int = 11) -> list[IGCCase]:
    """A seeded sweep of varied, valid cases (odd sizes, k 1..7, strides, dilation, L/M of 1...)."""
    rng = np.random.default_rng(seed)
    cases = []
    while len(cases) < count:
        k = (int(rng.choice([1, 3, 5, 7])), int(rng.choice([1, 3, 5, 7])))
        if rng.random() < 0.6:
            k = (k[0], k[0])
        dil = (int(rng.choice([1, 1, 2])), int(rng.choice([1, 1, 2])))
        pad = (int(rng.integers(0, 4)), int(rng.integers(0, 4)))
        stride = (int(rng.choice([1, 1, 2])), int(rng.choice([1, 1, 2])))
        H, W = int(rng.integers(1, max_hw + 1)), int(rng.integers(1, max_hw + 1))
        if H + 2 * pad[0] < dil[0] * (k[0] - 1) + 1 or W + 2 * pad[1] < dil[1] * (k[1] - 1) + 1:
            continue
        cases.append(
            IGCCase(
                N=int(rng.choice([1, 1, 2, 3])),
                L=int(rng.choice([1, 2, 3, 4, 6])),
                M_in=int(rng.choice([1, 2, 3, 4])),
                M=int(rng.choice([1, 2, 3, 4, 5])),
                H=H,
                W=W,
                k=k,
                stride=stride,
                padding=pad,
                dilation=dil,
                shuffle=bool(rng.random() < 0.7),
                activation=int(rng.random() < 0.6),
                bias1=bool(rng.random() < 0.5),
                bias2=bool(rng.random() < 0.7),
                residual=bool(rng.random() < 0.4),
                channels_last=bool(rng.random() < 0.3),
            )
        )
    return cases


def naive_igc(x, w1, b1, w2, b2, residual, L, stride, padding, dilation, shuffle, activation) -> np.ndarray:
    """DESIGN.md section 2 written as loops in float64 numpy: the oracle of the oracle (tiny shapes only)."""
    x = x.detach().double().cpu().numpy()
    w1 = w1.detach().double().cpu().numpy()
    w2 = w2.detach().double().cpu().numpy()[:, :, 0, 0]
    N, c_in, H, W = x.shape
    c_out, M_in, kh, kw = w1.shape
    M = c_out // L
    sh, sw = stride
    ph, pw = padding
    dh, dw = dilation
    Ho = (H + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    Wo = (W + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    y1 = np.zeros((N, c_out, Ho, Wo))
    for n, l, m, oy, ox in itertools.product(range(N), range(L), range(M), range(Ho), range(Wo)):
        acc = 0.0 if b1 is None else float(b1[l * M + m])
        for ci, i, j in itertools.product(range(M_in), range(kh), range(kw)):
            iy, ix = oy * sh - ph + i * dh, ox * sw - pw + j * dw
            if 0 <= iy < H and 0 <= ix < W:
                acc += w1[l * M + m, ci, i, j] * x[n, l * M_in + ci, iy, ix]
        y1[n, l * M + m, oy, ox] = acc
    out = np.zeros_like(y1)
    for m, j in itertools.product(range(M), range(L)):
        # secondary group m, output j mixes member m of every primary group l
        s = sum(w2[m * L + j, l] * y1[:, l * M + m] for l in range(L))
        if b2 is not None:
            s = s + float(b2[m * L + j])
        oc = j * M + m if shuffle else m * L + j
        out[:, oc] = s
    if residual is not None:
        out = out + residual.detach().double().cpu().numpy()
    if activation == 1:
        out = np.maximum(out, 0.0)
    return out


# Tolerances as data: (rtol, atol relative to the reference's max magnitude), with the reason.
TOLERANCES = {
    # fp32 accumulation over a few hundred terms: ~1e-6 typical; the spec's bar is 1e-4 relative.
    torch.float32: (1e-4, 1e-5),
    # float64 kernels against the float64 reference: rounding only.
    torch.float64: (1e-10, 1e-12),
    # bf16 storage (8-bit mantissa) of inputs and outputs with fp32 accumulation: ~2^-8 relative.
    torch.bfloat16: (2e-2, 1e-2),
    torch.float16: (2e-3, 1e-3),
}


def assert_close_to_reference(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, what: str = "") -> None:
    """Compare with a tolerance scaled by the reference's magnitude (so tiny outputs are not over-tested)."""
    rtol, atol_rel = TOLERANCES[dtype]
    expected = expected.detach().double().cpu()
    actual = actual.detach().double().cpu()
    scale = float(expected.abs().max()) if expected.numel() else 1.0
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol_rel * max(scale, 1e-6), msg=lambda m: f"{what}: {m}")
