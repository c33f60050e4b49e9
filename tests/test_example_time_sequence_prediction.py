"""examples/time_sequence_prediction.py --quick, run as a user runs it: it exits 0, writes its
PNG and results.json, and the program with fused_rnn.LSTMCell gives the test losses of the same
program with torch.nn.LSTMCell (float64). Its speed ratio is reported, never asserted."""
import math

from checks import run_example


def test_time_sequence_prediction_matches_torch_nn(tmp_path):
    results = run_example("time_sequence_prediction", tmp_path)
    assert (tmp_path / "predictions.png").stat().st_size > 0
    runs = results["runs"]
    assert len(runs["torch.nn"]["test_losses"]) == len(runs["fused_rnn"]["test_losses"]) == results["lbfgs_steps"]
    for a, b in zip(runs["torch.nn"]["test_losses"], runs["fused_rnn"]["test_losses"]):
        assert math.isfinite(a) and abs(a - b) <= 1e-10 * max(1.0, abs(a))
    assert results["ratio"] > 0
