"""torch.nn against fused_rnn, one pytest-benchmark group per (case, mode).

The two sides of a group share weights and input sets (``fused_rnn.bench.Pair``), so their
rows in pytest-benchmark's table compare like with like. ``extra_info`` carries the relative
difference of fused_rnn against torch.nn, the TF32 setting and the torch.nn backend.
The CLI (``python -m fused_rnn bench``) is the reference measurement: it alternates the
sides in random order and reports the ratio; this suite runs each side as its own test.
"""
import itertools
import math
import time
import warnings

import torch

SIDE_KEY = {"torch.nn": "torch", "fused_rnn": "fused"}


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def test_rnn(benchmark, bench_context, case, mode, side):
    ctx, bench = bench_context, bench_context.bench
    pair = ctx.pair(case)
    info = ctx.check(case, mode)
    pair.set_mode(mode)
    prepare, run = pair.runner(SIDE_KEY[side], mode)
    warmup, min_repeats, max_repeats, budget = ctx.timing

    benchmark.group = f"{case.name} | {bench.MODE_LABEL[mode]}"
    benchmark.extra_info.update(
        side=side, case=case.name, mode=mode, device=str(pair.device), dtype=case.dtype,
        tf32=case.tf32, input_sets=len(pair.sets), torch_backend=info.get("torch_backend"),
        rel_diff=info["rel_diff"],
        saved_bytes=info.get(f"{SIDE_KEY[side]}_saved_bytes"))

    assert math.isfinite(info["rel_diff"]), f"fused_rnn output is not finite ({case.name})"
    limit = bench.SUSPECT_REL_DIFF.get(case.precision, 1e-4)
    if info["rel_diff"] > limit:
        warnings.warn(f"{case.name} {mode}: fused_rnn differs from torch.nn by "
                      f"{info['rel_diff']:.2e} (> {limit:g})", stacklevel=1)  # this test's line

    counter = itertools.count()

    def setup():
        i = next(counter) % len(pair.sets)
        prepare(i)
        _sync(pair.device)
        return (i,), {}

    def target(i):
        run(i)
        _sync(pair.device)

    # Rounds by the CLI's rule: at least min_repeats, more while they fit in the budget.
    probe = time.perf_counter()
    target(*setup()[0])
    per_run = time.perf_counter() - probe
    rounds = max(min_repeats, min(max_repeats, int(budget / max(per_run, 1e-9))))
    benchmark.pedantic(target, setup=setup, rounds=rounds, warmup_rounds=max(0, warmup - 1),
                       iterations=1)
    prepare(0)  # drop the gradients of the last round
