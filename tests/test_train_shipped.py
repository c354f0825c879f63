"""The weights shipped in the package: loadable, described, and better than bicubic."""

from __future__ import annotations

import numpy as np

from igc_kernels.sr import weights as W
from igc_kernels.sr.data import benchmark_folder, bicubic_pair, load_y
from igc_kernels.sr.metrics import psnr, to_uint8_scale


def test_shipped_model_loads_with_its_metadata():
    model, meta = W.load_shipped()
    assert meta["arch"] == "igc_vdsr_s1" and meta["scales"] == [2, 3, 4]
    assert meta["model"] == {"channels": 96, "depth": 20, "primary_groups": 24}
    assert meta["steps"] > 0 and meta["training_data"]
    assert not model.training


def test_shipped_model_beats_bicubic_at_every_scale():
    """On a 96x96 crop of Set5 'butterfly' (a test image): a collapsed (zero-residual) or
    mis-loaded network would score at or below bicubic."""
    import torch

    model, _ = W.load_shipped()
    y = load_y(f"{benchmark_folder('Set5')}/butterfly.png")[80:176, 80:176]
    for s in (2, 3, 4):
        hr, bic = bicubic_pair(y, s)
        with torch.no_grad():
            sr = model(torch.from_numpy(bic).float()[None, None])[0, 0]
        ref = np.floor(hr * 255 + 0.5)
        gain = psnr(ref, to_uint8_scale(sr), shave=s) - psnr(ref, to_uint8_scale(bic), shave=s)
        assert gain > 0.3, f"x{s}: only {gain:.2f} dB over bicubic"
