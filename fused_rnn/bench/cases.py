"""The cases: the axes of a benchmark, the sweeps of docs/DESIGN.md §5 and the cases the options pick."""
from __future__ import annotations

import itertools
import random
import re
from dataclasses import dataclass
from functools import partial

import torch

CELLS = ("lstm", "gru", "rnn")
MODES = ("fwd", "fwdbwd")
MODE_LABEL = {"fwd": "forward", "fwdbwd": "fwd+bwd"}
DTYPES = {
    "fp32": torch.float32, "float32": torch.float32, "float": torch.float32,
    "fp64": torch.float64, "float64": torch.float64, "double": torch.float64,
    "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
}
DTYPE_NAME = {torch.float32: "fp32", torch.float64: "fp64", torch.float16: "fp16",
              torch.bfloat16: "bf16"}

# Relative difference above which a row is flagged "!" (a flag only: nothing fails on it).
SUSPECT_REL_DIFF = {"fp64": 1e-9, "fp32": 1e-4, "fp32+tf32": 2e-2, "fp16": 5e-2, "bf16": 1e-1}

# The standard case (PyTorch's fastrnns default) and the sweeps of docs/DESIGN.md §5.
STANDARD = {"seq_len": 100, "batch": 64, "input_size": None, "hidden": 512, "layers": 1,
            "bidirectional": False, "packed": False, "dtype": "fp32", "autocast": None}
SHORT_BATCHES = (1, 8, 64, 256)
FULL_VARIANTS = ({}, {"hidden": 256}, {"hidden": 1024}, {"seq_len": 1000}, {"layers": 4},
                 {"bidirectional": True}, {"packed": True})
# Both devices run fp16/bf16 (the CPU with float32 pointwise math and ATen's GEMMs, as
# torch.nn does), so the full sweep measures them everywhere.
FULL_LOW_PRECISION = ({"dtype": "bf16"}, {"dtype": "fp16"})
QUICK = {"seq_len": 10, "batch": None, "input_size": None, "hidden": 32, "layers": 1,
         "bidirectional": False, "packed": False, "dtype": "fp32", "autocast": None}
QUICK_BATCHES = (1, 4)
QUICK_VARIANTS = ({}, {"layers": 2, "bidirectional": True}, {"packed": True}, {"dtype": "bf16"})
# The cells section (--section cells): one step of LSTMCell / GRUCell / RNNCell, the call every
# decoder, streaming model and RL policy makes per step. The shapes: pytorch/examples'
# time_sequence_prediction (float64, B = 97, H = 51), a decoder at B = 1 and one at B = 64.
CELL_SHAPES = ({"dtype": "fp64", "batch": 97, "hidden": 51}, {"dtype": "fp32", "batch": 1, "hidden": 256},
               {"dtype": "fp32", "batch": 64, "hidden": 512})
QUICK_CELL_SHAPES = ({"dtype": "fp32", "batch": 2, "hidden": 16}, {"dtype": "fp64", "batch": 3, "hidden": 8})
# The decoder section (--section decoder): source and target of T tokens, a vocabulary of
# DECODER_VOCAB, embeddings E, an LSTM of H units (bidirectional encoder); each style's training
# step and its greedy and beam-5 decoding.
DECODER_SHAPE = {"batch": 32, "seq_len": 20, "input_size": 128, "hidden": 256}
QUICK_DECODER_SHAPE = {"batch": 2, "seq_len": 4, "input_size": 8, "hidden": 16}
DECODER_STYLES = ("luong-feed", "bahdanau")
DECODER_TASKS = (None, "greedy", "beam5")
# The variants section (--section variants): each variant of fused_rnn (bench/variants.py) at
# the standard shape, B 64 and 8 (where the issue sets its targets) and 1, one layer.
VARIANT_SHAPE = {"seq_len": 100, "hidden": 512, "dtype": "fp32"}  # I = H
VARIANT_BATCHES = (64, 8, 1)
QUICK_VARIANT_SHAPE = {"seq_len": 6, "hidden": 16, "dtype": "fp32"}
QUICK_VARIANT_BATCHES = (3, 1)
# The regularizers section (--section regularizers): each regularizer of fused_rnn
# (bench/regularizers.py) in training at the standard shape, B 64 and 8 (where the issue sets
# its targets), at the regularizer's own number of layers (weight_drop 1, residual 3).
REGULARIZER_SHAPE = {"seq_len": 100, "hidden": 512, "dtype": "fp32"}  # I = H
REGULARIZER_BATCHES = (64, 8)
QUICK_REGULARIZER_SHAPE = {"seq_len": 6, "hidden": 16, "dtype": "fp32"}
QUICK_REGULARIZER_BATCHES = (3, 1)
PACKED_MIN_FRACTION = 0.3  # packed lengths drawn in [0.3 T, T]: 30..100 for T = 100

