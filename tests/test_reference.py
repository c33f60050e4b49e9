"""fused_rnn.reference against torch.nn in float64: the reference is only ground truth if it
is exactly torch.nn (gate order, GRU's b_hn placement, projections, packed and reverse
semantics)."""
import math

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

from fused_rnn import reference

DTYPE = torch.float64
TOL = 1e-10
T, B, I, H, P = 5, 4, 3, 6, 4
LENGTHS = [5, 5, 3, 1]  # unequal, with a tie, non-increasing (enforce_sorted=True)

MODES = ["lstm", "lstm_proj", "gru", "rnn_tanh", "rnn_relu"]


def max_diff(a, b):
    return (a - b).abs().max().item()


def make_module(mode, bias, bidirectional=False):
    kw = dict(bias=bias, bidirectional=bidirectional, dtype=DTYPE)
    if mode == "lstm":
        return torch.nn.LSTM(I, H, **kw)
    if mode == "lstm_proj":
        return torch.nn.LSTM(I, H, proj_size=P, **kw)
    if mode == "gru":
        return torch.nn.GRU(I, H, **kw)
    return torch.nn.RNN(I, H, nonlinearity=mode[len("rnn_"):], **kw)


def layer_weights(module, suffix=""):
    names = ["weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr"]
    return {n: getattr(module, f"{n}_l0{suffix}", None) for n in names}


def run_reference(mode, input, hx, w, batch_sizes, reverse):
    common = dict(bias_ih=w["bias_ih"], bias_hh=w["bias_hh"], batch_sizes=batch_sizes, reverse=reverse)
    if mode.startswith("lstm"):
        return reference.lstm(input, hx, w["weight_ih"], w["weight_hh"], weight_hr=w["weight_hr"], **common)
    if mode == "gru":
        return reference.gru(input, hx, w["weight_ih"], w["weight_hh"], **common)
    return reference.rnn(input, hx, w["weight_ih"], w["weight_hh"], nonlinearity=mode[len("rnn_"):], **common)


def flat_states(mode, state):
    """(h,) or (h, c) for either an LSTM state tuple or a single hidden tensor."""
    return tuple(state) if mode.startswith("lstm") else (state,)


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("mode", MODES)
def test_layer_matches_torch_nn(mode, bias, packed, reverse):
    torch.manual_seed(0)
    # A bidirectional module gives both directions' weights; direction d's output features are
    # the slice [d * out_size, (d + 1) * out_size) and its final states are h_n[d] (c_n[d]).
    module = make_module(mode, bias, bidirectional=True)
    d = int(reverse)
    out_size = P if mode == "lstm_proj" else H

    x = torch.randn(T, B, I, dtype=DTYPE)
    h0 = torch.randn(2, B, out_size, dtype=DTYPE)
    hx = (h0, torch.randn(2, B, H, dtype=DTYPE)) if mode.startswith("lstm") else h0

    if packed:
        x_packed = pack_padded_sequence(x, torch.tensor(LENGTHS), enforce_sorted=True)
        out_nn, state_nn = module(x_packed, hx)
        out_nn = out_nn.data
        input, batch_sizes = x_packed.data, x_packed.batch_sizes
    else:
        out_nn, state_nn = module(x, hx)
        input, batch_sizes = x, None

    hx_d = tuple(s[d] for s in hx) if mode.startswith("lstm") else hx[d]
    w = layer_weights(module, "_reverse" if reverse else "")
    with torch.no_grad():
        out_ref, state_ref = run_reference(mode, input, hx_d, w, batch_sizes, reverse)
        out_nn = out_nn[..., d * out_size:(d + 1) * out_size]

    assert out_ref.shape == out_nn.shape
    assert max_diff(out_ref, out_nn) <= TOL
    assert len(flat_states(mode, state_ref)) == len(flat_states(mode, state_nn))
    for s_ref, s_nn in zip(flat_states(mode, state_ref), flat_states(mode, state_nn)):
        assert s_ref.shape == s_nn[d].shape
        assert max_diff(s_ref, s_nn[d]) <= TOL


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("mode", MODES)
def test_layer_without_hx_starts_from_zeros(mode, packed):
    torch.manual_seed(1)
    module = make_module(mode, bias=True)
    x = torch.randn(T, B, I, dtype=DTYPE)
    if packed:
        x_packed = pack_padded_sequence(x, torch.tensor(LENGTHS), enforce_sorted=True)
        out_nn, state_nn = module(x_packed)
        out_nn, input, batch_sizes = out_nn.data, x_packed.data, x_packed.batch_sizes
    else:
        out_nn, state_nn = module(x)
        input, batch_sizes = x, None
    with torch.no_grad():
        out_ref, state_ref = run_reference(mode, input, None, layer_weights(module), batch_sizes, False)
    assert max_diff(out_ref, out_nn) <= TOL
    assert len(flat_states(mode, state_ref)) == len(flat_states(mode, state_nn))
    for s_ref, s_nn in zip(flat_states(mode, state_ref), flat_states(mode, state_nn)):
        assert max_diff(s_ref, s_nn[0]) <= TOL


