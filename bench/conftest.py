import pytest
import torch

from providers import LayerShape


def pytest_configure(config):
    torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture
def smoke(request) -> bool:
    """--benchmark-disable runs every benchmark once as a smoke test: use small shapes then."""
    return bool(request.config.getoption("benchmark_disable"))


def shape_for(shape: LayerShape, smoke: bool) -> LayerShape:
    return LayerShape(N=min(shape.N, 2), C=shape.C, H=12, W=13, L=shape.L, k=shape.k) if smoke else shape
