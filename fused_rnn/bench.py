"""Benchmark fused_rnn against torch.nn: ``python -m fused_rnn bench [options]``.

Both sides run in the same process, on the same device, with the same weights (the fused
module loads torch.nn's state_dict) and the same input tensors, following DESIGN.md §5:

- every (case, mode) is warmed up on both sides, then timed in pairs whose order is drawn
  at random per pair, so slow drift (clocks, caches, other processes) hits both sides alike;
- the reported time is the median of the repeats; the ratio is torch.nn / fused_rnn
  (> 1 means fused_rnn is faster);
- on CUDA a pair of events brackets the region and is synchronized before reading;
- input sets are rotated when one set would fit in the last-level cache (L2 on CUDA);
- TF32 (CUDA, fp32) is set for both sides together and stated in every row.

Modes: ``fwd`` = inference (modules in eval(), under torch.no_grad()); ``fwdbwd`` = training
forward plus torch.autograd.backward with fixed random output gradients, producing the
gradients of the input, the initial states and every weight.

Each row also carries the relative difference of the fused result against torch.nn,
``‖fused − torch‖₂ / ‖torch‖₂`` computed in float64 (the largest over the outputs, and in
``fwdbwd`` also over every gradient), so a fast wrong kernel cannot hide, and, for
``fwdbwd``, the memory of both sides (CUDA: peak allocated above the pre-call baseline;
everywhere: the bytes autograd saves for backward).

Output: a table on stdout, a JSON file (environment + rows), a PNG plot of the ratio against
batch size and a Markdown copy of the table, see ``--out``.
"""
from __future__ import annotations

import argparse
import datetime
import gc
import hashlib
import itertools
import json
import math
import os
import platform
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.nn.utils.rnn import PackedSequence

__all__ = ["main", "parse_args", "build_cases", "run", "Case", "Pair", "environment"]

FORMAT = "fused_rnn-bench/1"
CELLS = ("lstm", "gru", "rnn")
MODES = ("fwd", "fwdbwd")
MODE_LABEL = {"fwd": "forward", "fwdbwd": "fwd+bwd"}
SIDES = ("torch", "fused")
DTYPES = {
    "fp32": torch.float32, "float32": torch.float32, "float": torch.float32,
    "fp64": torch.float64, "float64": torch.float64, "double": torch.float64,
    "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
}
DTYPE_NAME = {torch.float32: "fp32", torch.float64: "fp64", torch.float16: "fp16",
              torch.bfloat16: "bf16"}
CUDA_ONLY_DTYPES = ("fp16", "bf16")  # fused_rnn's CPU kernels are fp32/fp64 (DESIGN §3)

# Relative difference above which a row is flagged "!" (a flag only: nothing fails on it).
SUSPECT_REL_DIFF = {"fp64": 1e-9, "fp32": 1e-4, "fp32+tf32": 2e-2, "fp16": 5e-2, "bf16": 1e-1}

# The standard case (PyTorch's fastrnns default) and the sweeps of DESIGN §5.
STANDARD = dict(seq_len=100, batch=64, input_size=None, hidden=512, layers=1,
                bidirectional=False, packed=False, dtype="fp32")
SHORT_BATCHES = (1, 8, 64, 256)
FULL_VARIANTS = ({}, {"hidden": 256}, {"hidden": 1024}, {"seq_len": 1000}, {"layers": 4},
                 {"bidirectional": True}, {"packed": True})
FULL_CUDA_DTYPES = ({"dtype": "bf16"}, {"dtype": "fp16"})
QUICK = dict(seq_len=10, batch=None, input_size=None, hidden=32, layers=1,
             bidirectional=False, packed=False, dtype="fp32")
QUICK_BATCHES = (1, 4)
QUICK_VARIANTS = ({}, {"layers": 2, "bidirectional": True}, {"packed": True})
PACKED_MIN_FRACTION = 0.3  # packed lengths drawn in [0.3 T, T]: 30..100 for T = 100
MAX_INPUT_SETS = 16

# Per-device defaults of the timing loop: (warmup, min_repeats, max_repeats, budget_s).
TIMING_DEFAULTS = {"cpu": (2, 3, 15, 2.0), "cuda": (3, 10, 100, 1.0), "quick": (1, 2, 3, 0.05)}


# ---------------------------------------------------------------------------------------------
# Cases
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    """One benchmark configuration; ``tf32`` is None where it does not apply (CPU, not fp32)."""
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

    def tokens(self, with_batch=True):
        t = [self.cell, f"T{self.seq_len}"]
        if with_batch:
            t.append(f"B{self.batch}")
        t += [f"I{self.input_size}", f"H{self.hidden}", f"L{self.layers}"]
        if self.bidirectional:
            t.append("bi")
        if self.packed:
            t.append("packed")
        t.append(self.dtype)
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
        return "fp32+tf32" if self.tf32 else self.dtype


def _int_list(text):
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")


def _name_list(choices):
    def parse(text):
        names = [v.strip().lower() for v in text.split(",") if v.strip()]
        bad = [n for n in names if n not in choices]
        if bad or not names:
            raise argparse.ArgumentTypeError(
                f"expected a comma-separated subset of {', '.join(choices)}, got {text!r}")
        return list(dict.fromkeys(names))
    return parse


def _dtype_list(text):
    names = _name_list(tuple(DTYPES))(text)
    return list(dict.fromkeys(DTYPE_NAME[DTYPES[n]] for n in names))


def _yes_no_both(text):
    choices = {"no": [False], "yes": [True], "both": [False, True]}
    if text not in choices:
        raise argparse.ArgumentTypeError(f"expected no, yes or both, got {text!r}")
    return choices[text]


