"""The decoder section: a seq2seq model (fused_rnn.seq2seq.Seq2Seq) on fused_rnn's modules
against the same model on torch.nn's (fused_rnn.to_torch of a copy: the same weights), on the
same batches. Both decoder styles step through the decoder one token at a time (Luong with
input feeding, Bahdanau), so every step is a T = 1 call of the decoder's recurrent module."""
from __future__ import annotations

import copy

import torch

from ..convert import to_torch
from ..seq2seq import Seq2Seq
from .pairing import Pair

VOCAB = 1000
PAD, BOS, EOS = 0, 1, 2
STYLES = {"luong-feed": {"style": "luong", "attention": "general", "input_feeding": True},
          "bahdanau": {"style": "bahdanau", "attention": "additive"}}
N_BATCHES = 4


class DecoderBatch:
    """Source and target tokens of one batch; the loss's gradient is 1 (no input leaves)."""

    def __init__(self, case, device, gen):
        b, t = case.batch, case.seq_len
        self.src = torch.randint(3, VOCAB, (b, t), generator=gen).to(device)
        self.lengths = torch.randint(max(1, t // 2), t + 1, (b,), generator=gen).to(device)
        self.src = self.src.masked_fill(torch.arange(t, device=device) >= self.lengths[:, None], PAD)
        self.tgt = torch.randint(3, VOCAB, (b, t), generator=gen).to(device)
        self.tgt[:, -1] = EOS
        self.leaves = []
        self.grads = [torch.ones((), device=device)]


class DecoderPair(Pair):
    """Pair's interface (runner, check, clear_grads) over two Seq2Seq models. forward() is a
    training step's loss, or the scores of the decoding the case names."""

    def _build_modules(self, candidate, seed):
        case = self.case
        torch.manual_seed(seed)
        fused = Seq2Seq(VOCAB, VOCAB, embed_size=case.input_size, hidden_size=case.hidden, cell=case.cell,
                        pad_id=PAD, bos_id=BOS, eos_id=EOS, **STYLES[case.style]).to(self.device)
        ref = to_torch(copy.deepcopy(fused))
        if candidate["lstm"] is torch.nn.LSTM:  # --null: torch.nn on both sides
            fused = to_torch(fused)
        return {"torch": ref, "fused": fused}

    def _build_input_sets(self, n_sets, gen):
        return [DecoderBatch(self.case, self.device, gen) for _ in range(n_sets or N_BATCHES)]

    def forward(self, side, s):
        model = self.modules[side]
        if self.case.decode is None:
            return model.loss(s.src, s.lengths, s.tgt)
        strategy, beam = ("beam", 5) if self.case.decode == "beam5" else ("greedy", 1)
        return model.generate(s.src, s.lengths, strategy, beam_size=beam, max_len=self.case.seq_len).scores
