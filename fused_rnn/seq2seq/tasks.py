"""Generated data sets for the demo and the tests: human-written dates -> ISO, and reversal.

Everything is made by code from a seed, so nothing is downloaded and every run is the same.
"""
from __future__ import annotations

import datetime
import random
from typing import Iterator, Sequence

import torch
from torch import Tensor

from .checks import check_ints, is_int

PAD, BOS, EOS = 0, 1, 2
SPECIALS = ("<pad>", "<s>", "</s>")


class Vocab:
    """Characters (or any hashable symbols) <-> ids; ids 0, 1, 2 are PAD, BOS, EOS."""

    def __init__(self, symbols: Sequence[str]):
        clash = sorted(set(symbols) & set(SPECIALS))
        if clash:   # the symbol would get two ids, and decode() would print it for PAD, BOS or EOS
            raise ValueError(f"symbols: expected none of the special symbols {SPECIALS}, got {clash[0]!r}")
        self.itos = list(SPECIALS) + sorted(set(symbols))
        self.stoi = {s: i for i, s in enumerate(self.itos)}

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, text: Sequence[str], eos: bool = False) -> list[int]:
        try:
            ids = [self.stoi[c] for c in text]
        except KeyError as e:
            raise ValueError("text: expected symbols of the vocabulary, "
                             f"got {e.args[0]!r}") from None
        return ids + [EOS] if eos else ids

    def decode(self, ids: Sequence[int], sep: str = "") -> str:
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < len(self)]
        if bad:   # a negative id would index from the end: another symbol, silently
            raise ValueError(f"ids: expected ids in [0, {len(self)}), got {bad[0]}")
        out = []
        for i in ids:
            if i == EOS:
                break
            if i not in (PAD, BOS):
                out.append(self.itos[i])
        return sep.join(out)


def pad_batch(seqs: Sequence[Sequence[int]]) -> tuple[Tensor, Tensor]:
    """List of id lists -> ``[B, max_len]`` padded with PAD, and ``[B]`` lengths."""
    if len(seqs) == 0:   # the model refuses a source of no positions, so say it here
        raise ValueError("seqs: expected at least one sequence, got none")
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
    out = torch.full((len(seqs), int(lengths.max())), PAD, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, :len(s)] = torch.tensor(s, dtype=torch.long)
    return out, lengths


class PairDataset:
    """(source, target) string pairs encoded for a :class:`~fused_rnn.seq2seq.Seq2Seq`."""

    def __init__(self, pairs: Sequence[tuple], src_vocab: Vocab, tgt_vocab: Vocab):
        self.pairs = list(pairs)
        self.src_vocab, self.tgt_vocab = src_vocab, tgt_vocab
        self.src = [src_vocab.encode(s) for s, _ in self.pairs]
        self.tgt = [tgt_vocab.encode(t, eos=True) for _, t in self.pairs]

    def __len__(self) -> int:
        return len(self.pairs)

    def batch(self, index: Sequence[int], device=None) -> tuple[Tensor, Tensor, Tensor]:
        """``(src [B, S], src_lengths [B] on CPU, tgt [B, T])`` for the given rows."""
        src, lengths = pad_batch([self.src[i] for i in index])
        tgt, _ = pad_batch([self.tgt[i] for i in index])
        return src.to(device), lengths, tgt.to(device)

    def batches(self, batch_size: int, shuffle: bool = False, seed: int = 0,
                device=None) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        check_ints(batch_size=batch_size)
        order = list(range(len(self)))
        if shuffle:
            random.Random(seed).shuffle(order)
        for i in range(0, len(order), batch_size):
            yield self.batch(order[i:i + batch_size], device)


# ---- dates ---------------------------------------------------------------------------------
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December")
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
FIRST_DAY = datetime.date(1950, 1, 1)
LAST_DAY = datetime.date(2049, 12, 31)   # two-digit years: 50-99 -> 19xx, 00-49 -> 20xx


def ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _formats(d: datetime.date) -> list[str]:
    day, mon, year = d.day, d.month, d.year
    month, mon3 = MONTHS[mon - 1], MONTHS[mon - 1][:3]
    wday, wd3 = DAYS[d.weekday()], DAYS[d.weekday()][:3]
    yy = f"{year % 100:02d}"
    return [
        f"the {ordinal(day)} of {month} {year}",
        f"{day} {month} {year}",
        f"{month} {day}, {year}",
        f"{month} {ordinal(day)}, {year}",
        f"{wd3} {mon}/{day}/{yy}",                    # US order with slashes
        f"{mon}/{day}/{year}",
        f"{mon:02d}/{day:02d}/{yy}",
        f"{wday}, {month} {day}, {year}",
        f"{day} {mon3} {yy}",
        f"{mon3} {day} {year}",
        f"{day:02d}.{mon:02d}.{year}",                # European order with dots
        f"{day}.{mon}.{yy}",
        f"{year}/{mon}/{day}",
        f"{wday} the {ordinal(day)} of {month}, {year}",
        f"{ordinal(day)} {month} '{yy}",
        f"{wd3}, {day:02d} {mon3} {year}",
        f"{mon3}. {ordinal(day)} {year}",
        f"{day}-{mon3}-{yy}",
    ]


DATE_FORMATS = len(_formats(FIRST_DAY))


def human_date(d: datetime.date, rng: random.Random) -> str:
    """One of the human spellings of ``d``, at random, sometimes in lower or upper case."""
    text = rng.choice(_formats(d))
    r = rng.random()
    return text.lower() if r < 0.25 else text.upper() if r < 0.35 else text


def random_date(rng: random.Random) -> datetime.date:
    return FIRST_DAY + datetime.timedelta(days=rng.randrange((LAST_DAY - FIRST_DAY).days + 1))


def make_dates(n: int, seed: int = 0, exclude: set[str] | None = None) -> list[tuple[str, str]]:
    """``n`` pairs (human date, ISO date), none of whose sources is in ``exclude``."""
    check_ints(0, n=n)
    rng = random.Random(seed)
    out, exclude = [], exclude or set()
    while len(out) < n:
        d = random_date(rng)
        src = human_date(d, rng)
        if src not in exclude:
            out.append((src, d.isoformat()))
    return out


def date_vocabs() -> tuple[Vocab, Vocab]:
    """Every character any date spelling can use; ISO dates use digits and '-'."""
    chars = set("0123456789 ,./-'")
    for name in MONTHS + DAYS + ("the", "of", "st", "nd", "rd", "th"):
        chars |= set(name.lower()) | set(name.upper())
    return Vocab(sorted(chars)), Vocab(list("0123456789-"))


# ---- reversal ------------------------------------------------------------------------------
REVERSAL_ALPHABET = "abcdefghijklmnopqrst"


def make_reversal(n: int, min_len: int, max_len: int, seed: int = 0,
                  alphabet: str = REVERSAL_ALPHABET,
                  exclude: set[str] | None = None) -> list[tuple[str, str]]:
    """``n`` pairs (random string, the string reversed), lengths uniform in [min_len, max_len]."""
    check_ints(0, n=n)
    if not (is_int(min_len) and is_int(max_len) and 1 <= min_len <= max_len):
        raise ValueError(f"min_len, max_len: expected ints with 1 <= min_len <= max_len, "
                         f"got {min_len}, {max_len}")
    if not alphabet:
        raise ValueError(f"alphabet: expected at least one symbol, got {alphabet!r}")
    exclude = exclude or set()
    _check_something_left(min_len, max_len, alphabet, exclude)
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        s = "".join(rng.choice(alphabet) for _ in range(rng.randint(min_len, max_len)))
        if s not in exclude:
            out.append((s, s[::-1]))
    return out


def _check_something_left(min_len: int, max_len: int, alphabet: str, exclude: set[str]) -> None:
    """Refuse an ``exclude`` that holds every string make_reversal could draw: it would loop forever."""
    symbols = set(alphabet)
    total = sum(len(symbols) ** k for k in range(min_len, max_len + 1))
    excluded = sum(1 for s in exclude if min_len <= len(s) <= max_len and set(s) <= symbols)
    if excluded >= total:
        raise ValueError(f"exclude: expected to leave some string to draw, got all {total} strings of "
                         f"length {min_len}..{max_len} over {alphabet!r}")


def reversal_vocab(alphabet: str = REVERSAL_ALPHABET) -> Vocab:
    return Vocab(list(alphabet))
