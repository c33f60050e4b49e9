"""examples/classify.py --quick, run as a user runs it: it exits 0, writes its PNG and
results.json, and both LSTMs (bidirectional and one-way, over packed sentences) learn the
word-order task to the threshold the example states: far above chance (0.5) and above what
any order-blind classifier can reach (about 0.75), which shows that word order was used."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
THRESHOLD = 0.95    # the example's docstring states it; results.json repeats it


@pytest.mark.slow   # a training run of about 30 s
def test_classify_quick_learns_word_order(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "examples/classify.py", "--quick", "--out", str(tmp_path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert (tmp_path / "classify_accuracy.png").stat().st_size > 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["mode"] == "quick"
    assert results["quick_threshold"] == THRESHOLD
    assert abs(results["order_blind_ceiling"] - 0.75) < 0.03   # half the sentences hold a "not"
    assert THRESHOLD > results["order_blind_ceiling"] + 0.15
    for model in ("bidirectional", "unidirectional"):
        history = results["history"][model]
        assert len(history) == results["epochs"]
        assert results["accuracy"][model] >= THRESHOLD, f"{model}: held-out accuracy per epoch {history}"
