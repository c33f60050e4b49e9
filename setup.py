"""Builds fused_rnn._C: the C++ sources always, the CUDA sources when the installed torch has
CUDA and nvcc is found (FUSED_RNN_CPU_ONLY=1 forces CPU only). FUSED_RNN_SANITIZE=1 builds with
AddressSanitizer and UndefinedBehaviorSanitizer (`make sanitize`).

Build against the installed torch: `pip install --no-build-isolation -e .` (or `make build`).
"""
import glob
import os
import platform

from setuptools import setup
from torch.utils import cpp_extension

ROOT = os.path.dirname(os.path.abspath(__file__))
CUDA_ARCHS = os.environ.get("FUSED_RNN_CUDA_ARCHS", "8.0;9.0")


# The CPU levels the kernels are built for, as ATen's CPU_CAPABILITY names them: one extension
# module each (fused_rnn._C_<level>), and fused_rnn/_ops.py loads the widest that ATen's own
# choice allows at run time (torch.backends.cpu.get_cpu_capability(), which
# ATEN_CPU_CAPABILITY lowers). Nothing depends on the building machine's CPU: a wheel built on
# an AVX-512 server runs on an AVX2 laptop. Separate modules, not one with several kernel
# objects, because the inline and template code of every header (ours, ATen's, c10's) is
# compiled into each level: in one module the linker would keep one copy of each, possibly an
# AVX-512 one, for all levels. AVX-512 needs the four extensions ATen's AVX512 build assumes.
X86_LEVELS = {
    "default": ["-DCPU_CAPABILITY=DEFAULT", "-DCPU_CAPABILITY_DEFAULT"],
    "avx2": ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"],
    "avx512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-mf16c",
               "-DCPU_CAPABILITY=AVX512", "-DCPU_CAPABILITY_AVX512"],
}


def cpu_levels():
    """{level: compiler flags} to build. x86-64: every level (FUSED_RNN_CPU_LEVELS=avx2,...
    builds fewer, for a quicker development or sanitizer build); other architectures: their
    default (ATen's Vectorized picks NEON/SVE from the compiler's own target)."""
    machine = platform.machine().lower()
    if machine not in ("x86_64", "amd64"):
        return {"default": ["-DCPU_CAPABILITY=DEFAULT", "-DCPU_CAPABILITY_DEFAULT"]}
    wanted = os.environ.get("FUSED_RNN_CPU_LEVELS", ",".join(X86_LEVELS))
    levels = [level.strip() for level in wanted.split(",") if level.strip()]
    unknown = sorted(set(levels) - set(X86_LEVELS))
    if unknown or not levels:
        raise SystemExit(f"FUSED_RNN_CPU_LEVELS: expected a subset of {','.join(X86_LEVELS)}, got {wanted!r}")
    return {level: X86_LEVELS[level] for level in levels}


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


def level_sources(level, sources):
    """`sources` as compiled for one level: each through a one-line file under
    build/levels/<level>/ that includes it, so that each level's objects get paths of their own
    (setuptools compiles every extension into one temp folder). Rewritten only when it differs,
    so ninja rebuilds only what changed."""
    wrapped = []
    for source in sources:
        path = os.path.join("build", "levels", level, os.path.basename(source))
        text = f'#include "{os.path.join(ROOT, source)}"\n'
        if not os.path.exists(path) or open(path).read() != text:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as f:
                f.write(text)
        wrapped.append(path)
    return wrapped


def extension(level, level_flags):
    """fused_rnn._C_<level>: the whole extension, its CPU kernels built for `level`."""
    name = f"fused_rnn._C_{level}"
    sources = ["csrc/ops.cpp", "csrc/recurrence.cpp"]
    cxx = ["-O3", "-fopenmp", "-Wno-unknown-pragmas", f'-DFUSED_RNN_CPU_LEVEL="{level}"']
    cxx += level_flags + sanitizer_flags()
    link = ["-fopenmp"] + sanitizer_flags()
    if want_cuda():
        sources += ["csrc/ops_cuda.cpp"] + sorted(glob.glob("csrc/cuda/*.cu"))
        archs = [a.strip() for a in CUDA_ARCHS.replace(",", ";").split(";") if a.strip()]
        codes = [a.replace(".", "") for a in archs]
        nvcc = ["-O3"] + [f"-gencode=arch=compute_{c},code=sm_{c}" for c in codes]
        # and the newest arch's PTX: a newer GPU compiles it at load instead of failing with
        # "no kernel image is available"
        newest = max(codes, key=lambda c: int("".join(ch for ch in c if ch.isdigit())))
        nvcc.append(f"-gencode=arch=compute_{newest},code=compute_{newest}")
        arch_names = ";".join("sm_" + a.replace(".", "") for a in archs)
        define = ["-DFUSED_RNN_WITH_CUDA", f'-DFUSED_RNN_CUDA_ARCHS="{arch_names}"']
        return cpp_extension.CUDAExtension(
            name, level_sources(level, sources), extra_compile_args={"cxx": cxx + define, "nvcc": nvcc + define},
            extra_link_args=link
        )
    return cpp_extension.CppExtension(name, level_sources(level, sources), extra_compile_args={"cxx": cxx},
                                      extra_link_args=link)


setup(
    ext_modules=[extension(level, flags) for level, flags in cpu_levels().items()],
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
)
