"""fused_rnn.LSTM / GRU / RNN and the cells against torch.nn with the same weights.

Every check builds the torch.nn module and the fused one with the same state_dict, runs both
on the same fresh random input, and compares outputs, final states and the gradients of the
input, of hx and of every parameter: float64 to 1e-10, float32 to a relative 1e-5.
"""
import copy
import io
import pickle
import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrizations
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import fused_rnn
import module_cases
from module_cases import FUSED_CLASS, MODE_IDS, TORCH_CLASS, make_leaves, module_kwargs
from op_cases import rel_error

T, B, I, H, P = 5, 3, 4, 5, 3
LENGTHS = {"packed_sorted": [5, 3, 2], "packed_unsorted": [3, 5, 2]}
LAYOUTS = ["padded", "unbatched", "packed_sorted", "packed_unsorted"]

MODES = module_cases.modes(P)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def build_pair(mode, proj_size=0, dtype=torch.float64, **kw):
    """torch.nn module and fused module holding the same weights."""
    return module_cases.build_pair(mode, I, H, proj_size, dtype, **kw)


def make_input(module, layout, dtype):
    return make_leaves(module, layout, T, B, dtype, with_hx=False)[0]


def run(module, layout, x, hx):
    """Forward; returns the list of result tensors [output, h_n(, c_n)] and the raw output."""
    return module_cases.run(module, x, hx, LENGTHS.get(layout), enforce_sorted=layout == "packed_sorted")


def assert_close(actual, expected, what=""):
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    if expected.dtype == torch.float64:
        torch.testing.assert_close(actual, expected, rtol=0, atol=1e-10,
                                   msg=lambda m: f"{what}: {m}")
    else:
        err = (actual.double() - expected.double()).norm()
        scale = expected.double().norm().clamp_min(1e-30)
        assert err / scale <= 1e-5, f"{what}: relative error {float(err / scale):.3g}"


def compare_modules(ref, fused, layout, with_hx, dtype):
    """Outputs and gradients of input, hx and every parameter of two modules agree."""
    x, hx = make_leaves(ref, layout, T, B, dtype, with_hx=with_hx)
    got, out_f = run(fused, layout, x, hx)
    want, out_r = run(ref, layout, x, hx)
    if isinstance(out_r, PackedSequence):
        assert isinstance(out_f, PackedSequence)
        assert torch.equal(out_f.batch_sizes, out_r.batch_sizes)
        for name in ("sorted_indices", "unsorted_indices"):
            a, b = getattr(out_f, name), getattr(out_r, name)
            assert (a is None and b is None) or torch.equal(a, b), name
    else:
        assert not isinstance(out_f, PackedSequence)
    names = ["output", "h_n", "c_n"]
    for name, a, b in zip(names, got, want):
        assert_close(a, b, name)

    grad_outputs = [torch.randn_like(t) for t in want]
    leaves_r = [x] + hx + list(ref.parameters())
    leaves_f = [x] + hx + list(fused.parameters())
    leaf_names = ["input"] + [f"hx[{i}]" for i in range(len(hx))]
    leaf_names += [name for name, _ in ref.named_parameters()]
    grads_f = torch.autograd.grad(got, leaves_f, grad_outputs)
    grads_r = torch.autograd.grad(want, leaves_r, grad_outputs)
    for name, a, b in zip(leaf_names, grads_f, grads_r):
        assert_close(a, b, f"grad of {name}")


# ---------------------------------------------------------------------------------------------
# Forward and backward over the whole grid of options.
# ---------------------------------------------------------------------------------------------

@module_cases.over_grid(LAYOUTS, P)
def test_grid_float64(mode, proj_size, num_layers, bias, batch_first, bidirectional, layout,
                      with_hx):
    ref, fused = build_pair(mode, proj_size, num_layers=num_layers, bias=bias,
                            batch_first=batch_first, bidirectional=bidirectional)
    compare_modules(ref, fused, layout, with_hx, torch.float64)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("mode,proj_size", MODES, ids=MODE_IDS)
