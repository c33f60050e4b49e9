"""Bad arguments to fused_rnn's modules and cells get what torch.nn gives: the same exception
type and the same message, from the constructor and from forward; and the same warning."""
import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import fused_rnn

import module_cases
from checks import assert_close
from module_cases import CELL_IDS, CELLS, MODE_IDS, MODES, B, H, I, P, T, build_cells, build_pair

pytestmark = pytest.mark.usefixtures("seeded")


def assert_same_error(ref, fused, inp, hx):
    """fused(inp, hx) raises what ref(inp, hx) raises: same type, same message."""
    with pytest.raises(Exception) as want:
        ref(inp, hx)
    with pytest.raises(Exception) as got:
        fused(inp, hx)
    assert type(got.value) is type(want.value), f"{want.value!r} != {got.value!r}"
    assert str(got.value) == str(want.value)


def set_to(name, value):
    """A case's change to both modules: parameter `name` replaced by value(module)."""
    return lambda module: setattr(module, name, value(module))


def replaced_after_deleting(deleted, replaced):
    """`deleted` deleted, then `replaced` replaced by a copy: torch.nn then re-reads its weights
    by name and finds None for the deleted one (deleting alone keeps the old one in use)."""
    def modify(module):
        delattr(module, deleted)
        setattr(module, replaced, nn.Parameter(getattr(module, replaced).detach().clone()))
    return modify


def unpack_case(case):
    """(name, input, hx[, constructor kwargs[, modify(module)]]) with the defaults filled in."""
    return (*case, *({}, None)[len(case) - 3:])


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
        module_cases.TORCH_CLASS[mode](*args, **kwargs)
    with pytest.raises(Exception) as got:
        module_cases.FUSED_CLASS[mode](*args, **kwargs)
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


# ---- forward: the same checks of input and hx as torch.nn, in the same order -----------------

def forward_error_cases(mode, projected):
    """(name, input, hx) that torch.nn rejects."""
    f64 = dict(dtype=torch.float64)
    L = 2 * 2  # num_layers=2, bidirectional
    Hout = P if projected else H
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
    packed_meta = PackedSequence(packed_sorted.data.to("meta"), packed_sorted.batch_sizes)
    packed_int32_sizes = PackedSequence(packed_sorted.data, packed_sorted.batch_sizes.int())
    meta = dict(dtype=torch.float64, device="meta")
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
        ("bool input", torch.ones(T, B, I, dtype=torch.bool), None),
        ("complex input", torch.ones(T, B, I, dtype=torch.complex128), None),
        ("integer hx", x, state(torch.ones(L, B, Hout, dtype=torch.int64))),
        ("complex hx", x, state(torch.ones(L, B, Hout, dtype=torch.complex128))),
        ("hx dtype without bias", x, state(torch.randn(L, B, Hout)), dict(bias=False)),
        ("input on another device", x.to("meta"), None),
        ("input on another device with hx", x.to("meta"), state()),
        ("hx on another device", x, state(torch.randn(L, B, Hout, **meta))),
        ("packed input on another device", packed_meta, None),
        ("packed hx on another device", packed_sorted, state(torch.randn(L, B, Hout, **meta))),
        ("packed int32 batch_sizes", packed_int32_sizes, None),
        ("packed int32 batch_sizes with hx", packed_int32_sizes, state()),
        ("weight_hh_l0 None", x, None, {}, set_to("weight_hh_l0", lambda m: None)),
        ("bias_ih_l1_reverse None", x, state(), {}, set_to("bias_ih_l1_reverse", lambda m: None)),
        ("packed weight_ih_l0 None", packed_sorted, None, {}, set_to("weight_ih_l0", lambda m: None)),
        ("weight_hh_l0 deleted", x, None, {}, replaced_after_deleting("weight_hh_l0", "weight_ih_l0")),
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
            ("c on another device", x, state(c=torch.randn(L, B, H, **meta))),
            ("packed c on another device", packed_sorted, state(c=torch.randn(L, B, H, **meta))),
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
    for (mode, projected), mode_id in zip(MODES, MODE_IDS):
        for name, inp, hx, kwargs, modify in map(unpack_case, forward_error_cases(mode, projected)):
            params.append((mode, projected, inp, hx, kwargs, modify))
            ids.append(f"{mode_id}-{name}")
    return params, ids


_ERROR_PARAMS, _ERROR_IDS = _error_case_ids()


