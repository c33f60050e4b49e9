"""What the module tests share (test_rnn.py on the CPU, test_rnn_cuda.py on CUDA): the
modes, a torch.nn and a fused module with the same weights, input and hx leaves, and one
forward with the gradients, and the float64 truth. Each test file keeps its own sizes and
layouts."""
import copy

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import fused_rnn

TORCH_CLASS = {"LSTM": nn.LSTM, "GRU": nn.GRU, "RNN_TANH": nn.RNN, "RNN_RELU": nn.RNN}
FUSED_CLASS = {"LSTM": fused_rnn.LSTM, "GRU": fused_rnn.GRU, "RNN_TANH": fused_rnn.RNN, "RNN_RELU": fused_rnn.RNN}
MODE_IDS = ["LSTM", "LSTM-proj", "GRU", "RNN_TANH", "RNN_RELU"]


def modes(proj_size):
    """(mode, proj_size) pairs, ids MODE_IDS: projections exist for LSTM only."""
    return [("LSTM", 0), ("LSTM", proj_size), ("GRU", 0), ("RNN_TANH", 0), ("RNN_RELU", 0)]


def over_grid(layouts, proj_size):
    """Parametrizes a test over every mode and option of the modules: mode, proj_size,
    num_layers, bias, batch_first, bidirectional, layout and with_hx."""
    axes = [
        pytest.mark.parametrize("mode,proj_size", modes(proj_size), ids=MODE_IDS),
        pytest.mark.parametrize("num_layers", [1, 2], ids=["L1", "L2"]),
        pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"]),
        pytest.mark.parametrize("batch_first", [False, True], ids=["tmajor", "bfirst"]),
        pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"]),
        pytest.mark.parametrize("layout", layouts),
        pytest.mark.parametrize("with_hx", [True, False], ids=["hx", "no_hx"]),
    ]

    def apply(test):
        for axis in axes:
            test = axis(test)
        return test
    return apply


def module_kwargs(mode, proj_size=0, **kw):
    if mode.startswith("RNN"):
        kw["nonlinearity"] = "tanh" if mode == "RNN_TANH" else "relu"
    if proj_size:
        kw["proj_size"] = proj_size
    return kw


def build_pair(mode, input_size, hidden_size, proj_size=0, dtype=torch.float64, device="cpu", **kw):
    """torch.nn module and fused module holding the same weights (initialised on the CPU, so
    both devices draw the same values for the same seed)."""
    ref = TORCH_CLASS[mode](input_size, hidden_size, **module_kwargs(mode, proj_size, **kw))
    fused = FUSED_CLASS[mode](input_size, hidden_size, **module_kwargs(mode, proj_size, **kw))
    fused.load_state_dict(ref.state_dict())
    return ref.to(device, dtype), fused.to(device, dtype)


def make_leaves(module, layout, steps, batch, dtype, device="cpu", with_hx=True):
    """The input and the hx leaves ([h0] or [h0, c0]; [] without hx) for `module`; layout
    "unbatched" drops the batch dimension, any other keeps it."""
    def leaf(*shape):
        return torch.randn(shape, device=device, dtype=dtype, requires_grad=True)

    batch_shape = () if layout == "unbatched" else (batch,)
    if layout == "unbatched":
        x = leaf(steps, module.input_size)
    else:
        x = leaf(batch, steps, module.input_size) if module.batch_first else leaf(steps, batch, module.input_size)
    if not with_hx:
        return x, []
    layers = module.num_layers * (2 if module.bidirectional else 1)
    h = leaf(layers, *batch_shape, getattr(module, "proj_size", 0) or module.hidden_size)
    if module.mode != "LSTM":
        return x, [h]
    return x, [h, leaf(layers, *batch_shape, module.hidden_size)]


def run(module, x, hx, lengths=None, enforce_sorted=True):
    """One forward, packed when `lengths` is given; returns ([output data, h_n(, c_n)], the
    raw output)."""
    arg = x
    if lengths is not None:
        arg = pack_padded_sequence(x, torch.tensor(lengths), batch_first=module.batch_first,
                                   enforce_sorted=enforce_sorted)
    state = None if not hx else (tuple(hx) if module.mode == "LSTM" else hx[0])
    out, hidden = module(arg, state)
    assert isinstance(out, PackedSequence) == (lengths is not None)
    data = out.data if isinstance(out, PackedSequence) else out
    states = list(hidden) if isinstance(hidden, tuple) else [hidden]
    return [data] + states, out


def forward_and_grads(module, x, hx, lengths=None, enforce_sorted=True, grad_outputs=None):
    """Results of one forward and the gradients of the input, hx and every parameter, for
    `grad_outputs` (fresh random ones when None): (results, grads, grad_outputs)."""
    results = run(module, x, hx, lengths, enforce_sorted)[0]
    if grad_outputs is None:
        grad_outputs = [torch.randn_like(r) for r in results]
    grads = torch.autograd.grad(results, [x, *hx, *module.parameters()], grad_outputs)
    return results, list(grads), grad_outputs


def float64_truth(ref, x, hx, dtype, grad_outputs, lengths=None, enforce_sorted=True):
    """forward_and_grads of torch.nn in float64 on the CPU at the arguments rounded to `dtype`
    (so only the error of computing in `dtype` is measured, not that of rounding the
    arguments to it)."""
    ref64 = copy.deepcopy(ref).to("cpu", torch.float64)
    with torch.no_grad():
        for p in ref64.parameters():
            p.copy_(p.to(dtype).double())

    def rounded(t):
        return t.detach().to(dtype).to("cpu", torch.float64).requires_grad_()

    return forward_and_grads(ref64, rounded(x), [rounded(h) for h in hx], lengths, enforce_sorted,
                             [g.to("cpu", torch.float64) for g in grad_outputs])


def leaf_names(module, hx):
    """Names of the leaves forward_and_grads differentiates by."""
    return ["input"] + [f"hx[{i}]" for i in range(len(hx))] + [n for n, _ in module.named_parameters()]
