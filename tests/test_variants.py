"""Cell variants torch.nn does not have, as options of the drop-in modules: the peephole LSTM
and the layer-normalized LSTM and GRU (peephole=True, layer_norm=True, and both). Their
parameters (names, order, initialization), the modules against fused_rnn.reference composed by
hand, torch.nn's results when the peephole weights are zero, and what must keep working around
them (state_dict, pickle, to_torch, torch.compile)."""
import copy
import io
import math
import pickle

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import fused_rnn
from fused_rnn import functional, reference

from checks import assert_close

T, B, I, H, P = 5, 3, 4, 6, 3
LENGTHS = [5, 3, 2]  # sorted, for pack_padded_sequence


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def peephole_lstm(**kw):
    return fused_rnn.LSTM(I, H, peephole=True, dtype=torch.float64, **kw)


# (mode, options): every variant and their combination.
VARIANTS = [("LSTM", dict(peephole=True)), ("LSTM", dict(layer_norm=True)),
            ("LSTM", dict(peephole=True, layer_norm=True)), ("GRU", dict(layer_norm=True))]
VARIANT_IDS = ["LSTM-peephole", "LSTM-ln", "LSTM-peephole-ln", "GRU-ln"]
MODULES = {"LSTM": (fused_rnn.LSTM, nn.LSTM, fused_rnn.LSTMCell), "GRU": (fused_rnn.GRU, nn.GRU, fused_rnn.GRUCell)}


def variant_names(mode, options):
    names = ["weight_ch"] if options.get("peephole") else []
    if options.get("layer_norm"):
        names += ["ln_weight_ih", "ln_weight_hh"] + (["ln_weight_c", "ln_bias_c"] if mode == "LSTM" else [])
    return names


def check_initialized(name, w, hidden):
    """weight_ch uniform in +-1/sqrt(H) like torch.nn's weights; γ ones, β zeros."""
    if name.startswith("weight_ch"):
        bound = 1 / math.sqrt(hidden)
        assert w.abs().max() <= bound and w.std() > bound / 4, name
    else:
        assert torch.equal(w, torch.full_like(w, 1.0 if name.startswith("ln_weight") else 0.0)), name


# ---- parameters -----------------------------------------------------------------------------

@pytest.mark.parametrize("num_layers,bidirectional", [(1, False), (2, True)])
@pytest.mark.parametrize("mode,options", VARIANTS, ids=VARIANT_IDS)
def test_parameters_after_torch_nn_ones(mode, options, num_layers, bidirectional):
    """torch.nn's parameters first, drawn exactly as torch.nn draws them; then per layer and
    direction the variant's (weight_ch_l{k}, ln_weight_ih_l{k}, ... with _reverse), of their
    sizes and initialization, also after reset_parameters()."""
    fused_cls, torch_cls, _ = MODULES[mode]
    kw = dict(num_layers=num_layers, bidirectional=bidirectional)
    torch.manual_seed(3)
    plain = torch_cls(I, H, **kw)
    torch.manual_seed(3)
    fused = fused_cls(I, H, **kw, **options)
    suffixes = [f"_l{k}{s}" for k in range(num_layers) for s in (["", "_reverse"] if bidirectional else [""])]
    added = [n + s for s in suffixes for n in variant_names(mode, options)]
    assert [n for n, _ in fused.named_parameters()] == [n for n, _ in plain.named_parameters()] + added
    for name, value in plain.named_parameters():
        assert torch.equal(getattr(fused, name), value), name
    gates = 4 if mode == "LSTM" else 3
    for reset in (False, True):
        if reset:
            fused.reset_parameters()
        for name in added:
            w = getattr(fused, name)
            sizes = {"weight_ch": 3 * H, "ln_weight_ih": gates * H, "ln_weight_hh": gates * H}
            size = sizes.get(name.rsplit("_l", 1)[0], H)
            assert w.shape == (size,), name
            check_initialized(name, w, H)


@pytest.mark.parametrize("mode,options", VARIANTS, ids=VARIANT_IDS)
def test_cell_parameters(mode, options):
    torch.manual_seed(3)
    plain = getattr(nn, f"{mode}Cell")(I, H)
    torch.manual_seed(3)
    fused = MODULES[mode][2](I, H, **options)
    names = variant_names(mode, options)
    assert [n for n, _ in fused.named_parameters()] == [n for n, _ in plain.named_parameters()] + names
    assert torch.equal(fused.weight_ih, plain.weight_ih)
    for name in names:
        check_initialized(name, getattr(fused, name), H)
    for option in options:
        assert f"{option}=True" in repr(fused)
    assert "peephole" not in repr(MODULES[mode][2](I, H))


