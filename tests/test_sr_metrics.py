"""PSNR and SSIM against direct definitions, and the paper's Bicubic row on the vendored sets."""

import math

import numpy as np
import pytest

from igc_kernels.sr.metrics import gaussian_window, psnr, ssim, to_uint8_scale


def ssim_loops(a: np.ndarray, b: np.ndarray) -> float:
    """Wang's ssim_index.m spelled out: every 11x11 valid window, weighted moments, mean map."""
    sigma, r = 1.5, 5
    g = np.array([[math.exp(-((i - r) ** 2 + (j - r) ** 2) / (2 * sigma**2)) for j in range(11)] for i in range(11)])
    g /= g.sum()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    vals = []
    for y in range(a.shape[0] - 10):
        for x in range(a.shape[1] - 10):
            pa, pb = a[y : y + 11, x : x + 11], b[y : y + 11, x : x + 11]
            ma, mb = (g * pa).sum(), (g * pb).sum()
            va = (g * (pa - ma) ** 2).sum()
            vb = (g * (pb - mb) ** 2).sum()
            cov = (g * (pa - ma) * (pb - mb)).sum()
            vals.append((2 * ma * mb + c1) * (2 * cov + c2) / ((ma**2 + mb**2 + c1) * (va + vb + c2)))
    return float(np.mean(vals))


def test_psnr_definition():
    rng = np.random.default_rng()
    a = rng.integers(0, 256, size=(20, 17)).astype(float)
    b = np.clip(a + rng.integers(-6, 7, size=a.shape), 0, 255)
    assert psnr(a, a) == math.inf
    mse = np.mean((a[3:-3, 3:-3] - b[3:-3, 3:-3]) ** 2)
    assert psnr(a, b, shave=3) == pytest.approx(10 * math.log10(255**2 / mse), abs=1e-12)
    b2 = a.copy()
    b2[0, 0] += 50  # only in the shaved border
    assert psnr(a, b2, shave=1) == math.inf and psnr(a, b2) < math.inf
    with pytest.raises(ValueError, match="one shape"):
        psnr(a, b[:-1])
    with pytest.raises(ValueError, match="too small to shave"):
        psnr(a, b, shave=10)


def test_ssim_against_loops():
    rng = np.random.default_rng()
    a = rng.integers(0, 256, size=(23, 19)).astype(float)
    b = np.clip(a + rng.normal(0, 20, size=a.shape), 0, 255).round()
    assert ssim(a, b) == pytest.approx(ssim_loops(a, b), abs=1e-10)
    assert ssim(a, b, shave=2) == pytest.approx(ssim_loops(a[2:-2, 2:-2], b[2:-2, 2:-2]), abs=1e-10)
    assert ssim(a, a) == pytest.approx(1.0, abs=1e-12)
    assert ssim(a, b) < 1
    assert gaussian_window().sum() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="at least"):
        ssim(a[:8], b[:8])


def test_to_uint8_scale():
    np.testing.assert_array_equal(to_uint8_scale(np.array([-0.1, 0.5 / 255, 1.49 / 255, 1.2])), [0, 1, 1, 255])


# The paper's Table 2, Bicubic column (PSNR, SSIM).
PAPER_BICUBIC = {
    ("Set5", 2): (33.66, 0.9299), ("Set5", 3): (30.39, 0.8682), ("Set5", 4): (28.42, 0.8104),
    ("Set14", 2): (30.24, 0.8688), ("Set14", 3): (27.55, 0.7742), ("Set14", 4): (26.00, 0.7027),
}


def test_bicubic_row_of_the_paper():
    """The whole pipeline (Y, modcrop, float MATLAB bicubic, 8-bit output, shave, SSIM) on the
    vendored Set5/Set14 reproduces the published Bicubic row to 0.01 dB and 0.001 SSIM."""
    from igc_kernels.sr.data import benchmark_folder
    from igc_kernels.sr.evaluate import evaluate

    scores, errors = evaluate(None, [benchmark_folder("Set5"), benchmark_folder("Set14")], [2, 3, 4])
    assert not errors and len(scores) == 6
    for sc in scores:
        p, s = PAPER_BICUBIC[(sc.dataset, sc.scale)]
        assert len(sc.images) == (5 if sc.dataset == "Set5" else 14)
        assert abs(sc.psnr - p) <= 0.01, (sc.dataset, sc.scale, sc.psnr, p)
        assert abs(sc.ssim - s) <= 0.001, (sc.dataset, sc.scale, sc.ssim, s)
