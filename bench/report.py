"""Turn pytest-benchmark results into a Markdown table, a PNG plot and the README's benchmark table.

    pytest bench --benchmark-only --benchmark-json=bench/results/raw.json
    python bench/report.py bench/results/raw.json [--readme README.md]

Writes bench/results/<device>-<date>.md and .png (the date the benchmarks ran, from the results).
Each row names the device, the versions and the dtype; speedups are ratios of medians measured in
the same run. Each row also gives the spread of its rounds (first to third quartile) and each
speedup the range those spreads allow (the peer's first quartile over the fused path's third, to
the peer's third over the fused path's first): on a shared machine whose speed drifts during a
run, a ratio whose range stays above a target is one the noise did not make. "% of peak" is the achieved
GFLOP/s (useful FLOPs of the layer or network: the fused path's recompute is not counted) over the
FLOP floor's rate, --peak-gflops (default: this machine's fp32 FMA peak on the benchmark's thread
count, measured now by bench/tools/fma_peak.c through bench/peak.py; DEFAULT_PEAK_GFLOPS where it
cannot be measured); the plot shows it beside the speedups. Make the report on the machine that ran
the benchmarks, or pass --peak-gflops.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import re
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from peak import DEFAULT_PEAK_GFLOPS, benchmark_peak  # noqa: E402

README_START = "<!-- bench:start -->"
README_END = "<!-- bench:end -->"


def load_rows(paths: list[Path]) -> tuple[list[dict], dict]:
    """One row per benchmark: group, provider, mode, shape, median seconds, GFLOP, device info."""
    rows, machine = [], {}
    for path in paths:
        data = json.loads(path.read_text())
        machine = data.get("machine_info", machine)
        for b in data["benchmarks"]:
            params = b.get("params") or {}
            info = b.get("extra_info") or {}
            provider = params.get("provider") or params.get("network") or b["name"]
            rows.append({
                "group": b["name"].split("[")[0],
                "provider": str(provider),
                "mode": str(params.get("mode", "")),
                "shape": str(info.get("shape", params.get("shape", ""))),
                "median": float(b["stats"]["median"]),
                # Quartiles of the rounds (pytest-benchmark always writes them; the median otherwise).
                "q1": float(b["stats"].get("q1", b["stats"]["median"])),
                "q3": float(b["stats"].get("q3", b["stats"]["median"])),
                "rounds": int(b["stats"]["rounds"]),
                "gflop": float(info.get("gflop", 0.0)),
                "device": info.get("device", "cpu"),
                "dtype": info.get("dtype", ""),
                "torch": info.get("torch", ""),
                "threads": info.get("threads", ""),
            })
    return rows, machine


def run_date(paths: list[Path]) -> dt.date:
    """The day the benchmarks ran (the latest results file's 'datetime', in UTC), so a report made
    later from committed results keeps their date; today where no file records one."""
    days = []
    for path in paths:
        stamp = json.loads(path.read_text()).get("datetime")
        if isinstance(stamp, str):
            try:
                days.append(dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")).date())
            except ValueError:
                pass
    return max(days) if days else dt.date.today()


def _baseline(providers: list[str]) -> str | None:
    for p in providers:
        if p.startswith("fused-") or p == "igc_vdsr-fused":
            return p
    return None


def tables(rows: list[dict], peak_gflops: float = DEFAULT_PEAK_GFLOPS
           ) -> list[tuple[str, list[list[str]], dict[str, float], dict[str, float]]]:
    """Per (group, shape, mode): Markdown rows, each provider's speedup of the fused path over it
    and each provider's achieved fraction of the FLOP peak."""
    grouped = defaultdict(list)
    for r in rows:
        grouped[(r["group"], r["shape"], r["mode"])].append(r)
    out = []
    for (group, shape, mode), rs in sorted(grouped.items()):
        rs.sort(key=lambda r: r["median"])
        base = _baseline([r["provider"] for r in rs])
        base_r = next((r for r in rs if r["provider"] == base), None)
        base_t = base_r["median"] if base_r else None
        title = f"{group}: {shape}, {mode}, {rs[0]['device']} {rs[0]['dtype']}, torch {rs[0]['torch']}, {rs[0]['threads']} threads"
        lines, speedups, fractions = [], {}, {}
        for r in rs:
            gflops = r["gflop"] / r["median"] if r["gflop"] else float("nan")
            ratio = r["median"] / base_t if base_t else None
            if ratio is not None:
                speedups[r["provider"]] = ratio
            if r["gflop"]:
                fractions[r["provider"]] = gflops / peak_gflops
            # The speedup if the peer sat at its fast quartile and the fused path at its slow one, to
            # the other way round; none for the fused row itself.
            span = "-"
            if base_r is not None and r is not base_r and base_r["q1"] > 0 and base_r["q3"] > 0:
                span = f"{r['q1'] / base_r['q3']:.2f}-{r['q3'] / base_r['q1']:.2f}x"
            lines.append([r["provider"], f"{r['median'] * 1e3:.2f}", f"{r['q1'] * 1e3:.2f}-{r['q3'] * 1e3:.2f}",
                          f"{gflops:.1f}", f"{100 * gflops / peak_gflops:.0f}%" if r["gflop"] else "-",
                          f"{ratio:.2f}x" if ratio is not None else "-", span, str(r["rounds"])])
        out.append((title, lines, speedups, fractions))
    return out


def markdown(rows: list[dict], machine: dict, peak_gflops: float = DEFAULT_PEAK_GFLOPS) -> str:
    cpu = (machine.get("cpu") or {}).get("brand_raw", platform.processor() or platform.machine())
    parts = [f"Machine: {cpu}, Python {machine.get('python_version', platform.python_version())}. "
             "Time = median, q1-q3 = its rounds' first to third quartile; 'fused is Nx faster' = this row's "
             "median / the fused row's median (same run), and its range = this row's q1 / the fused row's q3 "
             "to this row's q3 / the fused row's q1; "
             f"% of peak = GFLOP/s / {peak_gflops:g} GFLOP/s (the FLOP floor's rate; dense rows count the "
             "dense conv's own FLOPs)."]
    for title, lines, _, _ in tables(rows, peak_gflops):
        parts.append(f"\n**{title}**\n")
        parts.append("| provider | median ms | q1-q3 ms | GFLOP/s | % of peak | fused is Nx faster | range | rounds |")
        parts.append("|---|---:|---:|---:|---:|---:|---:|---:|")
        parts += ["| " + " | ".join(line) + " |" for line in lines]
    return "\n".join(parts) + "\n"


def plot(rows: list[dict], path: Path, peak_gflops: float = DEFAULT_PEAK_GFLOPS) -> None:
    """Per group: speedup bars (left) and achieved fraction of the FLOP peak (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [g for g in tables(rows, peak_gflops) if g[2]]
    if not groups:
        return
    fig, axes = plt.subplots(len(groups), 2, figsize=(12, 2.2 * len(groups)), squeeze=False)
    for (ax, ax2), (title, _, speedups, fractions) in zip(axes, groups):
        names = list(speedups)
        colors = ["tab:green" if "fused" in n else "tab:gray" for n in names]
        ax.barh(names, [speedups[n] for n in names], color=colors)
        ax.axvline(1.0, color="k", lw=0.8)
        ax.set_title(title, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.set_xlabel("time relative to the fused path (higher = fused is faster)", fontsize=7)
        ax2.barh(names, [100 * fractions.get(n, 0.0) for n in names], color=colors)
        ax2.set_xlim(0, max(100.0, 105 * max(fractions.values(), default=0.0)))
        ax2.set_title(f"achieved % of the {peak_gflops:g} GFLOP/s FLOP peak", fontsize=8)
        ax2.tick_params(labelsize=7)
        ax2.set_xlabel("% of peak (useful FLOPs; dense rows: the dense conv's own)", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def update_readme(readme: Path, body: str, source: str) -> None:
    text = readme.read_text()
    if README_START not in text or README_END not in text:
        raise SystemExit(f"{readme} has no {README_START} ... {README_END} markers")
    block = f"{README_START}\n{body}\n_Generated by `python bench/report.py` from `{source}`._\n{README_END}"
    readme.write_text(re.sub(re.escape(README_START) + ".*?" + re.escape(README_END), lambda _: block, text, flags=re.S))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("json", nargs="+", type=Path, help="pytest-benchmark JSON files (--benchmark-json)")
    ap.add_argument("--out-dir", type=Path, default=Path(__file__).parent / "results")
    ap.add_argument("--device", default=None, help="device name for the file name (default: from the results)")
    ap.add_argument("--readme", type=Path, default=None, help="README to update between the bench markers")
    ap.add_argument("--peak-gflops", type=float, default=None,
                    help="FLOP floor's rate for '%% of peak' (default: measured on this machine by "
                         f"bench/tools/fma_peak.c, else {DEFAULT_PEAK_GFLOPS:g})")
    args = ap.parse_args(argv)
    for p in args.json:
        if not p.is_file():
            print(f"error: no such results file: {p}", file=sys.stderr)
            return 2
    rows, machine = load_rows(args.json)
    if not rows:
        print("error: the results files hold no benchmarks (run with --benchmark-only, not --benchmark-disable)",
              file=sys.stderr)
        return 2
    device = args.device or rows[0]["device"]
    stem = f"{device}-{run_date(args.json).isoformat()}"
    args.out_dir.mkdir(parents=True, exist_ok=True)
    if args.peak_gflops is not None and args.peak_gflops <= 0:
        print(f"error: --peak-gflops must be positive, got {args.peak_gflops}", file=sys.stderr)
        return 2
    if args.peak_gflops is None:
        threads = [r["threads"] for r in rows if isinstance(r["threads"], int) and r["threads"] > 0]
        args.peak_gflops, note = benchmark_peak(max(threads) if threads else 1)
        print(f"peak: {args.peak_gflops:.0f} GFLOP/s fp32 ({note})")
    body = markdown(rows, machine, args.peak_gflops)
    (args.out_dir / f"{stem}.md").write_text(body)
    plot(rows, args.out_dir / f"{stem}.png", args.peak_gflops)
    print(body)
    print(f"wrote {args.out_dir / (stem + '.md')} and {args.out_dir / (stem + '.png')}")
    if args.readme:
        update_readme(args.readme, body, ", ".join(str(p) for p in args.json))
        print(f"updated {args.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
