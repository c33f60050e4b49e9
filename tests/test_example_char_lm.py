"""examples/char_lm.py --quick, run as a user runs it: it exits 0, writes its PNG and
results.json, and learns -- held-out bits per character below the threshold the example
states, far below the uniform distribution's log2(V)."""
import math

from checks import run_example

THRESHOLD = 2.6     # the example's docstring states it; results.json repeats it
STRATEGIES = ["greedy", "sample T=0.5", "sample T=1.0", "top-k 5", "beam 8"]


def test_char_lm_quick_learns(tmp_path):
    results = run_example("char_lm", tmp_path)
    assert (tmp_path / "char_lm_bpc.png").stat().st_size > 0
    assert results["quick_bpc_threshold"] == THRESHOLD
    assert results["uniform_bpc"] == math.log2(results["vocabulary"])
    assert len(results["train_bpc"]) == len(results["heldout_bpc"]) == results["epochs"]
    held_out = results["heldout_bpc"][-1]
    assert held_out < THRESHOLD, f"held-out {held_out:.3f} bpc, per epoch {results['heldout_bpc']}"
    assert THRESHOLD < results["uniform_bpc"] - 3
    rows = results["generations"]
    assert [r["strategy"] for r in rows] == STRATEGIES
    n = results["config"]["gen_chars"]
    for r in rows:
        assert len(r["text"]) == n
        assert -math.inf < r["log_prob"] < 0
        assert r["bits_per_char"] == -r["log_prob"] / n / math.log(2)
