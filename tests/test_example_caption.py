"""examples/caption.py --quick, run as a user runs it: it exits 0, writes its attention PNG and
results.json, and learns -- exact-match captions on held-out images at or above the threshold
the example states, with greedy and with beam search, far above chance (1 in 180 captions)."""

from checks import run_example

THRESHOLD = 0.7     # the example's docstring states it; results.json repeats it


def test_caption_quick_learns(tmp_path):
    results = run_example("caption", tmp_path)
    assert (tmp_path / "caption_attention.png").stat().st_size > 0
    assert results["quick"] is True
    assert results["quick_exact_match_threshold"] == THRESHOLD
    assert results["chance"] == 1 / 180       # 3 colours x 3 shapes: 36 lone-shape + 144 pair captions
    assert THRESHOLD > 100 * results["chance"]
    examples = results["examples"]
    for strategy in ("greedy", "beam"):
        accuracy = results[f"exact_match_{strategy}"]
        assert accuracy >= THRESHOLD, f"{strategy}: exact match {accuracy:.3f} < {THRESHOLD}: {examples}"
