"""igc_kernels.runtime: the allocator setting of the command-line tools and benchmarks."""

import platform

import pytest
import torch

from igc_kernels.runtime import MAX_HEAP_BLOCK, keep_freed_memory


@pytest.mark.parametrize("bad", [0, -1, MAX_HEAP_BLOCK + 1, 1.5, "32M"])
def test_rejects_block_sizes_glibc_refuses(bad):
    with pytest.raises(ValueError, match="max_block must be an int in 1..33554432"):
        keep_freed_memory(bad)


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_glibc_accepts_and_tensors_still_work():
    assert keep_freed_memory() is True
    # Allocations across the threshold, freed and made again, still hold what is written.
    for numel in (1 << 10, (MAX_HEAP_BLOCK // 4) - 1024, (MAX_HEAP_BLOCK // 4) + 1024):
        t = torch.arange(numel, dtype=torch.float32)
        assert t[-1].item() == numel - 1
        del t
