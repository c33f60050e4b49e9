"""examples/awd_lstm.py --quick, run as a user runs it: it exits 0, writes its PNG and
results.json, and learns -- held-out perplexity below the threshold the example states, far
below the unigram model's."""
from checks import run_example

THRESHOLD = 125.0  # the example's docstring states it; results.json repeats it


def test_awd_lstm_quick_learns(tmp_path):
    results = run_example("awd_lstm", tmp_path)
    assert (tmp_path / "awd_lstm_ppl.png").stat().st_size > 0
    assert results["quick_ppl_threshold"] == THRESHOLD
    assert results["config"]["weight_drop"] > 0 and results["config"]["recurrent_dropout"] > 0
    assert len(results["heldout_ppl"]) == results["epochs"]
    held_out = results["heldout_ppl"][-1]
    assert held_out < THRESHOLD, f"held-out perplexity {held_out:.1f}, per epoch {results['heldout_ppl']}"
    assert THRESHOLD < results["unigram_ppl"] / 1.5