def build_cases(args, device):
    """The list of cases picked by the parsed options, in run order."""
    if args.quick:
        base, batches, variants = dict(QUICK), QUICK_BATCHES, list(QUICK_VARIANTS)
        if device.type == "cuda":
            variants.append({"dtype": "bf16"})
    else:
        base = dict(STANDARD)
        if args.sweep == "standard":
            batches, variants = (STANDARD["batch"],), [{}]
        elif args.sweep == "short":
            batches, variants = SHORT_BATCHES, [{}]
        else:  # full
            batches, variants = SHORT_BATCHES, list(FULL_VARIANTS)
            if device.type == "cuda":
                variants += FULL_CUDA_DTYPES
    axes = {k: [v] for k, v in base.items()}
    axes["batch"] = list(batches)
    overrides = {k: getattr(args, k) for k in
                 ("seq_len", "batch", "input_size", "hidden", "layers", "bidirectional",
                  "packed", "dtype") if getattr(args, k) is not None}
    keys = list(axes)
    cases = []
    for variant in variants:
        grid = dict(axes)
        grid.update({k: [v] for k, v in variant.items()})
        grid.update(overrides)
        for cell in args.cells:
            for values in itertools.product(*(grid[k] for k in keys)):
                c = dict(zip(keys, values))
                if c["input_size"] is None:
                    c["input_size"] = c["hidden"]
                if device.type == "cuda" and c["dtype"] == "fp32":
                    tf32s = {"off": [False], "on": [True], "both": [False, True]}[args.tf32]
                else:
                    tf32s = [None]
                for tf32 in tf32s:
                    cases.append(Case(cell=cell, tf32=tf32, **c))
    cases = list(dict.fromkeys(cases))  # dedupe, keep order
    if device.type != "cuda":
        dropped = [c for c in cases if c.dtype in CUDA_ONLY_DTYPES]
        if dropped:
            print(f"note: skipping {len(dropped)} case(s) in "
                  f"{'/'.join(sorted({c.dtype for c in dropped}))}: fused_rnn runs fp16/bf16 "
                  "on CUDA only", file=sys.stderr)
        cases = [c for c in cases if c.dtype not in CUDA_ONLY_DTYPES]
    if args.filter:
        pattern = re.compile(args.filter)
        cases = [c for c in cases if pattern.search(c.name)]
    return cases


# ---------------------------------------------------------------------------------------------
# One case: both modules, the input sets, the runners
# ---------------------------------------------------------------------------------------------

def _stable_seed(*parts):
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:4], "little")


def torch_classes():
    return {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}


def fused_classes():
    import importlib
    rnn = importlib.import_module("fused_rnn.rnn")  # needs the built extension
    return {"lstm": rnn.LSTM, "gru": rnn.GRU, "rnn": rnn.RNN}


def packed_lengths(seq_len, batch, seed):
    """Sorted (non-increasing) lengths in [0.3 T, T] with the longest = T, like fastrnns' varlen."""
    rng = random.Random(seed)
    low = max(1, round(PACKED_MIN_FRACTION * seq_len))
    lengths = sorted((rng.randint(low, seq_len) for _ in range(batch)), reverse=True)
    lengths[0] = seq_len
    return lengths


def _batch_sizes(lengths):
    return torch.tensor([sum(1 for n in lengths if n > t) for t in range(lengths[0])],
                        dtype=torch.int64)


def _flat_outputs(result):
    out, h = result
    out = out.data if isinstance(out, PackedSequence) else out
    return [out, *h] if isinstance(h, tuple) else [out, h]


def _rel_diff(a, b):
    """‖a − b‖₂ / ‖b‖₂ in float64 (b = torch.nn); NaN/inf in either gives inf."""
    a, b = a.detach().double(), b.detach().double()
    if a.shape != b.shape:
        return math.inf
    num, den = torch.linalg.vector_norm(a - b).item(), torch.linalg.vector_norm(b).item()
    value = num / den if den > 0 else num
    return value if math.isfinite(value) else math.inf


class _SavedBytes:
    """saved_tensors_hooks that sum the bytes autograd keeps for backward: unique storages,
    leaving out those of the parameters and the inputs (they exist anyway)."""

    def __init__(self, exclude):
        self.exclude = {self._key(t) for t in exclude}
        self.seen = {}

    @staticmethod
    def _key(t):
        try:
            return ("s", t.untyped_storage().data_ptr())
        except Exception:  # opaque tensors (e.g. oneDNN) have no storage to share
            return ("t", id(t))

    def pack(self, t):
        key = self._key(t)
        if key not in self.exclude and key not in self.seen:
            try:
                self.seen[key] = t.untyped_storage().nbytes()
            except Exception:
                self.seen[key] = t.numel() * t.element_size()
        return t

    @staticmethod
    def unpack(t):
        return t

    @property
    def total(self):
        return sum(self.seen.values())


def _backend_of(result):
    """Name the torch.nn kernel family from the autograd graph of an output."""
    names, todo, seen = [], [_flat_outputs(result)[0].grad_fn], set()
    while todo and len(seen) < 64:
        fn = todo.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        names.append(type(fn).__name__)
        todo.extend(f for f, _ in fn.next_functions)
    joined = " ".join(names)
    for key, label in (("Cudnn", "cuDNN"), ("Miopen", "MIOpen"), ("Mkldnn", "oneDNN")):
        if key in joined:
            return label
    return "ATen"


