"""The machine's fp32 FMA peak, the denominator of the benchmarks' "% of peak", measured where the
benchmarks run: bench/tools/fma_peak.c compiled with the C compiler (-march=native) and run on the
benchmark's thread count. The CI machine has changed under this project twice already (a Zen 4 at
230 GFLOP/s on 2 cores, then an Intel Xeon with two 512-bit FMA units per core at 416, then a
Zen 3 with AVX2 only at 198), so a constant would go stale.

benchmark_peak() is what the benchmark scripts call: the measured peak, or DEFAULT_PEAK_GFLOPS where
no C compiler is found or the program fails, with a note saying which.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

SOURCE = Path(__file__).parent / "tools" / "fma_peak.c"

# The fallback where the peak cannot be measured: the current 2-core CI machine (AMD EPYC Zen 3,
# AVX2: two 256-bit FMA units per core), where `bench/tools/fma_peak.c 2` measured 198 GFLOP/s (100
# on one core). Its predecessors: an Intel Xeon with AVX-512 (416), a Zen 4 (230).
DEFAULT_PEAK_GFLOPS = 198.0


def measure_peak_gflops(threads: int) -> float | None:
    """fp32 FMA GFLOP/s of `threads` threads running only FMAs, or None where it cannot be measured."""
    if not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive int, got {threads!r}")
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None or not SOURCE.is_file():
        return None
    with tempfile.TemporaryDirectory() as tmp:
        exe = Path(tmp) / "fma_peak"
        try:
            subprocess.run([cc, "-O2", "-march=native", "-pthread", str(SOURCE), "-o", str(exe)], check=True,
                           capture_output=True, timeout=120)
            out = subprocess.run([str(exe), str(threads)], check=True, capture_output=True, text=True,
                                 timeout=120).stdout
        except (OSError, subprocess.SubprocessError):
            return None
    m = re.search(r"fp32 FMA peak, \d+ thread\(s\): ([0-9.]+) GFLOP/s", out)
    return float(m.group(1)) if m else None


def benchmark_peak(threads: int) -> tuple[float, str]:
    """The peak to divide by (measured, rounded to whole GFLOP/s, else DEFAULT_PEAK_GFLOPS) and a
    note for the report saying which it is."""
    measured = measure_peak_gflops(threads)
    if measured:
        return float(round(measured)), "measured now by bench/tools/fma_peak.c"
    return DEFAULT_PEAK_GFLOPS, "could not measure it: peak.DEFAULT_PEAK_GFLOPS"
