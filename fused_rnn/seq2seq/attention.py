"""Attention over an encoder memory: four score functions, padding masked before the softmax.

Shapes (batch first): query ``[B, Hq]`` (one decoder step) or ``[B, T, Hq]`` (all steps at
once), keys ``[B, S, Hk]``, mask ``[B, S]`` (True = a real source position).  The result is
the context ``[B, Hv]`` / ``[B, T, Hv]`` and the weights ``[B, S]`` / ``[B, T, S]``.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

SCORES = ("dot", "general", "concat", "additive")


def lengths_to_mask(lengths: Tensor, max_len: int | None = None) -> Tensor:
    """``[B]`` lengths -> ``[B, max_len]`` bool mask, True at positions ``< length``."""
    lengths = torch.as_tensor(lengths)
    if max_len is None:
        max_len = int(lengths.max()) if lengths.numel() else 0
    positions = torch.arange(max_len, device=lengths.device)
    return positions.unsqueeze(0) < lengths.unsqueeze(1)


def check_mask(mask: Tensor) -> None:
    """A row with no real position has no distribution to attend with: refuse it."""
    if mask.dtype != torch.bool:
        raise ValueError("mask: expected a bool tensor (True = real position), "
                         f"got dtype {mask.dtype}")
    empty = ~mask.any(dim=-1)
    if bool(empty.any()):
        rows = empty.nonzero().flatten().tolist()
        raise ValueError(
            "mask: expected at least one real (unpadded) source position in every row, "
            f"got fully padded row(s) at batch index {rows[:10]}")


class Attention(nn.Module):
    """Attention with the score functions of Luong et al. (2015) and Bahdanau et al. (2014).

    ``score``:

    - ``"dot"``:      ``q . k`` (needs ``query_size == key_size``), optionally scaled by 1/sqrt(H)
    - ``"general"``:  ``q . (W k)``, bilinear
    - ``"concat"``:   ``v . tanh(W [q; k])``, Luong's concat (one matrix over the concatenation)
    - ``"additive"``: ``v . tanh(W q + U k + b)``, Bahdanau's

    Key-side projections do not depend on the query, so :meth:`project_keys` computes them
    once per source and the decoder passes them back at every step (``projected_keys``).
    """

    def __init__(self, query_size: int, key_size: int | None = None, score: str = "general",
                 attn_size: int | None = None, scale: bool = False):
        super().__init__()
        if score not in SCORES:
            raise ValueError(f"score: expected one of {SCORES}, got {score!r}")
        key_size = query_size if key_size is None else key_size
        for name, value in (("query_size", query_size), ("key_size", key_size)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected a positive int, got {value!r}")
        if score == "dot" and query_size != key_size:
            raise ValueError(f"key_size: score 'dot' needs key_size == query_size ({query_size}), "
                             f"got {key_size}")
        attn_size = query_size if attn_size is None else attn_size
        if not isinstance(attn_size, int) or attn_size < 1:
            raise ValueError(f"attn_size: expected a positive int, got {attn_size!r}")
        self.score_name = score
        self.query_size = query_size
        self.key_size = key_size
        self.attn_size = attn_size
        self.scale = scale
        if score == "general":
            self.key_proj = nn.Linear(key_size, query_size, bias=False)
        elif score == "concat":
            # One matrix over [q; k]; applied as its two column blocks so that the
            # [B, T, S, Hq + Hk] concatenation is never materialised.
            self.weight = nn.Parameter(torch.empty(attn_size, query_size + key_size))
            self.v = nn.Linear(attn_size, 1, bias=False)
        elif score == "additive":
            self.query_proj = nn.Linear(query_size, attn_size, bias=False)
            self.key_proj = nn.Linear(key_size, attn_size, bias=True)
            self.v = nn.Linear(attn_size, 1, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.score_name == "concat":
            nn.init.uniform_(self.weight, -1 / math.sqrt(self.weight.shape[1]),
                             1 / math.sqrt(self.weight.shape[1]))

    def extra_repr(self) -> str:
        return (f"query_size={self.query_size}, key_size={self.key_size}, "
                f"score={self.score_name!r}, attn_size={self.attn_size}")

    def project_keys(self, keys: Tensor) -> Tensor | None:
        """The query-independent part of the score, ``[B, S, *]`` (None for ``dot``)."""
        if self.score_name == "general":
            return self.key_proj(keys)
        if self.score_name == "concat":
            return torch.nn.functional.linear(keys, self.weight[:, self.query_size:])
        if self.score_name == "additive":
            return self.key_proj(keys)
        return None

    def scores(self, query: Tensor, keys: Tensor, projected_keys: Tensor | None = None) -> Tensor:
        """Unnormalised scores ``[B, T, S]`` for a 3-D query ``[B, T, Hq]``."""
        if projected_keys is None:
            projected_keys = self.project_keys(keys)
        name = self.score_name
        if name == "dot":
            out = torch.bmm(query, keys.transpose(1, 2))
            return out / math.sqrt(self.query_size) if self.scale else out
        if name == "general":
            out = torch.bmm(query, projected_keys.transpose(1, 2))
            return out / math.sqrt(self.query_size) if self.scale else out
        if name == "concat":
            q = torch.nn.functional.linear(query, self.weight[:, :self.query_size])
        else:
            q = self.query_proj(query)
        # [B, T, 1, A] + [B, 1, S, A] -> [B, T, S, A] -> [B, T, S]
        hidden = torch.tanh(q.unsqueeze(2) + projected_keys.unsqueeze(1))
        return self.v(hidden).squeeze(-1)

    def forward(self, query: Tensor, keys: Tensor, mask: Tensor | None = None,
                values: Tensor | None = None, projected_keys: Tensor | None = None,
                validate: bool = True) -> tuple[Tensor, Tensor]:
        """Return ``(context, weights)``.

        ``mask`` ``[B, S]`` bool, True at real positions; padded positions get exactly zero
        weight.  ``values`` default to ``keys``.  ``projected_keys`` is
        :meth:`project_keys` of ``keys``, when the caller already has it.  ``validate=False``
        skips the shape and mask checks (a decoder checks its memory once, not every step).
        """
        if not validate:
            return self._attend(query, keys, mask, values, projected_keys)
        if query.dim() not in (2, 3):
            raise ValueError(f"query: expected [B, H] or [B, T, H], got shape {tuple(query.shape)}")
        if keys.dim() != 3:
            raise ValueError(f"keys: expected [B, S, H], got shape {tuple(keys.shape)}")
        if query.shape[-1] != self.query_size:
            raise ValueError(f"query: expected last dim {self.query_size}, got {query.shape[-1]}")
        if keys.shape[-1] != self.key_size:
            raise ValueError(f"keys: expected last dim {self.key_size}, got {keys.shape[-1]}")
        if query.shape[0] != keys.shape[0]:
            raise ValueError(f"keys: expected batch size {query.shape[0]} (the query's), "
                             f"got {keys.shape[0]}")
        if mask is not None:
            if mask.shape != keys.shape[:2]:
                raise ValueError(f"mask: expected shape {tuple(keys.shape[:2])}, "
                                 f"got {tuple(mask.shape)}")
            check_mask(mask)
        return self._attend(query, keys, mask, values, projected_keys)

    def _attend(self, query, keys, mask, values, projected_keys):
        single = query.dim() == 2
        q = query.unsqueeze(1) if single else query
        scores = self.scores(q, keys, projected_keys)
        if mask is not None:
            scores = scores.masked_fill(~mask.unsqueeze(1), float("-inf"))
        weights = torch.softmax(scores, dim=-1)
        context = torch.bmm(weights, keys if values is None else values)
        if single:
            return context.squeeze(1), weights.squeeze(1)
        return context, weights