@pytest.mark.parametrize("mode", MODES)
def test_layer_gradients_match_torch_nn(mode):
    """The reference is differentiated by autograd; its gradients must be torch.nn's."""
    torch.manual_seed(2)
    module = make_module(mode, bias=True, bidirectional=True)
    out_size = P if mode == "lstm_proj" else H
    x = torch.randn(T, B, I, dtype=DTYPE, requires_grad=True)
    h0 = torch.randn(2, B, out_size, dtype=DTYPE, requires_grad=True)
    hx = (h0, torch.randn(2, B, H, dtype=DTYPE, requires_grad=True)) if mode.startswith("lstm") else h0
    x_packed = pack_padded_sequence(x, torch.tensor(LENGTHS), enforce_sorted=True)

    out_nn, state_nn = module(x_packed, hx)
    grad_out = torch.randn_like(out_nn.data)
    grad_states = [torch.randn_like(s) for s in flat_states(mode, state_nn)]
    leaves = [x, *flat_states(mode, hx), *module.parameters()]
    loss_nn = (out_nn.data * grad_out).sum()
    loss_nn = loss_nn + sum((s * g).sum() for s, g in zip(flat_states(mode, state_nn), grad_states))
    grads_nn = torch.autograd.grad(loss_nn, leaves)

    x_packed = pack_padded_sequence(x, torch.tensor(LENGTHS), enforce_sorted=True)  # fresh graph
    loss_ref = 0
    for d, suffix in enumerate(["", "_reverse"]):
        hx_d = tuple(s[d] for s in hx) if mode.startswith("lstm") else hx[d]
        out_ref, state_ref = run_reference(mode, x_packed.data, hx_d, layer_weights(module, suffix),
                                           x_packed.batch_sizes, reverse=bool(d))
        loss_ref = loss_ref + (out_ref * grad_out[:, d * out_size:(d + 1) * out_size]).sum()
        loss_ref = loss_ref + sum((s * g[d]).sum() for s, g in zip(flat_states(mode, state_ref), grad_states))
    grads_ref = torch.autograd.grad(loss_ref, leaves)

    assert len(grads_ref) == len(grads_nn)
    for g_ref, g_nn in zip(grads_ref, grads_nn):
        assert max_diff(g_ref, g_nn) <= TOL


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("mode", ["lstm", "gru", "rnn_tanh", "rnn_relu"])
def test_cell_matches_torch_nn_cell(mode, bias):
    torch.manual_seed(3)
    x = torch.randn(B, I, dtype=DTYPE)
    h = torch.randn(B, H, dtype=DTYPE)
    if mode == "lstm":
        cell = torch.nn.LSTMCell(I, H, bias=bias, dtype=DTYPE)
    elif mode == "gru":
        cell = torch.nn.GRUCell(I, H, bias=bias, dtype=DTYPE)
    else:
        cell = torch.nn.RNNCell(I, H, bias=bias, nonlinearity=mode[len("rnn_"):], dtype=DTYPE)
    args = (cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh)

    with torch.no_grad():
        if mode == "lstm":
            c = torch.randn(B, H, dtype=DTYPE)
            expected, got = cell(x, (h, c)), reference.lstm_cell(x, (h, c), *args)
        elif mode == "gru":
            expected, got = (cell(x, h),), (reference.gru_cell(x, h, *args),)
        else:
            expected, got = (cell(x, h),), (reference.rnn_cell(x, h, *args, nonlinearity=cell.nonlinearity),)
    assert len(expected) == len(got)
    for e, g in zip(expected, got):
        assert e.shape == g.shape
        assert max_diff(e, g) <= TOL


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_lstm_cell_with_projection_matches_one_step_of_torch_nn(bias):
    # torch.nn has no LSTMCell with proj_size; one step of nn.LSTM(proj_size=P) is the cell.
    torch.manual_seed(4)
    module = make_module("lstm_proj", bias)
    x = torch.randn(B, I, dtype=DTYPE)
    h, c = torch.randn(B, P, dtype=DTYPE), torch.randn(B, H, dtype=DTYPE)
    w = layer_weights(module)
    with torch.no_grad():
        _, (h_nn, c_nn) = module(x[None], (h[None], c[None]))
        h_ref, c_ref = reference.lstm_cell(x, (h, c), w["weight_ih"], w["weight_hh"], w["bias_ih"],
                                           w["bias_hh"], w["weight_hr"])
    assert h_ref.shape == (B, P) and c_ref.shape == (B, H)
    assert max_diff(h_ref, h_nn[0]) <= TOL
    assert max_diff(c_ref, c_nn[0]) <= TOL


