"""Decoding strategies: greedy, sampling (temperature, top-k, top-p) and beam search.

They drive any ``decoder`` with ``decoder.step(tokens [N], state, memory) -> (logits [N, V],
state, weights [N, S] or None)`` where ``state`` and ``memory`` have ``index_select(index)``
and ``repeat_interleave(n)`` over the batch (see :mod:`.decoder`).

Conventions shared by all strategies:

- A hypothesis is the tokens after BOS, up to and including EOS.  Its *length* counts EOS.
- Every step's distribution is ``log_softmax(logits / temperature)`` over the whole
  vocabulary.  The tokens in ``blocked_ids`` (PAD, BOS) are never emitted; EOS is blocked
  while fewer than ``min_len`` tokens precede it and is the only choice once ``max_len``
  tokens precede it.  Blocking removes choices but does not renormalise, so a hypothesis'
  ``score`` is exactly the sum of the model's log-probs of its tokens (EOS included); top-k
  and top-p only narrow what sampling may draw.
- ``normalized_score = score / length ** length_penalty`` (0: raw sum; 1: per-token mean).
- A finished hypothesis never grows: after EOS a row emits PAD, adds nothing to its score,
  and gets all-zero attention.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

STRATEGIES = ("greedy", "sample", "beam")
NEG_INF = float("-inf")


@dataclass
class Generation:
    tokens: Tensor              # [B, N, L] int64, PAD after EOS (N = n_best, best first)
    lengths: Tensor             # [B, N] int64, tokens up to and including EOS (0: no hypothesis)
    scores: Tensor              # [B, N] sum of log-probs (-inf: no hypothesis)
    normalized_scores: Tensor   # [B, N] scores / lengths ** length_penalty
    attention: Tensor | None    # [B, N, L, S] attention of each emitted token (None without)

    def best(self) -> list[list[int]]:
        """The best hypothesis of each source as a list of token ids, EOS left out."""
        out = []
        for toks, n in zip(self.tokens[:, 0].tolist(), self.lengths[:, 0].tolist()):
            out.append(toks[:max(n - 1, 0)])
        return out


def check_options(strategy: str, beam_size: int, n_best: int, temperature: float,
                  top_k: int | None, top_p: float | None, min_len: int,
                  length_penalty: float) -> None:
    """ValueError naming the argument, what was expected and what came."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy: expected one of {STRATEGIES}, got {strategy!r}")
    if not isinstance(beam_size, int) or beam_size < 1:
        raise ValueError(f"beam_size: expected an int >= 1, got {beam_size!r}")
    if not isinstance(n_best, int) or n_best < 1:
        raise ValueError(f"n_best: expected an int >= 1, got {n_best!r}")
    if strategy == "beam" and n_best > beam_size:
        raise ValueError(f"n_best: expected at most beam_size ({beam_size}), got {n_best}")
    if strategy == "greedy" and n_best != 1:
        raise ValueError(f"n_best: expected 1 for strategy 'greedy' (it has one hypothesis), "
                         f"got {n_best}")
    if not isinstance(temperature, (int, float)) or not temperature > 0:
        raise ValueError(f"temperature: expected a number > 0, got {temperature!r}")
    if top_k is not None:
        if not isinstance(top_k, int) or top_k < 1:
            raise ValueError(f"top_k: expected None or an int >= 1, got {top_k!r}")
    if top_p is not None:
        if not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
            raise ValueError(f"top_p: expected None or a number in (0, 1], got {top_p!r}")
    if strategy != "sample" and (top_k is not None or top_p is not None):
        raise ValueError(f"top_k/top_p: expected None for strategy {strategy!r} "
                         f"(they apply to 'sample'), got top_k={top_k!r}, top_p={top_p!r}")
    if not isinstance(min_len, int) or min_len < 0:
        raise ValueError(f"min_len: expected an int >= 0, got {min_len!r}")
    if not isinstance(length_penalty, (int, float)):
        raise ValueError(f"length_penalty: expected a number, got {length_penalty!r}")


def constrained_log_probs(logits: Tensor, step: int, *, temperature: float, eos_id: int,
                          blocked_ids: tuple[int, ...], min_len: int, max_len: Tensor) -> Tensor:
    """The model's log-probs at ``step`` (0-based: ``step`` tokens already emitted) with
    blocked choices set to -inf.  ``max_len`` ``[N]`` per row."""
    x = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    logp = torch.log_softmax(x if temperature == 1 else x / temperature, dim=-1)
    if blocked_ids:
        logp[:, list(blocked_ids)] = NEG_INF
    if step < min_len:
        logp[:, eos_id] = NEG_INF
    at_max = max_len <= step
    if bool(at_max.any()):
        eos = logp[:, eos_id].clone()
        logp[at_max] = NEG_INF
        logp[:, eos_id] = torch.where(at_max, eos, logp[:, eos_id])
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