class _InputSet:
    def __init__(self, case, device, dtype, lengths, gen, state_shape, out_width):
        def randn(*shape):
            return torch.randn(*shape, generator=gen, dtype=torch.float32).to(device, dtype)
        n_states = 2 if case.cell == "lstm" else 1
        if lengths is not None:
            batch_sizes = _batch_sizes(lengths)
            data = randn(int(batch_sizes.sum()), case.input_size).requires_grad_()
            self.x = PackedSequence(data, batch_sizes)
            self.leaves = [data]
            out_shape = (data.shape[0], out_width)
        else:
            data = randn(case.seq_len, case.batch, case.input_size).requires_grad_()
            self.x = data
            self.leaves = [data]
            out_shape = (case.seq_len, case.batch, out_width)
        states = [randn(*state_shape).requires_grad_() for _ in range(n_states)]
        self.hx = tuple(states) if n_states == 2 else states[0]
        self.leaves += states
        self.grads = [randn(*out_shape)] + [randn(*state_shape) for _ in range(n_states)]
        self.nbytes = sum(t.numel() * t.element_size() for t in self.leaves + self.grads)


def _cache_bytes(device):
    if device.type == "cuda":
        return int(getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 50 << 20))
    try:
        text = Path("/sys/devices/system/cpu/cpu0/cache/index3/size").read_text().strip()
        return int(text[:-1]) * {"K": 1 << 10, "M": 1 << 20}[text[-1]]
    except Exception:
        return 32 << 20


class Pair:
    """Both sides of one case on the same weights and the same input sets.

    ``candidate`` maps cell -> module class for the fused side (default: fused_rnn's).
    """

    def __init__(self, case, device, candidate=None, n_sets=None, seed=0):
        self.case, self.device = case, torch.device(device)
        self.dtype = DTYPES[case.dtype]
        candidate = candidate or fused_classes()
        kwargs = dict(num_layers=case.layers, bidirectional=case.bidirectional)
        seed = _stable_seed(seed, case.name)
        torch.manual_seed(seed)
        ref = torch_classes()[case.cell](case.input_size, case.hidden, **kwargs)
        ref = ref.to(device=self.device, dtype=self.dtype)
        fused = candidate[case.cell](case.input_size, case.hidden, **kwargs)
        fused = fused.to(device=self.device, dtype=self.dtype)
        fused.load_state_dict(ref.state_dict())
        self.modules = {"torch": ref, "fused": fused}

        self.lengths = packed_lengths(case.seq_len, case.batch, seed) if case.packed else None
        dirs = 2 if case.bidirectional else 1
        state_shape = (case.layers * dirs, case.batch, case.hidden)
        gen = torch.Generator().manual_seed(seed)
        first = _InputSet(case, self.device, self.dtype, self.lengths, gen, state_shape,
                          dirs * case.hidden)
        if n_sets is None:  # enough sets that two of them do not fit in the cache together
            n_sets = min(MAX_INPUT_SETS, max(1, math.ceil(2 * _cache_bytes(self.device)
                                                          / max(1, first.nbytes))))
        self.sets = [first] + [
            _InputSet(case, self.device, self.dtype, self.lengths, gen, state_shape,
                      dirs * case.hidden) for _ in range(n_sets - 1)]

    # -- runners ------------------------------------------------------------------------------

    def _clear_grads(self, side, s):
        for p in self.modules[side].parameters():
            p.grad = None
        for t in s.leaves:
            t.grad = None

    def runner(self, side, mode):
        """(prepare(i), run(i)) for input set i; prepare is outside the timed region."""
        module = self.modules[side]
        if mode == "fwd":
            def prepare(i):
                pass

            def run(i):
                s = self.sets[i]
                with torch.no_grad():
                    module(s.x, s.hx)
        else:
            def prepare(i):
                self._clear_grads(side, self.sets[i])

            def run(i):
                s = self.sets[i]
                torch.autograd.backward(_flat_outputs(module(s.x, s.hx)), s.grads)
        return prepare, run

    def set_mode(self, mode):
        for m in self.modules.values():
            m.train(mode == "fwdbwd")

    # -- checks -------------------------------------------------------------------------------

    def torch_backend(self):
        """The kernel family torch.nn runs in training mode: cuDNN, oneDNN, MIOpen or ATen."""
        if not hasattr(self, "_torch_backend"):
            s, module = self.sets[0], self.modules["torch"]
            module.train()
            with torch.enable_grad():
                self._torch_backend = _backend_of(module(s.x, s.hx))
        return self._torch_backend

    def check(self, mode):
        """Compare the two sides on input set 0 in the code path that ``mode`` times."""
        info = {"torch_backend": self.torch_backend()}
        self.set_mode(mode)
        s = self.sets[0]
        if mode == "fwd":
            with torch.no_grad():
                outs = {side: _flat_outputs(self.modules[side](s.x, s.hx)) for side in SIDES}
            info["rel_diff_out"] = max(_rel_diff(a, b) for a, b in zip(outs["fused"],
                                                                       outs["torch"]))
            info["rel_diff"] = info["rel_diff_out"]
            return info
        grads, outs, saved = {}, {}, {}
        for side in SIDES:
            module = self.modules[side]
            self._clear_grads(side, s)
            hook = _SavedBytes(list(module.parameters()) + s.leaves)
            with torch.autograd.graph.saved_tensors_hooks(hook.pack, hook.unpack):
                result = module(s.x, s.hx)
            outs[side] = [t.detach().clone() for t in _flat_outputs(result)]
            torch.autograd.backward(_flat_outputs(result), s.grads)
            saved[side] = hook.total
            grads[side] = [t.grad for t in s.leaves] + [p.grad for _, p in
                                                        sorted(module.named_parameters())]
            grads[side] = [None if g is None else g.detach().clone() for g in grads[side]]
            del result
        info["rel_diff_out"] = max(_rel_diff(a, b) for a, b in zip(outs["fused"], outs["torch"]))
        info["rel_diff_grad"] = max(
            (math.inf if (a is None) != (b is None) else _rel_diff(a, b) if a is not None else 0.0)
            for a, b in zip(grads["fused"], grads["torch"]))
        info["rel_diff"] = max(info["rel_diff_out"], info["rel_diff_grad"])
        info["torch_saved_bytes"], info["fused_saved_bytes"] = saved["torch"], saved["fused"]
        for side in SIDES:
            self._clear_grads(side, s)
        return info

    def cuda_peak_bytes(self, side):
        """Peak CUDA memory allocated by one fwd+bwd above what was allocated before it."""
        prepare, run = self.runner(side, "fwdbwd")
        prepare(0)
        gc.collect()
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        base = torch.cuda.memory_allocated(self.device)
        run(0)
        torch.cuda.synchronize(self.device)
        peak = torch.cuda.max_memory_allocated(self.device) - base
        prepare(0)
        return int(peak)


