"""Builds fused_rnn._C: the C++ sources always, the CUDA sources when the installed torch has
CUDA and nvcc is found (FUSED_RNN_CPU_ONLY=1 forces CPU only). FUSED_RNN_SANITIZE=1 builds with
AddressSanitizer and UndefinedBehaviorSanitizer (`make sanitize`).

Build against the installed torch: `pip install --no-build-isolation -e .` (or `make build`).
"""
import glob
import os

from setuptools import setup
from torch.utils import cpp_extension

ROOT = os.path.dirname(os.path.abspath(__file__))
CUDA_ARCHS = os.environ.get("FUSED_RNN_CUDA_ARCHS", "8.0;9.0")


def cpu_simd_flags():
    """ATen's Vectorized<T> picks its width at compile time: use the widest of AVX-512 and
    AVX2/FMA that this machine (the one that builds and will run the package) has. AVX-512
    needs the four extensions ATen's own AVX512 build assumes."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = set(f.read().split())
    except OSError:
        return []
    if {"avx512f", "avx512bw", "avx512vl", "avx512dq", "fma"} <= flags:
        return ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-mf16c",
                "-DCPU_CAPABILITY=AVX512", "-DCPU_CAPABILITY_AVX512"]
    if {"avx2", "fma"} <= flags:
        return ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"]
    return ["-DCPU_CAPABILITY=DEFAULT"]


def sanitizer_flags():
    """-fsanitize=address,undefined at -O1 with frame pointers (readable reports), when asked."""
    if os.environ.get("FUSED_RNN_SANITIZE") != "1":
        return []
    return ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined", "-fno-omit-frame-pointer", "-g", "-O1"]


def want_cuda():
    if os.environ.get("FUSED_RNN_CPU_ONLY") == "1":
        return False
    import torch

    return torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None


def extension():
    sources = ["csrc/ops.cpp", "csrc/recurrence.cpp"]
    cxx = ["-O3", "-fopenmp", "-Wno-unknown-pragmas"] + cpu_simd_flags() + sanitizer_flags()
    link = ["-fopenmp"] + sanitizer_flags()
    define = []
    if want_cuda():
        sources += ["csrc/ops_cuda.cpp"] + sorted(glob.glob("csrc/cuda/*.cu"))
        archs = [a.strip() for a in CUDA_ARCHS.replace(",", ";").split(";") if a.strip()]
        nvcc = ["-O3"] + [
            f"-gencode=arch=compute_{a.replace('.', '')},code=sm_{a.replace('.', '')}" for a in archs
        ]
        arch_names = ";".join("sm_" + a.replace(".", "") for a in archs)
        define = ["-DFUSED_RNN_WITH_CUDA", f'-DFUSED_RNN_CUDA_ARCHS="{arch_names}"']
        return cpp_extension.CUDAExtension(
            "fused_rnn._C",
            sources,
            extra_compile_args={"cxx": cxx + define, "nvcc": nvcc + define},
            extra_link_args=link,
        )
    return cpp_extension.CppExtension(
        "fused_rnn._C", sources, extra_compile_args={"cxx": cxx}, extra_link_args=link
    )


setup(
    ext_modules=[extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
)
