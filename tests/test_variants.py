"""Cell variants torch.nn does not have, as options of the drop-in modules: the peephole LSTM
(LSTM / LSTMCell with peephole=True). Their parameters (names, order, initialization), the
modules against fused_rnn.reference composed by hand, torch.nn's results when the variant's
weights are zero, and what must keep working around them (state_dict, pickle, to_torch,
torch.compile)."""
import copy
import io
import math
import pickle

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import fused_rnn
from fused_rnn import reference

from checks import assert_close

T, B, I, H, P = 5, 3, 4, 6, 3
LENGTHS = [5, 3, 2]  # sorted, for pack_padded_sequence


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def peephole_lstm(**kw):
    return fused_rnn.LSTM(I, H, peephole=True, dtype=torch.float64, **kw)


# ---- parameters -----------------------------------------------------------------------------

@pytest.mark.parametrize("num_layers,bidirectional", [(1, False), (2, True)])
def test_parameters_after_torch_nn_ones(num_layers, bidirectional):
    """torch.nn's parameters first, drawn exactly as torch.nn draws them; then weight_ch_l{k}
    (and _reverse) [3H], uniform in +-1/sqrt(H)."""
    kw = dict(num_layers=num_layers, bidirectional=bidirectional, proj_size=P)
    torch.manual_seed(3)
    plain = nn.LSTM(I, H, **kw)
    torch.manual_seed(3)
    fused = fused_rnn.LSTM(I, H, peephole=True, **kw)
    names = [n for n, _ in fused.named_parameters()]
    torch_names = [n for n, _ in plain.named_parameters()]
    suffixes = [f"_l{k}{s}" for k in range(num_layers) for s in (["", "_reverse"] if bidirectional else [""])]
    assert names == torch_names + [f"weight_ch{s}" for s in suffixes]
    for name, value in plain.named_parameters():
        assert torch.equal(getattr(fused, name), value), name
    bound = 1 / math.sqrt(H)
    for s in suffixes:
        w = getattr(fused, f"weight_ch{s}")
        assert w.shape == (3 * H,) and w.abs().max() <= bound and w.std() > bound / 4


def test_cell_parameters():
    torch.manual_seed(3)
    plain = nn.LSTMCell(I, H)
    torch.manual_seed(3)
    fused = fused_rnn.LSTMCell(I, H, peephole=True)
    assert [n for n, _ in fused.named_parameters()] == [n for n, _ in plain.named_parameters()] + ["weight_ch"]
    assert torch.equal(fused.weight_ih, plain.weight_ih) and fused.weight_ch.shape == (3 * H,)
    assert "peephole=True" in repr(fused) and "peephole" not in repr(fused_rnn.LSTMCell(I, H))


def test_construction_errors():
    with pytest.raises(TypeError, match="peephole should be a bool"):
        fused_rnn.LSTM(I, H, peephole=1)
    with pytest.raises(TypeError, match="peephole"):
        fused_rnn.GRU(I, H, peephole=True)
    with pytest.raises(TypeError, match="positional arguments"):  # keyword-only: torch.nn's count
        fused_rnn.LSTM(I, H, 1, True, False, 0.0, False, 0, None, None, True)


def test_default_is_torch_nn():
    """Off by default: the same parameters as torch.nn, no peephole in the repr."""
    plain = fused_rnn.LSTM(I, H, num_layers=2)
    assert not plain.peephole and "peephole" not in repr(plain)
    assert [n for n, _ in plain.named_parameters()] == [n for n, _ in nn.LSTM(I, H, num_layers=2).named_parameters()]


# ---- values and gradients -------------------------------------------------------------------

def reference_stack(module, input, hx, batch_sizes=None):
    """The module's layers and directions composed by hand from fused_rnn.reference.lstm (no
    dropout): time-major or packed input, hx (h0, c0) [L*D, B, ...] or None."""
    directions = 2 if module.bidirectional else 1
    h_n, c_n, layer_input = [], [], input
    for layer in range(module.num_layers):
        outputs = []
        for direction in range(directions):
            suffix = f"_l{layer}" + ("_reverse" if direction else "")

            def w(name, suffix=suffix):
                return getattr(module, name + suffix, None)

            index = layer * directions + direction
            state = None if hx is None else (hx[0][index], hx[1][index])
            out, (h, c) = reference.lstm(layer_input, state, w("weight_ih"), w("weight_hh"), w("bias_ih"),
                                         w("bias_hh"), w("weight_hr"), batch_sizes=batch_sizes,
                                         reverse=direction == 1, weight_ch=w("weight_ch"))
            outputs.append(out)
            h_n.append(h)
            c_n.append(c)
        layer_input = torch.cat(outputs, -1)
    return layer_input, torch.stack(h_n), torch.stack(c_n)


