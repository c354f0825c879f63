"""Process settings for CPU runs: keep freed activation memory mapped.

PyTorch's CPU tensors come from the C library's ``malloc``. glibc gives big freed blocks back to
the operating system (blocks over its mmap threshold are unmapped when freed, and free memory at
the top of the heap is trimmed), so a network whose activations are tens of MB maps them afresh on
every call and takes a page fault, plus the zeroing of a page, for every 4 KiB it writes. On the
project's 2-core VM that cost IGC-VDSR up to 30% of its 256x256 inference time, and the share
varied from run to run with the host's memory management.

:func:`keep_freed_memory` tells glibc to serve blocks up to 32 MiB from its heap and to keep freed
heap memory mapped, so repeated calls reuse pages that are already faulted in. The process keeps
its high-water mark of memory instead of returning it, the usual trade of a caching allocator.
It changes the whole process (every tensor, every library), not only this package's ops: the
command-line tools and the benchmark harness call it (all providers of a benchmark then run under
the same setting); a program embedding the layers decides for itself.

The fused CPU op does not need it for its own outputs: they come from a cache of freed output
blocks inside the library (csrc/cpu/output_cache.h), bounded by
``IGC_KERNELS_CPU_OUTPUT_CACHE_MB`` (default 1024) or :func:`set_output_cache_limit`, and
inspected with :func:`output_cache_stats`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

# The largest mmap threshold glibc accepts on 64-bit (HEAP_MAX_SIZE / 2).
MAX_HEAP_BLOCK = 32 << 20


def keep_freed_memory(max_block: int = MAX_HEAP_BLOCK) -> bool:
    """Ask glibc to serve blocks below ``max_block`` bytes from the heap and never trim it.

    Returns True when the C library accepted both settings, False where it is not glibc (other
    platforms and C libraries are left as they are). Raises ValueError for a ``max_block`` outside
    1 .. 32 MiB, the range glibc accepts.
    """
    if not isinstance(max_block, int) or not 0 < max_block <= MAX_HEAP_BLOCK:
        raise ValueError(f"max_block must be an int in 1..{MAX_HEAP_BLOCK} (32 MiB, glibc's limit), got {max_block!r}")
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # only glibc has it
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok_mmap = mallopt(_M_MMAP_THRESHOLD, max_block) == 1
    ok_trim = mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1  # the largest int: never trim
    return ok_mmap and ok_trim


@functools.lru_cache(maxsize=None)
def _library() -> ctypes.CDLL:
    from . import _C  # the fused CPU op's library (loads it if nothing has yet)

    lib = ctypes.CDLL(_C.__file__)
    lib.igc_kernels_cpu_output_cache_stats.argtypes = [ctypes.POINTER(ctypes.c_int64)]
    lib.igc_kernels_cpu_output_cache_stats.restype = ctypes.c_int
    lib.igc_kernels_cpu_set_output_cache_limit.argtypes = [ctypes.c_int64]
    lib.igc_kernels_cpu_set_output_cache_limit.restype = ctypes.c_int64
    return lib


def output_cache_stats() -> dict[str, int]:
    """The fused CPU op's cache of freed output blocks.

    ``cached_bytes``: idle blocks held now; ``limit_bytes``: the most it may hold; ``reused``:
    outputs served from the cache so far; ``fresh``: outputs that needed a new block. Only outputs
    of at least 1 MiB use the cache. Raises ValueError when ``IGC_KERNELS_CPU_OUTPUT_CACHE_MB`` is
    malformed.
    """
    stats = (ctypes.c_int64 * 4)()
    if _library().igc_kernels_cpu_output_cache_stats(stats) != 0:
        raise ValueError(
            "IGC_KERNELS_CPU_OUTPUT_CACHE_MB must be a whole number of MiB >= 0 (0 turns the output "
            f"cache off), got {os.environ.get('IGC_KERNELS_CPU_OUTPUT_CACHE_MB')!r}"
        )
    return dict(zip(("cached_bytes", "limit_bytes", "reused", "fresh"), stats))


def set_output_cache_limit(nbytes: int) -> int:
    """Let the output cache hold at most ``nbytes`` idle bytes (0: cache nothing, and free what it
    holds); the least recently freed blocks beyond the limit go back to the system at once.
    Replaces ``IGC_KERNELS_CPU_OUTPUT_CACHE_MB``. Returns the previous limit in bytes."""
    if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes < 0:
        raise ValueError(f"nbytes must be an int >= 0, got {nbytes!r}")
    return int(_library().igc_kernels_cpu_set_output_cache_limit(nbytes))