@pytest.mark.parametrize("mode,projected,inp,hx,kwargs,modify", _ERROR_PARAMS, ids=_ERROR_IDS)
def test_forward_errors_match(mode, projected, inp, hx, kwargs, modify):
    ref, fused = build_pair(mode, projected, num_layers=2, bidirectional=True, **kwargs)
    for module in (ref, fused):
        if modify is not None:
            modify(module)
    assert_same_error(ref, fused, inp, hx)


# ---- cells --------------------------------------------------------------------------------------

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
        # ATen's LSTM and Elman cells multiply h first, its GRU cell input: the message names that dtype.
        ("half input, float hx", x.half(), state(torch.randn(B, H), torch.randn(B, H))),
        ("bool input", torch.ones(B, I, dtype=torch.bool), None),
        ("complex input", torch.ones(B, I, dtype=torch.complex128), None),
        ("integer hx", x, state(torch.ones(B, H, dtype=torch.int64))),
        ("complex hx", x, state(torch.ones(B, H, dtype=torch.complex128))),
        ("input dtype without bias", x.float(), None, dict(bias=False)),
        ("hx dtype without bias", x, state(torch.randn(B, H)), dict(bias=False)),
        ("input on another device", x.to("meta"), None),
        ("hx on another device", x, state(torch.randn(B, H, dtype=torch.float64, device="meta"))),
        ("weight_ih None", x, None, {}, set_to("weight_ih", lambda m: None)),
        ("weight_hh None", x, state(), {}, set_to("weight_hh", lambda m: None)),
        ("weight_ih deleted", x, None, {}, lambda m: delattr(m, "weight_ih")),
        ("weight_ih rows", x, None, {}, set_to("weight_ih", lambda m: nn.Parameter(torch.randn(7, I, **f64)))),
        ("weight_hh of another hidden size", x, None, {},
         set_to("weight_hh", lambda m: nn.Parameter(torch.randn(m.weight_hh.size(0), H + 1, **f64)))),
    ]
    if name == "LSTMCell":
        cases += [
            ("c batch", x, state(c=torch.randn(B + 1, H, **f64))),
            ("c hidden size", x, state(c=torch.randn(B, H + 1, **f64))),
            ("c 3-D", x, state(c=torch.randn(1, B, H, **f64))),
            ("hx a tensor", x, torch.randn(B, H, **f64)),
            ("one state", x, (torch.randn(B, H, **f64),)),
            ("three states", x, state() + (torch.randn(B, H, **f64),)),
            ("c on another device", x, state(c=torch.randn(B, H, dtype=torch.float64, device="meta"))),
        ]
    return cases


_CELL_CASES = [(n, kw, cid, unpack_case(case)) for (n, kw), cid in zip(CELLS, CELL_IDS) for case in cell_error_cases(n)]
_CELL_ERROR_PARAMS = [(n, kw, inp, hx, more, modify) for n, kw, _, (_, inp, hx, more, modify) in _CELL_CASES]
_CELL_ERROR_IDS = [f"{cid}-{case[0]}" for _, _, cid, case in _CELL_CASES]


@pytest.mark.parametrize("name,kwargs,inp,hx,more,modify", _CELL_ERROR_PARAMS, ids=_CELL_ERROR_IDS)
def test_cell_errors_match(name, kwargs, inp, hx, more, modify):
    ref, fused = build_cells(name, kwargs, dtype=torch.float64, **more)
    for cell in (ref, fused):
        if modify is not None:
            modify(cell)
    assert_same_error(ref, fused, inp, hx)


@pytest.mark.parametrize("name,kwargs", CELLS, ids=CELL_IDS)
def test_cell_refuses_2d_state_for_unbatched_input(name, kwargs):
    """A [hidden_size, hidden_size] state with unbatched input passes torch.nn's checks, after
    which torch.nn broadcasts it into a wrongly shaped result (GRUCell in torch 2.13: a segfault,
    so torch.nn is not called here). The fused cell raises, naming the state."""
    _, fused = build_cells(name, kwargs, dtype=torch.float64)
    h = torch.randn(H, H, dtype=torch.float64)
    hx = (h, torch.randn(H, dtype=torch.float64)) if name == "LSTMCell" else h
    with pytest.raises(RuntimeError, match=r"for unbatched 1-D input, (hx\[0\]|hidden) should also be 1-D"):
        fused(torch.randn(I, dtype=torch.float64), hx)


