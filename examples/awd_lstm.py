"""A word-level language model in the style of AWD-LSTM (Merity et al. 2017), on fused_rnn's
regularizer options: DropConnect on the recurrent weights (``weight_drop``), variational
dropout on the recurrent state (``recurrent_dropout``), optionally zoneout (``--zoneout P``),
dropout between layers, residual layers (``residual``), tied input and output embeddings,
trained by truncated backpropagation through time (``fused_rnn.tbptt``). Reported per epoch: perplexity on the
training text and on the held-out text; predicting every word by its training frequency scores
the unigram perplexity, which results.json gives for comparison.

Data: the docstrings of Python's standard library (examples/char_lm.py collects them: the same
text on every machine with the same Python version), lower-cased and split into words, digits
and punctuation; words seen fewer than 3 times in the training text are <unk>; every tenth
docstring is held out.

``--quick`` (60k training words, 4 epochs, a 2-layer 128-unit model; about 11 s on this
project's 2-core machine) reaches a held-out perplexity below QUICK_PPL_THRESHOLD = 125
(109.8 with seed 0, 112.7 with ``--zoneout 0.1``; the unigram model: 226). The full run (all
117k training words, 8 epochs, a 3-layer 256-unit model; 79 s with 2 threads) reaches a
held-out perplexity of 88.4 (unigram: 294, a larger vocabulary); its outputs are in
docs/examples/awd_lstm/. Outputs in ``--out``: awd_lstm_ppl.png and results.json.
"""
from __future__ import annotations

import collections
import math
import re
import time

import torch
import torch.nn.functional as F
from _common import parse_args, pyplot, save_png, save_results, tbptt_epoch
from char_lm import docstrings
from torch import nn

import fused_rnn

QUICK = dict(train_words=60_000, heldout_words=15_000, epochs=4, hidden=128, layers=2, batch=32, bptt=35,
             lr=3e-3, dropout=0.2, weight_drop=0.3, recurrent_dropout=0.1)
FULL = dict(train_words=None, heldout_words=None, epochs=8, hidden=256, layers=3, batch=32, bptt=35, lr=2e-3,
            dropout=0.3, weight_drop=0.5, recurrent_dropout=0.2)
QUICK_PPL_THRESHOLD = 125.0
MIN_COUNT = 3
UNK, EOS = "<unk>", "<eos>"
TOKEN = re.compile(r"[a-z]+|\d+|[^\sa-z\d]")


def _zoneout_option(parser):
    parser.add_argument("--zoneout", type=float, default=0.0,
                        help="zoneout probability of the LSTM's h and c (Krueger et al. 2016; default 0: off)")


# ---- data -----------------------------------------------------------------------------------
def words(doc: str) -> list[str]:
    return TOKEN.findall(doc.lower()) + [EOS]


def corpus(cfg) -> tuple[list[str], list[int], list[int], float]:
    """(vocabulary, training ids, held-out ids, the unigram perplexity of the held-out text)."""
    train, held = [], []
    for i, doc in enumerate(docstrings()):
        (held if i % 10 == 0 else train).extend(words(doc))
    train, held = train[:cfg["train_words"]], held[:cfg["heldout_words"]]
    counts = collections.Counter(train)
    vocab = [UNK] + sorted(w for w, n in counts.items() if n >= MIN_COUNT and w != UNK)
    index = {w: i for i, w in enumerate(vocab)}
    to_ids = [index.get(w, 0) for w in train], [index.get(w, 0) for w in held]
    # unigram: each id's training frequency (add-one), its cross-entropy on the held-out ids
    freq = torch.bincount(torch.tensor(to_ids[0]), minlength=len(vocab)).double() + 1
    log_p = (freq / freq.sum()).log()
    unigram = math.exp(-log_p[torch.tensor(to_ids[1])].mean().item())
    return vocab, *to_ids, unigram


