"""The argument checks of the seq2seq package, in one place.

Each bad value is a ValueError that names the argument, what was expected and what came
(docs/DESIGN.md §4); something that is not a tensor where a tensor goes is a TypeError, as torch
gives.  A bool or a float where an int goes is a ValueError, as the option checks have always
said.  The entry points call these before any computation, so a bad call costs nothing and
leaves no half-done work.  The decoding options are checked in :class:`.DecodeOptions`.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor


def is_int(x) -> bool:
    """A Python int, not a bool: ``True`` as a beam size or an id is a mistake, not a 1."""
    return isinstance(x, int) and not isinstance(x, bool)


def is_number(x) -> bool:
    """A finite int or float, not a bool."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def check_ints(low: int = 1, /, **values) -> None:
    """Every value an int >= ``low``: sizes, counts, steps (nn.Embedding and nn.Linear would take
    some wrong ones silently, a float batch size fails deep inside slicing)."""
    for name, value in values.items():
        if not is_int(value) or value < low:
            raise ValueError(f"{name}: expected an int >= {low}, got {value!r}")


def check_token_id(name: str, value, vocab_size: int | None = None, vocab: str = "vocab_size") -> None:
    """A token id: an int in ``[0, vocab_size)``.  A negative id would index from the end of the
    vocabulary (``logp[:, -1]``) and silently mean another token, so it is refused even when the
    vocabulary size is unknown."""
    if not is_int(value) or value < 0 or (vocab_size is not None and value >= vocab_size):
        where = "an int id >= 0" if vocab_size is None else f"an int id in [0, {vocab_size}) ({vocab})"
        raise ValueError(f"{name}: expected {where}, got {value!r}")


def check_tokens(name: str, tokens, time: str, *, batch: int | None = None,
                 vocab_size: int | None = None, vocab: str = "vocab_size") -> Tensor:
    """``tokens [B, time]`` as int64: a 2-D integer tensor with at least one position (the RNNs
    refuse an empty sequence), ``batch`` rows if given, and every id in ``[0, vocab_size)`` if
    given.  Any integer dtype is taken (nn.Embedding and the losses want int64).  The id range
    costs a reduction, a sync on CUDA, so only generation (which syncs every step anyway) asks;
    in training nn.Embedding's own check applies."""
    layout = f"[{'B' if batch is None else batch}, {time}]"
    if not isinstance(tokens, Tensor):
        raise TypeError(f"{name}: expected a tensor of token ids {layout}, got {type(tokens).__name__}")
    if tokens.dim() != 2 or tokens.shape[1] == 0 or (batch is not None and tokens.shape[0] != batch):
        raise ValueError(f"{name}: expected token ids {layout} ({time} >= 1), got shape {tuple(tokens.shape)}")
    if tokens.dtype.is_floating_point or tokens.dtype.is_complex or tokens.dtype == torch.bool:
        raise ValueError(f"{name}: expected an integer dtype (token ids), got {tokens.dtype}")
    if vocab_size is not None and tokens.numel():
        lo, hi = (int(x) for x in torch.aminmax(tokens))
        if lo < 0 or hi >= vocab_size:
            raise ValueError(f"{name}: expected token ids in [0, {vocab_size}) ({vocab}), "
                             f"got ids in [{lo}, {hi}]")
    return tokens.long()


def check_lengths(lengths, batch: int, max_len: int, name: str = "src_lengths") -> Tensor:
    """``lengths [batch]`` as int64, integers in ``[1, max_len]`` (a tensor or a sequence of ints)."""
    if not isinstance(lengths, Tensor):
        try:
            lengths = torch.as_tensor(lengths)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"{name}: expected a tensor or a sequence of {batch} ints, "
                            f"got {type(lengths).__name__}") from None
    if lengths.dim() != 1 or lengths.shape[0] != batch:
        raise ValueError(f"{name}: expected a 1-D tensor of {batch} lengths, "
                         f"got shape {tuple(lengths.shape)}")
    if not batch:   # nothing to check; [] (float to torch.as_tensor) is a fine empty batch
        return lengths.long()
    if lengths.dtype.is_floating_point or lengths.dtype.is_complex or lengths.dtype == torch.bool:
        raise ValueError(f"{name}: expected integer lengths, got dtype {lengths.dtype}")
    lo, hi = (int(x) for x in torch.aminmax(lengths))
    if lo < 1 or hi > max_len:
        raise ValueError(f"{name}: expected every length in [1, {max_len}] (a length-0 source "
                         f"is a fully padded row), got lengths in [{lo}, {hi}]")
    return lengths.long()


def check_max_len(max_len, batch: int | None = None) -> Tensor:
    """``max_len [B]`` tokens before EOS: a 1-D integer tensor (of ``batch`` rows if given), >= 0."""
    shape = "[B]" if batch is None else f"of shape {(batch,)}"
    if not isinstance(max_len, Tensor):
        raise TypeError(f"max_len: expected an integer tensor {shape}, got {type(max_len).__name__}")
    integer = not (max_len.dtype.is_floating_point or max_len.dtype.is_complex or max_len.dtype == torch.bool)
    if not integer or max_len.dim() != 1 or (batch is not None and max_len.shape[0] != batch):
        raise ValueError(f"max_len: expected an integer tensor {shape}, got {max_len.dtype} "
                         f"{tuple(max_len.shape)}")
    if max_len.numel() and int(max_len.min()) < 0:
        raise ValueError(f"max_len: expected every value >= 0, got {int(max_len.min())}")
    return max_len


def check_min_len_reachable(min_len: int, vocab_size: int, eos_id: int, blocked_ids,
                            no_repeat_ngram_size: int) -> None:
    """Refuse a ``min_len`` that no hypothesis can reach, rather than decode rows that all end with
    no hypothesis (length 0, score -inf).  Before EOS a hypothesis holds only the ``k`` tokens that
    are neither EOS nor blocked; with no repeated n-gram its ``length - n + 1`` n-grams are all
    different, so it holds at most ``k ** n + n - 1`` tokens (a de Bruijn sequence reaches that).
    A row can still get stuck on its own path below that bound: that stays "no hypothesis"."""
    free, n = vocab_size - len({eos_id, *blocked_ids}), no_repeat_ngram_size
    if free == 0:
        longest = 0
        why = (f"the vocabulary of {vocab_size} has no token besides EOS ({eos_id}) and blocked_ids "
               f"{tuple(blocked_ids)}")
    elif n:
        longest = free ** min(n, 64) + n - 1     # with n > 64, 2 ** 64 is beyond any min_len anyway
        why = f"no longer hypothesis of the {free} tokens that are neither EOS nor blocked repeats no {n}-gram"
    else:
        return
    if min_len > longest:
        raise ValueError(f"min_len: expected at most {longest} ({why}), got {min_len}")
