"""Network benchmarks on the CPU: IGC-VDSR on fused kernels vs on stock ops vs VDSR, eager and
compiled; inference on a 256x256 Y image and a training step on 16 patches of 36x36."""

import pytest
import torch
from network import NETWORK_MODES, NETWORKS, first_run, make_network_provider, network_flops

SIZES = {"inference": (1, 256, 256), "train-step": (16, 36, 36)}
SMOKE_SIZES = {"inference": (1, 24, 24), "train-step": (2, 12, 12)}


@pytest.mark.parametrize("network", list(NETWORKS))
@pytest.mark.parametrize("mode", NETWORK_MODES)
def test_network_cpu_fp32(benchmark, smoke, network, mode):
    if smoke and network.endswith("-compile"):
        pytest.skip("torch.compile of a 20-layer network takes minutes to build; timed runs only")
    n, h, w = (SMOKE_SIZES if smoke else SIZES)[mode]
    run = make_network_provider(network, mode, n, h, w)
    # Warm-up (and compilation): a compiled provider that fell back to eager must not be timed as compiled.
    assert first_run(network, run), f"{network} did not compile (dynamo fell back to eager)"
    benchmark.extra_info.update(
        device="cpu", dtype="float32", torch=torch.__version__, threads=torch.get_num_threads(),
        shape=f"{n}x1x{h}x{w}", gflop=network_flops(NETWORKS[network][0], n, h, w, mode) / 1e9,
    )
    # Steady state: the fused training step took about ten steps to settle in one run (512, 139,
    # 129, 130, 128, 149, 140, 141, 156, then 123-128 ms; page faults stopped after the fourth, so
    # it is not the memory filling up alone), and five rounds after one warm-up round timed mostly
    # the settling. Every provider gets the same warm-up and rounds.
    benchmark.pedantic(run, rounds=1 if smoke else 15, warmup_rounds=0 if smoke else 8)