# ---------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------

def _timer(device):
    if device.type == "cuda":
        def timed(run, i):
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize(device)
            start.record()
            run(i)
            end.record()
            end.synchronize()
            return start.elapsed_time(end)
    else:
        def timed(run, i):
            t0 = time.perf_counter_ns()
            run(i)
            return (time.perf_counter_ns() - t0) / 1e6
    return timed


def measure(pair, mode, timing, rng):
    """Warm both sides up, then time pairs in random order; returns {side: [ms, ...]}."""
    warmup, min_repeats, max_repeats, budget = timing
    timed = _timer(pair.device)
    runners = {side: pair.runner(side, mode) for side in SIDES}
    n_sets = len(pair.sets)
    pair.set_mode(mode)
    gc.collect()
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        t0 = time.perf_counter()
        for w in range(max(1, warmup)):
            if w > 0 and time.perf_counter() - t0 > budget / 2:
                break
            for side in SIDES:
                prepare, run = runners[side]
                prepare(w % n_sets)
                run(w % n_sets)
        if pair.device.type == "cuda":
            torch.cuda.synchronize(pair.device)
        samples = {side: [] for side in SIDES}
        t0, r = time.perf_counter(), 0
        while r < max_repeats and (r < min_repeats or time.perf_counter() - t0 < budget):
            order = list(SIDES)
            rng.shuffle(order)
            for side in order:
                prepare, run = runners[side]
                prepare(r % n_sets)
                samples[side].append(timed(run, r % n_sets))
            r += 1
        for side in SIDES:
            runners[side][0](0)  # drop the grads of the last repeat
    finally:
        if gc_was_enabled:
            gc.enable()
    return samples


def set_tf32(enabled):
    """Set cuBLAS (fused_rnn's GEMMs) and cuDNN (torch.nn's RNN) TF32 together."""
    torch.backends.cuda.matmul.allow_tf32 = bool(enabled)
    torch.backends.cudnn.allow_tf32 = bool(enabled)


def tf32_flags():
    flags = {"cuda.matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32,
             "cudnn.allow_tf32": torch.backends.cudnn.allow_tf32,
             "float32_matmul_precision": torch.get_float32_matmul_precision()}
    for name, getter in (("cuda.matmul.fp32_precision", lambda: torch.backends.cuda.matmul),
                         ("cudnn.fp32_precision", lambda: torch.backends.cudnn),
                         ("cudnn.rnn.fp32_precision", lambda: torch.backends.cudnn.rnn)):
        try:
            flags[name] = getattr(getter(), "fp32_precision")
        except Exception:
            pass
    return flags


def _finite_or_none(v):
    return v if isinstance(v, (int, float)) and math.isfinite(v) else None


def run_case(case, device, timing, modes, candidate=None, seed=0, n_sets=None, rng=None):
    """Measure one case in every mode; returns one row (a dict) per mode."""
    rng = rng or random.Random(seed)
    if case.tf32 is not None:
        set_tf32(case.tf32)
    base = {"case": case.name, "series": case.series, **asdict(case),
            "device": device.type, "tf32_flags": tf32_flags() if device.type == "cuda" else None}
    rows = []
    try:
        pair = Pair(case, device, candidate=candidate, n_sets=n_sets, seed=seed)
    except Exception as e:  # noqa: BLE001 - reported in the row, the sweep goes on
        return [dict(base, mode=m, error=f"{type(e).__name__}: {e}") for m in modes]
    extra = {"input_sets": len(pair.sets)}
    if pair.lengths is not None:
        extra.update(lengths_min=min(pair.lengths), lengths_max=max(pair.lengths),
                     tokens=sum(pair.lengths))
    else:
        extra["tokens"] = case.seq_len * case.batch
    try:
        for mode in modes:
            row = dict(base, mode=mode, **extra)
            try:
                row.update(pair.check(mode))
                samples = measure(pair, mode, timing, rng)
                t, f = statistics.median(samples["torch"]), statistics.median(samples["fused"])
                row.update(torch_ms=t, fused_ms=f, ratio=t / f if f > 0 else math.inf,
                           repeats=len(samples["torch"]),
                           torch_ms_samples=[round(v, 4) for v in samples["torch"]],
                           fused_ms_samples=[round(v, 4) for v in samples["fused"]])
                if mode == "fwdbwd":
                    if device.type == "cuda":
                        row["mem_metric"] = "cuda_peak_allocated"
                        row["torch_mem_bytes"] = pair.cuda_peak_bytes("torch")
                        row["fused_mem_bytes"] = pair.cuda_peak_bytes("fused")
                    else:
                        row["mem_metric"] = "saved_for_backward"
                        row["torch_mem_bytes"] = row["torch_saved_bytes"]
                        row["fused_mem_bytes"] = row["fused_saved_bytes"]
                limit = SUSPECT_REL_DIFF.get(case.precision, 1e-4)
                row["suspect"] = not (row["rel_diff"] <= limit)
            except Exception as e:  # noqa: BLE001
                if device.type == "cuda" and isinstance(e, torch.cuda.OutOfMemoryError):
                    torch.cuda.empty_cache()
                row["error"] = f"{type(e).__name__}: {e}"
            for k in ("rel_diff", "rel_diff_out", "rel_diff_grad", "ratio"):
                if k in row:
                    row[k] = _finite_or_none(row[k])
            rows.append(row)
    finally:
        del pair
        gc.collect()
    return rows


