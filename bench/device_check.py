"""One-call GPU check of the fused IGC backends: correctness and speed against every peer.

    pip install -e . --no-build-isolation
    python bench/device_check.py --out bench/results/device_check.md          # about 5 minutes on an H200
    python bench/device_check.py --quick --out /tmp/device_check.md            # fp16 only, smaller images

Sections (each runs even if an earlier one fails):
  1. environment: device, torch / CUDA / cuDNN / Triton versions, available backends;
  2. correctness of every fused backend (``triton``, and ``cuda`` when built) in fp32, fp16 and bf16,
     forward and every gradient, on odd shapes, against a float64 reference. fp32 must be within
     1e-4 relative; fp16/bf16 within 2x the error of PyTorch's own path in that dtype (both measured
     against float64; floor: one rounding in that dtype);
  3. torch.compile(fullgraph=True) of the Triton op, forward and backward;
  4. timings (medians of ``triton.testing.do_bench``) of forward and forward+backward at
     1x96x1080x1920 and 16x96x128x128: the fused backends (NCHW and channels_last inputs), the stock
     IGC block on cuDNN (NCHW and channels_last), torch.compile of it, dense nn.Conv2d(96, 96, 3)
     and the dense-equivalent conv, with achieved GB/s against the HBM floor;
  5. the network: x2 upscaling of a 1920x1080 frame in fp16 with IGC-VDSR on the fused kernel,
     on stock ops, and VDSR, the peers in NCHW and channels_last (bench/network.py).

The output is Markdown, printed and written to ``--out`` as it goes (a run cut short still leaves
what it measured). The helpers run on the CPU too (the Triton backend under TRITON_INTERPRET=1), which
is how the test suite checks this script without a GPU.
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from igc_kernels.ops import available_backends, dense_equivalent, igc_conv, igc_conv_reference
from igc_kernels.testing import IGCCase

HBM_TB_PER_S = 4.8  # H200 HBM3e peak; the floor of a layer is (bytes moved) / this
FUSED = ("triton", "cuda")
GRAD_NAMES = ("x", "w1", "b1", "w2", "b2", "residual")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

# Odd shapes, one per axis group: the layer of the paper with the timing's flags; strided
# channels_last with every optional input; a small generic layer (dilation, no shuffle).
CORRECTNESS_CASES = {
    "L24M4-odd-nchw": IGCCase(N=2, L=24, M_in=4, M=4, H=37, W=45, bias1=False),
    "L24M4-stride2-cl-residual": IGCCase(N=1, L=24, M_in=4, M=4, H=33, W=27, stride=(2, 2),
                                         channels_last=True, residual=True),
    "L5M3-dilated-noshuffle": IGCCase(N=2, L=5, M_in=2, M=3, H=17, W=13, stride=(1, 2), padding=(2, 1),
                                      dilation=(2, 1), shuffle=False, activation=0),
}
QUICK_CASES = ("L24M4-odd-nchw", "L5M3-dilated-noshuffle")
# Each case is a new kernel specialisation, i.e. compiles of every autotune config; fp16 gets all
# cases, fp32 (slow FMA-dot compiles) and bf16 (same kernels as fp16 but for the dtype) one each.
CASES_PER_DTYPE = {torch.float32: ("L24M4-odd-nchw",), torch.bfloat16: ("L24M4-stride2-cl-residual",)}


class Report:
    """Prints Markdown lines and mirrors them into a file as they come."""

    def __init__(self, path: str | None):
        self.path = Path(path) if path else None
        self.lines: list[str] = []
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text("")

    def __call__(self, line: str = "") -> None:
        print(line, flush=True)
        self.lines.append(line)
        if self.path:
            with self.path.open("a") as f:
                f.write(line + "\n")

    def table(self, header: list[str], rows: list[list[str]]) -> None:
        self("| " + " | ".join(header) + " |")
        self("|" + "|".join("---" for _ in header) + "|")
        for row in rows:
            self("| " + " | ".join(row) + " |")
        self()


# ----------------------------------------------------------------------------------- correctness


@dataclass
class CheckRow:
    backend: str
    dtype: str
    case: str
    tensor: str
    err: float  # max |fused - ref| / max |ref|, ref in float64
    torch_err: float  # the same for PyTorch's own path in this dtype
    limit: float
    ok: bool


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    expected = expected.detach().double()
    scale = float(expected.abs().max()) if expected.numel() else 0.0
    diff = float((actual.detach().double() - expected).abs().max()) if expected.numel() else 0.0
    return diff / max(scale, 1e-30)


def _run(fn: Callable, args: list, grad: torch.Tensor) -> dict[str, torch.Tensor]:
    """Forward, then backward of ``grad``; returns the output and the gradient of every input."""
    out = fn(args)
    out.backward(grad.to(out.dtype))
    got = {"out": out.detach()}
    for name, a in zip(GRAD_NAMES, args[:6]):
        if a is not None:
            got[name] = a.grad.detach()
    return got


def _inputs(args64: list, dtype: torch.dtype, channels_last: bool) -> list:
    out = []
    for i, a in enumerate(args64):
        if isinstance(a, torch.Tensor):
            a = a.detach().to(dtype)
            if i == 0 and channels_last:
                a = a.contiguous(memory_format=torch.channels_last)
            a = a.requires_grad_()
        out.append(a)
    return out


def _call(backend: str) -> Callable:
    def fn(a):
        x, w1, b1, w2, b2, res, L, stride, padding, dilation, shuffle, act = a
        return igc_conv(x, w1, w2, b1, b2, groups=L, stride=stride, padding=padding, dilation=dilation,
                        shuffle=shuffle, activation=act, residual=res, backend=backend)

    return fn


def check_case(backend: str, dtype: torch.dtype, case: IGCCase, device: str, name: str = "case",
               seed: int = 0) -> list[CheckRow]:
    """Forward and every gradient of ``backend`` in ``dtype`` against a float64 reference."""
    args64 = case.make(dtype=torch.float64, device=device, seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    grad = torch.randn(case.N, case.c_out, *case.out_hw, dtype=torch.float64, generator=gen).to(device)
    ref = _run(lambda a: igc_conv_reference(*a), _inputs(args64, torch.float64, case.channels_last), grad)
    stock = _run(lambda a: igc_conv_reference(*a), _inputs(args64, dtype, case.channels_last), grad)
    fused = _run(_call(backend), _inputs(args64, dtype, case.channels_last), grad)
    dname = str(dtype).replace("torch.", "")
    # One rounding in this dtype, relative to the largest value: the best any kernel can do.
    floor = {torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}.get(dtype, 0.0)
    rows = []
    for key in ref:
        err, torch_err = rel_err(fused[key], ref[key]), rel_err(stock[key], ref[key])
        limit = 1e-4 if dtype in (torch.float32, torch.float64) else max(2.0 * torch_err, floor)
        shape_ok = fused[key].shape == ref[key].shape
        rows.append(CheckRow(backend, dname, name, key, err, torch_err, limit, shape_ok and err <= limit))
    return rows


def correctness(report: Report, backends: list[str], dtypes: list[torch.dtype], cases: dict[str, IGCCase],
                device: str, deadline: float = math.inf) -> bool:
    all_ok = True
    for backend in backends:
        for dtype in dtypes:
            for cname, case in cases.items():
                if cname not in CASES_PER_DTYPE.get(dtype, (cname,)) and len(cases) > 1:
                    continue
                if time.monotonic() > deadline:
                    report(f"- skipped {backend} {dtype} {cname}: correctness time budget spent")
                    continue
                try:
                    rows = check_case(backend, dtype, case, device, cname)
                except Exception as exc:  # noqa: BLE001  (one failure must not hide the rest)
                    report(f"- **ERROR** {backend} {dtype} {cname}: `{type(exc).__name__}: {exc}`")
                    report("```\n" + traceback.format_exc(limit=4) + "```")
                    all_ok = False
                    continue
                bad = [r for r in rows if not r.ok]
                all_ok &= not bad
                report.table(
                    ["backend", "dtype", "case", "tensor", "rel. err", "PyTorch's err", "limit", ""],
                    [[r.backend, r.dtype, r.case, r.tensor, f"{r.err:.2e}", f"{r.torch_err:.2e}",
                      f"{r.limit:.2e}", "ok" if r.ok else "**FAIL**"] for r in rows],
                )
    return all_ok


def compile_check(report: Report, device: str) -> bool:
    """torch.compile(fullgraph=True) sees the Triton kernels: forward and backward match eager,
    for the op itself and for igc_conv(backend='triton') (which also traces the backend choice)."""
    case = CORRECTNESS_CASES["L24M4-stride2-cl-residual"]
    args64 = case.make(dtype=torch.float64, device=device, seed=3)
    grad = torch.randn(case.N, case.c_out, *case.out_hw, dtype=torch.float64, device=device)
    ok = True
    for label, fn in (("torch.ops.igc_kernels.igc_conv_triton", lambda a: torch.ops.igc_kernels.igc_conv_triton(*a)),
                      ("igc_conv(backend='triton')", _call("triton"))):
        try:
            eager = _run(fn, _inputs(args64, torch.float32, case.channels_last), grad)
            compiled = _run(torch.compile(fn, fullgraph=True), _inputs(args64, torch.float32, case.channels_last),
                            grad)
        except Exception as exc:  # noqa: BLE001  (report it, run the rest)
            report(f"- **ERROR** torch.compile of {label}: `{type(exc).__name__}: {exc}`")
            report("```\n" + traceback.format_exc(limit=6) + "```")
            ok = False
            continue
        errs = {k: rel_err(compiled[k], eager[k]) for k in eager}
        good = all(e <= 1e-5 for e in errs.values())
        ok &= good
        report(f"- {label}, fullgraph, fp32, compiled vs eager: "
               + ", ".join(f"{k} {e:.1e}" for k, e in errs.items()) + (" -- ok" if good else " -- **FAIL**"))
    report()
    return ok


# ----------------------------------------------------------------------------------------- timing


@dataclass(frozen=True)
class Shape:
    N: int
    C: int
    H: int
    W: int
    L: int = 24

    def __str__(self) -> str:
        return f"{self.N}x{self.C}x{self.H}x{self.W}"

    def activation_bytes(self, dtype: torch.dtype) -> int:
        return self.N * self.C * self.H * self.W * torch.empty((), dtype=dtype).element_size()


SHAPES = (Shape(1, 96, 1080, 1920), Shape(16, 96, 128, 128))
QUICK_SHAPES = (Shape(1, 96, 540, 960), Shape(16, 96, 128, 128))
MODES = ("forward", "forward+backward")
# Activations that a fused layer must move at least: forward reads x and writes out; the backward
# reads grad_out, x and out (the ReLU mask) and writes grad_x.
FLOOR_ACTIVATIONS = {"forward": 2, "forward+backward": 6}


def make_providers(shape: Shape, dtype: torch.dtype, device: str, backends: list[str],
                   compile_stock: bool = True) -> dict[str, tuple]:
    """name -> (fn(x) -> out, x, params): the layer as each peer computes it (ReLU, shuffle, b2)."""
    s, L = shape, shape.L
    M = s.C // L
    gen = torch.Generator().manual_seed(0)

    def rnd(*size, scale):
        return (torch.randn(*size, generator=gen) * scale).to(device=device, dtype=dtype)

    x = rnd(s.N, s.C, s.H, s.W, scale=1.0)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    w1 = rnd(s.C, M, 3, 3, scale=(M * 9) ** -0.5)
    w2 = rnd(s.C, L, 1, 1, scale=(2 / L) ** 0.5)
    b2 = rnd(s.C, scale=0.1)
    wd = rnd(s.C, s.C, 3, 3, scale=(2 / (s.C * 9)) ** 0.5)
    weq, beq = dense_equivalent(w1, None, w2, b2, L, True)
    weq_cl = weq.contiguous(memory_format=torch.channels_last)

    def fused(backend):
        return lambda inp: igc_conv(inp, w1, w2, None, b2, padding=1, activation="relu", backend=backend)

    def stock(inp):
        return igc_conv_reference(inp, w1, None, w2, b2, None, L, [1, 1], [1, 1], [1, 1], True, 1)

    def dense(inp):
        return F.relu(F.conv2d(inp, wd, b2, padding=1))

    def dense_eq(inp):
        return F.relu(F.conv2d(inp, weq_cl, beq, padding=1))

    igc_params = [w1, w2, b2]
    providers = {}
    for b in backends:
        providers[f"fused {b} (NCHW)"] = (fused(b), x, igc_params)
        providers[f"fused {b} (channels_last)"] = (fused(b), x_cl, igc_params)
    providers["stock IGC, cuDNN (NCHW)"] = (stock, x, igc_params)
    providers["stock IGC, cuDNN (channels_last)"] = (stock, x_cl, igc_params)
    if compile_stock:
        providers["torch.compile(stock IGC) (channels_last)"] = (torch.compile(stock), x_cl, igc_params)
    providers["dense nn.Conv2d 96->96 (NCHW)"] = (dense, x, [wd, b2])
    providers["dense nn.Conv2d 96->96 (channels_last)"] = (dense, x_cl, [wd, b2])
    providers["dense-equivalent conv (channels_last)"] = (dense_eq, x_cl, [weq_cl, beq])
    # Every peer's forward+backward computes the weight gradients too (the providers close over
    # these leaves; forward timings run under no_grad).
    for t in (w1, w2, b2, wd, weq_cl, beq):
        t.requires_grad_(True)
    return providers


def time_provider(fn: Callable, x: torch.Tensor, params: list[torch.Tensor], mode: str, quick: bool) -> float:
    """Median milliseconds of one call (do_bench: warm-up, then repeats, with an L2 flush)."""
    from triton.testing import do_bench

    warmup, rep = (10, 40) if quick else (25, 100)
    if mode == "forward":

        def run():
            with torch.no_grad():
                fn(x)

        run()  # compile / autotune outside the timed region
        return do_bench(run, warmup=warmup, rep=rep, return_mode="median")
    x_leaf = x.detach().requires_grad_()
    with torch.no_grad():
        grad = torch.randn_like(fn(x))

    def run():
        fn(x_leaf).backward(grad)

    run()
    return do_bench(run, warmup=warmup, rep=rep, grad_to_none=[x_leaf, *params], return_mode="median")


def timing(report: Report, shapes, dtypes, device: str, backends: list[str], quick: bool, deadline: float) -> None:
    for dtype in dtypes:  # dtype-major: if the budget runs out, the first dtype is complete
        for shape in shapes:
            try:
                providers = make_providers(shape, dtype, device, backends)
            except Exception as exc:  # noqa: BLE001  (report it, run the rest)
                report(f"- **ERROR** building inputs for {shape} {dtype}: `{type(exc).__name__}: {exc}`")
                continue
            for mode in MODES:
                floor_bytes = FLOOR_ACTIVATIONS[mode] * shape.activation_bytes(dtype)
                floor_ms = floor_bytes / (HBM_TB_PER_S * 1e12) * 1e3
                results: dict[str, float] = {}
                for name, (fn, x, params) in providers.items():
                    if time.monotonic() > deadline:
                        report(f"- skipped {name} ({shape}, {dtype}, {mode}): time budget spent")
                        continue
                    try:
                        results[name] = time_provider(fn, x, params, mode, quick)
                    except Exception as exc:  # noqa: BLE001  (report it, run the rest)
                        report(f"- **ERROR** {name} ({shape}, {dtype}, {mode}): `{type(exc).__name__}: {exc}`")
                    finally:
                        torch.cuda.empty_cache()
                report(f"### {shape}, {str(dtype).replace('torch.', '')}, {mode}")
                report(f"HBM floor: {FLOOR_ACTIVATIONS[mode]} activations = {floor_bytes / 1e9:.3f} GB "
                       f"-> {floor_ms:.3f} ms at {HBM_TB_PER_S} TB/s")
                report()
                summarize(report, results, floor_bytes, floor_ms)
            del providers
            torch.cuda.empty_cache()


def summarize(report: Report, results: dict[str, float], floor_bytes: float, floor_ms: float) -> None:
    if not results:
        return
    fused = {k: v for k, v in results.items() if k.startswith("fused")}
    peers = {k: v for k, v in results.items() if not k.startswith("fused")}
    best_fused = min(fused.values()) if fused else math.nan
    rows = []
    for name, ms in sorted(results.items(), key=lambda kv: kv[1]):
        gbs = floor_bytes / (ms * 1e-3) / 1e9
        rows.append([name, f"{ms:.3f}", f"{gbs:.0f}", f"{100 * floor_ms / ms:.0f}%",
                     f"{ms / best_fused:.2f}x" if fused else "-"])
    report.table(["provider", "median ms", "GB/s (floor bytes)", "of HBM floor", "time / best fused"], rows)
    stock = {k: v for k, v in peers.items() if k.startswith(("stock", "torch.compile"))}
    dense = {k: v for k, v in peers.items() if k.startswith("dense")}
    for label, group in (("fastest stock IGC peer", stock), ("fastest dense conv", dense)):
        if fused and group:
            name, ms = min(group.items(), key=lambda kv: kv[1])
            report(f"- best fused vs {label} ({name}): **{ms / best_fused:.2f}x** faster")
    if fused:
        report(f"- best fused at **{100 * floor_ms / best_fused:.0f}%** of the HBM floor")
    report()


# ------------------------------------------------------------------------------------------- main


def environment(report: Report, device: str) -> list[str]:
    import importlib.util

    triton_version = "not installed"
    if importlib.util.find_spec("triton") is not None:
        import triton

        triton_version = triton.__version__
    report(f"- device: {torch.cuda.get_device_name() if device == 'cuda' else platform.processor() or 'cpu'}")
    report(f"- torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, "
           f"Triton {triton_version}, Python {platform.python_version()}")
    report(f"- TF32 allowed in cuDNN convs (PyTorch default): {torch.backends.cudnn.allow_tf32}")
    fused = [b for b in FUSED if b in available_backends(device, torch.float16)]
    report(f"- fused backends available: {', '.join(fused) or 'none'}")
    report(f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    report()
    return fused


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", help="also write the Markdown report to this file (e.g. $OUT/device_check.md)")
    p.add_argument("--quick", action="store_true", help="fp16 only, fewer cases, a half-size image")
    p.add_argument("--dtypes", default=None,
                   help="comma-separated timing dtypes (fp32,fp16,bf16); default fp16,bf16 (quick: fp16)")
    p.add_argument("--budget-s", type=float, default=None,
                   help="stop starting new checks after this many seconds (default 330, quick 150); "
                        "correctness gets the first half")
    p.add_argument("--skip", default="",
                   help="comma-separated sections to skip: correctness,compile,timing,network")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    start = time.monotonic()
    report = Report(args.out)
    if not torch.cuda.is_available():
        print("device_check: no CUDA device is visible; this script checks and times the GPU backends",
              file=sys.stderr)
        return 2
    device = "cuda"
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    budget = args.budget_s if args.budget_s is not None else (150.0 if args.quick else 330.0)
    report(f"# Device check{' (quick)' if args.quick else ''}")
    report()
    fused = environment(report, device)
    ok = True
    if "correctness" not in skip:
        report("## Correctness (relative to the largest reference value, reference in float64)")
        report()
        dtypes = [torch.float16] if args.quick else [torch.float32, torch.float16, torch.bfloat16]
        cases = {k: v for k, v in CORRECTNESS_CASES.items() if not args.quick or k in QUICK_CASES}
        ok &= correctness(report, fused, dtypes, cases, device, start + 0.5 * budget)
    if "compile" not in skip and "triton" in fused:
        report("## torch.compile")
        report()
        try:
            ok &= compile_check(report, device)
        except Exception as exc:  # noqa: BLE001  (report it, run the rest)
            report(f"- **ERROR** torch.compile of the Triton op: `{type(exc).__name__}: {exc}`")
            report("```\n" + traceback.format_exc(limit=6) + "```")
            ok = False
    if "timing" not in skip:
        report("## Timings (median of triton.testing.do_bench, ms)")
        report()
        names = args.dtypes.split(",") if args.dtypes else (["fp16"] if args.quick else ["fp16", "bf16"])
        dtypes = [DTYPES[n.strip()] for n in names]
        timing(report, QUICK_SHAPES if args.quick else SHAPES, dtypes, device, fused, args.quick, start + budget)
    if "network" not in skip:
        # The whole network (issue: x2 upscaling of a 1080p frame, IGC-VDSR in fp16, <= 5 ms goal).
        report("## Network: IGC-VDSR on the fused kernel vs on stock ops vs VDSR")
        report()
        try:
            from network import gpu_network_table

            # Each peer also in channels_last, cuDNN's faster layout for fp16 convs on tensor cores.
            report(gpu_network_table(torch.float16, networks=("igc_vdsr-fused", "igc_vdsr-stock", "igc_vdsr-stock-cl",
                                                              "vdsr", "vdsr-cl")))
        except Exception as exc:  # noqa: BLE001  (report it, keep the rest)
            report(f"- **ERROR** network timing: `{type(exc).__name__}: {exc}`")
    report(f"Total {time.monotonic() - start:.0f} s; correctness {'passed' if ok else '**FAILED**'}.")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