def test_float32(mode, proj_size, bidirectional, layout):
    ref, fused = build_pair(mode, proj_size, dtype=torch.float32, num_layers=2,
                            batch_first=True, bidirectional=bidirectional)
    compare_modules(ref, fused, layout, True, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("layout", ["padded", "packed_unsorted"])
@pytest.mark.parametrize("mode,proj_size", MODES, ids=MODE_IDS)
def test_low_precision_modules(mode, proj_size, layout, dtype):
    """Modules converted with .half() / .bfloat16(), as torch.nn's run on the CPU: the same
    dtypes, outputs and every gradient within 1e-2 of the float64 truth (DESIGN §3), outputs
    within 1e-2 of torch.nn's. relu's gradients are only required finite: its derivative
    jumps at 0, where rounding can pick the other side."""
    ref, fused = build_pair(mode, proj_size, dtype=dtype, num_layers=2, bidirectional=True)
    x, hx = make_leaves(ref, layout, T, B, dtype)
    lengths, enforce_sorted = LENGTHS.get(layout), layout == "packed_sorted"
    got, got_grads, grad_outputs = module_cases.forward_and_grads(fused, x, hx, lengths, enforce_sorted)
    want, _, _ = module_cases.forward_and_grads(ref, x, hx, lengths, enforce_sorted, grad_outputs)
    truth, truth_grads, _ = module_cases.float64_truth(ref, x, hx, dtype, grad_outputs, lengths, enforce_sorted)
    for name, a, b, t in zip(["output", "h_n", "c_n"], got, want, truth):
        assert a.dtype == b.dtype == dtype, name
        assert rel_error(a, t) <= 1e-2 and rel_error(a, b) <= 1e-2, name
    for name, a, t in zip(module_cases.leaf_names(ref, hx), got_grads, truth_grads):
        assert a.dtype == dtype and torch.isfinite(a).all(), name
        if mode != "RNN_RELU":
            assert rel_error(a, t) <= 1e-2, f"grad of {name}: relative error {rel_error(a, t):.3g}"


@pytest.mark.parametrize("mode,proj_size", MODES, ids=MODE_IDS)
def test_one_op_call_per_layer_and_direction(mode, proj_size, monkeypatch):
    """Layers x directions are composed from the functional ops; no loop over time steps."""
    calls = []
    for name in ("lstm", "gru", "rnn"):
        op = getattr(fused_rnn.functional, name)

        def counted(*args, _op=op, **kwargs):
            calls.append(kwargs.get("reverse", False))
            return _op(*args, **kwargs)
        monkeypatch.setattr(fused_rnn.functional, name, counted)
    _, fused = build_pair(mode, proj_size, num_layers=3, bidirectional=True)
    fused(torch.randn(T, B, I, dtype=torch.float64))
    assert calls == [False, True] * 3


def test_non_contiguous_input_and_hx():
    ref, fused = build_pair("LSTM", num_layers=2, bidirectional=True)
    x = torch.randn(I, T, B, dtype=torch.float64).permute(1, 2, 0)
    h = torch.randn(B, 4, H, dtype=torch.float64).transpose(0, 1)
    c = torch.randn(H, B, 4, dtype=torch.float64).permute(2, 1, 0)
    out_f, (h_f, c_f) = fused(x, (h, c))
    out_r, (h_r, c_r) = ref(x, (h, c))
    for a, b in ((out_f, out_r), (h_f, h_r), (c_f, c_r)):
        assert_close(a, b)


@pytest.mark.parametrize("mode,proj_size", MODES, ids=MODE_IDS)
def test_empty_batch(mode, proj_size):
    """torch.nn accepts a batch of zero sequences."""
    ref, fused = build_pair(mode, proj_size, num_layers=2, bidirectional=True)
    x = torch.randn(T, 0, I, dtype=torch.float64)
    got, _ = run(fused, "padded", x, None)
    want, _ = run(ref, "padded", x, None)
    for a, b in zip(got, want):
        assert a.shape == b.shape


# ---------------------------------------------------------------------------------------------
# Dropout between layers.
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["padded", "packed_unsorted"])
@pytest.mark.parametrize("mode,proj_size", MODES, ids=MODE_IDS)
def test_dropout_zero_and_eval_match_exactly(mode, proj_size, layout):
    ref, fused = build_pair(mode, proj_size, num_layers=2, bidirectional=True)
    compare_modules(ref, fused, layout, True, torch.float64)  # p = 0 in training mode
    ref, fused = build_pair(mode, proj_size, num_layers=3, dropout=0.5, bidirectional=True)
    ref.eval()
    fused.eval()
    compare_modules(ref, fused, layout, True, torch.float64)