def run(cases, device, timing, modes=MODES, candidate=None, seed=0, n_sets=None,
        progress=True, on_rows=None, rows=None):
    """Run every case, appending to ``rows``; ``on_rows(rows)`` is called after each case."""
    device = torch.device(device)
    rng = random.Random(seed)
    rows = [] if rows is None else rows
    saved_tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    bar, total, done = None, len(cases) * len(modes), 0
    if progress and sys.stderr.isatty():
        from tqdm.auto import tqdm
        bar = tqdm(total=total, unit="run", file=sys.stderr, dynamic_ncols=True, desc="bench")
    try:
        for case in cases:
            if bar is not None:
                bar.set_postfix_str(case.name)
            new = run_case(case, device, timing, modes, candidate=candidate, seed=seed,
                           n_sets=n_sets, rng=rng)
            rows += new
            for row in new:
                line = f"{row['case']:<40} {MODE_LABEL[row['mode']]:<8} " + (
                    f"error: {row['error']}" if "error" in row else
                    f"torch.nn {row['torch_ms']:9.3f} ms  fused {row['fused_ms']:9.3f} ms  "
                    f"ratio {_fmt(row.get('ratio'), '.2f')}  rel.diff "
                    f"{_fmt(row.get('rel_diff'), '.1e')}")
                done += 1
                if bar is not None:
                    bar.write(line, file=sys.stderr)
                    bar.update(1)
                elif progress:  # not a terminal (a log): one line per run, no bar
                    print(f"[{done}/{total}] {line}", file=sys.stderr, flush=True)
            if on_rows is not None:
                on_rows(rows)
    finally:
        if bar is not None:
            bar.close()
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved_tf32
    return rows


# ---------------------------------------------------------------------------------------------
# Environment
# ---------------------------------------------------------------------------------------------

def repo_root():
    root = Path(__file__).resolve().parents[1]
    return root if (root / "csrc").is_dir() else None


def csrc_sha256(root=None):
    """sha256 over csrc/: for each file in sorted relative-path order, the path, a NUL, the
    bytes, a NUL. None when there is no csrc/ (an installed package)."""
    root = root or repo_root()
    if root is None or not (root / "csrc").is_dir():
        return None
    h = hashlib.sha256()
    for path in sorted(p for p in (root / "csrc").rglob("*")
                       if p.is_file() and "__pycache__" not in p.parts):
        h.update(path.relative_to(root).as_posix().encode() + b"\0")
        h.update(path.read_bytes() + b"\0")
    return h.hexdigest()


def _git(root, *args):
    try:
        out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                             timeout=10)
        return out.stdout.strip() if out.returncode == 0 else None
    except Exception:
        return None


def cpu_model():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except Exception:
        pass
    return platform.processor() or platform.machine()


def _fused_build_facts():
    facts = {}
    try:
        import fused_rnn
        facts["version"] = getattr(fused_rnn, "__version__", None)
        from fused_rnn import _C
    except Exception as e:  # noqa: BLE001
        facts["import_error"] = f"{type(e).__name__}: {e}"
        return facts
    for name in dir(_C):
        if name.startswith("_") or not re.search(r"version|cuda|arch|build|openmp|compiler",
                                                 name, re.I):
            continue
        value = getattr(_C, name)
        try:
            value = value() if callable(value) else value
        except Exception:
            continue
        if isinstance(value, (str, int, float, bool, list, tuple, type(None))):
            facts[name] = list(value) if isinstance(value, tuple) else value
    return facts


def _try(fn):
    try:
        return fn()
    except Exception:  # noqa: BLE001 - an environment fact we cannot read is left out
        return None


