"""The torch versions the package states it is built and tested with agree with each other:
pyproject.toml's range, the wheel the Makefile pins, and the torch running these tests
(docs/DESIGN.md §6). The private torch functions used are checked against the same range
(csrc/torch_private.h, fused_rnn/_torch_private.py)."""
import re
from pathlib import Path

import torch
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def torch_requirement():
    """pyproject.toml's `dependencies` entry for torch (read as text: tomllib needs Python 3.11)."""
    (dependencies,) = re.findall(r"^dependencies = \[(.*)\]$", (ROOT / "pyproject.toml").read_text(), re.M)
    (torch_dep,) = [Requirement(d) for d in re.findall(r'"([^"]+)"', dependencies) if Requirement(d).name == "torch"]
    return torch_dep


def test_torch_range_has_an_upper_bound():
    spec = torch_requirement().specifier
    assert any(s.operator in ("<", "<=") for s in spec), f"torch{spec} has no upper bound"


def test_pinned_wheel_is_in_the_range():
    (pinned,) = re.findall(r"torch==([0-9.]+)", (ROOT / "Makefile").read_text())
    assert Version(pinned) in torch_requirement().specifier


def test_running_torch_is_in_the_range():
    version = Version(Version(torch.__version__).base_version)  # drop +cpu / +cu128
    assert version in torch_requirement().specifier, f"torch {torch.__version__} is outside the tested range"