def states(module, with_hx):
    if not with_hx:
        return None
    layers = module.num_layers * (2 if module.bidirectional else 1)
    h0 = torch.randn(layers, B, module.proj_size or H, dtype=torch.float64, requires_grad=True)
    return h0, torch.randn(layers, B, H, dtype=torch.float64, requires_grad=True)


def leaves_and_grads(results, leaves):
    g = torch.Generator().manual_seed(7)
    grad_outputs = [torch.randn(r.shape, generator=g, dtype=r.dtype) for r in results]
    return torch.autograd.grad(results, leaves, grad_outputs, retain_graph=True)


@pytest.mark.parametrize("with_hx", [True, False], ids=["hx", "no_hx"])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("proj_size", [0, P], ids=["noproj", "proj"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("num_layers,bidirectional", [(1, False), (2, True)], ids=["L1", "L2-bi"])
def test_module_matches_reference(num_layers, bidirectional, bias, proj_size, packed, with_hx):
    """Outputs, final states and the gradients of input, hx and every parameter (weight_ch
    included) against the reference composed by hand, float64, 1e-10."""
    module = peephole_lstm(num_layers=num_layers, bidirectional=bidirectional, bias=bias, proj_size=proj_size)
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    hx = states(module, with_hx)
    if packed:
        arg = pack_padded_sequence(x, torch.tensor(LENGTHS))
        out, (h, c) = module(arg, hx)
        want = reference_stack(module, arg.data, hx, arg.batch_sizes)
        got = (out.data, h, c)
    else:
        out, (h, c) = module(x, hx)
        want, got = reference_stack(module, x, hx), (out, h, c)
    leaves = [x, *(hx or ()), *module.parameters()]
    for name, a, b in zip(["output", "h_n", "c_n"], got, want):
        assert_close(a, b, name)
    names = ["input", "h0", "c0"][:1 + 2 * with_hx] + [n for n, _ in module.named_parameters()]
    for name, a, b in zip(names, leaves_and_grads(got, leaves), leaves_and_grads(want, leaves)):
        assert_close(a, b, f"grad of {name}")


@pytest.mark.parametrize("layout", ["batch_first", "unbatched", "packed_unsorted"])
def test_zero_peephole_weights_give_torch_nn(layout):
    """With weight_ch = 0 the peephole LSTM is torch.nn's LSTM: every layout the module takes,
    against torch.nn with the same weights (gradients of torch.nn's parameters)."""
    kw = dict(num_layers=2, bidirectional=True, proj_size=P, batch_first=layout == "batch_first",
              dtype=torch.float64)
    ref = nn.LSTM(I, H, **kw)
    fused = fused_rnn.LSTM(I, H, peephole=True, **kw)
    fused.load_state_dict(ref.state_dict(), strict=False)
    with torch.no_grad():
        for name, p in fused.named_parameters():
            if name.startswith("weight_ch"):
                p.zero_()
    shape = {"batch_first": (B, T, I), "unbatched": (T, I), "packed_unsorted": (T, B, I)}[layout]
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    arg = pack_padded_sequence(x, torch.tensor([3, 5, 2]), enforce_sorted=False) if layout.startswith("packed") else x
    results = []
    for module in (fused, ref):
        out, (h, c) = module(arg)
        results.append([out.data if isinstance(out, PackedSequence) else out, h, c])
    for a, b in zip(*results):
        assert_close(a, b, "result")
    leaves = [x, *ref.parameters()]
    fused_leaves = [x, *[getattr(fused, n) for n, _ in ref.named_parameters()]]
    for a, b in zip(leaves_and_grads(results[0], fused_leaves), leaves_and_grads(results[1], leaves)):
        assert_close(a, b, "gradient")


@pytest.mark.parametrize("batched", [True, False], ids=["batched", "unbatched"])
@pytest.mark.parametrize("with_hx", [True, False], ids=["hx", "no_hx"])
def test_cell_matches_reference(with_hx, batched):
    cell = fused_rnn.LSTMCell(I, H, peephole=True, dtype=torch.float64)
    batch = (B,) if batched else ()
    x = torch.randn(*batch, I, dtype=torch.float64, requires_grad=True)
    hx = tuple(torch.randn(*batch, H, dtype=torch.float64, requires_grad=True) for _ in range(2)) if with_hx else None
    got = cell(x, hx)
    rows = (lambda t: t) if batched else (lambda t: t.unsqueeze(0))
    want = reference.lstm_cell(rows(x), None if hx is None else tuple(rows(t) for t in hx), cell.weight_ih,
                               cell.weight_hh, cell.bias_ih, cell.bias_hh, weight_ch=cell.weight_ch)
    want = want if batched else tuple(t.squeeze(0) for t in want)
    leaves = [x, *(hx or ()), *cell.parameters()]
    for a, b in zip([*got, *leaves_and_grads(got, leaves)], [*want, *leaves_and_grads(want, leaves)]):
        assert_close(a, b, "cell result or gradient")


def test_cell_loop_equals_layer():
    """A decoder-style loop of LSTMCell(peephole=True) gives the one-layer module's results."""
    layer = peephole_lstm()
    cell = fused_rnn.LSTMCell(I, H, peephole=True, dtype=torch.float64)
    cell.load_state_dict({k[:-3]: v for k, v in layer.state_dict().items()})
    x = torch.randn(T, B, I, dtype=torch.float64)
    out, (h, c) = layer(x)
    state = None
    for t in range(T):
        state = cell(x[t], state)
        assert_close(state[0], out[t], f"step {t}")
    assert_close(state[1], c[0], "c_n")


# ---- around the module ----------------------------------------------------------------------

def test_state_dict_deepcopy_pickle_save():
    module = peephole_lstm(num_layers=2, bidirectional=True)
    x = torch.randn(T, B, I, dtype=torch.float64)
    want = module(x)[0]
    fresh = peephole_lstm(num_layers=2, bidirectional=True)
    fresh.load_state_dict(module.state_dict())
    buffer = io.BytesIO()
    torch.save(module, buffer)
    buffer.seek(0)
    for other in (fresh, copy.deepcopy(module), pickle.loads(pickle.dumps(module)),
                  torch.load(buffer, weights_only=False)):
        assert other.peephole and "weight_ch_l1_reverse" in other.state_dict()
        assert torch.equal(other(x)[0], want)
    with pytest.raises(RuntimeError, match="Missing key.*weight_ch_l0"):
        module.load_state_dict(nn.LSTM(I, H, num_layers=2, bidirectional=True).double().state_dict())


def test_to_torch_refuses_peephole():
    model = nn.Sequential(nn.Linear(I, I), peephole_lstm())
    with pytest.raises(ValueError, match=r"model\.1 is a LSTM with peephole=True"):
        fused_rnn.to_torch(model)
    assert type(model[1]) is fused_rnn.LSTM  # nothing converted
    cell = fused_rnn.LSTMCell(I, H, peephole=True)
    with pytest.raises(ValueError, match="torch.nn has no peephole LSTM"):
        fused_rnn.to_torch(cell)
    converted = fused_rnn.to_fused(nn.LSTM(I, H))  # a converted torch.nn module is no variant
    assert not converted.peephole and type(fused_rnn.to_torch(converted)) is nn.LSTM


def test_compiled_model_matches_eager():
    """torch.compile(fullgraph=True) of a model holding a peephole LSTM and cell: the same
    results and gradients as eager."""
    module = peephole_lstm(num_layers=2)
    cell = fused_rnn.LSTMCell(H, H, peephole=True, dtype=torch.float64)

    def model(x):
        out, _ = module(x)
        return cell(out[-1])[0]

    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    leaves = [x, *module.parameters(), *cell.parameters()]
    for a, b in zip(torch.autograd.grad(compiled(x).sum(), leaves), torch.autograd.grad(model(x).sum(), leaves)):
        assert_close(a, b, "gradient")