def _length_norm(scores: Tensor, lengths: Tensor, length_penalty: float) -> Tensor:
    if length_penalty == 0:
        return scores.clone()
    return scores / lengths.clamp(min=1).to(scores.dtype) ** length_penalty


def greedy_or_sample(decoder, state, memory, max_len: Tensor, *, sample: bool, n: int,
                     bos_id: int, eos_id: int, pad_id: int, blocked_ids: tuple[int, ...],
                     min_len: int, temperature: float, top_k: int | None, top_p: float | None,
                     length_penalty: float, generator: torch.Generator | None) -> Generation:
    batch = max_len.shape[0]
    if n > 1:
        state = state.repeat_interleave(n)
        memory = None if memory is None else memory.repeat_interleave(n)
        max_len = max_len.repeat_interleave(n)
    rows = max_len.shape[0]
    device = max_len.device
    tokens = torch.full((rows,), bos_id, dtype=torch.long, device=device)
    finished = torch.zeros(rows, dtype=torch.bool, device=device)
    lengths = torch.zeros(rows, dtype=torch.long, device=device)
    score = None
    out_tokens, out_attn = [], []
    for step in range(int(max_len.max()) + 1):
        logits, state, weights = decoder.step(tokens, state, memory)
        logp = constrained_log_probs(logits, step, temperature=temperature, eos_id=eos_id,
                                     blocked_ids=blocked_ids, min_len=min_len, max_len=max_len)
        if score is None:
            score = logp.new_zeros(rows)
        if sample:
            allowed = filter_top_k_top_p(logp, top_k, top_p)
            choice = torch.multinomial(torch.softmax(allowed, -1), 1, generator=generator)[:, 0]
        else:
            choice = logp.argmax(-1)
        picked = logp.gather(1, choice[:, None])[:, 0]
        choice = choice.masked_fill(finished, pad_id)
        score = score + picked.masked_fill(finished, 0.0)
        lengths = lengths + (~finished).long()
        out_tokens.append(choice)
        if weights is not None:
            out_attn.append(weights.masked_fill(finished[:, None], 0.0))
        finished = finished | (choice == eos_id)
        tokens = choice
        if bool(finished.all()):
            break
    toks = torch.stack(out_tokens, 1).view(batch, n, -1)
    attn = None if not out_attn else torch.stack(out_attn, 1).view(batch, n, len(out_attn), -1)
    lengths = lengths.view(batch, n)
    score = score.view(batch, n)
    norm = _length_norm(score, lengths, length_penalty)
    if n > 1:   # n samples per source, best (normalized) first
        order = norm.argsort(dim=1, descending=True, stable=True)
        toks = toks.gather(1, order[:, :, None].expand_as(toks))
        if attn is not None:
            attn = attn.gather(1, order[:, :, None, None].expand_as(attn))
        lengths, score, norm = (t.gather(1, order) for t in (lengths, score, norm))
    return Generation(toks, lengths, score, norm, attn)


