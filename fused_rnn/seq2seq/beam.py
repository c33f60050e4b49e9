"""Batched beam search, with the conventions of :mod:`.search`.

Each step expands the ``K`` live beams of a source by every token and keeps the ``2K`` best
candidates: those ending in EOS among the first ``K`` are finished hypotheses, the first
``K`` others are the next beams.  Live beams are ranked by their score; the length and
coverage penalties rank the finished hypotheses.  A source stops when it holds ``n_best``
finished hypotheses and no live beam can still reach a better normalized score, or when it
has no live beam left.  The bound: step log-probs are <= 0, so a live score can only fall;
``lp`` is monotonic in the length, so the most favourable final length is the shortest or
the longest; the coverage penalty is <= 0 and can rise to 0 as attention accumulates, so
the bound counts it as 0.  Thus with a beam wide enough to keep every candidate the result
is the exact n-best list under the penalised score, and with ``length_penalty=0`` and
``beam_size=1`` it is greedy decoding.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .penalties import coverage_penalty as coverage_of
from .penalties import length_normalized
from .search import NEG_INF, Generation, StepRules, step_limit


def beam_search(decoder, state, memory, max_len: Tensor, rules: StepRules, *, beam_size: int,
                n_best: int, bos_id: int, pad_id: int, length_penalty,
                coverage_penalty: float = 0.0, src_lengths: Tensor | None = None) -> Generation:
    """``coverage_penalty`` (beta, needs attention weights) uses ``src_lengths [B]``."""
    K, batch, device = beam_size, max_len.shape[0], max_len.device
    state = state.repeat_interleave(K)
    memory = None if memory is None else memory.repeat_interleave(K)
    max_len_rows = max_len.repeat_interleave(K)
    tokens = torch.full((batch * K,), bos_id, dtype=torch.long, device=device)
    hist_tokens = torch.empty(batch * K, 0, dtype=torch.long, device=device)
    hist_attn = None
    pool = _Finished(batch)
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    base = torch.arange(batch, device=device)[:, None] * K
    rank = torch.arange(2 * K, device=device)[None, :]
    scores = None
    for step in range(step_limit(max_len)):
        logits, state, weights = decoder.step(tokens, state, memory)
        logp = rules.log_probs(logits, hist_tokens, max_len_rows)
        V = logp.shape[-1]
        if scores is None:   # one live beam per source at the start
            scores = logp.new_full((batch, K), NEG_INF)
            scores[:, 0] = 0.0
            if weights is not None:
                hist_attn = weights.new_empty(batch * K, 0, weights.shape[-1])
        top_scores, top_index = (scores.reshape(-1, 1) + logp).view(batch, K * V).topk(2 * K, dim=1)
        rows = base + torch.div(top_index, V, rounding_mode="floor")   # the beam each extends
        token = top_index % V
        is_eos = token == rules.eos_id

        # finished hypotheses: EOS among the first K candidates of a source still searching
        final = is_eos & (rank < K) & torch.isfinite(top_scores) & ~done[:, None]
        if bool(final.any()):
            b_idx, r_idx = final.nonzero(as_tuple=True)
            fin_tokens, fin_attn = _extend(hist_tokens, hist_attn, rows[b_idx, r_idx],
                                           token[b_idx, r_idx], weights)
            fin_scores = top_scores[b_idx, r_idx]
            norm = length_normalized(fin_scores, torch.tensor(step + 1, device=device),
                                     length_penalty)
            if coverage_penalty:
                norm = norm + coverage_of(fin_attn, src_lengths.to(device)[b_idx], coverage_penalty)
            pool.add(b_idx.tolist(), norm.tolist(), fin_scores.tolist(), fin_tokens, fin_attn)

        # next beams: the first K candidates that are not EOS (there are at least K)
        order = torch.sort(is_eos.to(torch.int8), dim=1, stable=True).indices[:, :K]
        scores = top_scores.gather(1, order)
        flat = rows.gather(1, order).view(-1)
        tokens = token.gather(1, order).view(-1)
        state = state.index_select(flat)
        hist_tokens, hist_attn = _extend(hist_tokens, hist_attn, flat, tokens, weights)

        bound = _best_reachable(scores, max_len, step, length_penalty)
        settled = (pool.count(device) >= n_best) & (bound <= pool.nth_best(n_best, bound))
        done = done | settled | ~torch.isfinite(bound)
        scores = scores.masked_fill(done[:, None], NEG_INF)
        if bool(done.all()):
            break
    attn_size = None if hist_attn is None else hist_attn.shape[-1]
    return pool.collect(n_best, pad_id, device, scores.dtype, attn_size)


def _extend(hist_tokens: Tensor, hist_attn: Tensor | None, rows: Tensor, tokens: Tensor,
            weights: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """The histories of beams ``rows`` extended by ``tokens`` and this step's attention."""
    out_tokens = torch.cat([hist_tokens.index_select(0, rows), tokens[:, None]], 1)
    if hist_attn is None:
        return out_tokens, None
    out_attn = torch.cat([hist_attn.index_select(0, rows), weights.index_select(0, rows)[:, None]], 1)
    return out_tokens, out_attn


def _best_reachable(scores: Tensor, max_len: Tensor, step: int, length_penalty) -> Tensor:
    """``[B]``: the best normalized score a live beam of ``scores [B, K]`` can still reach
    (a finished hypothesis after this step has between ``step + 2`` and ``max_len + 1``
    tokens)."""
    shortest = torch.full_like(max_len, step + 2)
    longest = (max_len + 1).clamp(min=step + 2)
    return torch.maximum(length_normalized(scores, shortest[:, None], length_penalty),
                         length_normalized(scores, longest[:, None], length_penalty)).amax(1)


class _Finished:
    """The finished hypotheses of each source: (normalized score, score, tokens, attention)."""

    def __init__(self, batch: int):
        self.hyps: list[list[tuple]] = [[] for _ in range(batch)]

    def add(self, sources, norms, scores, tokens: Tensor, attn: Tensor | None):
        for i, (b, ns, s) in enumerate(zip(sources, norms, scores)):
            self.hyps[b].append((ns, s, tokens[i], None if attn is None else attn[i]))

    def count(self, device) -> Tensor:
        return torch.tensor([len(h) for h in self.hyps], device=device)

    def nth_best(self, n: int, like: Tensor) -> Tensor:
        """``[B]``: the n-th best normalized score of each source (-inf with fewer than n)."""
        return torch.tensor([sorted((h[0] for h in hyps), reverse=True)[n - 1] if len(hyps) >= n
                             else NEG_INF for hyps in self.hyps], dtype=like.dtype, device=like.device)

    def collect(self, n_best, pad_id, device, dtype, attn_size) -> Generation:
        batch = len(self.hyps)
        chosen = [sorted(h, key=lambda h: h[0], reverse=True)[:n_best] for h in self.hyps]
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
