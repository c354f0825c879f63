"""The CPU microkernels alone, on data in L1, against one core's FMA peak.

    python bench/kernel_rates.py [--isa avx512 avx2 generic] [--calls 100000]

Builds bench/tools/kernel_rates.cpp with the library's kernels (csrc/cpu/kernels.cpp, the flags of
setup.py: -O3, instruction sets chosen at run time) and prints, per instruction set, the GFLOP/s of
the Winograd primary and of the secondary's rows GEMM at the IGC-VDSR layer's sizes (see the
.cpp), beside one core's fp32 FMA peak measured now (bench/peak.py). With avx512 it also runs the
secondary on AMX tiles at fp32 accuracy where the CPU has them (ISA "amxbf16x3",
bench/tools/amx_secondary.h: a probe of whether AMX would pay; the tool fails if its result is
less accurate than the AVX-512 kernel's). What the whole layer
reaches, with its packing, the Winograd input transform and its inputs streaming from memory, is
in bench/cpu_layer.py.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from peak import DEFAULT_PEAK_GFLOPS, measure_peak_gflops  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SOURCES = [ROOT / "bench" / "tools" / "kernel_rates.cpp", ROOT / "csrc" / "cpu" / "kernels.cpp"]
LINE = re.compile(r"^(\w+)\s+(\w+)\s+([0-9.]+) GFLOP/s$")


def build(out_dir: Path) -> Path:
    """Compiles the tool into out_dir; RuntimeError with the compiler's message if that fails."""
    cxx = shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    if cxx is None:
        raise RuntimeError("no C++ compiler (c++, g++ or clang++) on PATH")
    exe = out_dir / "kernel_rates"
    cmd = [cxx, "-O3", "-std=c++17", f"-I{ROOT / 'csrc' / 'cpu'}", *map(str, SOURCES), "-o", str(exe)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"building {SOURCES[0].name} failed:\n{done.stderr[-2000:]}")
    return exe


def measure(isas: list[str], calls: int) -> tuple[list[tuple[str, str, float]], list[str]]:
    """(kernel, isa, GFLOP/s) per case run, and the ISAs this CPU lacks."""
    with tempfile.TemporaryDirectory() as tmp:
        exe = build(Path(tmp))
        out = subprocess.run([str(exe), *isas, "--calls", str(calls)], check=True, capture_output=True,
                             text=True, timeout=600).stdout
    rates, missing = [], []
    for line in out.splitlines():
        m = LINE.match(line.strip())
        if m:
            rates.append((m.group(1), m.group(2), float(m.group(3))))
        elif "unavailable" in line:
            missing.append(line.split()[1])
    return rates, missing


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--isa", nargs="+", default=["avx512", "avx2", "generic"], choices=["avx512", "avx2", "generic"],
                    help="instruction sets to measure (default: all three)")
    ap.add_argument("--calls", type=int, default=100000, help="kernel calls per timed batch (default 100000)")
    args = ap.parse_args(argv)
    if args.calls < 1:
        ap.error(f"--calls must be a positive integer, got {args.calls}")
    rates, missing = measure(args.isa, args.calls)
    peak = measure_peak_gflops(1)
    note = "measured now by bench/tools/fma_peak.c"
    if not peak:  # the fallback is the 2-core CI machine's figure: half of it for one core
        peak, note = DEFAULT_PEAK_GFLOPS / 2, "could not measure it: half of peak.DEFAULT_PEAK_GFLOPS"
    print(f"One thread, data in L1, median of 5 batches of {args.calls} calls; "
          f"one core's fp32 FMA peak {peak:.0f} GFLOP/s ({note}).")
    print()
    print("| kernel | ISA | GFLOP/s | % of one core's peak |")
    print("|---|---|---:|---:|")
    for kernel, isa, gflops in rates:
        print(f"| {kernel} | {isa} | {gflops:.1f} | {100 * gflops / peak:.0f}% |")
    for isa in missing:
        print(f"| - | {isa} | unavailable on this CPU | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
