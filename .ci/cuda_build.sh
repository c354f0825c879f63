#!/usr/bin/env bash
# Proves, on a machine without a GPU, that the CUDA sources of igc_kernels compile and link as a
# torch extension, and that the built library registers the CUDA kernels of both ops.
#
#   bash .ci/cuda_build.sh [VENV]        (default VENV: <repo>/.venv-cuda)
#
# A separate virtual environment holds a CUDA build of torch so that the CPU test run keeps its
# CPU-only torch. The extension is built out of tree (temp dir), so the work tree's CPU build
# (igc_kernels/_C*.so) is never touched. Needs nvcc (CUDA 13) on PATH or under CUDA_HOME.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${1:-$ROOT/.venv-cuda}"
TORCH_PIN="torch==2.14.1"  # a CUDA 13 build; matches the machine's nvcc 13.0
START=$(date +%s)

if ! command -v nvcc >/dev/null 2>&1 && [ ! -x "${CUDA_HOME:-/usr/local/cuda}/bin/nvcc" ]; then
  echo "cuda_build: nvcc not found (PATH or CUDA_HOME); cannot prove the CUDA build" >&2
  exit 1
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "cuda_build: creating $VENV"
  python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.__version__.startswith('2.14.1') and torch.version.cuda else 1)" 2>/dev/null; then
  echo "cuda_build: installing $TORCH_PIN (+ numpy, ninja, setuptools, wheel) into $VENV"
  "$PY" -m pip install -q "$TORCH_PIN" numpy ninja setuptools wheel
fi
"$PY" -c "import torch; print(f'cuda_build: torch {torch.__version__}, CUDA {torch.version.cuda}')"
echo "cuda_build: venv ready after $(( $(date +%s) - START )) s"

# setup.py finds the toolkit (CUDA_HOME, else /usr/local/cuda: its lib64 has libcudart for the
# link) and the CUDA library headers that torch's headers include (cusparse.h, ...), which the
# CUDA 13 wheels ship under site-packages/nvidia/cu13/include (see _wheel_cuda_include_dirs).
export PATH="$VENV/bin:$PATH"
export IGC_KERNELS_FORCE_CUDA=1
export MAX_JOBS="${MAX_JOBS:-2}"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-8.0;9.0}"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/igc_cuda_build.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
# Copy only what the build reads; the copy has no _C*.so, so nothing stale can be imported.
mkdir -p "$WORK/src"
cp "$ROOT/setup.py" "$WORK/src/"
cp -r "$ROOT/csrc" "$WORK/src/csrc"
for f in pyproject.toml README.md LICENSE; do
  if [ -f "$ROOT/$f" ]; then cp "$ROOT/$f" "$WORK/src/"; fi
done
mkdir -p "$WORK/src/igc_kernels"
touch "$WORK/src/igc_kernels/__init__.py"

BUILD_START=$(date +%s)
(cd "$WORK/src" && "$PY" setup.py -q build_ext --build-temp "$WORK/temp" --build-lib "$WORK/lib")
echo "cuda_build: compiled and linked in $(( $(date +%s) - BUILD_START )) s"

SO="$(find "$WORK/lib" -name '_C*.so' | head -n 1)"
[ -n "$SO" ] || { echo "cuda_build: no _C*.so was produced" >&2; exit 1; }
"$PY" - "$SO" <<'PYEOF'
import sys

import torch

torch.ops.load_library(sys.argv[1])
missing = [
    f"{op}/{key}"
    for op in ("igc_kernels::igc_conv", "igc_kernels::igc_conv_backward")
    for key in ("CUDA",)
    if not torch._C._dispatch_has_kernel_for_dispatch_key(op, key)
]
if missing:
    sys.exit(f"cuda_build: dispatch check FAILED, no kernel for {missing}")
print(f"cuda_build: dispatch check passed: {sys.argv[1].rsplit('/', 1)[-1]} registers CUDA kernels "
      "for igc_kernels::igc_conv and igc_kernels::igc_conv_backward")
PYEOF
echo "cuda_build: total $(( $(date +%s) - START )) s"
