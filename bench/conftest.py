import os

import pytest
import torch
from providers import LayerShape

from igc_kernels.runtime import keep_freed_memory


def pytest_configure(config):
    torch.set_num_threads(min(2, torch.get_num_threads()))
    # By default every provider runs as `import torch` leaves the process: glibc unmaps freed
    # activations, so paths that allocate more intermediates also take more page faults.
    # IGC_BENCH_KEEP_FREED_MEMORY=1 measures all of them with freed memory kept mapped instead
    # (igc_kernels/runtime.py), the setting of the project's command-line tools.
    if os.environ.get("IGC_BENCH_KEEP_FREED_MEMORY") == "1":
        keep_freed_memory()


@pytest.fixture
def smoke(request) -> bool:
    """--benchmark-disable runs every benchmark once as a smoke test: use small shapes then."""
    return bool(request.config.getoption("benchmark_disable"))


def shape_for(shape: LayerShape, smoke: bool) -> LayerShape:
    return LayerShape(N=min(shape.N, 2), C=shape.C, H=12, W=13, L=shape.L, k=shape.k) if smoke else shape
