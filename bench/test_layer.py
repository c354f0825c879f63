"""Layer benchmarks on the CPU: fused kernel vs stock IGC block vs torch.compile vs dense conv.

    pytest bench --benchmark-only                 # time everything
    pytest bench --benchmark-disable              # every benchmark once (smoke test, small shapes)
"""

import pytest
import torch
from conftest import shape_for
from providers import MODES, LayerShape, make_provider, provider_names

SHAPES = [LayerShape(1, 96, 256, 256), LayerShape(16, 96, 36, 36)]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", provider_names("cpu"))
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_layer_cpu_fp32(benchmark, smoke, shape, provider, mode):
    shape = shape_for(shape, smoke)
    run = make_provider(provider, shape)
    run(mode)  # warm-up (and compilation for torch.compile)
    benchmark.extra_info.update(
        device="cpu", dtype="float32", torch=torch.__version__, threads=torch.get_num_threads(),
        shape=str(shape),
        gflop=(shape.dense_flops(mode) if provider == "dense" else shape.flops(mode)) / 1e9,
    )
    # setup runs untimed before each round: for 'backward', the forward that builds the graph.
    benchmark.pedantic(lambda job: job(), setup=lambda: ((run.prepare(mode),), {}),
                       rounds=1 if smoke else 10, warmup_rounds=0 if smoke else 1)
