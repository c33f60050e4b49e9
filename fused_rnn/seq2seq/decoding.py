"""The front door of decoding: the options (checked once, each bad value a ValueError naming
it), ``max_len`` per row, the checks of a decode's other arguments (:func:`check_decode_args`),
and :func:`decode`, which runs the chosen strategy of :mod:`.search`.

:meth:`Seq2Seq.generate` is the encoder followed by :func:`decode`; a language model calls
:func:`decode` itself with its own state and ``memory=None``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .beam import beam_search
from .checks import check_max_len, check_min_len_reachable, check_token_id, is_int, is_number
from .penalties import WU
from .search import STRATEGIES, Generation, StepRules, greedy_or_sample


@dataclass(frozen=True)
class DecodeOptions:
    """How to decode; the meaning of each option is in :meth:`Seq2Seq.generate`."""
    strategy: str = "greedy"
    beam_size: int = 4
    n_best: int = 1
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    min_len: int = 0
    length_penalty: float | tuple[str, float] = 1.0
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    coverage_penalty: float = 0.0

    def __post_init__(self):
        self._check_strategy()
        self._check_sampling()
        self._check_penalties()

    def _check_strategy(self):
        strategy, beam_size, n_best = self.strategy, self.beam_size, self.n_best
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy: expected one of {STRATEGIES}, got {strategy!r}")
        if not is_int(beam_size) or beam_size < 1:
            raise ValueError(f"beam_size: expected an int >= 1, got {beam_size!r}")
        if not is_int(n_best) or n_best < 1:
            raise ValueError(f"n_best: expected an int >= 1, got {n_best!r}")
        if strategy == "beam" and n_best > beam_size:
            raise ValueError(f"n_best: expected at most beam_size ({beam_size}), got {n_best}")
        if strategy == "greedy" and n_best != 1:
            raise ValueError(f"n_best: expected 1 for strategy 'greedy' (it has one hypothesis), "
                             f"got {n_best}")
        if not is_int(self.min_len) or self.min_len < 0:
            raise ValueError(f"min_len: expected an int >= 0, got {self.min_len!r}")

    def _check_sampling(self):
        temperature, top_k, top_p = self.temperature, self.top_k, self.top_p
        if not is_number(temperature) or not temperature > 0:
            raise ValueError(f"temperature: expected a number > 0, got {temperature!r}")
        if top_k is not None and (not is_int(top_k) or top_k < 1):
            raise ValueError(f"top_k: expected None or an int >= 1, got {top_k!r}")
        if top_p is not None and (not is_number(top_p) or not 0 < top_p <= 1):
            raise ValueError(f"top_p: expected None or a number in (0, 1], got {top_p!r}")
        if self.strategy != "sample" and (top_k is not None or top_p is not None):
            raise ValueError(f"top_k/top_p: expected None for strategy {self.strategy!r} "
                             f"(they apply to 'sample'), got top_k={top_k!r}, top_p={top_p!r}")

    def _check_penalties(self):
        lp = self.length_penalty
        wu = isinstance(lp, tuple) and len(lp) == 2 and lp[0] == WU and is_number(lp[1])
        if not (is_number(lp) or wu):
            raise ValueError(f"length_penalty: expected a number or ('wu', alpha) with alpha a "
                             f"number, got {lp!r}")
        if not is_number(self.repetition_penalty) or not self.repetition_penalty > 0:
            raise ValueError(f"repetition_penalty: expected a number > 0 (1: none), "
                             f"got {self.repetition_penalty!r}")
        if not is_int(self.no_repeat_ngram_size) or self.no_repeat_ngram_size < 0:
            raise ValueError(f"no_repeat_ngram_size: expected an int >= 0 (0: none), "
                             f"got {self.no_repeat_ngram_size!r}")
        beta = self.coverage_penalty
        if not is_number(beta) or beta < 0:
            raise ValueError(f"coverage_penalty: expected a number >= 0 (0: none), got {beta!r}")
        if beta and self.strategy != "beam":
            raise ValueError(f"coverage_penalty: expected 0 for strategy {self.strategy!r} "
                             f"(it applies to 'beam'), got {beta!r}")


def max_len_per_row(max_len, src_lengths: Tensor, min_len: int = 0) -> Tensor:
    """The most tokens before EOS for each source ``[B]``: ``max_len`` an int, a ``[B]``
    integer tensor, a pair ``(a, b)`` for ``floor(a * src_length + b)``, or None for
    ``(2, 10)``. An int below 0 or ``min_len`` is refused here, where an empty batch has no row
    to check it on later."""
    device = src_lengths.device
    if max_len is None:
        max_len = (2, 10)
    if isinstance(max_len, Tensor):
        out = check_max_len(max_len, src_lengths.shape[0]).to(device=device, dtype=torch.long)
    elif is_int(max_len):
        if max_len < 0:
            raise ValueError(f"max_len: expected >= 0, got {max_len}")
        if max_len < min_len:
            raise ValueError(f"max_len: expected >= min_len ({min_len}) for every source, got {max_len}")
        out = torch.full(src_lengths.shape, max_len, dtype=torch.long, device=device)
    elif isinstance(max_len, tuple) and len(max_len) == 2 and all(is_number(x) for x in max_len):
        a, b = max_len
        out = torch.floor(a * src_lengths.to(torch.float64) + b).to(torch.long)
    else:
        raise ValueError(f"max_len: expected None, an int, a tensor or a pair (a, b) of numbers, "
                         f"got {max_len!r}")
    if out.numel() and int(out.min()) < 0:
        raise ValueError(f"max_len: expected >= 0, got {int(out.min())}")
    return out


def check_decode_args(options: DecodeOptions, max_len: Tensor, src_lengths: Tensor | None, *,
                      vocab_size: int | None, has_memory: bool, bos_id: int, eos_id: int, pad_id: int,
                      blocked_ids) -> None:
    """What :func:`decode` checks before its first step; :meth:`Seq2Seq.generate` calls it before
    its encoder runs.  ``vocab_size`` None (a decoder without one): the ids are checked for type
    and sign only, and ``min_len`` is not checked against the vocabulary."""
    if not isinstance(options, DecodeOptions):
        raise TypeError(f"options: expected a DecodeOptions, got {type(options).__name__}")
    check_max_len(max_len)
    _check_vocabulary(options, vocab_size, bos_id, eos_id, pad_id, blocked_ids)
    if max_len.numel() and int(max_len.min()) < options.min_len:
        raise ValueError(f"max_len: expected >= min_len ({options.min_len}) for every source, "
                         f"got {int(max_len.min())}")
    if options.coverage_penalty and not has_memory:
        raise ValueError(f"coverage_penalty: expected 0 for a model without attention (it sums "
                         f"attention weights), got {options.coverage_penalty!r}")
    if options.coverage_penalty and src_lengths is None:
        raise ValueError("src_lengths: expected the source lengths [B] for coverage_penalty, "
                         "got None")
    if src_lengths is not None and (not isinstance(src_lengths, Tensor) or src_lengths.shape != max_len.shape):
        got = f"shape {tuple(src_lengths.shape)}" if isinstance(src_lengths, Tensor) else type(src_lengths).__name__
        raise ValueError(f"src_lengths: expected the source lengths [{max_len.shape[0]}], got {got}")


def _check_vocabulary(options, vocab_size, bos_id, eos_id, pad_id, blocked_ids) -> None:
    """The token ids are in the vocabulary, EOS can be emitted, and ``min_len`` can be reached."""
    vocab = "the decoder's vocab_size"
    for name, value in (("bos_id", bos_id), ("eos_id", eos_id), ("pad_id", pad_id)):
        check_token_id(name, value, vocab_size, vocab)
    if not isinstance(blocked_ids, (tuple, list)):
        raise TypeError(f"blocked_ids: expected a tuple of token ids, got {type(blocked_ids).__name__}")
    for value in blocked_ids:
        check_token_id("blocked_ids", value, vocab_size, vocab)
    if eos_id in blocked_ids:   # EOS blocked even at max_len: no row could ever finish
        raise ValueError(f"blocked_ids: expected ids other than eos_id ({eos_id}), got {tuple(blocked_ids)}")
    if vocab_size is not None:
        check_min_len_reachable(options.min_len, vocab_size, eos_id, blocked_ids, options.no_repeat_ngram_size)


def decode(decoder, state, memory, max_len: Tensor, options: DecodeOptions, *, bos_id: int,
           eos_id: int, pad_id: int, blocked_ids: tuple[int, ...] = (),
           src_lengths: Tensor | None = None, generator: torch.Generator | None = None
           ) -> Generation:
    """Decode from ``state`` (and ``memory``, None without attention) for ``max_len [B]``
    rows; the decoder's contract is in :mod:`.search`.  ``bos_id``: the token the decoder
    reads first (a language model continuing a prompt passes the prompt's last token).
    ``src_lengths [B]``: needed by the coverage penalty, which refuses a decoder without
    attention (``memory`` None).  A decoder with ``vocab_size`` (as :class:`.Decoder`) has the
    ids and ``min_len`` checked against its vocabulary first.  An empty batch gives an empty
    :class:`.Generation`."""
    check_decode_args(options, max_len, src_lengths, vocab_size=getattr(decoder, "vocab_size", None),
                      has_memory=memory is not None, bos_id=bos_id, eos_id=eos_id, pad_id=pad_id,
                      blocked_ids=blocked_ids)
    rules = StepRules(eos_id=eos_id, blocked_ids=blocked_ids, min_len=options.min_len,
                      temperature=options.temperature,
                      repetition_penalty=options.repetition_penalty,
                      no_repeat_ngram_size=options.no_repeat_ngram_size)
    common = dict(bos_id=bos_id, pad_id=pad_id, length_penalty=options.length_penalty)
    if options.strategy == "beam":
        return beam_search(decoder, state, memory, max_len, rules, beam_size=options.beam_size,
                           n_best=options.n_best, coverage_penalty=options.coverage_penalty,
                           src_lengths=src_lengths, **common)
    return greedy_or_sample(decoder, state, memory, max_len, rules,
                            sample=options.strategy == "sample", n=options.n_best,
                            top_k=options.top_k, top_p=options.top_p, generator=generator,
                            **common)
