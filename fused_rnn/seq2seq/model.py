"""Seq2Seq: encoder + attentional decoder, teacher-forced training and batched generation."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .checks import check_ints, check_lengths, check_token_id, check_tokens, is_int
from .decoder import Decoder
from .decoding import DecodeOptions, check_decode_args, decode, max_len_per_row
from .encoder import Encoder
from .search import Generation


@dataclass
class Seq2SeqOutput:
    logits: Tensor              # [B, T, V]
    attention: Tensor | None    # [B, T, S]


class Seq2Seq(nn.Module):
    """Encoder-decoder with attention, on the fused LSTM/GRU.

    Token conventions: ``src [B, S]`` padded with ``pad_id``, with ``src_lengths [B]``;
    ``tgt [B, T]`` is the target *without* BOS, ending in EOS, padded with ``pad_id`` -- the
    same layout :meth:`generate` returns.  The decoder reads ``[BOS, tgt[:, :-1]]``.

    ``attention``: a score name (``dot``, ``general``, ``concat``, ``additive``) or None for
    the attention-free model.  ``style``: ``"luong"`` or ``"bahdanau"``.
    """

    def __init__(self, src_vocab_size: int, tgt_vocab_size: int, embed_size: int = 128,
                 hidden_size: int = 128, num_layers: int = 1, cell: str = "lstm",
                 bidirectional: bool = True, attention: str | None = "general",
                 style: str = "luong", input_feeding: bool = False, dropout: float = 0.0,
                 attn_size: int | None = None, pad_id: int = 0, bos_id: int = 1, eos_id: int = 2):
        super().__init__()
        check_ints(src_vocab_size=src_vocab_size, tgt_vocab_size=tgt_vocab_size, embed_size=embed_size,
                    hidden_size=hidden_size, num_layers=num_layers)
        # PAD is embedded on both sides, BOS read and EOS emitted by the decoder only
        for name, value in (("pad_id", pad_id), ("bos_id", bos_id), ("eos_id", eos_id)):
            check_token_id(name, value, tgt_vocab_size, "tgt_vocab_size")
        check_token_id("pad_id", pad_id, src_vocab_size, "src_vocab_size")
        if len({pad_id, bos_id, eos_id}) != 3:
            raise ValueError(f"pad_id, bos_id, eos_id: expected three different ids, "
                             f"got {pad_id}, {bos_id}, {eos_id}")
        self.pad_id, self.bos_id, self.eos_id = pad_id, bos_id, eos_id
        self.encoder = Encoder(src_vocab_size, embed_size, hidden_size, num_layers, cell,
                               bidirectional, dropout, padding_idx=pad_id,
                               decoder_hidden_size=hidden_size)
        self.decoder = Decoder(tgt_vocab_size, embed_size, hidden_size,
                               memory_size=self.encoder.output_size, num_layers=num_layers,
                               cell=cell, attention=attention, style=style,
                               input_feeding=input_feeding, dropout=dropout, padding_idx=pad_id,
                               attn_size=attn_size)

    def decoder_inputs(self, tgt: Tensor) -> Tensor:
        bos = tgt.new_full((tgt.shape[0], 1), self.bos_id)
        return torch.cat([bos, tgt[:, :-1]], 1)

    def forward(self, src: Tensor, src_lengths, tgt: Tensor, teacher_forcing: float = 1.0,
                stepwise: bool = False, generator: torch.Generator | None = None
                ) -> Seq2SeqOutput:
        """Teacher-forced decode of ``tgt``: logits ``[B, T, V]`` and attention ``[B, T, S]``.

        ``teacher_forcing`` is the probability that a step reads the gold token rather than
        the model's previous argmax (1.0: always gold).
        """
        src = check_tokens("src", src, "S")
        tgt = check_tokens("tgt", tgt, "T", batch=src.shape[0])
        state, memory = self.decoder.start(self.encoder(src, src_lengths))
        logits, attn, _ = self.decoder(self.decoder_inputs(tgt), state, memory,
                                       teacher_forcing=teacher_forcing, stepwise=stepwise,
                                       generator=generator)
        return Seq2SeqOutput(logits, attn)

    def loss(self, src: Tensor, src_lengths, tgt: Tensor, teacher_forcing: float = 1.0,
             label_smoothing: float = 0.0) -> Tensor:
        """Mean cross-entropy over the non-PAD target tokens."""
        logits = self(src, src_lengths, tgt, teacher_forcing).logits
        tgt = tgt.long()   # forward has checked it: integer ids, any width
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1),
                               ignore_index=self.pad_id, label_smoothing=label_smoothing)

    @torch.no_grad()
    def log_prob(self, src: Tensor, src_lengths, tgt: Tensor) -> Tensor:
        """Sum of the model's log-probs of each target ``[B]`` (PAD positions left out)."""
        logp = torch.log_softmax(self(src, src_lengths, tgt).logits, -1)
        tgt = tgt.long()   # forward has checked it
        picked = logp.gather(2, tgt.unsqueeze(2)).squeeze(2)
        return picked.masked_fill(tgt == self.pad_id, 0.0).sum(1)

    @torch.no_grad()
    def generate(self, src: Tensor, src_lengths, strategy: str = "greedy", *,
                 max_len: int | tuple[float, float] | Tensor | None = None, min_len: int = 0,
                 beam_size: int = 4, n_best: int = 1, num_return_sequences: int | None = None,
                 temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                 length_penalty: float | tuple[str, float] = 1.0, repetition_penalty: float = 1.0,
                 no_repeat_ngram_size: int = 0, coverage_penalty: float = 0.0,
                 generator: torch.Generator | None = None) -> Generation:
        """Decode every source of the batch; see :mod:`fused_rnn.seq2seq.search`.

        ``src [B, S]``: token ids (any integer dtype) below ``src_vocab_size``; ``src_lengths
        [B]`` in ``[1, S]``.  An empty batch (B = 0) gives an empty :class:`Generation`.
        ``strategy``: ``"greedy"``, ``"sample"`` (``temperature``, ``top_k``, ``top_p``,
        ``n_best`` independent draws per source) or ``"beam"`` (``beam_size``, ``n_best`` <=
        beam_size).  ``num_return_sequences``: Hugging Face's name for ``n_best`` (give one).
        ``max_len``: most tokens before EOS -- an int, a ``[B]`` tensor, a pair ``(a, b)`` for
        ``floor(a * src_length + b)`` per source, or None for ``(2, 10)``.  ``min_len``: fewest
        tokens before EOS (one that no hypothesis can reach is a ValueError).
        ``length_penalty``: ``p`` ranks by ``score / length ** p``; ``("wu", alpha)`` by
        GNMT's ``score / ((5 + length) / 6) ** alpha``.  ``repetition_penalty``: Hugging
        Face's (> 1 discourages tokens already emitted; 1: none).  ``no_repeat_ngram_size``:
        n > 0 never emits a token that would repeat an n-gram of the hypothesis.
        ``coverage_penalty``: GNMT's beta (beam search with attention; 0: none).  The formulas
        are in :mod:`fused_rnn.seq2seq.penalties`.
        Returns a :class:`Generation` (tokens, lengths, scores, normalized scores, attention),
        hypotheses of each source best first.
        """
        options = DecodeOptions(strategy, beam_size, _n_best(n_best, num_return_sequences), temperature,
                                top_k, top_p, min_len, length_penalty, repetition_penalty,
                                no_repeat_ngram_size, coverage_penalty)
        # every check before the encoder runs; the ids of src only here, where a sync is no cost
        src = check_tokens("src", src, "S", vocab_size=self.encoder.vocab_size, vocab="src_vocab_size")
        lengths = check_lengths(src_lengths, src.shape[0], src.shape[1]).to(src.device)
        max_len_t = max_len_per_row(max_len, lengths, options.min_len)
        ids = dict(bos_id=self.bos_id, eos_id=self.eos_id, pad_id=self.pad_id,
                   blocked_ids=(self.pad_id, self.bos_id))
        check_decode_args(options, max_len_t, lengths, vocab_size=self.decoder.vocab_size,
                          has_memory=self.decoder.attention is not None, **ids)
        was_training = self.training
        self.eval()
        try:
            state, memory = self.decoder.start(self.encoder(src, lengths))
            return decode(self.decoder, state, memory, max_len_t, options, src_lengths=lengths,
                          generator=generator, **ids)
        finally:
            self.train(was_training)


def _n_best(n_best, num_return_sequences) -> int:
    """``num_return_sequences`` is Hugging Face's name for ``n_best``: give one of them."""
    if num_return_sequences is None:
        return n_best
    if not is_int(num_return_sequences) or num_return_sequences < 1:
        raise ValueError(f"num_return_sequences: expected None or an int >= 1, got {num_return_sequences!r}")
    if n_best not in (1, num_return_sequences):
        raise ValueError(f"num_return_sequences: expected n_best left at 1 or equal to it "
                         f"(they name the same thing), got {num_return_sequences!r} "
                         f"with n_best={n_best}")
    return num_return_sequences