def batchify(ids: list[int], batch: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and next-word targets ``[T, batch]`` (time-major): each column a contiguous stretch."""
    steps = (len(ids) - 1) // batch
    data = torch.tensor(ids[:batch * steps + 1], device=device)
    return data[:-1].view(batch, steps).t(), data[1:].view(batch, steps).t()


# ---- model ----------------------------------------------------------------------------------
class WordLM(nn.Module):
    """Embedding -> fused LSTM (weight drop, recurrent dropout, zoneout, dropout between layers,
    residual) -> the embedding's transpose (tied weights), with dropout on the embeddings and on
    the LSTM's output."""

    def __init__(self, vocab_size, cfg):
        super().__init__()
        hidden = cfg["hidden"]
        self.embed = nn.Embedding(vocab_size, hidden)
        self.rnn = fused_rnn.LSTM(hidden, hidden, num_layers=cfg["layers"], dropout=cfg["dropout"],
                                  weight_drop=cfg["weight_drop"], recurrent_dropout=cfg["recurrent_dropout"],
                                  zoneout=cfg["zoneout"], residual=True)
        self.out_bias = nn.Parameter(torch.zeros(vocab_size))
        self.dropout = cfg["dropout"]

    def forward(self, x, state):
        emb = F.dropout(self.embed(x), self.dropout, self.training)
        out, state = self.rnn(emb, state)
        logits = F.linear(F.dropout(out, self.dropout, self.training), self.embed.weight, self.out_bias)
        return logits, state


def run_epoch(lm: WordLM, inputs, targets, k: int, optimizer=None, desc: str = "") -> float:
    """Perplexity over ``targets`` (TBPTT in chunks of ``k``, time-major ids); trains when
    ``optimizer`` is given."""
    nats = tbptt_epoch(lm, lm, inputs, targets, k, optimizer, clip=0.25, desc=desc,
                       show=lambda loss: f"ppl={math.exp(loss):.0f}")
    return math.exp(nats)


def plot(history: dict, unigram: float, out_dir: str) -> str:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    epochs = range(1, len(history["train_ppl"]) + 1)
    ax.plot(epochs, history["train_ppl"], marker="o", label="training")
    ax.plot(epochs, history["heldout_ppl"], marker="o", label="held-out")
    ax.axhline(unigram, color="gray", linestyle="--", label="unigram (held-out)")
    ax.set(xlabel="epoch", ylabel="perplexity", yscale="log", title="AWD-style word LM on fused_rnn")
    ax.legend()
    return save_png(fig, out_dir, "awd_lstm_ppl")


def main():
    args = parse_args("Word-level LSTM language model with weight drop, recurrent dropout and residual layers "
                      "(AWD-LSTM style).", extra=_zoneout_option)
    cfg = dict(QUICK if args.quick else FULL, zoneout=args.zoneout)
    epochs = args.epochs or cfg["epochs"]
    vocab, train_ids, held_ids, unigram = corpus(cfg)
    print(f"{len(train_ids)} training words, {len(held_ids)} held-out, vocabulary {len(vocab)}, "
          f"unigram held-out perplexity {unigram:.1f}", flush=True)
    lm = WordLM(len(vocab), cfg).to(args.device)
    train_x, train_y = batchify(train_ids, cfg["batch"], args.device)
    held_x, held_y = batchify(held_ids, cfg["batch"], args.device)
    optimizer = torch.optim.Adam(lm.parameters(), lr=cfg["lr"])
    history = {"train_ppl": [], "heldout_ppl": []}
    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        history["train_ppl"].append(run_epoch(lm, train_x, train_y, cfg["bptt"], optimizer,
                                              desc=f"epoch {epoch}/{epochs}"))
        history["heldout_ppl"].append(run_epoch(lm, held_x, held_y, cfg["bptt"]))
        print(f"epoch {epoch}: training perplexity {history['train_ppl'][-1]:.1f}, "
              f"held-out {history['heldout_ppl'][-1]:.1f}", flush=True)
    results = dict(config=cfg, epochs=epochs, vocabulary=len(vocab), unigram_ppl=unigram, **history,
                   quick_ppl_threshold=QUICK_PPL_THRESHOLD if args.quick else None,
                   seconds=time.perf_counter() - start, plot=plot(history, unigram, args.out))
    save_results(results, args.out)


if __name__ == "__main__":
    main()
