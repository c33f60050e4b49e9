"""What the tests share: the devices a check runs on, the one comparison against the truth (the
float64 reference, or torch.nn) with the tolerances of docs/DESIGN.md §3, and running an example."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

# A device-generic check is written once and parametrized over these: the CPU always, CUDA
# marked `cuda` (tests/conftest.py skips it without a GPU).
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]

DTYPE_IDS = {torch.float64: "f64", torch.float32: "f32", torch.float16: "fp16", torch.bfloat16: "bf16"}

# docs/DESIGN.md §3/§4: float64 within an absolute (and a relative) 1e-10; the other dtypes by the
# relative norm ‖out − ref‖ / ‖ref‖. TF32 stays off in the tests (conftest.py), so float32
# is 1e-5 on both devices.
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}


def per_device(values, ids=DTYPE_IDS.get):
    """(device, value) parameters where the devices run different values (dtypes, mostly):
    `values` maps "cpu" / "cuda" to a list; CUDA's carry the `cuda` mark."""
    return [pytest.param(device, value, marks=[pytest.mark.cuda] if device == "cuda" else [],
                         id=f"{device}-{ids(value)}")
            for device, device_values in values.items() for value in device_values]


def rel_error(actual, expected):
    """‖actual − expected‖ / ‖expected‖, in float64 on the CPU."""
    a, b = actual.detach().to("cpu", torch.float64), expected.detach().to("cpu", torch.float64)
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def assert_close(actual, expected, what="", tol=None):
    """`actual` (any device and dtype) against `expected` (the truth): the same shape, and
    within TOLERANCE of actual's dtype, or `tol` (a relative norm) where a check says so."""
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    if tol is None and actual.dtype == torch.float64:
        diff = (actual.detach().cpu() - expected.detach().to("cpu", torch.float64)).abs()
        worst = diff.max().item() if diff.numel() else 0.0
        assert worst <= TOLERANCE[torch.float64], f"{what}: absolute error {worst:.3g}"
    tol = TOLERANCE[actual.dtype] if tol is None else tol
    err = rel_error(actual, expected)
    assert err <= tol, f"{what}: relative error {err:.3g} > {tol:g}"


def run_example(name, out_dir):
    """`examples/<name>.py --quick --out out_dir` as a user runs it, from the repository root
    in a child process; asserts it exits 0 and returns the results.json it wrote."""
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, f"examples/{name}.py", "--quick", "--out", str(out_dir)], cwd=root,
                          env=dict(os.environ, PYTHONPATH=str(root)), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return json.loads((Path(out_dir) / "results.json").read_text())