@pytest.mark.parametrize("layout", ["padded", "packed_unsorted"])
@pytest.mark.parametrize("mode,proj_size", MODES, ids=MODE_IDS)
def test_dropout_one_zeroes_between_layers(mode, proj_size, layout):
    ref, fused = build_pair(mode, proj_size, num_layers=2, dropout=1.0, bidirectional=True)
    compare_modules(ref, fused, layout, True, torch.float64)
    # Only the inputs of upper layers are zeroed: the last layer's output is not, and with a
    # zero input, layer 2 of the fused module runs on its hx and biases alone.
    x = make_input(fused, "padded", torch.float64)
    out, _ = fused(x)
    assert out.abs().sum() > 0
    single = FUSED_CLASS[mode](2 * (proj_size or H), H, **module_kwargs(
        mode, proj_size, bidirectional=True, dtype=torch.float64))
    single.load_state_dict({name.replace("_l1", "_l0"): value
                            for name, value in fused.state_dict().items() if "_l1" in name})
    expected, _ = single(torch.zeros(T, B, single.input_size, dtype=torch.float64))
    assert_close(out, expected, "output with a zeroed layer-2 input")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("layout", ["padded", "packed_unsorted"])
@pytest.mark.parametrize("mode,proj_size", MODES, ids=MODE_IDS)
def test_dropout_same_seed_same_masks(mode, proj_size, layout, dtype):
    """On CPU the fused modules draw the very masks torch.nn draws for the same seed."""
    ref, fused = build_pair(mode, proj_size, dtype=dtype, num_layers=3, dropout=0.4,
                            bidirectional=True)
    x = make_input(ref, layout, dtype)
    torch.manual_seed(123)
    got, _ = run(fused, layout, x, None)
    torch.manual_seed(123)
    want, _ = run(ref, layout, x, None)
    for a, b in zip(got, want):
        assert_close(a, b)


@pytest.mark.parametrize("mode,proj_size", MODES, ids=MODE_IDS)
def test_dropout_changed_after_construction(mode, proj_size):
    ref, fused = build_pair(mode, proj_size, num_layers=2)
    ref.dropout = fused.dropout = 1.0
    compare_modules(ref, fused, "padded", True, torch.float64)
    x = make_input(fused, "padded", torch.float64)
    with_dropout, _ = fused(x)
    fused.dropout = 0.0
    without, _ = fused(x)
    assert not torch.allclose(with_dropout, without)
    ref.dropout = 0.0
    assert_close(without, ref(x)[0])


# ---------------------------------------------------------------------------------------------
# Construction: torch.nn's constructor, parameters, initialization and state_dict.
# ---------------------------------------------------------------------------------------------

CONFIGS = [
    ("LSTM", (I, H), {}),
    ("LSTM", (I, H, 2, False, True, 0.25, True, P), {}),  # every positional argument
    ("LSTM", (I, H), dict(num_layers=3, bidirectional=True, proj_size=2, bias=False)),
    ("GRU", (I, H, 2, True, False, 0.0, True), {}),
    ("GRU", (I, H), dict(num_layers=2, bias=False)),
    ("RNN_TANH", (I, H, 2, "tanh", True, True, 0.5, True), {}),
    ("RNN_RELU", (I, H, 2, "relu"), {}),
    ("RNN_RELU", (I, H), dict(nonlinearity="relu", bidirectional=True, batch_first=True)),
]


@pytest.mark.parametrize("mode,args,kwargs", CONFIGS)
def test_same_seed_same_module(mode, args, kwargs):
    torch.manual_seed(7)
    ref = TORCH_CLASS[mode](*args, **kwargs)
    after_ref = torch.rand(3)
    torch.manual_seed(7)
    fused = FUSED_CLASS[mode](*args, **kwargs)
    after_fused = torch.rand(3)
    assert isinstance(fused, TORCH_CLASS[mode])
    assert torch.equal(after_ref, after_fused), "the generator was consumed differently"
    assert [(n, p.shape) for n, p in fused.named_parameters()] == \
        [(n, p.shape) for n, p in ref.named_parameters()]
    sd_ref, sd_fused = ref.state_dict(), fused.state_dict()
    assert list(sd_fused) == list(sd_ref)
    for name in sd_ref:
        assert torch.equal(sd_fused[name], sd_ref[name]), name
    for attr in ("mode", "input_size", "hidden_size", "num_layers", "bias", "batch_first",
                 "dropout", "bidirectional", "proj_size", "_flat_weights_names",
                 "_all_weights"):
        assert getattr(fused, attr) == getattr(ref, attr), attr
    assert repr(fused) == repr(ref)
    assert fused.extra_repr() == ref.extra_repr()


