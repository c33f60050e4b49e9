"""What the module tests share: the sizes each device runs, the modes and the grid of
constructor options, a torch.nn and a fused module (or cell) with the same weights, input and
hx leaves, one forward with its gradients, the float64 truth, and the comparison of two
modules' outputs and gradients."""
import copy
from dataclasses import dataclass

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import fused_rnn

from checks import assert_close

TORCH_CLASS = {"LSTM": nn.LSTM, "GRU": nn.GRU, "RNN_TANH": nn.RNN, "RNN_RELU": nn.RNN}
FUSED_CLASS = {"LSTM": fused_rnn.LSTM, "GRU": fused_rnn.GRU, "RNN_TANH": fused_rnn.RNN, "RNN_RELU": fused_rnn.RNN}
# (mode, projected): projections exist for LSTM only.
MODES = [("LSTM", False), ("LSTM", True), ("GRU", False), ("RNN_TANH", False), ("RNN_RELU", False)]
MODE_IDS = ["LSTM", "LSTM-proj", "GRU", "RNN_TANH", "RNN_RELU"]
LAYOUTS = ["padded", "unbatched", "packed_sorted", "packed_unsorted"]
CELLS = [("LSTMCell", {}), ("GRUCell", {}), ("RNNCell", {"nonlinearity": "tanh"}),
         ("RNNCell", {"nonlinearity": "relu"})]
CELL_IDS = ["LSTMCell", "GRUCell", "RNNCell-tanh", "RNNCell-relu"]


@dataclass(frozen=True)
class Sizes:
    T: int  # steps
    B: int  # batch
    I: int  # input size
    H: int  # hidden size
    P: int  # LSTM's proj_size where projected
    lengths: dict  # layout -> the sequence lengths of a packed layout

    def proj_size(self, projected):
        return self.P if projected else 0


# The single-device tests run the CPU's sizes; CUDA's are whole vectors of units (H = 32).
T, B, I, H, P = 5, 3, 4, 5, 3
SIZES = {
    "cpu": Sizes(T, B, I, H, P, {"packed_sorted": [5, 3, 2], "packed_unsorted": [3, 5, 2]}),
    "cuda": Sizes(6, 4, 12, 32, 16, {"packed_sorted": [6, 5, 4, 1], "packed_unsorted": [4, 6, 1, 5]}),
}


