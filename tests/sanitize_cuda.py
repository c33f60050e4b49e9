"""A small, complete workout of the CUDA ops for compute-sanitizer (run by bench/gpu_check.sh):

    PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck --error-exitcode 1 \\
        python3 tests/sanitize_cuda.py

Every cell (LSTM with and without projection, GRU, RNN tanh/relu) x float32/float64/float16/
bfloat16 x padded/packed x forward/reverse x bias/no bias, forward with the workspace and
backward, and an inference forward without it; every third configuration with the
regularizers' masks (zoneout and recurrent dropout); tiny odd sizes, so the sanitizers'
slowdown stays small. With PYTORCH_NO_CUDA_MEMORY_CACHING=1 every tensor is its own cudaMalloc, so
memcheck sees any access past a tensor's end and initcheck any read of memory never written.
Exits non-zero if a result is not finite or does not match the float64 CPU reference.

The cases are tests/op_cases.py's (make_case), compared by checks.assert_close. `--device cpu`
runs the same workout on the CPU: a quick check of the script itself on a machine without a
GPU. Not a pytest file (no test_ prefix): pytest does not collect it.
"""
import argparse
import itertools
import sys
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

from fused_rnn import functional  # noqa: E402

from checks import assert_close  # noqa: E402
from op_cases import GRID, compare, make_case  # noqa: E402

# Both IO paths of the kernels (csrc/cuda/lanes.cuh): H = 7 has no whole 16-byte vector of
# units, so every thread runs the scalar path; H = 32 is a whole number of vectors in every
# dtype (4 floats, 2 doubles, 8 halves), so the vector path runs.
SIZES = [dict(T=4, B=3, I=5, H=7, P=3, scale=0.4), dict(T=3, B=2, I=4, H=32, P=8, scale=0.4)]
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
# Loose on purpose: this script looks for memory errors; accuracy is the op tests' job
# (tests/test_ops_numerics.py), with the tolerances of docs/DESIGN.md §3.
TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-4, torch.float16: 3e-2, torch.bfloat16: 1e-1}


def with_masks(seed):
    """Whether configuration `seed` runs with the regularizers' masks: every third, so that
    they meet every cell, dtype, layout and direction without a second pass over the grid."""
    return seed % 3 == 0


def workout(device, dtype, cell, bias, packed, reverse, seed, sizes):
    """The failures (strings) of one configuration: a training forward and backward and an
    inference forward against the float64 CPU reference."""
    masks = ("zoneout", "dropout") if with_masks(seed) else ()
    case = make_case(cell, bias=bias, packed=packed, reverse=reverse, dtype=dtype, device=device, seed=seed,
                     masks=masks, **sizes)
    with torch.no_grad():  # inference: no workspace
        inference = case.run(functional)
    outputs, gradients = compare(case)
    if device != "cpu":
        torch.cuda.synchronize()
    failures = []
    results = [(f"output {i}", fused, ref) for i, (fused, ref) in enumerate(outputs)]
    results += [(f"inference output {i}", a, ref) for i, (a, (_, ref)) in enumerate(zip(inference, outputs))]
    for what, got, ref in results:
        try:
            assert torch.isfinite(got).all(), f"{what} is not finite"
            assert_close(got, ref, what, tol=TOLERANCE[dtype])
        except AssertionError as error:
            failures.append(str(error))
    if not all(torch.isfinite(g).all() for g, _ in gradients):
        failures.append("a gradient is not finite")
    return failures


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), or cpu to check the script itself")
    device = parser.parse_args(argv).device
    assert device == "cpu" or torch.cuda.is_available(), "needs a CUDA GPU (or --device cpu)"
    failures, runs = [], 0
    for seed, (sizes, dtype, (cell, bias, packed, reverse)) in enumerate(itertools.product(SIZES, DTYPES, GRID)):
        name = (f"{cell} H={sizes['H']} {str(dtype)[6:]} {'packed' if packed else 'padded'} "
                f"{'reverse' if reverse else 'forward'} {'bias' if bias else 'no-bias'}"
                f"{' masks' if with_masks(seed) else ''}")
        try:
            failures += [f"{name}: {f}" for f in workout(device, dtype, cell, bias, packed, reverse, seed, sizes)]
        except RuntimeError as error:  # an op raised: report it and go on with the next one
            failures.append(f"{name}: raised {str(error).splitlines()[0]}")
        runs += 1
    for f in failures:
        print("FAILED", f)
    print(f"sanitize_cuda: {runs} configurations on {device}, {len(failures)} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
