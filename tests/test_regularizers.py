"""The layer modules' regularizer options (fused_rnn/regularizers.py): weight_drop (DropConnect
on W_hh, one mask per call), zoneout and recurrent dropout (masks drawn per layer and direction,
given to the fused ops: tests/test_ops_masks.py checks those) and residual layers. Against the
same module without the option (or the reference) given the same masks, statistics of the
masks, eval mode, and what must keep working (flatten_parameters, no warnings, state_dict,
to_torch, torch.compile)."""
import math
import warnings

import pytest
import torch
from torch import nn
from torch.func import functional_call

import fused_rnn
from fused_rnn import reference, regularizers

from checks import assert_close

T, B, I, H = 5, 3, 4, 6
MODES = [(fused_rnn.LSTM, {}), (fused_rnn.GRU, {}), (fused_rnn.RNN, {"nonlinearity": "relu"}),
         (fused_rnn.LSTM, {"proj_size": 2, "layer_norm": True})]
MODE_IDS = ["LSTM", "GRU", "RNN-relu", "LSTM-proj-ln"]


def build(cls, kwargs, **options):
    torch.manual_seed(1)
    return cls(I, H, num_layers=2, bidirectional=True, dtype=torch.float64, **kwargs, **options)


def results(out):
    out, hidden = out
    return [out, *(hidden if isinstance(hidden, tuple) else (hidden,))]


def grads(outputs, leaves):
    g = torch.Generator().manual_seed(5)
    return torch.autograd.grad(outputs, leaves, [torch.randn(o.shape, generator=g, dtype=o.dtype) for o in outputs])


def w_hh_names(module):
    return [n for n, _ in module.named_parameters() if n.startswith("weight_hh")]


@pytest.mark.parametrize("cls,kwargs", MODES, ids=MODE_IDS)
def test_weight_drop_is_the_plain_module_with_masked_weight_hh(cls, kwargs):
    """In training: the plain module with every W_hh times its mask (weight_drop_masks, drawn
    from the same seed), outputs and the gradients of input and every parameter; the gradient
    of W_hh reaches the real parameter through the mask."""
    dropped = build(cls, kwargs, weight_drop=0.4)
    plain = build(cls, kwargs)
    plain.load_state_dict(dropped.state_dict())
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    torch.manual_seed(7)
    got = results(dropped(x))
    torch.manual_seed(7)
    masks = regularizers.weight_drop_masks(dropped, [getattr(dropped, n) for n in w_hh_names(dropped)])
    params = dict(plain.named_parameters())
    masked = {**params, **{n: params[n] * m for n, m in zip(w_hh_names(plain), masks)}}
    want = results(functional_call(plain, masked, (x,)))
    for a, b in zip(got, want):
        assert_close(a, b, "result")
    for a, b in zip(grads(got, [x, *dropped.parameters()]), grads(want, [x, *plain.parameters()])):
        assert_close(a, b, "gradient")
    assert any(bool((m == 0).any()) for m in masks), "no element dropped: the test would not see a missing mask"


@pytest.mark.parametrize("cls,kwargs", MODES, ids=MODE_IDS)
def test_eval_mode_and_zero_rate_are_the_plain_module(cls, kwargs):
    x = torch.randn(T, B, I, dtype=torch.float64)
    plain = build(cls, kwargs)
    for options, training in ((dict(weight_drop=0.5, recurrent_dropout=0.5), False),
                              (dict(weight_drop=0.0, zoneout=0.0, recurrent_dropout=0.0), True)):
        module = build(cls, kwargs, **options).train(training)
        for a, b in zip(results(module(x)), results(plain.train(training)(x))):
            assert torch.equal(a, b)