def _loadavg():
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def environment(device, argv=None, candidate_label="fused_rnn"):
    device = torch.device(device)
    config = torch.__config__.show()
    parallel = torch.__config__.parallel_info()
    onednn = re.search(r"MKL-DNN v([\d.]+)|oneDNN v([\d.]+)", parallel + config)
    root = repo_root()
    env = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": device.type,
        "device_name": cpu_model() if device.type == "cpu" else torch.cuda.get_device_name(device),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS"),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "onednn": next((g for g in onednn.groups() if g), None) if onednn else None,
        "mkldnn_enabled": torch.backends.mkldnn.enabled,
        "cpu_capability": _try(lambda: torch.backends.cpu.get_cpu_capability()),
        "blas": (re.search(r"BLAS_INFO=(\w+)", config) or [None, None])[1],
        "python": platform.python_version(),
        "platform": platform.platform(),
        "git_sha": _git(root, "rev-parse", "HEAD") if root else None,
        "git_dirty": bool(_git(root, "status", "--porcelain", "--", "csrc", "fused_rnn"))
        if root else None,
        "csrc_sha256": csrc_sha256(root),
        "candidate": candidate_label,
        "fused_rnn": _fused_build_facts() if candidate_label == "fused_rnn" else None,
        "argv": list(argv) if argv is not None else None,
        "loadavg_at_start": _loadavg(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env["gpu"] = {"name": props.name, "capability": f"{props.major}.{props.minor}",
                      "total_memory": props.total_memory,
                      "multi_processor_count": props.multi_processor_count,
                      "l2_cache_size": getattr(props, "L2_cache_size", None)}
        env["tf32_flags_at_start"] = tf32_flags()
        env["cudnn_enabled"] = torch.backends.cudnn.enabled
    return env


def device_slug(env):
    name = env["device_name"] or env["device"]
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    slug = re.sub(r"-?\(r\)|-?\(tm\)", "", slug)
    if env["device"] == "cpu":
        slug = f"cpu-{slug}-{env['threads']}t"
    return slug


# ---------------------------------------------------------------------------------------------
# Output: table, JSON, plot
# ---------------------------------------------------------------------------------------------

def _fmt(v, spec):
    return "-" if v is None else format(v, spec)


def _mib(v):
    if v is None:
        return "-"
    v /= 2**20
    return f"{v:.3f}" if v < 1 else f"{v:.1f}"


def table(rows, markdown=False):
    head = ["case", "mode", "torch.nn via", "torch.nn ms", "fused_rnn ms", "ratio", "rel diff",
            "torch.nn MiB", "fused_rnn MiB"]
    body = []
    for r in rows:
        if "error" in r:
            body.append([r["case"], MODE_LABEL[r["mode"]], r.get("torch_backend", "-"),
                         "-", "-", "-", "-", "-", "-", f"error: {r['error'][:80]}"])
            continue
        flag = " !" if r.get("suspect") else ""
        body.append([r["case"], MODE_LABEL[r["mode"]], r.get("torch_backend", "-"),
                     f"{r['torch_ms']:.3f}",
                     f"{r['fused_ms']:.3f}", _fmt(r.get("ratio"), ".2f"),
                     _fmt(r.get("rel_diff"), ".1e") + flag,
                     _mib(r.get("torch_mem_bytes")), _mib(r.get("fused_mem_bytes"))])
    if markdown:
        lines = ["| " + " | ".join(head) + " |",
                 "|" + "|".join(["---"] * 3 + ["---:"] * (len(head) - 3)) + "|"]
        lines += ["| " + " | ".join(b[:len(head)]) + (f" {b[-1]}" if len(b) > len(head) else "")
                  + " |" for b in body]
        return "\n".join(lines)
    widths = [max(len(head[i]), *(len(b[i]) for b in body)) if body else len(head[i])
              for i in range(len(head))]
    def line(cells):
        out = [c.ljust(w) for c, w in zip(cells[:3], widths)]
        out += [c.rjust(w) for c, w in zip(cells[3:len(head)], widths[3:])]
        text = "  ".join(out)
        return text + ("  " + cells[-1] if len(cells) > len(head) else "")
    return "\n".join([line(head), "  ".join("-" * w for w in widths)] + [line(b) for b in body])


def summary(rows):
    out = {}
    for mode in MODES:
        ratios = [r["ratio"] for r in rows if r["mode"] == mode and r.get("ratio")]
        if ratios:
            out[mode] = {"geomean_ratio": math.exp(sum(map(math.log, ratios)) / len(ratios)),
                         "min_ratio": min(ratios), "max_ratio": max(ratios), "n": len(ratios)}
    std = {k: v for k, v in STANDARD.items() if k != "input_size"}
    for r in rows:
        if r.get("ratio") and all(r.get(k) == v for k, v in std.items()) \
                and r.get("input_size") == STANDARD["hidden"] and not r.get("tf32"):
            out.setdefault("standard_case", {}).setdefault(r["cell"], {})[r["mode"]] = r["ratio"]
    out["errors"] = sum("error" in r for r in rows)
    out["suspect"] = sum(bool(r.get("suspect")) for r in rows)
    return out


def legend_text(env, timing, candidate_label):
    mem = ("CUDA max allocated during one fwd+bwd above the pre-call baseline"
           if env["device"] == "cuda" else
           "bytes autograd saves for backward (unique storages, parameters and inputs excluded)")
    return "\n".join([
        f"device: {env['device_name']} ({env['device']}, {env['threads']} threads), "
        f"torch {env['torch']}" + (f", CUDA {env['cuda']}, cuDNN {env['cudnn']}"
                                   if env["device"] == "cuda" else "")
        + f", git {(env['git_sha'] or 'none')[:10]}{'+dirty' if env['git_dirty'] else ''}",
        f"ratio = torch.nn ms / {candidate_label} ms (median of repeats; > 1 = {candidate_label} "
        "faster); forward = inference under no_grad; fwd+bwd includes all weight gradients",
        f"timing: warm-up {timing[0]}, {timing[1]}..{timing[2]} repeats within {timing[3]} s "
        "per case and mode, sides in random order per repeat",
        "rel diff = ||fused - torch.nn|| / ||torch.nn|| (float64, largest over outputs and, "
        "for fwd+bwd, every gradient); '!' = above the tolerance of the dtype",
        f"MiB (fwd+bwd): {mem}",
    ])


def plot(rows, path, env, candidate_label="fused_rnn"):
    """PNG: ratio against batch size, one line per series (case minus B), one panel per mode."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    ok = [r for r in rows if r.get("ratio")]
    modes = [m for m in MODES if any(r["mode"] == m for r in ok)]
    series = list(dict.fromkeys(r["series"] for r in ok))
    if not modes:
        return None
    tokens = {s: s.split() for s in series}
    common = [t for t in tokens[series[0]] if all(t in tokens[s] for s in series)]
    label = {s: " ".join(t for t in tokens[s] if t not in common) or s for s in series}
    colors = {"lstm": "tab:blue", "gru": "tab:orange", "rnn": "tab:green"}
    styles = ["-", ":", "-.", (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1)), (0, (1, 2)), (0, (8, 2, 2, 2))]
    markers = "osD^v<>ph*"
    variant_of = {}
    fig = Figure(figsize=(6.5 * len(modes) + 2.5, 4.8), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(modes), squeeze=False)[0]
    ratios = [r["ratio"] for r in ok]
    lo, hi = min(ratios + [1.0]), max(ratios + [1.0])
    k_lo, k_hi = math.floor(math.log2(lo)), math.ceil(math.log2(hi))
    step = max(1, math.ceil((k_hi - k_lo) / 8))
    ticks = [2.0 ** k for k in range(k_lo, k_hi + step, step)]
    for ax, mode in zip(axes, modes):
        for s in series:
            pts = sorted((r["batch"], r["ratio"]) for r in ok if r["series"] == s
                         and r["mode"] == mode)
            if not pts:
                continue
            cell = s.split()[0]
            variant = " ".join(t for t in tokens[s][1:])
            k = variant_of.setdefault(variant, len(variant_of))
            ax.plot([p[0] for p in pts], [p[1] for p in pts], color=colors.get(cell, "k"),
                    linestyle=styles[k % len(styles)], marker=markers[k % len(markers)],
                    markersize=4, label=label[s])
        ax.axhline(1.0, color="gray", linestyle="--", linewidth=1)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log", base=2)
        batches = sorted({r["batch"] for r in ok})
        ax.xaxis.set_major_locator(FixedLocator(batches))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.yaxis.set_major_locator(FixedLocator(ticks))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_locator(NullLocator())
        ax.set_ylim(ticks[0] / 1.1, ticks[-1] * 1.1)
        ax.set_xlabel("batch size")
        ax.set_ylabel(f"torch.nn time / {candidate_label} time")
        ax.set_title(MODE_LABEL[mode])
        ax.grid(True, which="major", alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right upper", fontsize="small")
    fig.suptitle(f"{' '.join(t for t in common if not t.startswith('B'))}  on "
                 f"{env['device_name']} ({env['device']}, {env['threads']} threads), "
                 f"torch {env['torch']}  (> 1: {candidate_label} faster)", fontsize="medium")
    fig.savefig(path, dpi=110)
    return path


def _write_json(path, payload):
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1, allow_nan=False) + "\n")
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m fused_rnn bench",
        description="Time fused_rnn against torch.nn (cuDNN on CUDA, oneDNN/ATen on CPU) on "
                    "the same inputs and weights. Ratio = torch.nn time / fused_rnn time.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("what to run")
    g.add_argument("--sweep", choices=("standard", "short", "full"), default="short",
                   help="standard: T100 B64 I=H=512 L1 fp32 only; short: that with "
                        f"B in {list(SHORT_BATCHES)}; full: the DESIGN §5 grid "
                        "(H 256/1024, T 1000, 4 layers, bidirectional, packed, and bf16/fp16 "
                        "on CUDA, each against the B sweep)")
    g.add_argument("--quick", action="store_true",
                   help="tiny sizes (T10 I=H=32, B 1/4, 1-2 layers, packed), few repeats: a "
                        "smoke run in seconds; written to the temp dir unless --out is given")
    g.add_argument("--cells", type=_name_list(CELLS), default=list(CELLS),
                   help="comma-separated subset of lstm,gru,rnn")
    g.add_argument("--modes", type=_name_list(MODES), default=list(MODES),
                   help="fwd (inference) and/or fwdbwd (training step)")
    g.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    g.add_argument("--dtype", type=_dtype_list, default=None,
                   help="comma-separated fp32,fp64,bf16,fp16 (bf16/fp16 on CUDA only); "
                        "default fp32, plus bf16/fp16 in the full sweep on CUDA")
    g.add_argument("--tf32", choices=("off", "on", "both"), default="off",
                   help="CUDA fp32: TF32 for both sides together (cuBLAS and cuDNN flags)")
    g.add_argument("--filter", metavar="REGEX", help="keep the cases whose name matches")
    g.add_argument("--list", action="store_true", help="print the cases and exit")
    g.add_argument("--null", action="store_true",
                   help="torch.nn on both sides: shows the noise floor of the harness "
                        "(ratio should be ~1)")
    s = p.add_argument_group("sizes (each replaces that axis of the sweep; comma lists)")
    s.add_argument("--batch", "-B", type=_int_list, default=None)
    s.add_argument("--seq-len", "-T", type=_int_list, default=None)
    s.add_argument("--hidden", "-H", type=_int_list, default=None)
    s.add_argument("--input-size", "-I", type=_int_list, default=None,
                   help="default: equal to the hidden size")
    s.add_argument("--layers", "-L", type=_int_list, default=None)
    s.add_argument("--bidirectional", type=_yes_no_both, default=None, metavar="{no,yes,both}")
    s.add_argument("--packed", type=_yes_no_both, default=None, metavar="{no,yes,both}",
                   help="PackedSequence input, lengths drawn in [0.3 T, T] (30..100 for T100)")
    t = p.add_argument_group("timing (defaults depend on the device; see bench/README.md)")
    t.add_argument("--warmup", type=int, default=None, help="warm-up runs per side (at least 1)")
    t.add_argument("--min-repeats", type=int, default=None)
    t.add_argument("--repeats", type=int, default=None, help="most timed repeats per side")
    t.add_argument("--budget", type=float, default=None, metavar="SECONDS",
                   help="repeat past --min-repeats until this much time is spent (per case "
                        "and mode), up to --repeats")
    t.add_argument("--input-sets", type=int, default=None,
                   help="input sets to rotate through (default: enough to overflow the cache)")
    t.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    t.add_argument("--seed", type=int, default=0)
    o = p.add_argument_group("output")
    o.add_argument("--out", type=Path, default=None,
                   help="JSON path; the plot (.png) and table (.md) go next to it. Default "
                        "bench/results/<YYYY-MM-DD>-<device-slug>[-<sweep>].json")
    o.add_argument("--no-save", action="store_true", help="write no files")
    o.add_argument("--no-plot", action="store_true")
    o.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def resolve_device(name):
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("error: --device cuda but torch sees no CUDA device")
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)
    return device


def timing_from_args(args, device):
    key = "quick" if args.quick else device.type
    warmup, min_repeats, max_repeats, budget = TIMING_DEFAULTS.get(key, TIMING_DEFAULTS["cpu"])
    warmup = args.warmup if args.warmup is not None else warmup
    min_repeats = args.min_repeats if args.min_repeats is not None else min_repeats
    max_repeats = args.repeats if args.repeats is not None else max(max_repeats, min_repeats)
    budget = args.budget if args.budget is not None else budget
    return (max(1, warmup), max(1, min(min_repeats, max_repeats)), max(1, max_repeats), budget)


def default_out(env, args):
    date = env["date_utc"][:10]
    suffix = "".join([f"-{args.sweep}" if args.sweep != "short" else "",
                      f"-tf32{args.tf32}" if env["device"] == "cuda" and args.tf32 != "off"
                      else "", "-null" if args.null else ""])
    name = f"{date}-{device_slug(env)}{suffix}.json"
    if args.quick:
        return Path(tempfile.gettempdir()) / "fused_rnn-bench" / name.replace(".json",
                                                                              "-quick.json")
    root = repo_root()
    return (root if root is not None else Path.cwd()) / "bench" / "results" / name


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    threads_before = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return _main(args, argv)
    finally:
        torch.set_num_threads(threads_before)


def _main(args, argv):
    device = resolve_device(args.device)
    cases = build_cases(args, device)
    if args.list:
        for c in cases:
            print(c.name)
        print(f"{len(cases)} case(s) x {len(args.modes)} mode(s)", file=sys.stderr)
        return 0
    if not cases:
        print("error: no case selected", file=sys.stderr)
        return 2
    timing = timing_from_args(args, device)
    candidate, label = (torch_classes(), "torch.nn(null)") if args.null else (None, "fused_rnn")
    if candidate is None:
        try:
            candidate = fused_classes()
        except ImportError as e:
            print(f"error: cannot import fused_rnn's modules ({e}); build the extension "
                  "first (make)", file=sys.stderr)
            return 2

    env = environment(device, argv, candidate_label=label)
    out = None if args.no_save else (args.out or default_out(env, args))
    config = {"sweep": "quick" if args.quick else args.sweep, "modes": args.modes,
              "tf32": args.tf32 if device.type == "cuda" else None,
              "timing": dict(zip(("warmup", "min_repeats", "max_repeats", "budget_s"), timing)),
              "input_sets": args.input_sets, "seed": args.seed,
              "rel_diff": "||fused - torch.nn||_2 / ||torch.nn||_2 in float64, max over outputs "
                          "(fwd) and outputs + all gradients (fwdbwd)",
              "ratio": "torch.nn median ms / fused median ms",
              "memory": "cuda: max_memory_allocated during one fwd+bwd minus memory_allocated "
                        "before it; *_saved_bytes (all devices): unique storages saved by "
                        "autograd (saved_tensors_hooks), parameters and inputs excluded"}
    t_start = time.perf_counter()
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)

    def payload(rows, complete):
        env["loadavg_at_end"] = _loadavg()
        return {"format": FORMAT, "complete": complete, "env": env, "config": config,
                "summary": summary(rows), "wall_s": round(time.perf_counter() - t_start, 1),
                "results": rows}

    def save(rows):
        if out is not None:
            _write_json(out, payload(rows, complete=False))

    print(f"{len(cases)} case(s) x {len(args.modes)} mode(s) on {env['device_name']} "
          f"({device}); {label} vs torch.nn", file=sys.stderr)
    load = env["loadavg_at_start"]
    if load and load[0] > 0.5 * (os.cpu_count() or 1):
        print(f"warning: load average {load[0]} on {os.cpu_count()} CPUs: other work is running "
              "and the timings will be noisy", file=sys.stderr)
    rows, interrupted = [], False
    try:
        run(cases, device, timing, modes=args.modes, candidate=candidate, seed=args.seed,
            n_sets=args.input_sets, progress=not args.no_progress, on_rows=save, rows=rows)
    except KeyboardInterrupt:
        interrupted = True
        print("interrupted: reporting the cases measured so far", file=sys.stderr)

    legend = legend_text(env, timing, label)
    text = table(rows)
    print()
    print(text)
    print()
    print(legend)
    summ = summary(rows)
    for mode in MODES:
        if mode in summ:
            s = summ[mode]
            print(f"{MODE_LABEL[mode]}: geomean ratio {s['geomean_ratio']:.2f} "
                  f"(min {s['min_ratio']:.2f}, max {s['max_ratio']:.2f}, {s['n']} cases)")
    if "standard_case" in summ:
        print("standard case (T100 B64 I=H=512 L1 fp32) ratio: " + ", ".join(
            f"{cell} " + " / ".join(f"{MODE_LABEL[m]} {r:.2f}" for m, r in modes.items())
            for cell, modes in summ["standard_case"].items()))
    if summ["errors"] or summ["suspect"]:
        print(f"{summ['errors']} error(s), {summ['suspect']} row(s) above the rel diff tolerance")
    if out is not None:
        _write_json(out, payload(rows, complete=not interrupted))
        md = out.with_suffix(".md")
        png = out.with_suffix(".png")
        plotted = None
        if not args.no_plot:
            try:
                plotted = plot(rows, png, env, candidate_label=label)
            except Exception as e:  # noqa: BLE001 - the measurement is saved anyway
                print(f"warning: plot failed: {type(e).__name__}: {e}", file=sys.stderr)
        md.write_text("\n".join(
            [f"# fused_rnn benchmark: {env['date_utc'][:10]}, {env['device_name']}", ""]
            + [f"    {ln}" for ln in legend.splitlines()] + ["", table(rows, markdown=True), ""]
            + ([f"![ratio against batch size]({png.name})", ""] if plotted else [])))
        print(f"wrote {out}" + (f", {png.name}" if plotted else "") + f", {md.name}")
    if interrupted:
        return 130
    return 1 if summ["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
