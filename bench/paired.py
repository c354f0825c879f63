"""Speed ratios that the machine's drift cannot make: the peers interleaved round by round.

    python bench/paired.py [--mode inference train-step] [--rounds 15] [--warmup 8] [--out FILE.md]

pytest-benchmark times each provider's rounds one after another, so on a shared VM whose speed
drifts over seconds to minutes (this project's CI machine: the same fused inference took 74 ms
and, minutes later, 112 ms) a peer that ran in a slow stretch looks faster or slower than it is,
and the ratio of two medians inherits that. Here every round runs each network once, in an order
that rotates from round to round, and the ratio of a round is taken between runs a fraction of
a second apart: the median of those per-round ratios, and their quartiles, are the paired speedup.

The networks and shapes are the pytest-benchmark suite's (bench/network.py: IGC-VDSR on the fused
kernels and on stock ops, VDSR, eager and compiled, NCHW and channels_last; inference on a
256x256 Y image, a training step on 16 patches of 36x36), fp32 on the CPU with the suite's thread
count (at most 2). The fused network's rounds are the denominator: its eager run, or with
--fused igc_vdsr-fused-compile its compiled one.
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).parent))
from network import NETWORK_MODES, NETWORKS, first_run, make_network_provider  # noqa: E402

SIZES = {"inference": (1, 256, 256), "train-step": (16, 36, 36)}


def cpu_name() -> str:
    """The CPU's model name as the pytest-benchmark reports give it (py-cpuinfo's brand), else what
    the platform module says."""
    try:
        import cpuinfo

        return cpuinfo.get_cpu_info().get("brand_raw") or platform.processor() or platform.machine()
    except Exception:  # noqa: BLE001  (a name for a header: never worth failing the run over)
        return platform.processor() or platform.machine()


def quartiles(values: list[float]) -> tuple[float, float, float]:
    """First quartile, median and third quartile (the 'inclusive' method of the statistics module)."""
    if not values:
        raise ValueError("quartiles of no values")
    if len(values) == 1:
        return values[0], values[0], values[0]
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


def interleaved_times(runs: dict[str, Callable[[], None]], rounds: int, warmup: int,
                      clock: Callable[[], float] = time.perf_counter) -> dict[str, list[float]]:
    """Seconds per call of each run, `rounds` rounds after `warmup` untimed ones; round r starts
    at the (r mod n)-th run, so no run always follows the same other one."""
    if rounds < 1 or warmup < 0:
        raise ValueError(f"rounds must be >= 1 and warmup >= 0, got rounds={rounds}, warmup={warmup}")
    names = list(runs)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(warmup + rounds):
        for i in range(len(names)):
            name = names[(r + i) % len(names)]
            start = clock()
            runs[name]()
            if r >= warmup:
                times[name].append(clock() - start)
    return times


def paired_ratios(times: dict[str, list[float]], base: str) -> dict[str, list[float]]:
    """Per round, each run's time over `base`'s time in the same round."""
    if base not in times:
        raise ValueError(f"base {base!r} is not among the timed runs {sorted(times)}")
    return {n: [t / b for t, b in zip(ts, times[base])] for n, ts in times.items()}


def table(times: dict[str, list[float]], base: str, title: str) -> str:
    ratios = paired_ratios(times, base)
    lines = [f"**{title}**", "",
             f"| network | median ms | q1-q3 ms | {base} is Nx faster (per-round median) | q1-q3 of the per-round ratios |",
             "|---|---:|---:|---:|---:|"]
    for name in sorted(times, key=lambda n: statistics.median(times[n])):
        q1, med, q3 = quartiles(times[name])
        r1, rm, r3 = quartiles(ratios[name])
        span = "-" if name == base else f"{r1:.2f}-{r3:.2f}x"
        lines.append(f"| {name} | {med * 1e3:.2f} | {q1 * 1e3:.2f}-{q3 * 1e3:.2f} | {rm:.2f}x | {span} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", nargs="+", choices=NETWORK_MODES, default=list(NETWORK_MODES))
    ap.add_argument("--networks", nargs="+", choices=list(NETWORKS), default=list(NETWORKS))
    ap.add_argument("--fused", default="igc_vdsr-fused", choices=[n for n in NETWORKS if "fused" in n],
                    help="the denominator of the ratios (default igc_vdsr-fused)")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=8, help="untimed rounds first (compiled networks settle)")
    ap.add_argument("--size", default=None, help="HxW instead of the mode's default (smoke tests)")
    ap.add_argument("--out", type=Path, default=None, help="also write the Markdown here")
    args = ap.parse_args(argv)
    if args.rounds < 1 or args.warmup < 0:
        ap.error(f"--rounds must be >= 1 and --warmup >= 0, got {args.rounds} and {args.warmup}")
    networks = list(dict.fromkeys([args.fused, *args.networks]))
    torch.set_num_threads(min(2, torch.get_num_threads()))
    parts = [f"Paired ratios: {cpu_name()}, torch {torch.__version__}, "
             f"fp32, {torch.get_num_threads()} threads, {args.rounds} rounds after {args.warmup} warm-up rounds, "
             f"networks interleaved in rotating order ({dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC; "
             "`python bench/paired.py`).", ""]
    for mode in args.mode:
        n, h, w = SIZES[mode]
        if args.size:
            try:
                h, w = (int(v) for v in args.size.lower().split("x"))
            except ValueError:
                ap.error(f"--size must be HxW, got {args.size!r}")
        runs = {}
        for name in networks:
            runs[name] = make_network_provider(name, mode, n, h, w)
            if not first_run(name, runs[name]):  # compile and first touch before any round
                raise SystemExit(f"error: {name} did not compile (dynamo fell back to eager); its times would be eager")
        times = interleaved_times(runs, args.rounds, args.warmup)
        parts.append(table(times, args.fused, f"{mode}, {n}x1x{h}x{w}"))
        print(parts[-1], flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(parts))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
