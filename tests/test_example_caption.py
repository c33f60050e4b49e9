"""examples/caption.py --quick, run as a user runs it: it exits 0, writes its attention PNG and
results.json, and learns -- exact-match captions on held-out images at or above the threshold
the example states, with greedy and with beam search, far above chance (1 in 180 captions)."""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
THRESHOLD = 0.7     # the example's docstring states it; results.json repeats it


def test_caption_quick_learns(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "examples/caption.py", "--quick", "--out", str(tmp_path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert (tmp_path / "caption_attention.png").stat().st_size > 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["quick"] is True
    assert results["quick_exact_match_threshold"] == THRESHOLD
    assert results["chance"] == 1 / 180       # 3 colours x 3 shapes: 36 lone-shape + 144 pair captions
    assert THRESHOLD > 100 * results["chance"]
    examples = results["examples"]
    for strategy in ("greedy", "beam"):
        accuracy = results[f"exact_match_{strategy}"]
        assert accuracy >= THRESHOLD, f"{strategy}: exact match {accuracy:.3f} < {THRESHOLD}: {examples}"