_TF32 = {"off": [False], "on": [True], "both": [False, True]}


@dataclass(frozen=True)
class Case:
    """One benchmark configuration; ``tf32`` is None where it does not apply (CPU, not fp32);
    ``autocast`` ("bf16", "fp16" or None) runs both sides' float32 modules under torch.autocast."""
    cell: str
    seq_len: int
    batch: int
    input_size: int
    hidden: int
    layers: int = 1
    bidirectional: bool = False
    packed: bool = False
    dtype: str = "fp32"
    tf32: bool | None = None
    autocast: str | None = None
    # "cell": one step of the cell module; "decoder": a seq2seq model; "variant": variants.py;
    # "regularizer": regularizers.py
    kind: str = "layer"
    style: str | None = None  # decoder: "luong-feed" (Luong with input feeding) or "bahdanau"
    decode: str | None = None  # decoder: "greedy" or "beam5" (timed as fwd); None: a training step
    # variant: its name in variants.py's VARIANTS ("peephole"), one layer; regularizer: its name
    # in regularizers.py's REGULARIZERS ("weight_drop"), at its layers
    variant: str | None = None

    def tokens(self, with_batch=True):
        if self.kind == "decoder":
            t = ["decoder", self.style, self.cell] + ([f"B{self.batch}"] if with_batch else [])
            return t + [f"T{self.seq_len}", f"E{self.input_size}", f"H{self.hidden}", self.decode or "train"]
        if self.kind == "cell":
            t = [f"{self.cell}cell"] + ([f"B{self.batch}"] if with_batch else [])
            return t + [f"I{self.input_size}", f"H{self.hidden}", self.dtype]
        t = [self.cell] + ([self.variant] if self.kind in ("variant", "regularizer") else []) + [f"T{self.seq_len}"]
        if with_batch:
            t.append(f"B{self.batch}")
        t += [f"I{self.input_size}", f"H{self.hidden}"] + ([] if self.kind == "variant" else [f"L{self.layers}"])
        if self.bidirectional:
            t.append("bi")
        if self.packed:
            t.append("packed")
        t.append(self.dtype)
        if self.autocast is not None:
            t.append(f"autocast={self.autocast}")
        if self.tf32 is not None:
            t.append(f"tf32={'on' if self.tf32 else 'off'}")
        return t

    @property
    def name(self):
        return " ".join(self.tokens())

    @property
    def series(self):
        """The name without the batch size: one line of the plot."""
        return " ".join(self.tokens(with_batch=False))

    @property
    def id(self):
        return "-".join(t.replace("=", "") for t in self.tokens())

    @property
    def precision(self):
        """The key of SUSPECT_REL_DIFF: autocast's dtype, where the case runs under it."""
        return self.autocast or ("fp32+tf32" if self.tf32 else self.dtype)


def packed_lengths(seq_len, batch, seed):
    """Sorted (non-increasing) lengths in [0.3 T, T] with the longest = T, like fastrnns' varlen."""
    rng = random.Random(seed)
    low = max(1, round(PACKED_MIN_FRACTION * seq_len))
    lengths = sorted((rng.randint(low, seq_len) for _ in range(batch)), reverse=True)
    lengths[0] = seq_len
    return lengths


def _sweep(args):
    """(base case, batch sizes, variants) of the sweep the options name."""
    if args.quick:
        return QUICK, QUICK_BATCHES, QUICK_VARIANTS
    if args.sweep == "standard":
        return STANDARD, (STANDARD["batch"],), ({},)
    if args.sweep == "short":
        return STANDARD, SHORT_BATCHES, ({},)
    return STANDARD, SHORT_BATCHES, FULL_VARIANTS + FULL_LOW_PRECISION


