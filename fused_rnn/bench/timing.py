"""The timing loop: the sides of a case (two; four in the variants section, three in the
regularizers section) warmed up, then timed in rounds in random order; one case into rows; all
cases with progress."""
from __future__ import annotations

import contextlib
import gc
import math
import random
import statistics
import sys
import time
from dataclasses import asdict

import torch

from .cases import MODES, SUSPECT_REL_DIFF
from .checks import TorchUnsupported
from .decoder import DecoderPair
from .pairing import Pair
from .regularizers import RegularizerPair
from .report import SECTIONS, progress_line
from .tf32 import set_tf32, tf32_flags
from .variants import VariantPair

# Per-device defaults of the timing loop: (warmup, min_repeats, max_repeats, budget_s). A cell
# step takes tens of microseconds to a few milliseconds: many more repeats of one call. The
# variants time four sides per round, and TorchScript's fwd+bwd settles only after two or three
# calls (profiling, then the optimized graph; the check's call is one): four warm-up rounds, and
# a budget whose half (the warm-up's cap) holds them at B64 (~2 s a round on 2 CPU threads).
# The regularizers section times three sides per round (its residual case three layers each):
# the variants section's defaults.
TIMING_DEFAULTS = {"cpu": (2, 3, 15, 2.0), "cuda": (3, 10, 100, 1.0), "quick": (1, 2, 3, 0.05),
                   "cpu-cells": (20, 50, 3000, 2.0), "cuda-cells": (20, 50, 3000, 1.0),
                   "cpu-decoder": (2, 5, 50, 3.0), "cuda-decoder": (3, 10, 100, 1.0),
                   "cpu-variants": (4, 5, 30, 8.0), "cuda-variants": (5, 10, 100, 2.0),
                   "cpu-regularizers": (4, 5, 30, 8.0), "cuda-regularizers": (5, 10, 100, 2.0)}
PAIR_CLASS = {"decoder": DecoderPair, "variant": VariantPair, "regularizer": RegularizerPair}  # by Case.kind; else Pair


def _timer(device):
    """timed(run, i) -> ms: CUDA events (the GPU's time, not the launch), else perf_counter."""
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


@contextlib.contextmanager
def _gc_paused():
    """A collection inside a timed region would land on one side only."""
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _warm_up(runners, n_sets, warmup, budget):
    """At least one run per side; up to ``warmup`` while within half the budget."""
    t0 = time.perf_counter()
    for w in range(max(1, warmup)):
        if w > 0 and time.perf_counter() - t0 > budget / 2:
            break
        for prepare, run in runners.values():
            prepare(w % n_sets)
            run(w % n_sets)


def _timed_pairs(runners, n_sets, timing, timed, rng):
    """Pairs (rounds of every side) in an order drawn per round, so that drift hits all sides alike."""
    _, min_repeats, max_repeats, budget = timing
    samples = {side: [] for side in runners}
    t0, r = time.perf_counter(), 0
    while r < max_repeats and (r < min_repeats or time.perf_counter() - t0 < budget):
        order = list(runners)
        rng.shuffle(order)
        for side in order:
            prepare, run = runners[side]
            prepare(r % n_sets)
            samples[side].append(timed(run, r % n_sets))
        r += 1
    return samples


def measure(pair, mode, timing, rng):
    """Warm the sides up, then time them in rounds in random order; returns {side: [ms, ...]}."""
    runners = {side: pair.runner(side, mode) for side in pair.sides}
    n_sets = len(pair.sets)
    pair.set_mode(mode)
    with _gc_paused():
        _warm_up(runners, n_sets, timing[0], timing[3])
        if pair.device.type == "cuda":
            torch.cuda.synchronize(pair.device)
        samples = _timed_pairs(runners, n_sets, timing, _timer(pair.device), rng)
        for prepare, _ in runners.values():
            prepare(0)  # drop the grads of the last repeat
    return samples


def _finite_or_none(v):
    return v if isinstance(v, (int, float)) and math.isfinite(v) else None


def _timing_fields(pair, samples):
    """Each side's median ms, the pair's ratios of them, the repeats and every sample."""
    ms = {side: statistics.median(samples[side]) for side in pair.sides}
    fields = {f"{side}_ms": ms[side] for side in pair.sides}
    fields.update({key: ms[a] / ms[b] if ms[b] > 0 else math.inf for key, (a, b) in pair.ratios.items()})
    fields["repeats"] = len(samples[pair.sides[0]])
    fields.update({f"{side}_ms_samples": [round(v, 4) for v in samples[side]] for side in pair.sides})
    return fields


def _memory_fields(pair, row):
    """fwd+bwd memory: CUDA's peak allocation, elsewhere the bytes saved for backward."""
    if pair.device.type == "cuda":
        return {"mem_metric": "cuda_peak_allocated",
                **{f"{side}_mem_bytes": pair.cuda_peak_bytes(side) for side in pair.sides}}
    return {"mem_metric": "saved_for_backward",
            **{f"{side}_mem_bytes": row[f"{side}_saved_bytes"] for side in pair.sides}}


