"""The machine's fp32 FMA peak, the denominator of the benchmarks' "% of peak", measured where the
benchmarks run: bench/tools/fma_peak.c compiled with the C compiler (-march=native) and run on the
benchmark's thread count. The CI machine has changed under this project once already (a Zen 4 at
230 GFLOP/s on 2 cores, then an Intel Xeon with two 512-bit FMA units per core at 416), so a
constant would go stale.

Where no C compiler is found or the program fails, callers get None and fall back to
report.DEFAULT_PEAK_GFLOPS, and say so.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

SOURCE = Path(__file__).parent / "tools" / "fma_peak.c"


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