def test_rnn_rejects_unknown_nonlinearity():
    x, h = torch.randn(B, I, dtype=DTYPE), torch.randn(B, H, dtype=DTYPE)
    w_ih, w_hh = torch.randn(H, I, dtype=DTYPE), torch.randn(H, H, dtype=DTYPE)
    with pytest.raises(ValueError, match="nonlinearity"):
        reference.rnn_cell(x, h, w_ih, w_hh, nonlinearity="sigmoid")


# ---- the cell variants torch.nn does not have: checked against independent writings ----------

def test_layer_norm_is_torch_layer_norm():
    v, w, b = (torch.randn(shape, dtype=DTYPE) for shape in [(5, 12), (12,), (12,)])
    assert max_diff(reference.layer_norm(v, w, b), torch.nn.functional.layer_norm(v, (12,), w, b, eps=1e-5)) < TOL
    assert max_diff(reference.layer_norm(v, w), torch.nn.functional.layer_norm(v, (12,), w, None, eps=1e-5)) < TOL


def _ln(v, w, b=None):
    return torch.nn.functional.layer_norm(v, (v.size(-1),), w, b, eps=1e-5)


def test_layer_norm_lstm_cell_is_composed_as_the_equations_say():
    """p = LN(W_ih x; γ_ih) + LN(W_hh h; γ_hh) + b_ih + b_hh; h' = o * tanh(LN(c'; γ_c) + β_c),
    written here with torch.nn.functional.layer_norm."""
    x, h, c = torch.randn(B, I, dtype=DTYPE), torch.randn(B, H, dtype=DTYPE), torch.randn(B, H, dtype=DTYPE)
    w_ih, w_hh, b_ih, b_hh = (torch.randn(shape, dtype=DTYPE) for shape in [(4 * H, I), (4 * H, H), (4 * H,), (4 * H,)])
    g_ih, g_hh, g_c, b_c = (torch.randn(shape, dtype=DTYPE) for shape in [(4 * H,), (4 * H,), (H,), (H,)])
    p = _ln(x @ w_ih.T, g_ih) + _ln(h @ w_hh.T, g_hh) + b_ih + b_hh
    i, f, g, o = torch.sigmoid(p[:, :H]), torch.sigmoid(p[:, H:2 * H]), torch.tanh(p[:, 2 * H:3 * H]), \
        torch.sigmoid(p[:, 3 * H:])
    c_new = f * c + i * g
    h_new = o * torch.tanh(_ln(c_new, g_c, b_c))
    got = reference.lstm_cell(x, (h, c), w_ih, w_hh, b_ih, b_hh, ln_weight_ih=g_ih, ln_weight_hh=g_hh,
                              ln_weight_c=g_c, ln_bias_c=b_c)
    assert max_diff(got[0], h_new) < TOL and max_diff(got[1], c_new) < TOL


