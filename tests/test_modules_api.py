"""fused_rnn's modules as torch.nn's: the constructor (the same RNG draws, parameters,
attributes and repr), state_dict both ways, flatten_parameters and all_weights, dtype
conversions, deepcopy / pickle / torch.save, weight_norm (both kinds), functional_call and
reassigned weights. The modules run on the CPU here: this is torch.nn's Python surface."""
import copy
import io
import pickle
import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrizations

from checks import assert_close
from module_cases import FUSED_CLASS, MODE_IDS, MODES, TORCH_CLASS, B, H, I, P, T, build_pair, check_pair

pytestmark = pytest.mark.usefixtures("seeded")

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
    got, want = fused(x)[0], ref(x)[0]
    assert got.dtype == want.dtype
    assert_close(got, want, "output")


def _compare_forward(ref, fused, dtype=torch.float64):
    """The two modules agree (module_cases.check_pair) on a packed, unsorted batch with hx."""
    check_pair(ref, fused, "packed_unsorted", True, dtype)


def test_flatten_parameters_and_all_weights():
    ref, fused = build_pair("LSTM", True, num_layers=2, bidirectional=True)
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


@pytest.mark.parametrize("mode,projected", MODES, ids=MODE_IDS)
def test_deepcopy_pickle_and_save(mode, projected):
    ref, fused = build_pair(mode, projected, num_layers=2, bidirectional=True)
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
    ref, fused = build_pair("LSTM", True, num_layers=2, bidirectional=True)
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
    for name, a, b in [("output", got[0], want[0]), ("h_n", got[1], want[1])]:
        assert a.dtype == b.dtype, name
        assert_close(a, b, name)
    assert not torch.allclose(got[0], fused(x)[0])  # the module's own weights are back


def test_weight_reassignment():
    ref, fused = build_pair("LSTM", num_layers=2)
    new = nn.Parameter(torch.randn_like(ref.weight_hh_l1))
    ref.weight_hh_l1 = new
    fused.weight_hh_l1 = new
    _compare_forward(ref, fused)