def over_grid(layouts):
    """Parametrizes a test over every mode and option of the modules: mode, projected,
    num_layers, bias, batch_first, bidirectional, layout and with_hx."""
    axes = [
        pytest.mark.parametrize("mode,projected", MODES, ids=MODE_IDS),
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


def build_pair(mode, projected=False, dtype=torch.float64, device="cpu", **kw):
    """torch.nn module and fused module of the device's sizes holding the same weights
    (initialised on the CPU, so both devices draw the same values for the same seed)."""
    s = SIZES[device]
    ref = TORCH_CLASS[mode](s.I, s.H, **module_kwargs(mode, s.proj_size(projected), **kw))
    fused = FUSED_CLASS[mode](s.I, s.H, **module_kwargs(mode, s.proj_size(projected), **kw))
    fused.load_state_dict(ref.state_dict())
    return ref.to(device, dtype), fused.to(device, dtype)


def build_cells(name, kwargs, device="cpu", **more):
    """torch.nn cell and fused cell of the device's sizes holding the same weights."""
    s = SIZES[device]
    ref = getattr(nn, name)(s.I, s.H, **kwargs, **more)
    fused = getattr(fused_rnn, name)(s.I, s.H, **kwargs, **more)
    fused.load_state_dict(ref.state_dict())
    return ref.to(device), fused.to(device)


def make_leaves(module, layout, dtype, device="cpu", with_hx=True):
    """The input and the hx leaves ([h0] or [h0, c0]; [] without hx) for `module`, of the
    device's sizes; layout "unbatched" drops the batch dimension, any other keeps it."""
    s = SIZES[device]

    def leaf(*shape):
        return torch.randn(shape, device=device, dtype=dtype, requires_grad=True)

    batch_shape = () if layout == "unbatched" else (s.B,)
    if layout == "unbatched":
        x = leaf(s.T, module.input_size)
    else:
        x = leaf(s.B, s.T, module.input_size) if module.batch_first else leaf(s.T, s.B, module.input_size)
    if not with_hx:
        return x, []
    layers = module.num_layers * (2 if module.bidirectional else 1)
    h = leaf(layers, *batch_shape, getattr(module, "proj_size", 0) or module.hidden_size)
    if module.mode != "LSTM":
        return x, [h]
    return x, [h, leaf(layers, *batch_shape, module.hidden_size)]


def packing(layout, device="cpu"):
    """(lengths, enforce_sorted) of `layout` at the device's sizes; lengths None: not packed."""
    return SIZES[device].lengths.get(layout), layout == "packed_sorted"


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


def check_pair(ref, fused, layout, with_hx, dtype, device="cpu"):
    """Outputs (a packed one with its indices), final states and the gradients of the input,
    of hx and of every parameter of `fused` against `ref`, both run on the same fresh leaves:
    the same device and dtype, values within checks.assert_close."""
    x, hx = make_leaves(ref, layout, dtype, device, with_hx)
    got, out_f = run(fused, x, hx, *packing(layout, device))
    want, out_r = run(ref, x, hx, *packing(layout, device))
    if isinstance(out_r, PackedSequence):
        assert isinstance(out_f, PackedSequence)
        assert torch.equal(out_f.batch_sizes, out_r.batch_sizes)
        for name in ("sorted_indices", "unsorted_indices"):
            a, b = getattr(out_f, name), getattr(out_r, name)
            assert (a is None and b is None) or torch.equal(a, b), name
    else:
        assert not isinstance(out_f, PackedSequence)
    grad_outputs = [torch.randn_like(t) for t in want]
    grads_f = torch.autograd.grad(got, [x, *hx, *fused.parameters()], grad_outputs)
    grads_r = torch.autograd.grad(want, [x, *hx, *ref.parameters()], grad_outputs)
    names = ["output", "h_n", "c_n"][:len(want)] + [f"grad of {n}" for n in leaf_names(ref, hx)]
    assert len(got) == len(want) and len(grads_f) == len(grads_r)
    for name, a, b in zip(names, [*got, *grads_f], [*want, *grads_r]):
        assert a.device == b.device and a.dtype == b.dtype == dtype, f"{name}: {a.dtype}, {b.dtype}"
        assert_close(a, b, name)


def check_cells(ref, fused, batched, with_hx, dtype, device="cpu"):
    """The same for two cells: outputs and the gradients of input, hx and every parameter."""
    s = SIZES[device]
    batch = (s.B,) if batched else ()
    x = torch.randn(*batch, s.I, device=device, dtype=dtype, requires_grad=True)
    hx = []
    if with_hx:
        hx = [torch.randn(*batch, s.H, device=device, dtype=dtype, requires_grad=True)
              for _ in range(2 if isinstance(ref, nn.LSTMCell) else 1)]
    arg = None if not with_hx else (tuple(hx) if len(hx) == 2 else hx[0])
    got, want = fused(x, arg), ref(x, arg)
    got = list(got) if isinstance(got, tuple) else [got]
    want = list(want) if isinstance(want, tuple) else [want]
    assert len(got) == len(want)
    grad_outputs = [torch.randn_like(t) for t in want]
    grads_f = torch.autograd.grad(got, [x, *hx, *fused.parameters()], grad_outputs)
    grads_r = torch.autograd.grad(want, [x, *hx, *ref.parameters()], grad_outputs)
    names = ["cell output"] * len(want) + [f"grad of {n}" for n in leaf_names(ref, hx)]
    for name, a, b in zip(names, [*got, *grads_f], [*want, *grads_r]):
        assert a.device == b.device and a.dtype == b.dtype == dtype, f"{name}: {a.dtype}, {b.dtype}"
        assert_close(a, b, name)