@pytest.mark.parametrize("mode,args,kwargs", CONFIGS)
def test_state_dict_loads_both_ways(mode, args, kwargs):
    ref = TORCH_CLASS[mode](*args, **kwargs).double()
    fused = FUSED_CLASS[mode](*args, **kwargs).double()
    fused.load_state_dict(ref.state_dict())
    back = TORCH_CLASS[mode](*args, **kwargs).double()
    back.load_state_dict(fused.state_dict())
    for name, value in ref.state_dict().items():
        assert torch.equal(back.state_dict()[name], value)
    ref.eval(), fused.eval()
    x = torch.randn(T, B, I, dtype=torch.float64)
    if ref.batch_first:
        x = x.transpose(0, 1)
    assert_close(fused(x)[0], ref(x)[0])


CONSTRUCTOR_ERRORS = [
    ("LSTM", (I, H), dict(dropout=-0.1)),
    ("LSTM", (I, H), dict(dropout=1.5)),
    ("LSTM", (I, H), dict(dropout=True)),
    ("GRU", (I, H), dict(dropout="0.5")),
    ("LSTM", (I, H), dict(bias=1)),
    ("RNN_TANH", (I, H), dict(batch_first=1)),
    ("LSTM", (4.0, H), {}),
    ("GRU", (0, H), {}),
    ("LSTM", (I, "5"), {}),
    ("RNN_TANH", (I, 0), {}),
    ("LSTM", (I, H, 0), {}),
    ("LSTM", (I, H), dict(proj_size=-1)),
    ("LSTM", (I, H), dict(proj_size=H)),
    ("GRU", (I, H), dict(proj_size=2)),
    ("RNN_TANH", (I, H), dict(proj_size=2)),
    ("RNN_TANH", (I, H), dict(nonlinearity="sigmoid")),
    ("RNN_TANH", (I, H, 1, "gelu"), {}),
    ("LSTM", (I, H), dict(bogus=1)),
]


@pytest.mark.parametrize("mode,args,kwargs", CONSTRUCTOR_ERRORS)
def test_constructor_errors_match(mode, args, kwargs):
    with pytest.raises(Exception) as want:
        TORCH_CLASS[mode](*args, **kwargs)
    with pytest.raises(Exception) as got:
        FUSED_CLASS[mode](*args, **kwargs)
    assert type(got.value) is type(want.value)
    assert str(got.value) == str(want.value)


def test_constructor_warning_matches():
    with warnings.catch_warnings(record=True) as want:
        warnings.simplefilter("always")
        nn.GRU(I, H, dropout=0.3)
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        fused_rnn.GRU(I, H, dropout=0.3)
    assert [(w.category, str(w.message)) for w in got] == \
        [(w.category, str(w.message)) for w in want]
    assert len(want) == 1


# ---------------------------------------------------------------------------------------------
# Invalid input: same exception type and message as torch.nn.
# ---------------------------------------------------------------------------------------------

