"""Mixed precision with IGC layers: autocast reaches the custom op (bf16 on the CPU here)."""

from __future__ import annotations

import torch

from igc_kernels.models import build_model


def test_igc_network_follows_autocast_and_trains_the_fp32_weights():
    torch.manual_seed(0)
    model = build_model("igc_vdsr_s1", channels=8, depth=4, primary_groups=2, backend="reference")
    x, y = torch.rand(2, 1, 12, 12), torch.rand(2, 1, 12, 12)
    ref = [g.detach().clone() for g in torch.autograd.grad((model(x) - y).abs().mean(), model.parameters())]
    # Inside autocast the head conv hands the IGC layers bf16 activations while their weights are
    # fp32: unless igc_conv casts like conv2d does, the op refuses the mixed dtypes.
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
        loss = (out.float() - y).abs().mean()
    got = torch.autograd.grad(loss, model.parameters())
    assert all(p.dtype == torch.float32 for p in model.parameters())
    for g, r in zip(got, ref):
        assert g.dtype == torch.float32
        # bf16 keeps 8 mantissa bits, and L1's sign flips near zero residuals amplify that:
        # the gradient agrees with the fp32 one to ~10% in norm (a wrong-weight bug gives ~100%).
        assert torch.linalg.vector_norm(g - r) <= 0.1 * torch.linalg.vector_norm(r)
