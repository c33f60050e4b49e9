"""The penalties and constraints that decoding toolkits offer, one formula each.

- Repetition penalty (Keskar et al. 2019, CTRL; Hugging Face's ``repetition_penalty``): every
  token already generated has its logit divided by ``p`` if positive, multiplied by ``p``
  otherwise, before the softmax.  Each token is penalised once however often it occurred.
- No repeated n-gram (fairseq's and Hugging Face's ``no_repeat_ngram_size``): a token that
  would complete an n-gram already in the hypothesis is never emitted.
- Length penalty: a number ``p`` gives ``lp(Y) = |Y| ** p``; ``("wu", alpha)`` gives GNMT's
  ``lp(Y) = (5 + |Y|) ** alpha / 6 ** alpha`` (Wu et al. 2016).  A hypothesis is ranked
  by ``score / lp(Y)``.
- Coverage penalty (GNMT, beta): ``cp = beta * sum_i log(min(sum_j a_ij, 1))`` over the source
  positions ``i`` and the emitted tokens ``j`` (EOS included), added to the normalized score.
  It is <= 0 and rewards hypotheses that attended every source position.

``|Y|`` counts the tokens after BOS up to and including EOS, as everywhere in :mod:`.search`.
"""
from __future__ import annotations

import torch
from torch import Tensor

WU = "wu"


def penalize_repetitions(logits: Tensor, history: Tensor, penalty: float) -> Tensor:
    """``logits [N, V]`` with every token of ``history [N, t]`` penalised (a new tensor)."""
    if penalty == 1.0 or history.shape[1] == 0:
        return logits
    seen = logits.gather(1, history)
    seen = torch.where(seen > 0, seen / penalty, seen * penalty)
    # a token seen twice gathers the same logit twice and scatters the same value back
    return logits.scatter(1, history, seen)


def repeated_ngram_mask(history: Tensor, n: int, vocab_size: int) -> Tensor:
    """``[N, V]`` bool: True where emitting the token after ``history [N, t]`` would complete an
    ``n``-gram that ``history`` already holds (``n = 0``: nothing is blocked)."""
    rows, t = history.shape
    if n < 1 or t < n:   # not one complete n-gram yet
        return torch.zeros(rows, vocab_size, dtype=torch.bool, device=history.device)
    grams = history.unfold(1, n, 1)                          # [N, t - n + 1, n]
    tail = history[:, t - n + 1:]                            # the last n - 1 tokens
    match = (grams[:, :, :-1] == tail[:, None]).all(-1)      # grams that the next token would repeat
    hits = torch.zeros(rows, vocab_size, dtype=torch.long, device=history.device)
    hits.scatter_add_(1, grams[:, :, -1], match.long())
    return hits > 0


def length_normalized(scores: Tensor, lengths: Tensor, length_penalty) -> Tensor:
    """``scores / lp(lengths)`` (broadcasting); ``length_penalty`` a number or ``("wu", alpha)``.

    A length of 0 (no hypothesis) counts as 1 so that its -inf score stays -inf."""
    lengths = lengths.clamp(min=1).to(scores.dtype)
    if isinstance(length_penalty, tuple):
        alpha = length_penalty[1]
        return scores / ((5 + lengths) / 6) ** alpha
    if length_penalty == 0:
        return scores.clone()
    return scores / lengths ** length_penalty


def coverage_penalty(attention: Tensor, src_lengths: Tensor, beta: float) -> Tensor:
    """``[N]``: GNMT's coverage penalty of each hypothesis from its attention ``[N, L, S]``
    (zero after EOS) over the first ``src_lengths [N]`` source positions (the others are
    padding, where attention is zero and would give log 0)."""
    coverage = attention.sum(1).clamp(max=1.0)
    valid = torch.arange(attention.shape[-1], device=attention.device) < src_lengths[:, None]
    return beta * coverage.log().masked_fill(~valid, 0.0).sum(-1)
