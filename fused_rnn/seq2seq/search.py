"""Decoding strategies: greedy and sampling (temperature, top-k, top-p) here, beam search in
:mod:`.beam`; the conventions and the per-step rules they share.

They drive any ``decoder`` with ``decoder.step(tokens [N], state, memory) -> (logits [N, V],
state, weights [N, S] or None)`` where ``state`` and ``memory`` have ``index_select(index)``
and ``repeat_interleave(n)`` over the batch (see :mod:`.decoder`; ``memory`` may be None).
A decoder may also have ``vocab_size`` (:class:`.Decoder` has): then :func:`.decode` checks the
token ids and ``min_len`` against it before the first step.

Conventions shared by all strategies:

- A hypothesis is the tokens after BOS, up to and including EOS.  Its *length* counts EOS.
- Every step's distribution is ``log_softmax(penalized logits / temperature)`` over the whole
  vocabulary, where the repetition penalty (if any) has rescaled the logits of the tokens
  already emitted (:mod:`.penalties`).  The tokens in ``blocked_ids`` (PAD, BOS) are never
  emitted, nor a token that would repeat an n-gram under ``no_repeat_ngram_size``; EOS is
  blocked while fewer than ``min_len`` tokens precede it and is the only choice once
  ``max_len`` tokens precede it.  Blocking removes choices but does not renormalise, so a
  hypothesis' ``score`` is exactly the sum of its tokens' log-probs under these step
  distributions (EOS included) -- the model's own log-probs at temperature 1 without a
  repetition penalty; top-k and top-p only narrow what sampling may draw.
- ``normalized_score = score / lp(length)``, with ``lp(n) = n ** length_penalty`` (0: raw
  sum; 1: per-token mean) or GNMT's ``((5 + n) / 6) ** alpha`` for ``("wu", alpha)``; beam
  search adds the coverage penalty if asked.
- A finished hypothesis never grows: after EOS a row emits PAD, adds nothing to its score,
  and gets all-zero attention.
- A ``min_len`` that no hypothesis can reach (nothing but EOS and blocked tokens to emit, or
  more tokens than n-gram blocking allows) is a ValueError before decoding.  A row that still
  gets stuck on its own path with no allowed token (n-gram blocking on a tiny vocabulary can do
  that) has no hypothesis: length 0, all PAD, score -inf.
- An empty batch takes one step of zero rows, which gives the empty result the decoder's own
  dtype and attention width.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .penalties import length_normalized, penalize_repetitions, repeated_ngram_mask

STRATEGIES = ("greedy", "sample", "beam")
NEG_INF = float("-inf")


@dataclass
class Generation:
    tokens: Tensor              # [B, N, L] int64, PAD after EOS (N = n_best, best first)
    lengths: Tensor             # [B, N] int64, tokens up to and including EOS (0: no hypothesis)
    scores: Tensor              # [B, N] sum of log-probs (-inf: no hypothesis)
    normalized_scores: Tensor   # [B, N] scores / lp(lengths) (+ coverage penalty)
    attention: Tensor | None    # [B, N, L, S] attention of each emitted token (None without)

    def best(self) -> list[list[int]]:
        """The best hypothesis of each source as a list of token ids, EOS left out."""
        out = []
        for toks, n in zip(self.tokens[:, 0].tolist(), self.lengths[:, 0].tolist()):
            out.append(toks[:max(n - 1, 0)])
        return out


@dataclass(frozen=True)
class StepRules:
    """What every step does to the decoder's logits before a strategy chooses (see above)."""
    eos_id: int
    blocked_ids: tuple[int, ...] = ()
    min_len: int = 0
    temperature: float = 1.0
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0

    def log_probs(self, logits: Tensor, history: Tensor, max_len: Tensor) -> Tensor:
        """The step distribution ``[N, V]`` after ``history [N, t]`` (the tokens emitted so
        far: this is step ``t``), blocked choices at -inf.  ``max_len [N]`` per row."""
        step, eos = history.shape[1], self.eos_id
        x = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
        x = penalize_repetitions(x, history, self.repetition_penalty)
        logp = torch.log_softmax(x if self.temperature == 1 else x / self.temperature, dim=-1)
        if self.blocked_ids:
            logp[:, list(self.blocked_ids)] = NEG_INF
        if self.no_repeat_ngram_size:
            blocked = repeated_ngram_mask(history, self.no_repeat_ngram_size, logp.shape[-1])
            logp = logp.masked_fill(blocked, NEG_INF)
        if step < self.min_len:
            logp[:, eos] = NEG_INF
        at_max = max_len <= step
        if bool(at_max.any()):
            eos_logp = logp[:, eos].clone()
            logp[at_max] = NEG_INF
            logp[:, eos] = torch.where(at_max, eos_logp, logp[:, eos])
        return logp


