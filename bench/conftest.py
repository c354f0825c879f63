import pytest
import torch
from providers import LayerShape

from igc_kernels.runtime import keep_freed_memory


def pytest_configure(config):
    torch.set_num_threads(min(2, torch.get_num_threads()))
    # Every provider runs in this process under the same allocator setting: freed activations stay
    # mapped, so no provider's time includes re-faulting its outputs (igc_kernels/runtime.py).
    keep_freed_memory()


@pytest.fixture
def smoke(request) -> bool:
    """--benchmark-disable runs every benchmark once as a smoke test: use small shapes then."""
    return bool(request.config.getoption("benchmark_disable"))


def shape_for(shape: LayerShape, smoke: bool) -> LayerShape:
    return LayerShape(N=min(shape.N, 2), C=shape.C, H=12, W=13, L=shape.L, k=shape.k) if smoke else shape
