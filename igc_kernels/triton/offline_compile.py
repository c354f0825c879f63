"""Compile the Triton kernels for a GPU architecture without a GPU, and report their resources.

    python -m igc_kernels.triton.offline_compile --arch 90 --dtype fp16 --layout channels_last

The interpreter (TRITON_INTERPRET=1) checks what the kernels compute; this checks that they lower
to PTX and SASS for a real target (dot shapes and layouts, permutes, atomics) and shows registers
and spills per tile config, all on a CPU-only machine (Triton ships ptxas). Run it without
TRITON_INTERPRET: interpreted kernels cannot be compiled.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

# The paper's layer: L=24, M=M_in=4, 3x3 (see igc_conv._sizes for the packing constants).
SIZES = {"L": 24, "M": 4, "M_IN": 4, "KH": 3, "KW": 3, "G": 4, "QP": 8, "KP": 16, "MINP": 4, "MP": 4}
DTYPES = {"fp32": "fp32", "fp16": "fp16", "bf16": "bf16"}
UNIT_STRIDES = {"channels_last": ("sxc", "soc", "sgc", "src"), "nchw": ("sxw", "sow", "sgw", "srw")}


def _jit_function(kernel):
    fn = kernel
    while not isinstance(fn, triton.runtime.jit.JITFunction):
        if not hasattr(fn, "fn"):
            raise RuntimeError("the kernels were built for the interpreter; unset TRITON_INTERPRET")
        fn = fn.fn
    return fn


def compile_kernel(kernel, dtype: str, layout: str, consts: dict, num_warps: int, arch: int):
    """Compile one kernel specialisation the way a launch would: unit strides and 16-divisible
    pointers/strides specialised, every other int a runtime i32."""
    fn = _jit_function(kernel)
    consts = dict(consts)
    for name in UNIT_STRIDES[layout]:
        if name in fn.arg_names:
            consts[name] = 1
    signature, attrs = {}, {}
    for i, name in enumerate(fn.arg_names):
        if name in consts:
            signature[name] = "constexpr"
        elif name.endswith("_ptr"):
            signature[name] = "*fp32" if name.startswith(("gw", "gb")) else f"*{dtype}"
            attrs[(i,)] = [["tt.divisibility", 16]]
        else:
            signature[name] = "i32"
            if re.fullmatch(r"s[xgor][nchw]", name):
                attrs[(i,)] = [["tt.divisibility", 16]]
    src = ASTSource(fn=fn, signature=signature, attrs=attrs,
                    constexprs={(fn.arg_names.index(k),): v for k, v in consts.items()})
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": num_warps})


def resource_usage(compiled) -> str:
    """'REG:.. STACK:..' of the cubin, from the cuobjdump that ships with Triton ('' if absent)."""
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if not os.path.exists(tool) or "cubin" not in compiled.asm:
        return ""
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        out = subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True, check=False).stdout
    match = re.search(r"REG:\d+ STACK:\d+", out)
    return match.group(0) if match else ""


def specialisations(dtype: str):
    """(name, kernel, constexprs, num_warps) for each kernel at each of its autotune tiles."""
    from . import configs, kernels

    ieee = dtype == "fp32"
    fwd = dict(SIZES, HAS_B1=False, HAS_B2=True, HAS_RES=False, SHUFFLE=True, ACT=1, IEEE=ieee)
    bwd = dict(SIZES, HAS_B1=False, SHUFFLE=True, ACT=1, IEEE=ieee, NEED_GY1=True, NEED_B1=True,
               NEED_W2=True, NEED_B2=True)
    bwd_x = dict(SIZES, IEEE=ieee)
    block, warps = configs.w1_grad()
    for name, kernel, consts, tiles in (
        ("forward", kernels.igc_fwd_kernel, fwd, configs.forward()),
        ("backward", kernels.igc_bwd_kernel, bwd, configs.backward()),
        ("w1 grad", kernels.igc_bwd_w1_kernel, bwd_x, [triton.Config({"BLOCK_P": block}, num_warps=warps)]),
        ("input grad", kernels.igc_bwd_input_kernel, bwd_x, configs.input_grad()),
    ):
        for cfg in tiles:
            yield f"{name} {cfg.kwargs}", kernel, dict(consts, **cfg.kwargs), cfg.num_warps


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", type=int, default=90, help="compute capability as an int (90 = H100/H200)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp16")
    p.add_argument("--layout", choices=sorted(UNIT_STRIDES), default="channels_last")
    p.add_argument("--first", action="store_true", help="only the first tile config of each kernel")
    args = p.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        print("offline_compile: unset TRITON_INTERPRET (interpreted kernels cannot be compiled)", file=sys.stderr)
        return 2
    seen = set()
    for name, kernel, consts, warps in specialisations(args.dtype):
        if args.first and name.split(" {")[0] in seen:
            continue
        seen.add(name.split(" {")[0])
        compiled = compile_kernel(kernel, DTYPES[args.dtype], args.layout, consts, warps, args.arch)
        print(f"sm_{args.arch} {args.dtype} {args.layout} {name} warps={warps}: {resource_usage(compiled)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
