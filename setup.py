"""Canonical build of igc_kernels._C.

CPU kernels are always built. CUDA kernels are built whenever the installed torch has CUDA and
`nvcc` is found (never gated on a visible GPU). Install with the pinned torch already present:

    pip install torch==2.13.0 && pip install -e . --no-build-isolation

Environment flags (namespaced):
    IGC_KERNELS_FORCE_CUDA=1   fail instead of skipping when CUDA cannot be built
    IGC_KERNELS_NO_CUDA=1      skip CUDA even when it could be built
    IGC_KERNELS_DEBUG=1        -O0 -g builds
    TORCH_CUDA_ARCH_LIST       CUDA architectures (default "8.0;9.0")
    MAX_JOBS                   parallel compile jobs (ninja)
"""

import glob
import os
import shutil
import sys

from setuptools import find_packages, setup

try:
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
except ImportError:  # pragma: no cover - explained to the user
    sys.exit(
        "igc_kernels: torch must be installed before building (and the build must see it):\n"
        "    pip install torch==2.13.0 && pip install -e . --no-build-isolation"
    )

ROOT = os.path.dirname(os.path.abspath(__file__))


def _flag(name: str) -> bool:
    return os.environ.get(name, "0") not in ("", "0", "false", "False")


def _cuda_config():
    """Decide whether CUDA sources are compiled, and say why."""
    if _flag("IGC_KERNELS_NO_CUDA"):
        return False, "disabled by IGC_KERNELS_NO_CUDA"
    if torch.version.cuda is None:
        return False, f"torch {torch.__version__} has no CUDA"
    nvcc = os.path.join(CUDA_HOME, "bin", "nvcc") if CUDA_HOME else shutil.which("nvcc")
    if not nvcc or not os.path.exists(nvcc):
        return False, "nvcc not found (set CUDA_HOME)"
    return True, f"torch CUDA {torch.version.cuda}, nvcc at {nvcc}"


def _extension():
    debug = _flag("IGC_KERNELS_DEBUG")
    opt = ["-O0", "-g"] if debug else ["-O3"]
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")) + glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    cxx = opt + ["-std=c++17", "-fvisibility=hidden"]
    # The SIMD kernels pick their instruction set at run time (see csrc/cpu/), so the library is
    # built for the baseline x86-64 target and runs on any x86-64 CPU.
    cuda_sources = sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")) + glob.glob(os.path.join("csrc", "cuda", "*.cpp")))
    with_cuda, why = _cuda_config()
    if _flag("IGC_KERNELS_FORCE_CUDA") and not with_cuda:
        sys.exit(f"igc_kernels: IGC_KERNELS_FORCE_CUDA=1 but CUDA cannot be built: {why}")
    with_cuda = with_cuda and bool(cuda_sources)
    print(f"igc_kernels build: CPU kernels yes; CUDA kernels {'yes' if with_cuda else 'no'} ({why}); "
          f"debug={debug}; TORCH_CUDA_ARCH_LIST={os.environ.get('TORCH_CUDA_ARCH_LIST', '(default 8.0;9.0)')}")
    common = dict(
        name="igc_kernels._C",
        include_dirs=[os.path.join(ROOT, "csrc")],
        py_limited_api=False,
    )
    if with_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
        nvcc = opt + ["-std=c++17", "--expt-relaxed-constexpr", "-lineinfo"]
        return CUDAExtension(
            sources=sources + cuda_sources,
            extra_compile_args={"cxx": cxx + ["-DIGC_WITH_CUDA"], "nvcc": nvcc + ["-DIGC_WITH_CUDA"]},
            **common,
        )
    return CppExtension(sources=sources, extra_compile_args={"cxx": cxx}, **common)


setup(
    packages=find_packages(include=["igc_kernels", "igc_kernels.*"]),
    package_data={"igc_kernels": ["weights/*.safetensors", "weights/*.json", "data/**/*"]},
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