def forward_error_cases(mode, proj_size):
    """(name, kwargs for the modules, input, hx) that torch.nn rejects."""
    f64 = dict(dtype=torch.float64)
    L = 2 * 2  # num_layers=2, bidirectional
    Hout = proj_size or H
    x = torch.randn(T, B, I, **f64)
    lstm = mode == "LSTM"

    def state(h=None, c=None):
        h = torch.randn(L, B, Hout, **f64) if h is None else h
        c = torch.randn(L, B, H, **f64) if c is None else c
        return (h, c) if lstm else h

    packed = pack_padded_sequence(x, torch.tensor([3, 5, 2]), enforce_sorted=False)
    # With enforce_sorted=False torch.nn index_selects hx first, which hides some bad hx.
    packed_sorted = pack_padded_sequence(x, torch.tensor([5, 3, 2]))
    packed_bad_size = pack_padded_sequence(torch.randn(T, B, I + 1, **f64), torch.tensor([5, 3, 2]))
    packed_float = pack_padded_sequence(x.float(), torch.tensor([5, 3, 2]))
    cases = [
        ("4-D input", torch.randn(1, T, B, I, **f64), None),
        ("1-D input", torch.randn(I, **f64), None),
        ("0-D input", torch.tensor(1.0, **f64), None),
        ("input size", torch.randn(T, B, I + 1, **f64), None),
        ("input size with hx", torch.randn(T, B, I + 1, **f64), state()),
        ("unbatched input size", torch.randn(T, I + 1, **f64), None),
        ("input dtype", x.float(), None),
        ("input dtype with hx", x.float(), state()),
        ("integer input", torch.ones(T, B, I, dtype=torch.int64), None),
        ("empty sequence", torch.randn(0, B, I, **f64), None),
        ("empty sequence with hx", torch.randn(0, B, I, **f64), state()),
        ("2-D hx for batched input", x, state(torch.randn(L, Hout, **f64),
                                              torch.randn(L, H, **f64))),
        ("3-D hx for unbatched input", torch.randn(T, I, **f64), state()),
        ("hx num_layers", x, state(torch.randn(L + 1, B, Hout, **f64),
                                   torch.randn(L + 1, B, H, **f64))),
        ("hx batch", x, state(torch.randn(L, B + 1, Hout, **f64))),
        ("hx hidden size", x, state(torch.randn(L, B, Hout + 1, **f64))),
        ("unbatched hx hidden size", torch.randn(T, I, **f64),
         state(torch.randn(L, Hout + 1, **f64), torch.randn(L, H, **f64))),
        ("hx dtype", x, state(torch.randn(L, B, Hout))),
        ("packed input size", packed_bad_size, None),
        ("packed input size with hx", packed_bad_size, state()),
        ("packed input dtype", packed_float, None),
        ("packed hx dtype", packed, state(torch.randn(L, B, Hout))),
    ]
    if lstm:
        cases += [
            ("c batch", x, state(c=torch.randn(L, B + 1, H, **f64))),
            ("c hidden size", x, state(c=torch.randn(L, B, H + 1, **f64))),
            ("c 2-D", x, state(c=torch.randn(L, H, **f64))),
            ("three states", x, state() + (torch.randn(L, B, H, **f64),)),
            ("hx a tensor", x, torch.randn(L, B, Hout, **f64)),
            ("hx a 1-layer tensor", x, torch.randn(1, B, Hout, **f64)),
            ("packed three states", packed_sorted, state() + (torch.randn(L, B, H, **f64),)),
        ]
    else:
        cases += [
            ("packed hx hidden size", packed, torch.randn(L, B, H + 1, **f64)),
            ("packed hx batch", packed_sorted, torch.randn(L, B + 1, H, **f64)),
            ("unsorted packed hx batch", packed, torch.randn(L, B - 1, H, **f64)),
            ("packed 2-D hx", packed, torch.randn(L, H, **f64)),
            ("hx a tuple", x, (torch.randn(L, B, H, **f64),)),
        ]
    return cases


def _error_case_ids():
    ids, params = [], []
    for (mode, proj_size), mode_id in zip(MODES, MODE_IDS):
        for name, inp, hx in forward_error_cases(mode, proj_size):
            params.append((mode, proj_size, inp, hx))
            ids.append(f"{mode_id}-{name}")
    return params, ids


_ERROR_PARAMS, _ERROR_IDS = _error_case_ids()


def assert_same_error(ref, fused, inp, hx):
    """fused(inp, hx) raises what ref(inp, hx) raises: same type, same message."""
    with pytest.raises(Exception) as want:
        ref(inp, hx)
    with pytest.raises(Exception) as got:
        fused(inp, hx)
    assert type(got.value) is type(want.value), str(want.value)
    assert str(got.value) == str(want.value)


@pytest.mark.parametrize("mode,proj_size,inp,hx", _ERROR_PARAMS, ids=_ERROR_IDS)
def test_forward_errors_match(mode, proj_size, inp, hx):
    ref, fused = build_pair(mode, proj_size, num_layers=2, bidirectional=True)
    assert_same_error(ref, fused, inp, hx)


# ---------------------------------------------------------------------------------------------
# The rest of the module surface.
# ---------------------------------------------------------------------------------------------

def _compare_forward(ref, fused, dtype=torch.float64, layout="packed_unsorted"):
    compare_modules(ref, fused, layout, True, dtype)