def test_layer_norm_gru_cell_is_composed_as_the_equations_say():
    """a = LN(W_ih x; γ_ih) + b_ih, r̂ = LN(W_hh h; γ_hh) + b_hh; r, z, n as in the GRU with r̂."""
    x, h = torch.randn(B, I, dtype=DTYPE), torch.randn(B, H, dtype=DTYPE)
    w_ih, w_hh, b_ih, b_hh = (torch.randn(shape, dtype=DTYPE) for shape in [(3 * H, I), (3 * H, H), (3 * H,), (3 * H,)])
    g_ih, g_hh = torch.randn(3 * H, dtype=DTYPE), torch.randn(3 * H, dtype=DTYPE)
    a = _ln(x @ w_ih.T, g_ih) + b_ih
    rh = _ln(h @ w_hh.T, g_hh) + b_hh
    r = torch.sigmoid(a[:, :H] + rh[:, :H])
    z = torch.sigmoid(a[:, H:2 * H] + rh[:, H:2 * H])
    n = torch.tanh(a[:, 2 * H:] + r * rh[:, 2 * H:])
    want = (1 - z) * n + z * h
    got = reference.gru_cell(x, h, w_ih, w_hh, b_ih, b_hh, ln_weight_ih=g_ih, ln_weight_hh=g_hh)
    assert max_diff(got, want) < TOL


def test_peephole_lstm_cell_is_the_equations_unit_by_unit():
    """Gers et al.'s peephole LSTM written one unit at a time in Python floats:
    i = s(p_i + w_ci c), f = s(p_f + w_cf c), g = tanh(p_g), c' = f c + i g,
    o = s(p_o + w_co c'), h' = o tanh(c')."""
    x, h, c = torch.randn(B, I, dtype=DTYPE), torch.randn(B, H, dtype=DTYPE), torch.randn(B, H, dtype=DTYPE)
    w_ih, w_hh, b_ih, b_hh = (torch.randn(shape, dtype=DTYPE) for shape in [(4 * H, I), (4 * H, H), (4 * H,), (4 * H,)])
    w_ch = torch.randn(3 * H, dtype=DTYPE)
    got_h, got_c = reference.lstm_cell(x, (h, c), w_ih, w_hh, b_ih, b_hh, weight_ch=w_ch)

    def sigmoid(v):
        return 1 / (1 + math.exp(-v))

    for b in range(B):
        for j in range(H):
            def pre(k, b=b, j=j):
                row = k * H + j
                return float(w_ih[row] @ x[b] + b_ih[row] + w_hh[row] @ h[b] + b_hh[row])

            cj = float(c[b, j])
            i = sigmoid(pre(0) + float(w_ch[j]) * cj)
            f = sigmoid(pre(1) + float(w_ch[H + j]) * cj)
            g = math.tanh(pre(2))
            c_new = f * cj + i * g
            o = sigmoid(pre(3) + float(w_ch[2 * H + j]) * c_new)
            assert abs(float(got_c[b, j]) - c_new) < TOL and abs(float(got_h[b, j]) - o * math.tanh(c_new)) < TOL