def test_weight_drop_masks_statistics():
    """Over many draws: the fraction of zeroed elements is p and the mean of a dropped weight
    is the weight (mask mean 1), within 5 binomial standard deviations."""
    p, draws = 0.3, 200
    module = build(fused_rnn.LSTM, {}, weight_drop=p)
    w = module.weight_hh_l0
    masks = torch.stack([regularizers.weight_drop_masks(module, [w])[0] for _ in range(draws)])
    n = masks.numel()
    zeros = (masks == 0).double().mean().item()
    assert abs(zeros - p) < 5 * math.sqrt(p * (1 - p) / n)
    assert set(masks.unique().tolist()) == {0.0, 1 / (1 - p)}
    mean = (w * masks).mean(0)  # each element: w * (mean of draws of m / (1 - p))
    sd = w.abs() * math.sqrt(p / (1 - p) / draws)
    assert ((mean - w).abs() <= 5 * sd + 1e-12).all()


def test_weight_drop_is_reproducible_and_keeps_the_module_as_it_is():
    """torch.manual_seed reproduces a training call; no parameter is re-registered, nothing
    warns, flatten_parameters() is harmless and the state_dict keys are torch.nn's."""
    module = build(fused_rnn.LSTM, {}, weight_drop=0.5)
    x = torch.randn(T, B, I, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        module.flatten_parameters()
        torch.manual_seed(3)
        first = module(x)[0]
        torch.manual_seed(3)
        second = module(x)[0]
    assert torch.equal(first, second) and not torch.equal(first, module(x)[0])
    assert list(module.state_dict()) == list(nn.LSTM(I, H, num_layers=2, bidirectional=True).state_dict())
    assert all(isinstance(p, nn.Parameter) for p in module._flat_weights)


@pytest.mark.parametrize("cls,kwargs", MODES, ids=MODE_IDS)
def test_residual_adds_each_layers_input_from_the_second_on(cls, kwargs):
    """Three layers: out1 = L1(out0) + out0, out2 = L2(out1) + out1, checked against the
    layers run one by one (the same weights), outputs, states and gradients."""
    torch.manual_seed(2)
    size = 2 * (kwargs.get("proj_size") or H)  # bidirectional layers' output = next input
    module = cls(size, H, num_layers=3, bidirectional=True, residual=True, dtype=torch.float64, **kwargs)
    x = torch.randn(T, B, size, dtype=torch.float64, requires_grad=True)
    got = results(module(x))
    layers = []
    for k in range(3):
        layer = cls(size, H, bidirectional=True, dtype=torch.float64, **kwargs)
        layer.load_state_dict({name.replace(f"_l{k}", "_l0"): v for name, v in module.state_dict().items()
                               if f"_l{k}" in name})
        layers.append(layer)
    out, finals = x, []
    for k, layer in enumerate(layers):
        layer_out, hidden = layer(out)
        out = layer_out + out if k > 0 else layer_out
        finals.append(hidden if isinstance(hidden, tuple) else (hidden,))
    want = [out, *(torch.cat(s) for s in zip(*finals))]
    for a, b in zip(got, want):
        assert_close(a, b, "result")
    leaves = [x, *module.parameters()]
    layer_leaves = [x, *[p for k in range(3) for p in layers[k].parameters()]]
    got_grads = dict(zip(["x", *[n for n, _ in module.named_parameters()]], grads(got, leaves)))
    want_grads = grads(want, layer_leaves)
    names = ["x"] + [n.replace("_l0", f"_l{k}") for k in range(3) for n, _ in layers[k].named_parameters()]
    for name, g in zip(names, want_grads):
        assert_close(got_grads[name], g, f"gradient of {name}")


def test_options_are_checked_shown_and_refused_by_to_torch():
    with pytest.raises(ValueError, match=r"weight_drop should be a number in range \[0, 1\]"):
        fused_rnn.GRU(I, H, weight_drop=1.5)
    for name in ("zoneout", "recurrent_dropout"):
        with pytest.raises(ValueError, match=rf"{name} should be a number in range \[0, 1\]"):
            fused_rnn.LSTM(I, H, **{name: -0.1})
    with pytest.raises(TypeError, match="residual should be a bool"):
        fused_rnn.RNN(I, H, residual=1)
    module = fused_rnn.LSTM(I, H, num_layers=2, weight_drop=0.25, zoneout=0.1, residual=True)
    assert "weight_drop=0.25, zoneout=0.1, residual=True" in repr(module)
    with pytest.raises(ValueError, match="with weight_drop=0.25, zoneout=0.1, residual=True, which torch.nn does"):
        fused_rnn.to_torch(module)


def test_compiled_training_step_matches_eager():
    """torch.compile(fullgraph=True) of an LSTM with every regularizer, in training: the same
    masks for the same seed, the same results and gradients."""
    module = build(fused_rnn.LSTM, {}, weight_drop=0.3, zoneout=0.2, recurrent_dropout=0.3, residual=True)
    x = torch.randn(T, B, I, dtype=torch.float64)
    compiled = torch.compile(lambda inp: module(inp)[0], fullgraph=True, backend="aot_eager")
    torch.manual_seed(4)
    got = compiled(x)
    got_grads = torch.autograd.grad(got.sum(), list(module.parameters()))
    torch.manual_seed(4)
    want = module(x)[0]
    assert_close(got, want, "compiled result")
    for a, b in zip(got_grads, torch.autograd.grad(want.sum(), list(module.parameters()))):
        assert_close(a, b, "compiled gradient")


def test_weight_drop_of_one_drops_every_recurrent_weight():
    """p = 1: every W_hh is zero in training (no 0 / 0), and its gradient is zero."""
    module = build(fused_rnn.GRU, {}, weight_drop=1.0)
    plain = build(fused_rnn.GRU, {})
    with torch.no_grad():
        for name in w_hh_names(plain):
            getattr(plain, name).zero_()
    x = torch.randn(T, B, I, dtype=torch.float64)
    got = results(module(x))
    for a, b in zip(got, results(plain(x))):
        assert_close(a, b, "result")
    got[0].sum().backward()
    assert all(torch.equal(getattr(module, n).grad, torch.zeros_like(getattr(module, n))) for n in w_hh_names(module))


def _single_layer(cls, kwargs, **options):
    torch.manual_seed(1)
    return cls(I, H, dtype=torch.float64, **kwargs, **options)


def _reference_layer(module, x, masks):
    """The module's one layer through fused_rnn.reference with the given masks."""
    weights = [w if w.numel() else None for w in module._flat_weights]  # torch.nn's order
    mode = module.mode
    w = dict(zip(module._flat_weights_names, module._flat_weights))
    args = [w["weight_ih_l0"], w["weight_hh_l0"], w.get("bias_ih_l0"), w.get("bias_hh_l0")]
    variant = {name: getattr(module, name + "_l0") for name in module._variant_weight_names}
    del weights
    if mode == "LSTM":
        out, (h, c) = reference.lstm(x, None, *args, w.get("weight_hr_l0"), **variant, **masks)
        return [out, h.unsqueeze(0), c.unsqueeze(0)]
    if mode == "GRU":
        out, h = reference.gru(x, None, *args, **variant, **masks)
    else:
        out, h = reference.rnn(x, None, *args, nonlinearity=module.nonlinearity, **masks)
    return [out, h.unsqueeze(0)]


@pytest.mark.parametrize("cls,kwargs", MODES, ids=MODE_IDS)
def test_zoneout_and_recurrent_dropout_are_the_reference_with_the_drawn_masks(cls, kwargs):
    """Training: the masks recurrence_masks draws from the same seed, given to the reference,
    give the module's outputs and every gradient; eval: zoneout's expectation (m = p), and no
    recurrent dropout."""
    module = _single_layer(cls, kwargs, zoneout=0.3, recurrent_dropout=0.4)
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    state = kwargs.get("proj_size") or H
    torch.manual_seed(7)
    got = results(module(x))
    torch.manual_seed(7)
    masks = regularizers.recurrence_masks(module, x, None, state, H, cell_state=module.mode == "LSTM")
    assert set(masks) == {"zoneout_h", "dropout_h"} | ({"zoneout_c"} if module.mode == "LSTM" else set())
    want = _reference_layer(module, x, masks)
    for a, b in zip(got, want):
        assert_close(a, b, "result")
    for a, b in zip(grads(got, [x, *module.parameters()]), grads(want, [x, *module.parameters()])):
        assert_close(a, b, "gradient")
    module.eval()
    expectation = {name: torch.full_like(m, 0.3) for name, m in masks.items() if name.startswith("zoneout")}
    for a, b in zip(results(module(x)), _reference_layer(module, x, expectation)):
        assert_close(a, b, "eval result")


def test_zoneout_and_recurrent_dropout_masks_statistics():
    """Over many draws: the fraction of zoned-out units is p (h and c drawn apart), recurrent
    dropout zeroes a fraction p and its mask has mean 1, within 5 binomial standard deviations;
    one dropout mask per sequence and unit (no time axis)."""
    p = 0.3
    module = build(fused_rnn.LSTM, {}, zoneout=p, recurrent_dropout=p)
    x = torch.zeros(50, 40, I, dtype=torch.float64)
    masks = [regularizers.recurrence_masks(module, x, None, H, H, cell_state=True) for _ in range(20)]
    zoneout = torch.stack([m["zoneout_h"] for m in masks])
    n = zoneout.numel()
    assert abs(zoneout.mean().item() - p) < 5 * math.sqrt(p * (1 - p) / n)
    assert not torch.equal(masks[0]["zoneout_h"], masks[0]["zoneout_c"])
    dropout = torch.stack([m["dropout_h"] for m in masks])
    assert dropout.shape == (20, 40, H)
    assert abs((dropout == 0).double().mean().item() - p) < 5 * math.sqrt(p * (1 - p) / dropout.numel())
    assert abs(dropout.mean().item() - 1) < 5 * math.sqrt(p / (1 - p) / dropout.numel())


def test_zoneout_and_recurrent_dropout_are_reproducible_and_deterministic_in_eval():
    module = build(fused_rnn.GRU, {}, zoneout=0.2, recurrent_dropout=0.5)
    x = torch.randn(T, B, I, dtype=torch.float64)
    torch.manual_seed(3)
    first = module(x)[0]
    torch.manual_seed(3)
    assert torch.equal(first, module(x)[0]) and not torch.equal(first, module(x)[0])
    module.eval()
    assert torch.equal(module(x)[0], module(x)[0])


def test_zoneout_of_one_keeps_the_initial_state():
    """p = 1: every unit keeps h0 (and c0) at every step, in training and in eval."""
    module = build(fused_rnn.LSTM, {}, zoneout=1.0)
    x = torch.randn(T, B, I, dtype=torch.float64)
    h0, c0 = torch.randn(4, B, H, dtype=torch.float64), torch.randn(4, B, H, dtype=torch.float64)
    for training in (True, False):
        out, (h, c) = module.train(training)(x, (h0, c0))
        assert torch.equal(h, h0) and torch.equal(c, c0)
        assert torch.equal(out[:, :, :H], h0[2].expand(T, B, H))


CELLS = [(fused_rnn.LSTMCell, {}), (fused_rnn.GRUCell, {}), (fused_rnn.RNNCell, {"nonlinearity": "relu"}),
         (fused_rnn.LSTMCell, {"layer_norm": True, "peephole": True})]
CELL_IDS = ["LSTMCell", "GRUCell", "RNNCell-relu", "LSTMCell-ln-peephole"]


@pytest.mark.parametrize("cls,kwargs", CELLS, ids=CELL_IDS)
def test_cell_zoneout_is_the_reference_with_the_drawn_masks(cls, kwargs):
    """A cell's zoneout: one step of the reference layer with the masks recurrence_masks draws
    per call from the same seed (outputs and every gradient); in eval m = p; a decoder loop of
    such calls trains (gradients reach every parameter through the steps)."""
    torch.manual_seed(1)
    cell = cls(I, H, zoneout=0.3, dtype=torch.float64, **kwargs)
    two = isinstance(cell, nn.LSTMCell)
    x = torch.randn(B, I, dtype=torch.float64, requires_grad=True)
    hx = tuple(torch.randn(B, H, dtype=torch.float64, requires_grad=True) for _ in range(2 if two else 1))
    state = hx if two else hx[0]
    for training in (True, False):
        cell.train(training)
        torch.manual_seed(7)
        got = cell(x, state)
        torch.manual_seed(7)
        masks = regularizers.recurrence_masks(cell, x.unsqueeze(0), None, H, H, cell_state=two)
        assert training or all(bool((m == 0.3).all()) for m in masks.values())
        weights = [cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh]
        variant = {name: getattr(cell, name) for name in cell._variant_weight_names}
        if two:
            _, want = reference.lstm(x.unsqueeze(0), state, *weights, **variant, **masks)
        elif isinstance(cell, nn.GRUCell):
            _, want = reference.gru(x.unsqueeze(0), state, *weights, **masks)
        else:
            _, want = reference.rnn(x.unsqueeze(0), state, *weights, nonlinearity=cell.nonlinearity, **masks)
        got, want = (list(got), list(want)) if two else ([got], [want])
        for a, b in zip(got, want):
            assert_close(a, b, "result")
        leaves = [x, *hx, *cell.parameters()]
        for a, b in zip(grads(got, leaves), grads(want, leaves)):
            assert_close(a, b, "gradient")
    assert "zoneout=0.3" in repr(cell)
    with pytest.raises(ValueError, match="zoneout=0.3, which torch.nn does not have"):
        fused_rnn.to_torch(cell)
    with pytest.raises(ValueError, match=r"zoneout should be a number in range \[0, 1\]"):
        cls(I, H, zoneout=2)


def test_bernoulli_sampler():
    """The CPU sampler of the masks (csrc/cpu/bernoulli.h): the fraction of ones and of
    neighbouring pairs of ones within 5 binomial standard deviations (no correlation between
    consecutive counters), p = 0 and 1 exact, torch.manual_seed reproduces a draw and the next
    draw differs, every floating dtype; the op's schema, fake kernel and dispatch (opcheck)."""
    like = torch.empty(0)
    p, n = 0.3, 1_000_000
    m = regularizers.bernoulli((n,), p, like)
    assert abs(m.mean().item() - p) < 5 * math.sqrt(p * (1 - p) / n)
    pairs = (m[1:] * m[:-1]).mean().item()
    assert abs(pairs - p * p) < 5 * math.sqrt(p * p * (1 - p * p) / n)
    assert not regularizers.bernoulli((100,), 0.0, like).any() and regularizers.bernoulli((100,), 1.0, like).all()
    torch.manual_seed(2)
    first = regularizers.bernoulli((64,), 0.5, like)
    torch.manual_seed(2)
    assert torch.equal(first, regularizers.bernoulli((64,), 0.5, like))
    assert not torch.equal(first, regularizers.bernoulli((64,), 0.5, like))
    for dtype in (torch.float64, torch.float32, torch.float16, torch.bfloat16):
        mask = regularizers.bernoulli((2, 3), 0.5, like.to(dtype))
        assert mask.dtype == dtype and mask.shape == (2, 3)
    seed = torch.tensor([7], dtype=torch.int64)
    torch.library.opcheck(torch.ops.fused_rnn.bernoulli_mask.default, (seed, [4, 5], 0.25, torch.float32),
                          test_utils=("test_schema", "test_faketensor"))
    with pytest.raises(RuntimeError, match="expected p in"):
        torch.ops.fused_rnn.bernoulli_mask(seed, [3], 1.5, torch.float32)