def test_flatten_parameters_and_all_weights():
    ref, fused = build_pair("LSTM", P, num_layers=2, bidirectional=True)
    fused.flatten_parameters()
    ref.flatten_parameters()
    params = dict(fused.named_parameters())
    assert [[id(w) for w in ws] for ws in fused.all_weights] == \
        [[id(params[n]) for n in names] for names in fused._all_weights]
    assert [[w.shape for w in ws] for ws in fused.all_weights] == \
        [[w.shape for w in ws] for ws in ref.all_weights]
    _compare_forward(ref, fused)


def test_dtype_conversions():
    ref, fused = build_pair("GRU", dtype=torch.float32, num_layers=2, bidirectional=True)
    fused.double()
    ref.double()
    assert all(p.dtype == torch.float64 for p in fused.parameters())
    assert all(w.dtype == torch.float64 for w in fused._flat_weights)
    _compare_forward(ref, fused)
    fused.half()
    ref.half()
    assert all(p.dtype == torch.float16 for p in fused.parameters())
    assert all(w.dtype == torch.float16 for w in fused._flat_weights)
    fused.to(torch.float64)
    ref.to(torch.float64)
    _compare_forward(ref, fused)
    fused.to("cpu", torch.float32)
    ref.to("cpu", torch.float32)
    _compare_forward(ref, fused, torch.float32)


@pytest.mark.parametrize("mode,proj_size", MODES, ids=MODE_IDS)
def test_deepcopy_pickle_and_save(mode, proj_size):
    ref, fused = build_pair(mode, proj_size, num_layers=2, bidirectional=True)
    buffer = io.BytesIO()
    torch.save(fused, buffer)
    buffer.seek(0)
    copies = [copy.deepcopy(fused), pickle.loads(pickle.dumps(fused)),
              torch.load(buffer, weights_only=False)]
    for other in copies:
        assert type(other) is type(fused)
        assert other.weight_ih_l0 is not fused.weight_ih_l0
        _compare_forward(ref, other)


def test_parametrized_weight_norm():
    ref, fused = build_pair("LSTM", P, num_layers=2, bidirectional=True)
    for module in (ref, fused):
        parametrizations.weight_norm(module, "weight_hh_l0")
        parametrizations.weight_norm(module, "weight_ih_l1_reverse")
    fused.load_state_dict(ref.state_dict())
    _compare_forward(ref, fused)
    # Changing the parametrization's parameters changes the fused module's weights.
    with torch.no_grad():
        for module in (ref, fused):
            module.parametrizations.weight_hh_l0.original0.mul_(1.5)
    _compare_forward(ref, fused)


