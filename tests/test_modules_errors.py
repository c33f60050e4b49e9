"""Bad arguments to fused_rnn's modules and cells get what torch.nn gives: the same exception
type and the same message, from the constructor and from forward; and the same warning."""
import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import fused_rnn

import module_cases
from module_cases import CELL_IDS, CELLS, MODE_IDS, MODES, B, H, I, P, T, build_cells, build_pair

pytestmark = pytest.mark.usefixtures("seeded")


def assert_same_error(ref, fused, inp, hx):
    """fused(inp, hx) raises what ref(inp, hx) raises: same type, same message."""
    with pytest.raises(Exception) as want:
        ref(inp, hx)
    with pytest.raises(Exception) as got:
        fused(inp, hx)
    assert type(got.value) is type(want.value), str(want.value)
    assert str(got.value) == str(want.value)


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
    for (mode, projected), mode_id in zip(MODES, MODE_IDS):
        for name, inp, hx in forward_error_cases(mode, projected):
            params.append((mode, projected, inp, hx))
            ids.append(f"{mode_id}-{name}")
    return params, ids


_ERROR_PARAMS, _ERROR_IDS = _error_case_ids()


@pytest.mark.parametrize("mode,projected,inp,hx", _ERROR_PARAMS, ids=_ERROR_IDS)
def test_forward_errors_match(mode, projected, inp, hx):
    ref, fused = build_pair(mode, projected, num_layers=2, bidirectional=True)
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

