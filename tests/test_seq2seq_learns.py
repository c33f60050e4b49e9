"""A small model must actually learn: a broken gradient cannot hide behind the demo."""
import json

import pytest
import torch

from fused_rnn.seq2seq import Seq2Seq
from fused_rnn.seq2seq.tasks import PairDataset, make_reversal, reversal_vocab
from fused_rnn.seq2seq.train import exact_match, fit


@pytest.mark.parametrize("cell,style,attention", [("lstm", "luong", "general"),
                                                  ("gru", "bahdanau", "additive")])
def test_reversal_of_length_8_is_learned(cell, style, attention):
    torch.manual_seed(0)
    vocab = reversal_vocab()
    train = PairDataset(make_reversal(4000, 8, 8, seed=1), vocab, vocab)
    test = PairDataset(make_reversal(300, 8, 8, seed=2, exclude={s for s, _ in train.pairs}),
                       vocab, vocab)
    model = Seq2Seq(len(vocab), len(vocab), embed_size=32, hidden_size=64, cell=cell,
                    style=style, attention=attention)
    losses = fit(model, train, steps=400, batch_size=64, lr=3e-3, seed=0)
    assert losses[-1] < 0.1, losses[::40]
    acc, _ = exact_match(model, test)
    assert acc >= 0.9, f"exact match {acc:.3f} < 0.9 after 400 steps (losses {losses[::40]})"


def test_demo_quick_runs(tmp_path):
    from fused_rnn.seq2seq import demo
    threads = torch.get_num_threads()
    assert demo.main(["--quick", "--out", str(tmp_path), "--seed", "0", "--no-progress"]) == 0
    assert torch.get_num_threads() == threads   # main() leaves the process as it found it
    for name in ("attention_dates.png", "attention_reversal.png", "reversal_accuracy.png",
                 "results.json"):
        assert (tmp_path / name).stat().st_size > 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert 0.0 <= results["dates"]["exact_match"] <= 1.0
    rev = results["reversal"]
    assert rev["lengths"] == [1, 2, 3, 4, 5, 6]
    assert len(rev["attention"]) == len(rev["no_attention"]) == 6
    assert results["wall_seconds"] > 0
