"""Fused modules and cells under torch.autocast, against torch.nn's same module under the same
autocast: every result in torch.nn's dtype (which differs per module and kernel:
fused_rnn/_autocast.py), values and the float32 leaves' gradients within 1e-2 of torch.nn's.

Each check runs what a decoder or truncated-BPTT loop does inside one autocast region: a call,
a second call fed the state the first returned (low-precision or float32, as torch.nn returns
it), and a third on low-precision input (an earlier autocast layer's activations) fed that
state. Also: weights are cast once per autocast region, float64 is left alone, and a model
compiled with torch.compile returns what eager autocast returns."""
import copy

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence
from torch.utils._python_dispatch import TorchDispatchMode

import fused_rnn

from checks import DEVICES, DTYPE_IDS, assert_close, rel_error
from module_cases import CELL_IDS, CELLS, MODE_IDS, MODES, SIZES, build_cells, build_pair

pytestmark = pytest.mark.usefixtures("seeded")

LOW = [torch.bfloat16, torch.float16]
TOL = 1e-2  # results: within 1e-2 relative of torch.nn's
GRAD_TOL = 2e-2  # gradients against the float64 truth, or twice torch.nn's error there
# torch.nn's CPU LSTM (padded, no projection) runs oneDNN, whose autocast kernel casts every
# argument to the autocast dtype. Where oneDNN has no such primitive (float16 on CPUs without
# AVX512-FP16 kernels; bfloat16 on CPUs without avx512_bf16) torch.nn raises this.
ONEDNN_ERROR = "could not create a primitive descriptor"


def _flat(results):
    """Tensors of nested results (PackedSequence -> its data), in order."""
    if isinstance(results, PackedSequence):
        return [results.data]
    if isinstance(results, (tuple, list)):
        return [t for r in results for t in _flat(r)]
    return [results]


def _three_calls(module, x, hx, low, pack, autocast=True):
    """Inside one autocast region: module(x, hx); fed the state it returned; then on x in `low`
    fed the state of the second. Returns every output and state, flat. autocast=False: the same
    calls without autocast, x rounded to `low` in the third (the float64 truth)."""
    device = x.device.type
    x_low = x.to(low) if autocast else x.to(low).to(x.dtype)
    with torch.autocast(device, dtype=low, enabled=autocast):
        out1, state1 = module(pack(x), hx)
        out2, state2 = module(pack(x), state1)
        out3, state3 = module(pack(x_low), state2)
    return _flat([out1, state1, out2, state2, out3, state3])


def _torch_nn_three_calls(module, x, hx, low, pack):
    """_three_calls of a torch.nn module: (results, dtypes torch.nn returns). Where torch.nn's
    oneDNN LSTM has no kernel for `low` on this CPU, the values come from its ATen path (oneDNN
    disabled) and the dtypes are oneDNN's: everything in `low`."""
    try:
        results = _three_calls(module, x, hx, low, pack)
        return results, [r.dtype for r in results]
    except RuntimeError as error:
        if ONEDNN_ERROR not in str(error):
            raise
    with torch.backends.mkldnn.flags(enabled=False):
        results = _three_calls(module, x, hx, low, pack)
    return results, [low] * len(results)


def _grads(module, results, leaves, weights):
    """Gradients of sum(results * weights) by the leaves and the module's parameters."""
    loss = sum((r.to(w.dtype) * w).sum() for r, w in zip(results, weights))
    return torch.autograd.grad(loss, leaves + list(module.parameters()))


def _check_against_torch_nn(ref, fused, x, hx, low, pack):
    """Results and their dtypes against `ref`'s (same weights, same leaves); the gradients of x,
    hx and every parameter in float32, about as accurate as torch.nn's: their error against the
    float64 truth (no autocast) within twice torch.nn's, or within GRAD_TOL. (Both compute in
    `low` and round at different points, so they differ from each other about as much as each
    errs; and where torch.nn keeps a state in float32 across steps, the fused op rounds it to
    `low` between steps.) Not for ReLU RNNs: there a rounding that moves a pre-activation across
    0 changes the derivative by a whole unit, in either implementation; only the gradients'
    dtypes and finiteness are checked."""
    got = _three_calls(fused, x, hx, low, pack)
    want, want_dtypes = _torch_nn_three_calls(ref, x, hx, low, pack)
    assert [g.dtype for g in got] == want_dtypes
    for i, (a, b) in enumerate(zip(got, want)):
        assert_close(a, b.to(a.dtype), f"result {i}", tol=TOL)

    leaves = [x, *(hx if isinstance(hx, tuple) else [hx] if hx is not None else [])]
    weights = [torch.randn(r.shape, device=r.device, dtype=torch.float64) for r in got]
    ref64 = copy.deepcopy(ref).double()
    leaves64 = [t.detach().double().requires_grad_() for t in leaves]
    x64, hx64 = leaves64[0], (tuple(leaves64[1:]) if len(leaves64) == 3 else (leaves64[1:] or [None])[0])
    truth = _grads(ref64, _three_calls(ref64, x64, hx64, low, pack, autocast=False), leaves64, weights)
    names = ["input"] + [f"hx[{i}]" for i in range(len(leaves) - 1)] + [n for n, _ in ref.named_parameters()]
    for name, a, b, t in zip(names, _grads(fused, got, leaves, weights), _grads(ref, want, leaves, weights), truth):
        assert a.dtype == b.dtype == torch.float32, f"grad of {name}: {a.dtype}, torch.nn's {b.dtype}"
        assert torch.isfinite(a).all(), f"grad of {name}"
        if getattr(getattr(ref, "cell", ref), "nonlinearity", "tanh") != "relu":
            bound = max(2 * rel_error(b, t), GRAD_TOL)
            assert_close(a, t, f"grad of {name} (torch.nn's error {rel_error(b, t):.3g})", tol=bound)