def beam_search(decoder, state, memory, max_len: Tensor, *, beam_size: int, n_best: int,
                bos_id: int, eos_id: int, pad_id: int, blocked_ids: tuple[int, ...],
                min_len: int, temperature: float, length_penalty: float) -> Generation:
    """Batched beam search.

    Each step expands the ``K`` live beams of a source by every token and keeps the ``2K``
    best candidates: those ending in EOS among the first ``K`` are finished hypotheses, the
    first ``K`` others are the next beams.  A source stops when it holds ``n_best`` finished
    hypotheses and no live beam can still reach a better normalized score (log-probs are
    <= 0, so a live score can only fall; the bound takes the most favourable final length),
    or when it has no live beam left.  Thus with a beam wide enough to hold every prefix the
    result is the exact n-best list, and with ``length_penalty=0`` and ``beam_size=1`` it is
    greedy decoding.
    """
    K = beam_size
    batch = max_len.shape[0]
    device = max_len.device
    state = state.repeat_interleave(K)
    memory = None if memory is None else memory.repeat_interleave(K)
    max_len_rows = max_len.repeat_interleave(K)
    tokens = torch.full((batch * K,), bos_id, dtype=torch.long, device=device)
    hist_tokens = torch.empty(batch * K, 0, dtype=torch.long, device=device)
    hist_attn = None
    finished: list[list[tuple[float, float, Tensor, Tensor | None]]] = [[] for _ in range(batch)]
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    base = torch.arange(batch, device=device)[:, None] * K
    rank = torch.arange(2 * K, device=device)[None, :]
    scores = None
    for step in range(int(max_len.max()) + 1):
        logits, state, weights = decoder.step(tokens, state, memory)
        logp = constrained_log_probs(logits, step, temperature=temperature, eos_id=eos_id,
                                     blocked_ids=blocked_ids, min_len=min_len,
                                     max_len=max_len_rows)
        V = logp.shape[-1]
        if scores is None:   # one live beam per source at the start
            scores = logp.new_full((batch, K), NEG_INF)
            scores[:, 0] = 0.0
            if weights is not None:
                hist_attn = weights.new_empty(batch * K, 0, weights.shape[-1])
        candidates = (scores.reshape(-1, 1) + logp).view(batch, K * V)
        top_scores, top_index = candidates.topk(2 * K, dim=1)
        beam = torch.div(top_index, V, rounding_mode="floor")
        token = top_index % V
        is_eos = token == eos_id

        # finished hypotheses: EOS among the first K candidates of a source still searching
        final = is_eos & (rank < K) & torch.isfinite(top_scores) & ~done[:, None]
        if bool(final.any()):
            b_idx, r_idx = final.nonzero(as_tuple=True)
            rows = (base[:, 0][b_idx] + beam[b_idx, r_idx])
            fin_scores = top_scores[b_idx, r_idx]
            eos_col = torch.full((rows.shape[0], 1), eos_id, dtype=torch.long, device=device)
            fin_tokens = torch.cat([hist_tokens.index_select(0, rows), eos_col], 1)
            fin_attn = None
            if hist_attn is not None:
                fin_attn = torch.cat([hist_attn.index_select(0, rows),
                                      weights.index_select(0, rows)[:, None]], 1)
            length = step + 1
            norm = fin_scores / length ** length_penalty if length_penalty else fin_scores
            for i, (b, s, ns) in enumerate(zip(b_idx.tolist(), fin_scores.tolist(),
                                               norm.tolist())):
                attn_i = None if fin_attn is None else fin_attn[i]
                finished[b].append((ns, s, fin_tokens[i], attn_i))

        # next beams: the first K candidates that are not EOS (there are at least K)
        order = torch.sort(is_eos.to(torch.int8), dim=1, stable=True).indices[:, :K]
        scores = top_scores.gather(1, order)
        next_beam = beam.gather(1, order)
        next_token = token.gather(1, order)
        flat = (base + next_beam).view(-1)
        state = state.index_select(flat)
        hist_tokens = torch.cat([hist_tokens.index_select(0, flat), next_token.view(-1, 1)], 1)
        if hist_attn is not None:
            hist_attn = torch.cat([hist_attn.index_select(0, flat),
                                   weights.index_select(0, flat)[:, None]], 1)
        tokens = next_token.view(-1)

        # which sources can stop
        kept = torch.tensor([len(f) for f in finished], device=device)
        worst_kept = torch.tensor(
            [sorted((h[0] for h in f), reverse=True)[n_best - 1] if len(f) >= n_best else NEG_INF
             for f in finished], dtype=scores.dtype, device=device)
        shortest = torch.full_like(max_len, step + 2).to(scores.dtype)
        longest = (max_len + 1).to(scores.dtype).clamp(min=step + 2)
        if length_penalty:
            bound = torch.maximum(scores / shortest[:, None] ** length_penalty,
                                  scores / longest[:, None] ** length_penalty).amax(1)
        else:
            bound = scores.amax(1)
        done = done | ((kept >= n_best) & (bound <= worst_kept)) | ~torch.isfinite(bound)
        scores = scores.masked_fill(done[:, None], NEG_INF)
        if bool(done.all()):
            break
    attn_size = None if hist_attn is None else hist_attn.shape[-1]
    return _collect(finished, n_best, pad_id, device, scores.dtype, attn_size)


def _collect(finished, n_best, pad_id, device, dtype, attn_size) -> Generation:
    batch = len(finished)
    chosen = [sorted(f, key=lambda h: h[0], reverse=True)[:n_best] for f in finished]
    L = max((h[2].shape[0] for c in chosen for h in c), default=0)
    tokens = torch.full((batch, n_best, L), pad_id, dtype=torch.long, device=device)
    lengths = torch.zeros(batch, n_best, dtype=torch.long, device=device)
    scores = torch.full((batch, n_best), NEG_INF, dtype=dtype, device=device)
    norm = torch.full((batch, n_best), NEG_INF, dtype=dtype, device=device)
    attn = None
    if attn_size is not None:
        attn = torch.zeros(batch, n_best, L, attn_size, dtype=dtype, device=device)
    for b, hyps in enumerate(chosen):
        for i, (ns, s, toks, att) in enumerate(hyps):
            n = toks.shape[0]
            tokens[b, i, :n] = toks
            lengths[b, i] = n
            scores[b, i] = s
            norm[b, i] = ns
            if attn is not None:
                attn[b, i, :n] = att
    return Generation(tokens, lengths, scores, norm, attn)