def test_rnn_cell_unknown_nonlinearity():
    ref, fused = build_cells("RNNCell", {"nonlinearity": "gelu"})
    for inp in (torch.randn(B, I), torch.randn(B, I + 1)):
        with pytest.raises(RuntimeError) as want:
            ref(inp)
        with pytest.raises(RuntimeError) as got:
            fused(inp)
        assert str(got.value) == str(want.value)



# ---- what torch.nn accepts, accepted alike: the same results and gradients -----------------------

def results_and_grads(module, inp, hx):
    """The outputs of module(inp, hx) (a cell's, or a module's output, h_n, c_n) and the gradients
    of their sum by inp, hx and the parameters."""
    outs = []
    for out in module(inp, hx) if isinstance(module, nn.RNNBase) else [module(inp, hx)]:
        outs += list(out) if isinstance(out, tuple) else [out]
    leaves = [t for t in [inp, *(hx if isinstance(hx, tuple) else [hx]), *module.parameters()]
              if t is not None and t.requires_grad]
    return outs, list(torch.autograd.grad(outs, leaves, [torch.ones_like(o) for o in outs]))


def assert_same_results(ref, fused, inp, hx):
    want, got = results_and_grads(ref, inp, hx), results_and_grads(fused, inp, hx)
    for what, w, g in zip(["outputs", "gradients"], want, got):
        assert [(t.shape, t.dtype) for t in g] == [(t.shape, t.dtype) for t in w], what
        for a, b in zip(g, w):
            if a.numel():  # complex results compared as pairs of reals
                assert_close(torch.view_as_real(a) if a.is_complex() else a,
                             torch.view_as_real(b) if b.is_complex() else b, what)


@pytest.mark.parametrize("with_hx", [False, True], ids=["no_hx", "hx"])
@pytest.mark.parametrize("batched", [True, False], ids=["batched", "unbatched"])
@pytest.mark.parametrize("name,kwargs", CELLS, ids=CELL_IDS)
def test_cell_hidden_size_zero(name, kwargs, batched, with_hx):
    """torch.nn's cells take hidden_size=0 (empty states, zero input gradient); the fused op
    needs one hidden unit, so these run on the reference."""
    ref = getattr(nn, name)(I, 0, **kwargs, dtype=torch.float64)
    fused = getattr(fused_rnn, name)(I, 0, **kwargs, dtype=torch.float64)
    batch = (B,) if batched else ()
    inp = torch.randn(*batch, I, dtype=torch.float64, requires_grad=True)
    states = [torch.randn(*batch, 0, dtype=torch.float64, requires_grad=True) for _ in range(1 + (name == "LSTMCell"))]
    hx = None if not with_hx else (tuple(states) if name == "LSTMCell" else states[0])
    assert_same_results(ref, fused, inp, hx)


@pytest.mark.parametrize("weight_dtype,c_dtype", [
    (torch.float32, torch.float64),  # torch.nn computes c' and h' in float64
    (torch.float32, torch.float16),
    (torch.float32, torch.int64),
    (torch.float32, torch.bool),
    (torch.bfloat16, torch.float32),
    (torch.float64, torch.complex64),  # complex128 results
], ids=["f32-c_f64", "f32-c_f16", "f32-c_int64", "f32-c_bool", "bf16-c_f32", "f64-c_complex64"])
def test_lstm_cell_state_dtype_promotes(weight_dtype, c_dtype):
    """LSTMCell's forget_gate * c promotes: a c0 of another dtype gives torch.nn's dtypes."""
    ref, fused = build_cells("LSTMCell", {}, dtype=weight_dtype)
    inp = torch.randn(B, I, dtype=weight_dtype, requires_grad=True)
    c = torch.randn(B, H).to(c_dtype) if c_dtype != torch.bool else torch.rand(B, H) > 0.5
    hx = (torch.randn(B, H, dtype=weight_dtype, requires_grad=True), c.requires_grad_(c.is_floating_point()))
    assert_same_results(ref, fused, inp, hx)


@pytest.mark.parametrize("c_dtype", [torch.int64, torch.bool])
def test_lstm_integer_cell_state(c_dtype):
    """torch.nn's LSTM (ATen's kernel, float64 here) takes a c0 that promotes to the weights' dtype."""
    ref, fused = build_pair("LSTM", num_layers=2)
    hx = (torch.randn(2, B, H, dtype=torch.float64), torch.ones(2, B, H, dtype=c_dtype))
    assert_same_results(ref, fused, torch.randn(T, B, I, dtype=torch.float64, requires_grad=True), hx)