def test_construction_errors():
    with pytest.raises(TypeError, match="peephole should be a bool"):
        fused_rnn.LSTM(I, H, peephole=1)
    with pytest.raises(TypeError, match="layer_norm should be a bool"):
        fused_rnn.GRUCell(I, H, layer_norm="yes")
    with pytest.raises(TypeError, match="peephole"):
        fused_rnn.GRU(I, H, peephole=True)
    with pytest.raises(TypeError, match="layer_norm"):
        fused_rnn.RNN(I, H, layer_norm=True)
    with pytest.raises(TypeError, match="positional arguments"):  # keyword-only: torch.nn's count
        fused_rnn.LSTM(I, H, 1, True, False, 0.0, False, 0, None, None, True)


def test_default_is_torch_nn():
    """Off by default: the same parameters as torch.nn, no peephole in the repr."""
    plain = fused_rnn.LSTM(I, H, num_layers=2)
    assert not plain.peephole and "peephole" not in repr(plain)
    assert [n for n, _ in plain.named_parameters()] == [n for n, _ in nn.LSTM(I, H, num_layers=2).named_parameters()]


# ---- values and gradients -------------------------------------------------------------------

def reference_stack(module, input, hx, batch_sizes=None):
    """The module's layers and directions composed by hand from fused_rnn.reference (no
    dropout): time-major or packed input; hx (h0, c0) or h0 [L*D, B, ...], or None."""
    lstm = module.mode == "LSTM"
    directions = 2 if module.bidirectional else 1
    states_n, layer_input = [], input
    for layer in range(module.num_layers):
        outputs = []
        for direction in range(directions):
            suffix = f"_l{layer}" + ("_reverse" if direction else "")
            names = ["weight_ih", "weight_hh", "bias_ih", "bias_hh"] + (["weight_hr"] if lstm else [])
            weights = [getattr(module, n + suffix, None) for n in names]
            variant = {n: getattr(module, n + suffix) for n in variant_names(module.mode, vars(module))}
            index = layer * directions + direction
            state = None if hx is None else (hx[0][index], hx[1][index]) if lstm else hx[index]
            layer_fn = reference.lstm if lstm else reference.gru
            out, state_n = layer_fn(layer_input, state, *weights, batch_sizes=batch_sizes, reverse=direction == 1,
                                    **variant)
            outputs.append(out)
            states_n.append(state_n if lstm else (state_n,))
        layer_input = torch.cat(outputs, -1)
    return (layer_input, *(torch.stack(s) for s in zip(*states_n)))


def states(module, with_hx):
    if not with_hx:
        return None
    layers = module.num_layers * (2 if module.bidirectional else 1)
    h0 = torch.randn(layers, B, getattr(module, "proj_size", 0) or H, dtype=torch.float64, requires_grad=True)
    return (h0, torch.randn(layers, B, H, dtype=torch.float64, requires_grad=True)) if module.mode == "LSTM" else h0


def leaves_and_grads(results, leaves):
    g = torch.Generator().manual_seed(7)
    grad_outputs = [torch.randn(r.shape, generator=g, dtype=r.dtype) for r in results]
    return torch.autograd.grad(results, leaves, grad_outputs, retain_graph=True)


def randomized(module):
    """The module with its variant parameters drawn at random (γ around 1, β around 0), so
    that a gradient that ignored them, or used another layer's, shows."""
    with torch.no_grad():
        for name in module._variant_weight_names:
            for p_name, p in module.named_parameters():
                if p_name.startswith(name):
                    p.copy_(torch.randn_like(p) * 0.5 + (1.0 if name.startswith("ln_weight") else 0.0))
    return module


def as_list(results):
    out, hidden = results
    data = out.data if isinstance(out, PackedSequence) else out
    return [data, *(hidden if isinstance(hidden, tuple) else (hidden,))]


