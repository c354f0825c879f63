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
    from torch.utils import cpp_extension
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
except ImportError:  # pragma: no cover - explained to the user
    sys.exit(
        "igc_kernels: torch must be installed before building (and the build must see it):\n"
        "    pip install torch==2.13.0 && pip install -e . --no-build-isolation"
    )

ROOT = os.path.dirname(os.path.abspath(__file__))
CUDA_HOME_RESOLVED = None  # set by _extension() when CUDA sources are built


def _flag(name: str) -> bool:
    return os.environ.get(name, "0") not in ("", "0", "false", "False")


def _cuda_home():
    """The CUDA toolkit root: the first of CUDA_HOME, CUDA_PATH, torch's guess and /usr/local/cuda
    that has both bin/nvcc and the runtime headers. (torch guesses from `which nvcc`, which is wrong
    when nvcc on PATH is a wrapper script, e.g. /usr/local/bin/nvcc -> guess /usr/local.)"""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), CUDA_HOME, "/usr/local/cuda"]
    nvcc_on_path = shutil.which("nvcc")
    if nvcc_on_path:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc_on_path))))
    for home in candidates:
        if home and os.path.exists(os.path.join(home, "bin", "nvcc")) and os.path.exists(
            os.path.join(home, "include", "cuda_runtime_api.h")
        ):
            return home
    return None


def _cuda_config():
    """Decide whether CUDA sources are compiled, and say why."""
    if _flag("IGC_KERNELS_NO_CUDA"):
        return False, "disabled by IGC_KERNELS_NO_CUDA"
    if torch.version.cuda is None:
        return False, f"torch {torch.__version__} has no CUDA"
    home = _cuda_home()
    if home is None:
        return False, "no CUDA toolkit with nvcc and headers found (set CUDA_HOME)"
    # torch.utils.cpp_extension reads its module-level CUDA_HOME when it builds: point it at the
    # toolkit found above (its include/ and lib64/ then come with the nvcc that compiles).
    cpp_extension.CUDA_HOME = home
    os.environ["CUDA_HOME"] = home
    return True, f"torch CUDA {torch.version.cuda}, nvcc at {os.path.join(home, 'bin', 'nvcc')}"


def _torch_version():
    return tuple(int(v) for v in torch.__version__.split("+")[0].split(".")[:2])


def _wheel_cuda_include_dirs():
    """Header dirs of the nvidia-* wheels that a CUDA torch depends on (cusparse.h, cublas_v2.h,
    ... that ATen/cuda headers include). A bare toolkit (e.g. only nvcc + cudart) lacks them. They
    are passed with -isystem, which is searched after every -I, so the toolkit's own headers win
    wherever both have a file."""
    if CUDA_HOME_RESOLVED and os.path.exists(os.path.join(CUDA_HOME_RESOLVED, "include", "cusparse.h")):
        return []
    site = os.path.dirname(os.path.dirname(os.path.abspath(torch.__file__)))
    return sorted(d for d in glob.glob(os.path.join(site, "nvidia", "*", "include")) if os.path.isdir(d))


def _extension():
    debug = _flag("IGC_KERNELS_DEBUG")
    opt = ["-O0", "-g"] if debug else ["-O3"]
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")) + glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    # torch >= 2.14's headers need C++20 (ATen.h says so with #error); older ones build as C++17.
    std = "-std=c++20" if _torch_version() >= (2, 14) else "-std=c++17"
    cxx = opt + [std, "-fvisibility=hidden"]
    # The SIMD kernels pick their instruction set at run time (see csrc/cpu/), so the library is
    # built for the baseline x86-64 target and runs on any x86-64 CPU.
    # at::parallel_for is an inline template: with torch's OpenMP backend its `#pragma omp parallel`
    # is compiled into this library, and without -fopenmp it silently runs on one thread.
    # (GCC links the same libgomp that torch ships, so there is one OpenMP runtime.)
    openmp = ["-fopenmp"] if sys.platform.startswith("linux") else []
    cxx += openmp
    cuda_sources = sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")) + glob.glob(os.path.join("csrc", "cuda", "*.cpp")))
    with_cuda, why = _cuda_config()
    if _flag("IGC_KERNELS_FORCE_CUDA") and not with_cuda:
        sys.exit(f"igc_kernels: IGC_KERNELS_FORCE_CUDA=1 but CUDA cannot be built: {why}")
    with_cuda = with_cuda and bool(cuda_sources)
    global CUDA_HOME_RESOLVED
    CUDA_HOME_RESOLVED = cpp_extension.CUDA_HOME if with_cuda else None
    wheel_includes = _wheel_cuda_include_dirs() if with_cuda else []
    print(f"igc_kernels build: CPU kernels yes; CUDA kernels {'yes' if with_cuda else 'no'} ({why}); "
          f"debug={debug}; TORCH_CUDA_ARCH_LIST={os.environ.get('TORCH_CUDA_ARCH_LIST', '(default 8.0;9.0)')}"
          + (f"; CUDA_HOME={CUDA_HOME_RESOLVED}; extra CUDA headers from {wheel_includes}" if with_cuda else ""))
    common = dict(
        name="igc_kernels._C",
        include_dirs=[os.path.join(ROOT, "csrc")],
        py_limited_api=False,
    )
    if with_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
        isystem = [flag for d in wheel_includes for flag in ("-isystem", d)]
        nvcc = opt + [std, "--expt-relaxed-constexpr", "-lineinfo"] + isystem
        return CUDAExtension(
            sources=sources + cuda_sources,
            extra_compile_args={"cxx": cxx + isystem + ["-DIGC_WITH_CUDA"], "nvcc": nvcc + ["-DIGC_WITH_CUDA"]},
            extra_link_args=openmp,
            **common,
        )
    return CppExtension(sources=sources, extra_compile_args={"cxx": cxx}, extra_link_args=openmp, **common)


setup(
    packages=find_packages(include=["igc_kernels", "igc_kernels.*"]),
    package_data={"igc_kernels": ["weights/*.safetensors", "weights/*.json", "weights/*.md", "weights/*.csv", "data/**/*"]},
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
