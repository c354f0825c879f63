"""Turn pytest-benchmark results into a Markdown table, a PNG plot and the README's benchmark table.

    pytest bench --benchmark-only --benchmark-json=bench/results/raw.json
    python bench/report.py bench/results/raw.json [--readme README.md]

Writes bench/results/<device>-<date>.md and .png. Each row names the device, the versions and the
dtype; speedups are ratios of medians measured in the same run.
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
                "rounds": int(b["stats"]["rounds"]),
                "gflop": float(info.get("gflop", 0.0)),
                "device": info.get("device", "cpu"),
                "dtype": info.get("dtype", ""),
                "torch": info.get("torch", ""),
                "threads": info.get("threads", ""),
            })
    return rows, machine


def _baseline(providers: list[str]) -> str | None:
    for p in providers:
        if p.startswith("fused-") or p == "igc_vdsr-fused":
            return p
    return None


def tables(rows: list[dict]) -> list[tuple[str, list[list[str]], dict[str, float]]]:
    """Per (group, shape, mode): Markdown rows and each provider's speedup of the fused path over it."""
    grouped = defaultdict(list)
    for r in rows:
        grouped[(r["group"], r["shape"], r["mode"])].append(r)
    out = []
    for (group, shape, mode), rs in sorted(grouped.items()):
        rs.sort(key=lambda r: r["median"])
        base = _baseline([r["provider"] for r in rs])
        base_t = next((r["median"] for r in rs if r["provider"] == base), None)
        title = f"{group}: {shape}, {mode}, {rs[0]['device']} {rs[0]['dtype']}, torch {rs[0]['torch']}, {rs[0]['threads']} threads"
        lines, speedups = [], {}
        for r in rs:
            gflops = r["gflop"] / r["median"] if r["gflop"] else float("nan")
            ratio = r["median"] / base_t if base_t else None
            if ratio is not None:
                speedups[r["provider"]] = ratio
            lines.append([r["provider"], f"{r['median'] * 1e3:.2f}", f"{gflops:.1f}",
                          f"{ratio:.2f}x" if ratio is not None else "-", str(r["rounds"])])
        out.append((title, lines, speedups))
    return out


def markdown(rows: list[dict], machine: dict) -> str:
    cpu = (machine.get("cpu") or {}).get("brand_raw", platform.processor() or platform.machine())
    parts = [f"Machine: {cpu}, Python {machine.get('python_version', platform.python_version())}. "
             "Time = median; 'fused is Nx faster' = this row's median / the fused row's median (same run)."]
    for title, lines, _ in tables(rows):
        parts.append(f"\n**{title}**\n")
        parts.append("| provider | median ms | GFLOP/s | fused is Nx faster | rounds |")
        parts.append("|---|---:|---:|---:|---:|")
        parts += ["| " + " | ".join(line) + " |" for line in lines]
    return "\n".join(parts) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [g for g in tables(rows) if g[2]]
    if not groups:
        return
    fig, axes = plt.subplots(len(groups), 1, figsize=(8, 2.2 * len(groups)), squeeze=False)
    for ax, (title, _, speedups) in zip(axes[:, 0], groups):
        names = list(speedups)
        ax.barh(names, [speedups[n] for n in names], color=["tab:green" if "fused" in n else "tab:gray" for n in names])
        ax.axvline(1.0, color="k", lw=0.8)
        ax.set_title(title, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.set_xlabel("time relative to the fused path (higher = fused is faster)", fontsize=7)
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
    stem = f"{device}-{dt.date.today().isoformat()}"
    args.out_dir.mkdir(parents=True, exist_ok=True)
    body = markdown(rows, machine)
    (args.out_dir / f"{stem}.md").write_text(body)
    plot(rows, args.out_dir / f"{stem}.png")
    print(body)
    print(f"wrote {args.out_dir / (stem + '.md')} and {args.out_dir / (stem + '.png')}")
    if args.readme:
        update_readme(args.readme, body, ", ".join(str(p) for p in args.json))
        print(f"updated {args.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