def _leaf(*shape, device):
    return torch.randn(shape, device=device, requires_grad=True)


@pytest.mark.parametrize("low", LOW, ids=DTYPE_IDS.get)
@pytest.mark.parametrize("with_hx", [False, True], ids=["no_hx", "hx"])
@pytest.mark.parametrize("layers,bidirectional", [(1, False), (2, True)], ids=["L1-uni", "L2-bi"])
@pytest.mark.parametrize("layout", ["padded", "packed", "packed-equal"])  # equal lengths: oneDNN in torch.nn
@pytest.mark.parametrize("mode,projected", MODES, ids=MODE_IDS)
@pytest.mark.parametrize("device", DEVICES)
def test_modules_return_torch_nn_dtypes(device, mode, projected, layout, layers, bidirectional, with_hx, low):
    ref, fused = build_pair(mode, projected, torch.float32, device, num_layers=layers, bidirectional=bidirectional)
    s = SIZES[device]
    x = _leaf(s.T, s.B, s.I, device=device)
    hx = None
    if with_hx:
        h = _leaf(layers * (1 + bidirectional), s.B, s.proj_size(projected) or s.H, device=device)
        hx = (h, _leaf(layers * (1 + bidirectional), s.B, s.H, device=device)) if mode == "LSTM" else h
    lengths = torch.tensor(s.lengths["packed_unsorted"] if layout == "packed" else [s.T] * s.B)

    def pack(t):
        return t if layout == "padded" else pack_padded_sequence(t, lengths, enforce_sorted=False)

    _check_against_torch_nn(ref, fused, x, hx, low, pack)


@pytest.mark.parametrize("low", LOW, ids=DTYPE_IDS.get)
@pytest.mark.parametrize("with_hx", [False, True], ids=["no_hx", "hx"])
@pytest.mark.parametrize("name,kwargs", CELLS, ids=CELL_IDS)
@pytest.mark.parametrize("device", DEVICES)
def test_cells_return_torch_nn_dtypes(device, name, kwargs, with_hx, low):
    """A cell returns its state, not (output, state): the three calls are steps of a loop."""
    ref, fused = build_cells(name, kwargs, device)
    s = SIZES[device]
    x = _leaf(s.B, s.I, device=device)
    hx = None
    if with_hx:
        hx = (_leaf(s.B, s.H, device=device), _leaf(s.B, s.H, device=device)) if name == "LSTMCell" else \
            _leaf(s.B, s.H, device=device)

    class AsModule(nn.Module):  # (output, state) as the modules return, for _three_calls
        def __init__(self, cell):
            super().__init__()
            self.cell = cell

        def forward(self, input, state):
            state = self.cell(input, state)
            return state[0] if isinstance(state, tuple) else state, state

    _check_against_torch_nn(AsModule(ref), AsModule(fused), x, hx, low, lambda t: t)


class _Casts(TorchDispatchMode):
    """Counts the casts (aten._to_copy) of each tensor, by storage, under it."""

    def __init__(self):
        super().__init__()
        self.counts = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._to_copy.default:
            key = args[0].untyped_storage().data_ptr()
            self.counts[key] = self.counts.get(key, 0) + 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("device", DEVICES)
def test_weights_cast_once_per_autocast_region(device):
    """A decoder loop of 5 cell steps and 3 module calls in one region: each weight is cast to
    the autocast dtype once (autocast's cache), as torch.nn's are; a new region casts again."""
    cell = fused_rnn.LSTMCell(4, 6).to(device)
    lstm = fused_rnn.LSTM(4, 6, num_layers=2).to(device)
    weights = [p.untyped_storage().data_ptr() for p in [*cell.parameters(), *lstm.parameters()]]
    x = torch.randn(3, 4, device=device)
    for _ in range(2):  # two regions
        casts = _Casts()
        with torch.autocast(device, dtype=torch.bfloat16), casts:
            state = None
            for _ in range(5):
                state = cell(x, state)
            for _ in range(3):
                lstm(x[None])
        assert [casts.counts.get(w) for w in weights] == [1] * len(weights)


@pytest.mark.parametrize("device", DEVICES)
def test_float64_is_left_alone(device):
    """Autocast casts no float64 tensor (ATen's rule): a float64 module runs and returns float64."""
    ref, fused = build_pair("LSTM", True, torch.float64, device, num_layers=2)
    x = torch.randn(5, 3, SIZES[device].I, device=device, dtype=torch.float64)
    with torch.autocast(device, dtype=torch.bfloat16):
        got, want = _flat(fused(x)), _flat(ref(x))
    for a, b in zip(got, want):
        assert a.dtype == torch.float64
        assert_close(a, b)


@pytest.mark.parametrize("device", DEVICES)
def test_compiled_model_under_autocast_matches_eager(device):
    """torch.compile (full graph, inductor) of a model with a fused GRU and LSTMCell under
    autocast: the dtypes and values of eager autocast."""

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.gru = fused_rnn.GRU(4, 6, batch_first=True)
            self.cell = fused_rnn.LSTMCell(6, 6)

        def forward(self, x):
            out, h = self.gru(x)
            state = None
            for t in range(out.size(1)):
                state = self.cell(out[:, t], state)
            return out, h, *state

    model = Model().to(device)
    x = torch.randn(3, 5, 4, device=device)
    compiled = torch.compile(model, fullgraph=True, backend="inductor")
    with torch.autocast(device, dtype=torch.bfloat16):
        want, got = model(x), compiled(x)
    for a, b in zip(got, want):
        assert a.dtype == b.dtype
        assert_close(a, b.to(a.dtype), tol=TOL)
