"""Synthetic captioning data: small RGB canvases with one or two shapes, and their captions.

A scene holds one shape, captioned by where it is ("red circle on the left"), or two shapes
side by side or one above the other, captioned by how they stand ("red circle left of blue
square", "green triangle above red circle").  The words of a two-shape caption come from
different places of the image in an order set by the layout, so a decoder that reads a grid
of image features has to look at the right cell for each word: what attention is for.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import torch

PAD, BOS, EOS = "<pad>", "<s>", "</s>"
COLOURS = {"red": (0.9, 0.15, 0.1), "green": (0.15, 0.8, 0.2), "blue": (0.15, 0.3, 0.95),
           "yellow": (0.95, 0.85, 0.1)}
SHAPES = ("circle", "square", "triangle")
PLACES = ("left", "right", "top", "bottom")      # where a lone shape sits


@dataclass(frozen=True)
class Thing:
    colour: str
    shape: str

    def words(self) -> list[str]:
        return [self.colour, self.shape]


class Vocab:
    """Word <-> id; PAD, BOS, EOS are 0, 1, 2 (fused_rnn.seq2seq's defaults), words after."""

    def __init__(self, colours, shapes):
        words = [PAD, BOS, EOS, *colours, *shapes, "on", "the", *PLACES, "of", "above"]
        self.itos = list(dict.fromkeys(words))      # "left" is both a place and a relation
        self.stoi = {w: i for i, w in enumerate(self.itos)}
        self.pad_id, self.bos_id, self.eos_id = 0, 1, 2

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, caption: str) -> list[int]:
        return [self.stoi[w] for w in caption.split()] + [self.eos_id]

    def decode(self, ids) -> str:
        return " ".join(self.itos[i] for i in ids if i > self.eos_id)


@dataclass(frozen=True)
class Placed:
    thing: Thing
    x: float        # centre, in pixels
    y: float
    r: float        # half-size


def scene(rng: random.Random, size: int, things: list[Thing]) -> tuple[list[Placed], str]:
    """The shapes of one image and its caption."""
    r = size * rng.uniform(0.16, 0.2)
    half, margin = size / 2, r + 1
    jitter = rng.uniform
    if rng.random() < 0.25:     # a lone shape near one edge, centred on the other axis
        thing, place = rng.choice(things), rng.choice(PLACES)
        along, across = jitter(margin, half - r), jitter(half - size / 8, half + size / 8)
        x, y = {"left": (along, across), "right": (size - along, across),
                "top": (across, along), "bottom": (across, size - along)}[place]
        return [Placed(thing, x, y, r)], " ".join(thing.words() + ["on", "the", place])
    first, second = rng.sample(things, 2)
    # main axis: one shape in each half; cross axis: both near the middle, so that a
    # "left of" scene never also reads as "above" and the caption has one right answer
    a, b = jitter(margin, half - r), jitter(half + r, size - margin)
    u = jitter(half - size / 8, half + size / 8)
    v = u + jitter(-size / 12, size / 12)
    if rng.random() < 0.5:
        shapes = [Placed(first, a, u, r), Placed(second, b, v, r)]
        return shapes, " ".join(first.words() + ["left", "of"] + second.words())
    shapes = [Placed(first, u, a, r), Placed(second, v, b, r)]
    return shapes, " ".join(first.words() + ["above"] + second.words())


def render(scenes: list[list[Placed]], size: int) -> torch.Tensor:
    """Noiseless images ``[N, 3, size, size]`` in [0, 1], every shape of every scene at once."""
    placed = [(i, p) for i, shapes in enumerate(scenes) for p in shapes]
    image = torch.tensor([i for i, _ in placed])
    x, y, r = (torch.tensor([getattr(p, k) for _, p in placed]).view(-1, 1, 1) for k in "xyr")
    centres = torch.arange(size) + 0.5
    dx, dy = centres.view(1, 1, -1) - x, centres.view(1, -1, 1) - y          # [M, S, S] each
    kind = torch.tensor([SHAPES.index(p.thing.shape) for _, p in placed]).view(-1, 1, 1)
    circle = dx ** 2 + dy ** 2 <= r ** 2
    square = (dx.abs() <= r) & (dy.abs() <= r)
    triangle = (dy.abs() <= r) & (dx.abs() <= (dy + r) / 2)   # apex up, half-width 0 to r
    inside = torch.where(kind == 0, circle, torch.where(kind == 1, square, triangle)).float()
    colour = torch.tensor([COLOURS[p.thing.colour] for _, p in placed]).view(-1, 3, 1, 1)
    # the shapes of one scene never overlap, so adding them paints each once
    return torch.zeros(len(scenes), 3, size, size).index_add_(0, image, inside.unsqueeze(1) * colour)


def n_captions(colours, shapes) -> int:
    """How many different captions there are; a uniform guess is exactly right once in this many."""
    things = len(colours) * len(shapes)
    return things * len(PLACES) + 2 * things * (things - 1)


class CaptionSet:
    """Images ``[N, 3, S, S]``, their captions, and the targets ``[N, T]``: each caption's
    word ids and EOS, PAD after (the layout the decoder is trained on)."""

    def __init__(self, n: int, size: int, colours, shapes, vocab: Vocab, seed: int):
        rng = random.Random(seed)
        things = [Thing(c, s) for c in colours for s in shapes]
        scenes = [scene(rng, size, things) for _ in range(n)]
        self.captions = [caption for _, caption in scenes]
        noise = torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))
        self.images = (render([shapes for shapes, _ in scenes], size) + 0.05 * noise).clamp_(0, 1)
        self.vocab = vocab
        ids = [vocab.encode(c) for c in self.captions]
        self.targets = torch.full((n, max(map(len, ids))), vocab.pad_id, dtype=torch.long)
        for i, row in enumerate(ids):
            self.targets[i, :len(row)] = torch.tensor(row)

    def __len__(self) -> int:
        return len(self.captions)
