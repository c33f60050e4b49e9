"""The CPU kernels are built once per CPU level (setup.py) and the widest that ATen runs at is
loaded (fused_rnn/_ops.py). The rest of the suite runs the level this machine loads; here the
core CPU checks run again, in a child process, under every lower level the machine can execute,
forced with ATEN_CPU_CAPABILITY as a user would."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fused_rnn import _ops

ROOT = Path(__file__).resolve().parents[1]
ORDER = ["default", "avx2", "avx512"]  # ATen's CPU capabilities this project builds, narrow to wide
# The core CPU checks: every op against the reference (values, gradients, gradcheck), the CPU
# paths (split steps, GEMM routes) and the cells.
CORE = ["tests/test_ops_numerics.py", "tests/test_ops_cpu_paths.py", "tests/test_cells.py", "tests/test_cpu_math.py"]


def machine_level():
    """The widest level this machine's CPU runs, by ATen's detection (ATEN_CPU_CAPABILITY unset)."""
    env = {k: v for k, v in os.environ.items() if k != "ATEN_CPU_CAPABILITY"}
    out = subprocess.run([sys.executable, "-c", "import torch; print(torch.backends.cpu.get_cpu_capability())"],
                         env=env, capture_output=True, text=True, check=True).stdout.strip().lower()
    return out if out in ORDER else "default"


def run_child(level, *args):
    env = dict(os.environ, ATEN_CPU_CAPABILITY=level, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


def test_loads_the_level_aten_runs_at():
    capability = torch.backends.cpu.get_cpu_capability().lower()
    want = capability if capability in ORDER else "default"
    assert _ops._C.cpu_level == want
    assert _ops._C.__name__ == f"fused_rnn._C_{want}"


LOWER = ORDER[:ORDER.index(machine_level())]


@pytest.mark.slow  # the core checks again per level: about a minute each
@pytest.mark.parametrize("level", LOWER or [pytest.param(None, marks=pytest.mark.skip(reason="no lower level"))])
def test_core_checks_at_lower_level(level):
    loaded = run_child(level, "-c", "from fused_rnn import _ops; print(_ops._C.cpu_level)")
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    assert loaded.stdout.strip() == level
    proc = run_child(level, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-m", "not cuda", *CORE)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout.splitlines()[-1]
