"""A small, complete workout of the CUDA ops for compute-sanitizer (run by bench/gpu_check.sh):

    PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck --error-exitcode 1 \\
        python3 bench/sanitize_cuda.py

Every cell (LSTM with and without projection, GRU, RNN tanh/relu) x float32/float64/float16/
bfloat16 x padded/packed x forward/reverse x bias/no bias, forward with the workspace and
backward, and an inference forward without it; tiny odd sizes, so the sanitizers' slowdown
stays small. With PYTORCH_NO_CUDA_MEMORY_CACHING=1 every tensor is its own cudaMalloc, so
memcheck sees any access past a tensor's end and initcheck any read of memory never written.
Exits non-zero if a result is not finite or does not match the float64 CPU reference.
"""
import itertools
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fused_rnn import functional, reference  # noqa: E402

T, B, I, H, P = 4, 3, 5, 7, 3
LENGTHS = [4, 2, 1]  # packed: batch_sizes [3, 2, 1, 1]
GATES = {"lstm": 4, "lstm_proj": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}
# Loose on purpose: this script looks for memory errors; accuracy is tests/test_ops_cuda.py's.
TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-4, torch.float16: 3e-2, torch.bfloat16: 1e-1}


def make_args(cell, dtype, packed, bias, gen):
    def rand(*shape):
        return (torch.randn(*shape, generator=gen, dtype=torch.float64) * 0.4).to("cuda", dtype)

    state = P if cell == "lstm_proj" else H
    gh = GATES[cell] * H
    if packed:
        batch_sizes = torch.tensor([sum(n > t for n in LENGTHS) for t in range(max(LENGTHS))], dtype=torch.int64)
        x = rand(sum(LENGTHS), I)
    else:
        batch_sizes, x = None, rand(T, B, I)
    states = [rand(B, state)] + ([rand(B, H)] if cell.startswith("lstm") else [])
    weights = [rand(gh, I), rand(gh, state), rand(gh) if bias else None, rand(gh) if bias else None]
    if cell.startswith("lstm"):
        weights.append(rand(P, H) if cell == "lstm_proj" else None)
    return x, batch_sizes, states, weights


def call(module, cell, x, batch_sizes, states, weights, reverse):
    kw = dict(batch_sizes=batch_sizes, reverse=reverse)
    if cell.startswith("lstm"):
        out, (h, c) = module.lstm(x, tuple(states), *weights, **kw)
        return [out, h, c]
    if cell == "gru":
        return list(module.gru(x, states[0], *weights, **kw))
    return list(module.rnn(x, states[0], *weights, nonlinearity=cell[4:], **kw))


def rel_error(a, b):
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def main():
    assert torch.cuda.is_available(), "needs a CUDA GPU"
    gen = torch.Generator().manual_seed(0)
    failures, runs = [], 0
    dtypes = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
    for cell, dtype, packed, reverse, bias in itertools.product(GATES, dtypes, [False, True], [False, True],
                                                                [True, False]):
        name = f"{cell} {str(dtype)[6:]} {'packed' if packed else 'padded'} {'reverse' if reverse else 'forward'} " \
               f"{'bias' if bias else 'no-bias'}"
        x, batch_sizes, states, weights = make_args(cell, dtype, packed, bias, gen)
        leaves = [t.requires_grad_() for t in [x, *states, *weights] if t is not None]
        with torch.no_grad():  # inference: no workspace
            inference = call(functional, cell, x, batch_sizes, states, weights, reverse)
        outs = call(functional, cell, x, batch_sizes, states, weights, reverse)
        grads = torch.autograd.grad(outs, leaves, [torch.ones_like(o) for o in outs])
        # the float64 CPU reference, for the values
        ref_leaves = [t.detach().double().cpu() for t in [x, *states, *weights] if t is not None]
        it = iter(ref_leaves)
        rx, rstates = next(it), [next(it) for _ in states]
        rweights = [next(it) if w is not None else None for w in weights]
        ref = call(reference, cell, rx, batch_sizes, rstates, rweights, reverse)
        torch.cuda.synchronize()
        runs += 1
        for what, got in (("output", outs), ("inference output", inference)):
            for a, b in zip(got, ref):
                if not torch.isfinite(a).all() or rel_error(a, b) > TOLERANCE[dtype]:
                    failures.append(f"{name}: {what} relative error {rel_error(a, b):.3g}")
        if not all(torch.isfinite(g).all() for g in grads):
            failures.append(f"{name}: a gradient is not finite")
    for f in failures:
        print("FAILED", f)
    print(f"sanitize_cuda: {runs} configurations, {len(failures)} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
