"""What a measurement ran on: host, torch and its backends, the fused_rnn build, the source."""
from __future__ import annotations

import datetime
import hashlib
import os
import platform
import re
import subprocess
from pathlib import Path

import torch

from .. import __version__, _ops
from .tf32 import tf32_flags


def repo_root():
    """The checkout this package runs from; None for an installed package (no csrc/)."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "csrc").is_dir() else None


def csrc_sha256(root=None):
    """sha256 over csrc/: for each file in sorted relative-path order, the path, a NUL, the
    bytes, a NUL. None when there is no csrc/ (an installed package)."""
    root = root or repo_root()
    if root is None or not (root / "csrc").is_dir():
        return None
    h = hashlib.sha256()
    for path in sorted(p for p in (root / "csrc").rglob("*")
                       if p.is_file() and "__pycache__" not in p.parts):
        h.update(path.relative_to(root).as_posix().encode() + b"\0")
        h.update(path.read_bytes() + b"\0")
    return h.hexdigest()


def _git(root, *args):
    try:
        out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                             timeout=10, check=False)
        return out.stdout.strip() if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):  # no git, or a hung one: the record says None
        return None


def cpu_model():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:  # not Linux
        pass
    return platform.processor() or platform.machine()


def loadavg():
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:  # the platform cannot tell
        return None


def build_facts():
    """What the extension was built with; its functions and test hooks are not facts."""
    return {"version": __version__, "has_cuda": bool(_ops._C.has_cuda),
            "cuda_archs": _ops._C.cuda_archs}


def _torch_facts():
    config = torch.__config__.show()
    onednn = re.search(r"MKL-DNN v([\d.]+)|oneDNN v([\d.]+)",
                       torch.__config__.parallel_info() + config)
    blas = re.search(r"BLAS_INFO=(\w+)", config)
    return {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "onednn": next((g for g in onednn.groups() if g), None) if onednn else None,
        "mkldnn_enabled": torch.backends.mkldnn.enabled,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "blas": blas.group(1) if blas else None,
    }


def _source_facts():
    """Which source was measured: the commit, whether csrc/ or fused_rnn/ had uncommitted
    changes, and a hash of csrc/ that holds even then."""
    root = repo_root()
    if root is None:
        return {"git_sha": None, "git_dirty": None, "csrc_sha256": None}
    return {"git_sha": _git(root, "rev-parse", "HEAD"),
            "git_dirty": bool(_git(root, "status", "--porcelain", "--", "csrc", "fused_rnn")),
            "csrc_sha256": csrc_sha256(root)}


def _gpu_facts(device):
    props = torch.cuda.get_device_properties(device)
    return {"gpu": {"name": props.name, "capability": f"{props.major}.{props.minor}",
                    "total_memory": props.total_memory,
                    "multi_processor_count": props.multi_processor_count,
                    "l2_cache_size": props.L2_cache_size},
            "tf32_flags_at_start": tf32_flags(),
            # Whether cuBLAS may reduce bf16/fp16 GEMMs (weight gradients included) in reduced
            # precision: torch's defaults allow it, so a low-precision result states it.
            "reduced_precision_reduction": {
                "bf16": torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction,
                "fp16": torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction},
            "cudnn_enabled": torch.backends.cudnn.enabled}


def environment(device, argv=None, candidate_label="fused_rnn"):
    device = torch.device(device)
    env = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": device.type,
        "device_name": cpu_model() if device.type == "cpu" else torch.cuda.get_device_name(device),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS"),
        **_torch_facts(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        **_source_facts(),
        "candidate": candidate_label,
        "fused_rnn": build_facts() if candidate_label == "fused_rnn" else None,
        "argv": list(argv) if argv is not None else None,
        "loadavg_at_start": loadavg(),
    }
    if device.type == "cuda":
        env.update(_gpu_facts(device))
    return env


def device_slug(env):
    """A file-name form of the device: 'cpu-amd-epyc-2t', 'nvidia-h100-80gb-hbm3'."""
    name = env["device_name"] or env["device"]
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    if env["device"] == "cpu":
        slug = f"cpu-{slug}-{env['threads']}t"
    return slug