def _grid_cases(cell, grid, tf32, device):
    """Every case of one cell over the grid (axis -> values), in the grid's axis order."""
    for values in itertools.product(*grid.values()):
        c = dict(zip(grid, values))
        if c["input_size"] is None:
            c["input_size"] = c["hidden"]
        # TF32 only exists for fp32 on CUDA; elsewhere the name says nothing about it.
        settings = _TF32[tf32] if device.type == "cuda" and c["dtype"] == "fp32" else [None]
        for setting in settings:
            yield Case(cell=cell, tf32=setting, **c)


def _cell_cases(args):
    """The cells section: every cell at each of CELL_SHAPES (the options' axes replace them)."""
    cases = []
    for shape in QUICK_CELL_SHAPES if args.quick else CELL_SHAPES:
        batches = args.batch or [shape["batch"]]
        hiddens = args.hidden or [shape["hidden"]]
        dtypes = args.dtype or [shape["dtype"]]
        for cell, batch, hidden, dtype in itertools.product(args.cells, batches, hiddens, dtypes):
            inputs = args.input_size or [hidden]
            cases += [Case(cell=cell, seq_len=1, batch=batch, input_size=i, hidden=hidden, dtype=dtype,
                           kind="cell") for i in inputs]
    return list(dict.fromkeys(cases))


def _decoder_cases(args):
    shape = QUICK_DECODER_SHAPE if args.quick else DECODER_SHAPE
    return [Case(cell="lstm", dtype="fp32", kind="decoder", style=style, decode=task, **shape)
            for style in DECODER_STYLES for task in DECODER_TASKS]


def _side_cases(args, device, entries, kind, shape, batches):
    """A multi-side section's cases: each entry (a variant, a regularizer) of the selected cells
    over the batches, at the shape (-B -T -H -I --dtype replace those axes) and the entry's
    layers (1 where it has none)."""
    grid = {k: getattr(args, k) or [v] for k, v in shape.items()}
    grid.update(batch=args.batch or list(batches), input_size=args.input_size or [None])  # None: I = H
    return [c for e in entries if e.cell in args.cells
            for c in _grid_cases(e.cell, {**grid, "kind": [kind], "variant": [e.name],
                                          "layers": [getattr(e, "layers", 1)]}, args.tf32, device)]


def _variant_cases(args, device):
    """The variants section: each variant of the selected cells over its batches, at its shape."""
    from .variants import VARIANTS  # imported here: variants.py builds on pairing.py, which imports this

    shape, batches = ((QUICK_VARIANT_SHAPE, QUICK_VARIANT_BATCHES) if args.quick
                      else (VARIANT_SHAPE, VARIANT_BATCHES))
    return _side_cases(args, device, VARIANTS, "variant", shape, batches)


def _regularizer_cases(args, device):
    """The regularizers section: each regularizer of the selected cells over its batches."""
    from .regularizers import REGULARIZERS  # imported here, as VARIANTS

    shape, batches = ((QUICK_REGULARIZER_SHAPE, QUICK_REGULARIZER_BATCHES) if args.quick
                      else (REGULARIZER_SHAPE, REGULARIZER_BATCHES))
    return _side_cases(args, device, REGULARIZERS, "regularizer", shape, batches)


def build_cases(args, device):
    """The list of cases picked by the parsed options, in run order."""
    sections = {"cells": _cell_cases, "decoder": _decoder_cases, "variants": partial(_variant_cases, device=device),
                "regularizers": partial(_regularizer_cases, device=device)}
    if args.section in sections:
        cases = sections[args.section](args)
        pattern = re.compile(args.filter) if args.filter else None
        return [c for c in cases if pattern is None or pattern.search(c.name)]
    base, batches, variants = _sweep(args)
    axes = {k: [v] for k, v in base.items()}
    axes["batch"] = list(batches)
    # An axis given on the command line replaces that axis in every variant.
    overrides = {k: getattr(args, k) for k in axes
                 if k != "autocast" and getattr(args, k) is not None}
    if args.autocast != "off":  # float32 modules and inputs under torch.autocast
        overrides.update(autocast=[args.autocast], dtype=["fp32"])
    cases = []
    for variant in variants:
        grid = {**axes, **{k: [v] for k, v in variant.items()}, **overrides}
        for cell in args.cells:
            cases += _grid_cases(cell, grid, args.tf32, device)
    cases = list(dict.fromkeys(cases))  # variants overlap once overridden: dedupe, keep order
    if args.filter:
        pattern = re.compile(args.filter)
        cases = [c for c in cases if pattern.search(c.name)]
    return cases
