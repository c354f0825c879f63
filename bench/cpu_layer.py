"""One IGC layer on the CPU, side by side in one run: the fused kernel against its stock peers.

    python bench/cpu_layer.py [--shape 1x96x256x256] [--L 24] [--repeats 20] [--threads 2]

Peers (bench/providers.py): the fused kernel (backend "cpu"), the stock block (grouped conv +
view/transpose + grouped 1x1 + shuffle + ReLU) in NCHW and channels_last, torch.compile of the
stock block, and the dense nn.Conv2d(C, C, 3, padding=1) + ReLU that the IGC layer replaces.
fp32, k=3, padding 1, ReLU. Times are medians of --repeats calls after warm-up; the machine is
shared, so read the ratios (all measured in this run), not the absolute times. By default the
process keeps glibc's allocator defaults (freed activations are unmapped, so each new one is
page-faulted again: a cost that grows with the number of intermediates a path allocates);
--keep-freed-memory runs every provider with freed memory kept mapped instead
(igc_kernels.runtime.keep_freed_memory, the setting of the command-line tools).

FLOP counts: forward = 2 x MACs (5,760 MACs per pixel for C=96, L=24, M=4); forward+backward =
3 x forward (grad x and grad w of both convs; the fused backward also recomputes the primary conv,
which is not counted). The fused forward computes the primary conv with Winograd F(4,3) down the
columns (6 instead of 12 multiply-adds per tap and four output rows), so it does fewer
multiply-adds than the count it is credited with (4,032 instead of 5,760 per pixel here). The dense conv is shown at the IGC layer's FLOP count too, so its GFLOP/s
column compares useful work; its own rate is in the note below the table.

Peak memory of forward+backward: each provider runs in a fresh subprocess; after one warm-up
call, freed heap is returned to the OS (malloc_trim), the kernel's peak-RSS counter is reset
(/proc/self/clear_refs = 5) and the peak RSS (VmHWM) of one more forward+backward call, minus the
RSS before it, is reported. It counts everything the call allocates: outputs, gradients, saved
activations and temporaries (inputs and weights exist before and are not counted).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from providers import LayerShape, make_provider  # noqa: E402
from peak import benchmark_peak  # noqa: E402

from igc_kernels.runtime import keep_freed_memory  # noqa: E402
PROVIDERS = [
    ("fused-cpu", "fused kernel (backend cpu)"),
    ("stock-nchw", "stock block, NCHW"),
    ("stock-cl", "stock block, channels_last"),
    ("stock-compile", "torch.compile(stock block)"),
    ("dense", "dense nn.Conv2d + ReLU"),
]
MEMORY_PROVIDERS = ("fused-cpu", "stock-nchw", "stock-cl")


def parse_shape(text: str) -> tuple[int, int, int, int]:
    parts = [int(v) for v in text.lower().split("x")]
    if len(parts) != 4 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"--shape must be NxCxHxW with positive sizes, got {text!r}")
    return tuple(parts)  # type: ignore[return-value]


def median_ms(run, mode: str, repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        run(mode)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run(mode)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure_peak_memory(name: str, shape: LayerShape) -> float:
    """Child-process body: extra peak RSS (MiB) of one forward+backward call."""
    import ctypes
    import gc

    run = make_provider(name, shape)
    run("forward+backward")  # warm-up (allocations of the first call, lazy init)
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base = _status_kib("VmRSS")
    run("forward+backward")
    return (_status_kib("VmHWM") - base) / 1024.0


def peak_memory_subprocess(name: str, args) -> str:
    cmd = [sys.executable, os.path.abspath(__file__), "--memory-child", name, "--shape",
           "x".join(map(str, args.shape)), "--L", str(args.L), "--threads", str(args.threads)]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        return f"{json.loads(res.stdout.strip().splitlines()[-1])['mib']:.0f} MiB"
    except Exception as exc:  # report, do not hide: the cell says why
        return f"n/a ({type(exc).__name__})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", type=parse_shape, default=(1, 96, 256, 256), help="NxCxHxW (default 1x96x256x256)")
    ap.add_argument("--L", type=int, default=24, help="primary groups (default 24)")
    ap.add_argument("--repeats", type=int, default=20, help="timed calls per provider and mode (>= 10)")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    ap.add_argument("--skip", default="", help="comma-separated providers to leave out (e.g. stock-compile)")
    ap.add_argument("--keep-freed-memory", action="store_true",
                    help="keep freed memory mapped for every provider (igc_kernels.runtime; default: glibc's defaults)")
    ap.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    N, C, H, W = args.shape
    shape = LayerShape(N=N, C=C, H=H, W=W, L=args.L, k=3)
    if args.memory_child:
        print(json.dumps({"mib": measure_peak_memory(args.memory_child, shape)}))
        return
    if args.repeats < 10:
        ap.error("--repeats must be >= 10")
    # All timed providers share this process and its allocator setting (igc_kernels/runtime.py);
    # the peak-memory children keep glibc's defaults.
    if args.keep_freed_memory:
        keep_freed_memory()

    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    results = {}
    for name, _ in PROVIDERS:
        if name in skip:
            continue
        run = make_provider(name, shape)
        results[name] = {mode: median_ms(run, mode, args.repeats, warmup=3) for mode in ("forward", "forward+backward")}
        print(f"  measured {name}: " + ", ".join(f"{m} {t:.2f} ms" for m, t in results[name].items()), file=sys.stderr)
    memory = {name: peak_memory_subprocess(name, args) for name in MEMORY_PROVIDERS if name not in skip}

    from igc_kernels import _C  # noqa: F401
    import ctypes

    lib = ctypes.CDLL(_C.__file__)
    lib.igc_kernels_cpu_isa.restype = ctypes.c_char_p
    isa = lib.igc_kernels_cpu_isa().decode()

    PEAK_GFLOPS, peak_note = benchmark_peak(args.threads)
    fwd_flops = shape.flops("forward")
    px = N * H * W
    print(f"## IGC layer on CPU: {shape}, k=3, L={args.L}, M={shape.M}, ReLU, fp32, {args.threads} threads\n")
    allocator = "freed memory kept mapped (--keep-freed-memory)" if args.keep_freed_memory else "glibc defaults"
    print(f"torch {torch.__version__}, fused kernel ISA: {isa}; median of {args.repeats} after 3 warm-up calls; "
          f"allocator: {allocator}.\n")
    print(f"Floors (DESIGN.md section 3): {shape.macs_per_pixel:,} MACs/pixel -> {fwd_flops / 1e9:.3f} GFLOP per "
          f"forward = {fwd_flops / PEAK_GFLOPS / 1e6:.2f} ms at the {PEAK_GFLOPS:.0f} GFLOP/s fp32 FMA peak ({peak_note}); "
          f"memory floor in + out = {2 * C * 4} B/pixel = {2 * C * 4 * px / 1e6:.1f} MB per forward.\n")
    fused = results.get("fused-cpu")
    print("| path | forward ms | fwd GFLOP/s | fwd vs fused | fwd+bwd ms | fwd+bwd GFLOP/s | fwd+bwd vs fused |"
          " % of peak (fwd) | peak mem fwd+bwd |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, label in PROVIDERS:
        if name not in results:
            continue
        r = results[name]
        cells = [label]
        for mode in ("forward", "forward+backward"):
            t = r[mode]
            gflops = shape.flops(mode) / (t * 1e-3) / 1e9
            ratio = f"{t / fused[mode]:.1f}x" if fused else "-"
            cells += [f"{t:.2f}", f"{gflops:.1f}", ratio]
        cells.append(f"{100 * shape.flops('forward') / (r['forward'] * 1e-3) / 1e9 / PEAK_GFLOPS:.0f}%")
        cells.append(memory.get(name, "-"))
        print("| " + " | ".join(cells) + " |")
    if "dense" in results:
        dense_rate = shape.dense_flops("forward") / (results["dense"]["forward"] * 1e-3) / 1e9
        print(f"\nThe dense conv does {shape.dense_flops('forward') / fwd_flops:.1f}x the FLOPs; its own rate is "
              f"{dense_rate:.0f} GFLOP/s (forward).")
    print("\nGFLOP/s count the IGC layer's FLOPs (forward 2 x MACs, forward+backward 3 x forward). The fused "
          "forward's Winograd primary (F(4,3) down the columns) does fewer multiply-adds than that count "
          f"({winograd_macs_per_pixel(shape):,} instead of {shape.macs_per_pixel:,} per pixel at this shape), so its "
          "rate and % of peak are effective ones. Peak memory: extra peak RSS of one forward+backward call in a "
          "fresh process (see the module docstring).")


def winograd_macs_per_pixel(shape) -> int:
    """Multiply-adds per pixel of the fused forward with its Winograd primary (k=3): the primary's
    k x k taps per pair of channels become k taps x 6 components per 4 output rows."""
    return shape.C * shape.M * shape.k * 6 // 4 + shape.C * shape.L


if __name__ == "__main__":
    main()