@pytest.mark.parametrize("with_hx", [True, False], ids=["hx", "no_hx"])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("proj_size", [0, P], ids=["noproj", "proj"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("num_layers,bidirectional", [(1, False), (2, True)], ids=["L1", "L2-bi"])
@pytest.mark.parametrize("mode,options", VARIANTS, ids=VARIANT_IDS)
def test_module_matches_reference(mode, options, num_layers, bidirectional, bias, proj_size, packed, with_hx):
    """Outputs, final states and the gradients of input, hx and every parameter (the variant's
    included) against the reference composed by hand, float64, 1e-10."""
    if proj_size and mode != "LSTM":
        pytest.skip("proj_size is an LSTM option")
    kw = dict(proj_size=proj_size) if proj_size else {}
    module = randomized(MODULES[mode][0](I, H, num_layers=num_layers, bidirectional=bidirectional, bias=bias,
                                         dtype=torch.float64, **kw, **options))
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    hx = states(module, with_hx)
    if packed:
        arg = pack_padded_sequence(x, torch.tensor(LENGTHS))
        got, want = as_list(module(arg, hx)), reference_stack(module, arg.data, hx, arg.batch_sizes)
    else:
        got, want = as_list(module(x, hx)), reference_stack(module, x, hx)
    hx_leaves = [] if hx is None else list(hx) if isinstance(hx, tuple) else [hx]
    leaves = [x, *hx_leaves, *module.parameters()]
    for name, a, b in zip(["output", "h_n", "c_n"], got, want):
        assert_close(a, b, name)
    names = ["input", "h0", "c0"][:1 + len(hx_leaves)] + [n for n, _ in module.named_parameters()]
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
@pytest.mark.parametrize("mode,options", VARIANTS, ids=VARIANT_IDS)
def test_cell_matches_reference(mode, options, with_hx, batched):
    cell = randomized(MODULES[mode][2](I, H, dtype=torch.float64, **options))
    batch = (B,) if batched else ()
    x = torch.randn(*batch, I, dtype=torch.float64, requires_grad=True)
    n_states = 2 if mode == "LSTM" else 1
    hx = [torch.randn(*batch, H, dtype=torch.float64, requires_grad=True) for _ in range(n_states)] if with_hx else []
    arg = None if not hx else tuple(hx) if mode == "LSTM" else hx[0]
    got = cell(x, arg)
    got = list(got) if isinstance(got, tuple) else [got]
    rows = (lambda t: t) if batched else (lambda t: t.unsqueeze(0))
    state = None if not hx else tuple(rows(t) for t in hx) if mode == "LSTM" else rows(hx[0])
    ref_cell = reference.lstm_cell if mode == "LSTM" else reference.gru_cell
    want = ref_cell(rows(x), state, cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh,
                    **{n: getattr(cell, n) for n in variant_names(mode, options)})
    want = [t if batched else t.squeeze(0) for t in (want if isinstance(want, tuple) else (want,))]
    leaves = [x, *hx, *cell.parameters()]
    for a, b in zip([*got, *leaves_and_grads(got, leaves)], [*want, *leaves_and_grads(want, leaves)]):
        assert_close(a, b, "cell result or gradient")


@pytest.mark.parametrize("mode,options", VARIANTS, ids=VARIANT_IDS)
def test_cell_loop_equals_layer(mode, options):
    """A decoder-style loop of the variant's cell gives the one-layer module's results."""
    layer = randomized(MODULES[mode][0](I, H, dtype=torch.float64, **options))
    cell = MODULES[mode][2](I, H, dtype=torch.float64, **options)
    cell.load_state_dict({k[:-3]: v for k, v in layer.state_dict().items()})
    x = torch.randn(T, B, I, dtype=torch.float64)
    out, hidden = layer(x)
    state = None
    for t in range(T):
        state = cell(x[t], state)
        assert_close(state[0] if mode == "LSTM" else state, out[t], f"step {t}")
    if mode == "LSTM":
        assert_close(state[1], hidden[1][0], "c_n")


# ---- around the module ----------------------------------------------------------------------

def test_state_dict_deepcopy_pickle_save():
    module = randomized(peephole_lstm(num_layers=2, bidirectional=True, layer_norm=True))
    x = torch.randn(T, B, I, dtype=torch.float64)
    want = module(x)[0]
    fresh = peephole_lstm(num_layers=2, bidirectional=True, layer_norm=True)
    fresh.load_state_dict(module.state_dict())
    buffer = io.BytesIO()
    torch.save(module, buffer)
    buffer.seek(0)
    for other in (fresh, copy.deepcopy(module), pickle.loads(pickle.dumps(module)),
                  torch.load(buffer, weights_only=False)):
        assert other.peephole and other.layer_norm and "ln_bias_c_l1_reverse" in other.state_dict()
        assert torch.equal(other(x)[0], want)
    with pytest.raises(RuntimeError, match="Missing key.*weight_ch_l0"):
        module.load_state_dict(nn.LSTM(I, H, num_layers=2, bidirectional=True).double().state_dict())


def test_to_torch_refuses_variants():
    model = nn.Sequential(nn.Linear(I, I), peephole_lstm())
    with pytest.raises(ValueError, match=r"model\.1 is a LSTM with peephole=True"):
        fused_rnn.to_torch(model)
    assert type(model[1]) is fused_rnn.LSTM  # nothing converted
    cell = fused_rnn.LSTMCell(I, H, peephole=True)
    with pytest.raises(ValueError, match="which torch.nn does not have"):
        fused_rnn.to_torch(cell)
    with pytest.raises(ValueError, match=r"model is a GRU with layer_norm=True.*parameters ln_weight_ih, ln_weight_hh"):
        fused_rnn.to_torch(fused_rnn.GRU(I, H, layer_norm=True))
    converted = fused_rnn.to_fused(nn.LSTM(I, H))  # a converted torch.nn module is no variant
    assert not converted.peephole and type(fused_rnn.to_torch(converted)) is nn.LSTM


def test_compiled_model_matches_eager():
    """torch.compile(fullgraph=True) of a model holding a peephole layer-normalized LSTM and a
    layer-normalized GRU cell: the same results and gradients as eager."""
    module = randomized(peephole_lstm(num_layers=2, layer_norm=True))
    cell = randomized(fused_rnn.GRUCell(H, H, layer_norm=True, dtype=torch.float64))

    def model(x):
        out, _ = module(x)
        return cell(out[-1])

    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    leaves = [x, *module.parameters(), *cell.parameters()]
    for a, b in zip(torch.autograd.grad(compiled(x).sum(), leaves), torch.autograd.grad(model(x).sum(), leaves)):
        assert_close(a, b, "gradient")


@pytest.mark.parametrize("mode,options", VARIANTS, ids=VARIANT_IDS)
def test_autocast_gives_the_plain_modules_dtypes(mode, options):
    """Under CPU bf16 autocast a variant returns what the plain fused module returns (torch.nn's
    dtypes), its values near the float32 run's, and its parameters get float32 gradients."""
    module = randomized(MODULES[mode][0](I, H, **options))
    plain = MODULES[mode][0](I, H)
    x = torch.randn(T, B, I)
    want = as_list(module(x))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, plain_out = as_list(module(x)), as_list(plain(x))
    for a, p, w in zip(got, plain_out, want):
        assert a.dtype == p.dtype
        assert_close(a.float(), w, "autocast result", tol=3e-2)
    sum(t.float().sum() for t in got).backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in module.parameters())


def test_export_matches_eager():
    module = randomized(peephole_lstm(num_layers=2, bidirectional=True, layer_norm=True))
    x = torch.randn(T, B, I, dtype=torch.float64)
    exported = torch.export.export(module, (x,))
    for a, b in zip(as_list(exported.module()(x)), as_list(module(x))):
        assert_close(a, b, "exported result")


@pytest.mark.parametrize("change,message", [
    (dict(ln_weight_c=None), "takes ln_weight_ih, ln_weight_hh, ln_weight_c and ln_bias_c together"),
    (dict(ln_weight_hh=torch.ones(3 * H, dtype=torch.float64)), "expected ln_weight_hh of shape"),
    (dict(ln_bias_c=torch.ones(H, dtype=torch.float32)), "ln_bias_c"),
    (dict(weight_ch=torch.ones(H, dtype=torch.float64)), "expected weight_ch of shape"),
])
def test_bad_variant_weights_are_refused(change, message):
    """The ops check every variant weight (shape, dtype, all-or-none), naming it."""
    x = torch.randn(T, B, I, dtype=torch.float64)
    w = [torch.randn(4 * H, I, dtype=torch.float64), torch.randn(4 * H, H, dtype=torch.float64)]
    def f64(*shape):
        return torch.randn(shape, dtype=torch.float64)

    variant = dict(weight_ch=f64(3 * H), ln_weight_ih=f64(4 * H), ln_weight_hh=f64(4 * H), ln_weight_c=f64(H),
                   ln_bias_c=f64(H))
    variant.update(change)
    for fn, arg in ((functional.lstm, x), (functional.lstm_cell, x[0])):
        with pytest.raises(RuntimeError, match=message):
            fn(arg, None, *w, **variant)
    with pytest.raises(RuntimeError, match="takes ln_weight_ih and ln_weight_hh together"):
        functional.gru(x, None, torch.randn(3 * H, I, dtype=torch.float64), torch.randn(3 * H, H, dtype=torch.float64),
                       ln_weight_ih=torch.ones(3 * H, dtype=torch.float64))