def filter_top_k_top_p(logp: Tensor, top_k: int | None, top_p: float | None) -> Tensor:
    """Set to -inf what sampling may not draw: outside the k best, outside the nucleus."""
    if top_k is not None and top_k < logp.shape[-1]:
        kth = logp.topk(top_k, dim=-1).values[:, -1:]
        logp = logp.masked_fill(logp < kth, NEG_INF)
    if top_p is not None and top_p < 1:
        sorted_logp, order = logp.sort(dim=-1, descending=True)
        probs = torch.softmax(sorted_logp, dim=-1)
        before = probs.cumsum(-1) - probs          # mass of the tokens ranked above
        drop_sorted = before >= top_p              # the top token always stays (before = 0)
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logp = logp.masked_fill(drop, NEG_INF)
    return logp


def _choose(logp: Tensor, sample: bool, top_k: int | None, top_p: float | None,
            generator: torch.Generator | None) -> Tensor:
    if not sample:
        return logp.argmax(-1)
    allowed = filter_top_k_top_p(logp, top_k, top_p)
    # a row with nothing allowed (finished, or every token blocked) draws from a dummy
    # uniform distribution instead of NaNs; its draw is discarded
    nothing = allowed.amax(-1, keepdim=True) == NEG_INF
    probs = torch.softmax(allowed.masked_fill(nothing, 0.0), -1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


def step_limit(max_len: Tensor) -> int:
    """The most steps a decode takes: ``max_len`` tokens and EOS; one for an empty batch."""
    return int(max_len.max()) + 1 if max_len.numel() else 1


def greedy_or_sample(decoder, state, memory, max_len: Tensor, rules: StepRules, *, sample: bool,
                     n: int, bos_id: int, pad_id: int, length_penalty, top_k: int | None,
                     top_p: float | None, generator: torch.Generator | None) -> Generation:
    batch = max_len.shape[0]
    if n > 1:
        state = state.repeat_interleave(n)
        memory = None if memory is None else memory.repeat_interleave(n)
        max_len = max_len.repeat_interleave(n)
    rows = max_len.shape[0]
    device = max_len.device
    tokens = torch.full((rows,), bos_id, dtype=torch.long, device=device)
    history = torch.empty(rows, 0, dtype=torch.long, device=device)
    finished = torch.zeros(rows, dtype=torch.bool, device=device)
    dead = torch.zeros(rows, dtype=torch.bool, device=device)    # left with no allowed token
    lengths = torch.zeros(rows, dtype=torch.long, device=device)
    score = None
    out_attn = []
    for _ in range(step_limit(max_len)):
        logits, state, weights = decoder.step(tokens, state, memory)
        logp = rules.log_probs(logits, history, max_len)
        if score is None:
            score = logp.new_zeros(rows)
        stuck = ~finished & (logp.amax(-1) == NEG_INF)
        choice = _choose(logp, sample, top_k, top_p, generator)
        picked = logp.gather(1, choice[:, None])[:, 0]       # -inf for a stuck row
        score = score + picked.masked_fill(finished, 0.0)
        ended = finished | stuck
        choice = choice.masked_fill(ended, pad_id)
        lengths = lengths + (~ended).long()
        history = torch.cat([history, choice[:, None]], 1)
        if weights is not None:
            out_attn.append(weights.masked_fill(ended[:, None], 0.0))
        dead = dead | stuck
        finished = ended | (choice == rules.eos_id)
        tokens = choice
        if bool(finished.all()):
            break
    return _assemble(history, out_attn, lengths, score, dead, batch, n, pad_id, length_penalty)


def _assemble(history, out_attn, lengths, score, dead, batch, n, pad_id, length_penalty) -> Generation:
    """The rows as ``n`` hypotheses per source, best (normalized) first; dead rows emptied."""
    # sizes spelled out: a view of an empty batch cannot infer a -1
    toks = history.masked_fill(dead[:, None], pad_id).view(batch, n, history.shape[1])
    attn = None
    if out_attn:
        attn = torch.stack(out_attn, 1).masked_fill(dead[:, None, None], 0.0)
        attn = attn.view(batch, n, len(out_attn), attn.shape[-1])
    lengths = lengths.masked_fill(dead, 0).view(batch, n)
    score = score.view(batch, n)
    norm = length_normalized(score, lengths, length_penalty)
    if n > 1:
        order = norm.argsort(dim=1, descending=True, stable=True)
        toks = toks.gather(1, order[:, :, None].expand_as(toks))
        if attn is not None:
            attn = attn.gather(1, order[:, :, None, None].expand_as(attn))
        lengths, score, norm = (t.gather(1, order) for t in (lengths, score, norm))
    return Generation(toks, lengths, score, norm, attn)
