"""examples/classify.py --quick, run as a user runs it: it exits 0, writes its PNG and
results.json, and both LSTMs (bidirectional and one-way, over packed sentences) learn the
word-order task to the threshold the example states: far above chance (0.5) and above what
any order-blind classifier can reach (about 0.75), which shows that word order was used."""

import pytest

from checks import run_example

THRESHOLD = 0.95    # the example's docstring states it; results.json repeats it


@pytest.mark.slow   # a training run of about 30 s
def test_classify_quick_learns_word_order(tmp_path):
    results = run_example("classify", tmp_path)
    assert (tmp_path / "classify_accuracy.png").stat().st_size > 0
    assert results["mode"] == "quick"
    assert results["quick_threshold"] == THRESHOLD
    assert abs(results["order_blind_ceiling"] - 0.75) < 0.03   # half the sentences hold a "not"
    assert THRESHOLD > results["order_blind_ceiling"] + 0.15
    for model in ("bidirectional", "unidirectional"):
        history = results["history"][model]
        assert len(history) == results["epochs"]
        assert results["accuracy"][model] >= THRESHOLD, f"{model}: held-out accuracy per epoch {history}"