def _measure_mode(pair, mode, timing, rng, row):
    """Check, time and (fwd+bwd) weigh one mode into ``row``; an error, or the reason why
    torch.nn cannot run it (a skip), goes into the row."""
    try:
        row.update(pair.check(mode))
        row.update(_timing_fields(pair, measure(pair, mode, timing, rng)))
        if mode == "fwdbwd":
            row.update(_memory_fields(pair, row))
        limit = SUSPECT_REL_DIFF.get(pair.case.precision, 1e-4)
        row["suspect"] = "dtype_mismatch" in row or not (row["rel_diff"] <= limit)
    except TorchUnsupported as e:
        row["skipped"] = str(e)
    except Exception as e:  # noqa: BLE001 - reported in the row, the sweep goes on
        if pair.device.type == "cuda" and isinstance(e, torch.cuda.OutOfMemoryError):
            torch.cuda.empty_cache()
        row["error"] = f"{type(e).__name__}: {e}"
    for k in ("rel_diff", "rel_diff_out", "rel_diff_grad", *pair.ratios):
        if k in row:  # JSON has no inf or NaN (written with allow_nan=False): null instead
            row[k] = _finite_or_none(row[k])
    return row


def _case_fields(case, device):
    return {"case": case.name, "series": case.series, **asdict(case), "device": device.type,
            "tf32_flags": tf32_flags() if device.type == "cuda" else None}


def _input_fields(pair):
    extra = {"input_sets": len(pair.sets)}
    if pair.lengths is not None:
        extra.update(lengths_min=min(pair.lengths), lengths_max=max(pair.lengths),
                     tokens=sum(pair.lengths))
    else:
        extra["tokens"] = pair.case.seq_len * pair.case.batch
    return extra


def run_case(case, device, timing, modes, candidate=None, seed=0, n_sets=None, rng=None):
    """Measure one case in every mode; returns one row (a dict) per mode."""
    rng = rng or random.Random(seed)
    if case.tf32 is not None:
        set_tf32(case.tf32)
    base = _case_fields(case, device)
    if case.kind == "decoder":  # a training step is timed as fwd+bwd, decoding as fwd
        modes = [m for m in modes if m == ("fwd" if case.decode else "fwdbwd")]
    elif case.kind in SECTIONS:  # the modes a multi-side section runs (regularizers: fwd+bwd only)
        modes = [m for m in modes if m in SECTIONS[case.kind].modes]
    try:
        pair = PAIR_CLASS.get(case.kind, Pair)(case, device, candidate=candidate, n_sets=n_sets, seed=seed)
    except Exception as e:  # noqa: BLE001 - reported in the row, the sweep goes on
        return [dict(base, mode=m, error=f"{type(e).__name__}: {e}") for m in modes]
    extra = _input_fields(pair)
    try:
        return [_measure_mode(pair, mode, timing, rng, dict(base, mode=mode, **extra))
                for mode in modes]
    finally:
        del pair
        gc.collect()  # free this case's modules and inputs before the next case allocates


def _tqdm_bar(total):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is an optional extra (fused_rnn[bench]): fall back to no bar
        return None
    return tqdm(total=total, unit="run", file=sys.stderr, dynamic_ncols=True, desc="bench")


class _Progress:
    """A line per finished run: above tqdm's bar on a terminal, else plain numbered lines
    (a log, or no tqdm)."""

    def __init__(self, total, enabled):
        self.total, self.done, self.enabled = total, 0, enabled
        self.bar = _tqdm_bar(total) if enabled and sys.stderr.isatty() else None

    def start(self, case):
        if self.bar is not None:
            self.bar.set_postfix_str(case.name)

    def finished(self, row):
        line = progress_line(row)
        self.done += 1
        if self.bar is not None:
            self.bar.write(line, file=sys.stderr)
            self.bar.update(1)
        elif self.enabled:
            print(f"[{self.done}/{self.total}] {line}", file=sys.stderr, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def run(cases, device, timing, modes=MODES, candidate=None, seed=0, n_sets=None,
        progress=True, on_rows=None, rows=None):
    """Run every case, appending to ``rows``; ``on_rows(rows)`` is called after each case."""
    device = torch.device(device)
    rng = random.Random(seed)
    rows = [] if rows is None else rows
    saved_tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    bar = _Progress(len(cases) * len(modes), progress)
    try:
        for case in cases:
            bar.start(case)
            new = run_case(case, device, timing, modes, candidate=candidate, seed=seed,
                           n_sets=n_sets, rng=rng)
            rows += new
            for row in new:
                bar.finished(row)
            if on_rows is not None:
                on_rows(rows)
    finally:
        bar.close()
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved_tf32
    return rows
