"""examples/ddp_train.py --quick, run as a user runs it, under torchrun with two CPU ranks
(gloo): it exits 0, rank 0 alone prints the loss every few steps and it falls (from near the
mean-predictor's 1/6 to far below), the held-out error reaches the threshold the example
states, and the two ranks end with identical weights (DDP)."""
import json
import re

import pytest

from distributed_cases import torchrun

THRESHOLD = 0.02    # the example's docstring states it; results.json repeats it
LOSS_LINE = re.compile(r"step\s+(\d+)/(\d+) loss (\d+\.\d+)")
SUMMARY = re.compile(r"held-out mse (\d+\.\d+) \(predicting the mean: 0\.1667\); replicas identical: (\w+)")


@pytest.mark.slow   # two processes importing torch and training: about 7 s
def test_ddp_train_quick_loss_falls(tmp_path):
    proc = torchrun("examples/ddp_train.py", "--quick", "--out", tmp_path)
    assert proc.returncode == 0, proc.stdout[-4000:]
    steps = [(int(step), int(total), float(loss)) for step, total, loss in LOSS_LINE.findall(proc.stdout)]
    assert len(steps) >= 4, proc.stdout[-4000:]
    numbers, totals, losses = zip(*steps)
    assert list(numbers) == sorted(set(numbers)), f"one line per logged step (rank 0 only): {numbers}"
    assert numbers[-1] == totals[0] and len(set(totals)) == 1
    assert losses[0] > 0.1 and losses[-1] < losses[0] / 10, f"the loss did not fall: {losses}"
    assert min(losses[-2:]) < min(losses[:2]), losses
    (test_mse, identical), = SUMMARY.findall(proc.stdout)
    assert float(test_mse) <= THRESHOLD and identical == "True"
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["mode"] == "quick" and results["world_size"] == 2
    assert results["quick_threshold"] == THRESHOLD
    assert [loss for _, loss in results["losses"]] == pytest.approx(losses, abs=1e-4)