def test_old_style_weight_norm():
    ref, fused = build_pair("GRU", num_layers=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        for module in (ref, fused):
            nn.utils.weight_norm(module, "weight_hh_l1")
    fused.load_state_dict(ref.state_dict())
    _compare_forward(ref, fused)


def test_functional_call():
    ref, fused = build_pair("RNN_TANH", num_layers=2, bidirectional=True)
    params = {name: torch.randn_like(p) for name, p in ref.named_parameters()}
    x = torch.randn(T, B, I, dtype=torch.float64)
    want = torch.func.functional_call(ref, params, (x,))
    got = torch.func.functional_call(fused, params, (x,))
    assert_close(got[0], want[0])
    assert_close(got[1], want[1])
    assert not torch.allclose(got[0], fused(x)[0])  # the module's own weights are back


def test_weight_reassignment():
    ref, fused = build_pair("LSTM", num_layers=2)
    new = nn.Parameter(torch.randn_like(ref.weight_hh_l1))
    ref.weight_hh_l1 = new
    fused.weight_hh_l1 = new
    _compare_forward(ref, fused)


# ---------------------------------------------------------------------------------------------
# Cells.
# ---------------------------------------------------------------------------------------------

CELLS = [("LSTMCell", {}), ("GRUCell", {}), ("RNNCell", {"nonlinearity": "tanh"}),
         ("RNNCell", {"nonlinearity": "relu"})]
CELL_IDS = ["LSTMCell", "GRUCell", "RNNCell-tanh", "RNNCell-relu"]


def build_cells(name, kwargs, **more):
    ref = getattr(nn, name)(I, H, **kwargs, **more)
    fused = getattr(fused_rnn, name)(I, H, **kwargs, **more)
    fused.load_state_dict(ref.state_dict())
    return ref, fused


def compare_cells(ref, fused, batched, with_hx, dtype):
    batch = (B,) if batched else ()
    x = torch.randn(*batch, I, dtype=dtype, requires_grad=True)
    hx = []
    if with_hx:
        hx = [torch.randn(*batch, H, dtype=dtype, requires_grad=True)
              for _ in range(2 if isinstance(ref, nn.LSTMCell) else 1)]
    arg = None if not with_hx else (tuple(hx) if len(hx) == 2 else hx[0])
    got, want = fused(x, arg), ref(x, arg)
    got = list(got) if isinstance(got, tuple) else [got]
    want = list(want) if isinstance(want, tuple) else [want]
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert_close(a, b, "cell output")
    grad_outputs = [torch.randn_like(t) for t in want]
    leaves_f = [x] + hx + list(fused.parameters())
    leaves_r = [x] + hx + list(ref.parameters())
    names = ["input"] + [f"hx[{i}]" for i in range(len(hx))] + [n for n, _ in ref.named_parameters()]
    for n, a, b in zip(names, torch.autograd.grad(got, leaves_f, grad_outputs),
                       torch.autograd.grad(want, leaves_r, grad_outputs)):
        assert_close(a, b, f"grad of {n}")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("with_hx", [True, False], ids=["hx", "no_hx"])
@pytest.mark.parametrize("batched", [True, False], ids=["batched", "unbatched"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("name,kwargs", CELLS, ids=CELL_IDS)
def test_cells(name, kwargs, bias, batched, with_hx, dtype):
    ref, fused = build_cells(name, kwargs, bias=bias, dtype=dtype)
    compare_cells(ref, fused, batched, with_hx, dtype)


@pytest.mark.parametrize("name,kwargs", CELLS, ids=CELL_IDS)
def test_cell_construction(name, kwargs):
    torch.manual_seed(3)
    ref = getattr(nn, name)(I, H, False, **kwargs)
    after_ref = torch.rand(2)
    torch.manual_seed(3)
    fused = getattr(fused_rnn, name)(I, H, False, **kwargs)
    assert torch.equal(torch.rand(2), after_ref)
    assert isinstance(fused, getattr(nn, name))
    assert list(fused.state_dict()) == list(ref.state_dict())
    for key, value in ref.state_dict().items():
        assert torch.equal(fused.state_dict()[key], value)
    assert repr(fused) == repr(ref)
    for other in (copy.deepcopy(fused), pickle.loads(pickle.dumps(fused))):
        assert type(other) is type(fused)
        compare_cells(ref.double(), other.double(), True, True, torch.float64)


def cell_error_cases(name):
    f64 = dict(dtype=torch.float64)
    x = torch.randn(B, I, **f64)

    def state(h=None, c=None):
        h = torch.randn(B, H, **f64) if h is None else h
        c = torch.randn(B, H, **f64) if c is None else c
        return (h, c) if name == "LSTMCell" else h

    cases = [
        ("3-D input", torch.randn(1, B, I, **f64), None),
        ("0-D input", torch.tensor(1.0, **f64), None),
        ("input size", torch.randn(B, I + 1, **f64), None),
        ("unbatched input size", torch.randn(I + 1, **f64), None),
        ("input size with hx", torch.randn(B, I + 1, **f64), state()),
        ("hx batch", x, state(torch.randn(B + 1, H, **f64))),
        ("hx hidden size", x, state(torch.randn(B, H + 1, **f64))),
        ("3-D hx", x, state(torch.randn(1, B, H, **f64))),
        ("2-D hx for unbatched input", torch.randn(I, **f64), state(torch.randn(1, H, **f64),
                                                                   torch.randn(1, H, **f64))),
        ("1-D hx for batched input", x, state(torch.randn(H, **f64), torch.randn(H, **f64))),
        ("input dtype", x.float(), None),
        ("integer input", torch.ones(B, I, dtype=torch.int64), None),
        ("hx dtype", x, state(torch.randn(B, H))),
    ]
    if name == "LSTMCell":
        cases += [
            ("c batch", x, state(c=torch.randn(B + 1, H, **f64))),
            ("c hidden size", x, state(c=torch.randn(B, H + 1, **f64))),
            ("c 3-D", x, state(c=torch.randn(1, B, H, **f64))),
            ("hx a tensor", x, torch.randn(B, H, **f64)),
            ("one state", x, (torch.randn(B, H, **f64),)),
            ("three states", x, state() + (torch.randn(B, H, **f64),)),
        ]
    return cases


_CELL_ERROR_PARAMS = [(n, kw, inp, hx) for (n, kw), cid in zip(CELLS[:3], CELL_IDS[:3])
                      for _, inp, hx in cell_error_cases(n)]
_CELL_ERROR_IDS = [f"{cid}-{case}" for (n, _), cid in zip(CELLS[:3], CELL_IDS[:3])
                   for case, _, _ in cell_error_cases(n)]


@pytest.mark.parametrize("name,kwargs,inp,hx", _CELL_ERROR_PARAMS, ids=_CELL_ERROR_IDS)
def test_cell_errors_match(name, kwargs, inp, hx):
    ref, fused = build_cells(name, kwargs, dtype=torch.float64)
    assert_same_error(ref, fused, inp, hx)


def test_rnn_cell_unknown_nonlinearity():
    ref, fused = build_cells("RNNCell", {"nonlinearity": "gelu"})
    for inp in (torch.randn(B, I), torch.randn(B, I + 1)):
        with pytest.raises(RuntimeError) as want:
            ref(inp)
        with pytest.raises(RuntimeError) as got:
            fused(inp)
        assert str(got.value) == str(want.value)


@pytest.mark.parametrize("name,kwargs", CELLS, ids=CELL_IDS)
def test_cell_empty_batch(name, kwargs):
    """torch.nn's cells accept a batch of zero rows."""
    ref, fused = build_cells(name, kwargs, dtype=torch.float64)
    x = torch.randn(0, I, dtype=torch.float64)
    got, want = fused(x), ref(x)
    got = got if isinstance(got, tuple) else (got,)
    want = want if isinstance(want, tuple) else (want,)
    assert [t.shape for t in got] == [t.shape for t in want]


def test_cell_state_dtype_promotion():
    """torch.nn's LSTMCell takes a float32 c with float64 weights; the result is float64."""
    ref, fused = build_cells("LSTMCell", {}, dtype=torch.float64)
    x, h = torch.randn(B, I, dtype=torch.float64), torch.randn(B, H, dtype=torch.float64)
    c = torch.randn(B, H)
    for a, b in zip(fused(x, (h, c)), ref(x, (h, c))):
        assert_close(a, b)


def test_lstm_state_dtype_promotion():
    ref, fused = build_pair("LSTM", num_layers=2)
    x, h = torch.randn(T, B, I, dtype=torch.float64), torch.randn(2, B, H, dtype=torch.float64)
    c = torch.randn(2, B, H)
    got, want = fused(x, (h, c)), ref(x, (h, c))
    assert_close(got[0], want[0])
    assert_close(got[1][1], want[1][1])


# ---------------------------------------------------------------------------------------------
# Training: same seed, same losses.
# ---------------------------------------------------------------------------------------------

class _Net(nn.Module):
    def __init__(self, ns):
        super().__init__()
        self.lstm = ns.LSTM(I, 6, num_layers=2, batch_first=True, bidirectional=True,
                            proj_size=3, dropout=0.25)
        self.gru = ns.GRU(6, H)
        self.rnn = ns.RNN(H, 4, nonlinearity="relu")
        self.cell = ns.LSTMCell(4, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, x, lengths):
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        y, _ = self.lstm(packed)
        y, _ = nn.utils.rnn.pad_packed_sequence(y)  # [T, B, 6]
        y, h = self.gru(y)
        y, _ = self.rnn(y)
        state = None
        for t in range(y.size(0)):  # the user's own loop over a cell
            state = self.cell(y[t], state)
        return self.head(state[0])


def _train(ns, steps=20):
    torch.manual_seed(0)
    net = _Net(ns).double()
    opt = torch.optim.Adam(net.parameters(), lr=0.02)
    data = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(steps):
        x = torch.randn(4, 7, I, generator=data, dtype=torch.float64)
        lengths = torch.randint(1, 8, (4,), generator=data)
        target = torch.randn(4, 2, generator=data, dtype=torch.float64)
        loss = nn.functional.mse_loss(net(x, lengths), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_training_same_losses():
    want = _train(nn)
    got = _train(fused_rnn)
    assert got == pytest.approx(want, abs=1e-5, rel=0)
    assert want[-1] < want[0]  # it did learn something
