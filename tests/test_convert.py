"""fused_rnn.to_fused / to_torch: swap the recurrent modules of a whole model, in place."""
import copy
import io
import pickle

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrizations, parametrize

import fused_rnn

T, B, I, H = 5, 3, 4, 6

PAIRS = [(nn.LSTM, fused_rnn.LSTM), (nn.GRU, fused_rnn.GRU), (nn.RNN, fused_rnn.RNN),
         (nn.LSTMCell, fused_rnn.LSTMCell), (nn.GRUCell, fused_rnn.GRUCell),
         (nn.RNNCell, fused_rnn.RNNCell)]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


class MyLSTM(nn.LSTM):
    """A user's own subclass: it may change forward, so conversion leaves it alone."""


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(I, I), nn.Tanh())
        self.lstm = nn.LSTM(I, H, num_layers=2, bidirectional=True, batch_first=True,
                            proj_size=2)
        self.stack = nn.ModuleList([nn.GRU(4, H), nn.RNN(H, H, nonlinearity="relu")])
        self.cells = nn.ModuleDict({"lstm": nn.LSTMCell(H, H), "gru": nn.GRUCell(H, H),
                                    "rnn": nn.RNNCell(H, H)})
        self.custom = MyLSTM(H, 3)
        self.head = nn.Linear(3, 1)

    def forward(self, x):  # x [B, T, I]
        y, _ = self.lstm(self.encoder(x))      # [B, T, 4]
        y, _ = self.stack[0](y.transpose(0, 1))  # [T, B, H]
        y, _ = self.stack[1](y)
        h, c = self.cells["lstm"](y[-1])
        h = self.cells["gru"](h, c)
        h = self.cells["rnn"](h)
        y, _ = self.custom(h.unsqueeze(0))
        return self.head(y[-1])


def recurrent_modules(model):
    return {name: m for name, m in model.named_modules()
            if isinstance(m, (nn.RNNBase, nn.RNNCellBase))}


def test_to_fused_converts_every_module_in_place():
    model = Model().double()
    ref = copy.deepcopy(model)
    before = {name: type(m) for name, m in recurrent_modules(model).items()}
    params = {name: p for name, p in model.named_parameters()}
    keys = list(model.state_dict())

    result = fused_rnn.to_fused(model)

    assert result is model
    fused_of = dict(PAIRS)
    for name, module in recurrent_modules(model).items():
        if before[name] is MyLSTM:
            assert type(module) is MyLSTM
        else:
            assert type(module) is fused_of[before[name]], name
            assert isinstance(module, before[name])
    # The very same Parameter objects, names and state_dict.
    assert {name: p for name, p in model.named_parameters()} == params
    assert all(params[name] is p for name, p in model.named_parameters())
    assert list(model.state_dict()) == keys

    x = torch.randn(B, T, I, dtype=torch.float64, requires_grad=True)
    got, want = model(x), ref(x)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-10)
    g = torch.randn_like(want)
    grads_f = torch.autograd.grad(got, [x] + list(model.parameters()), g)
    grads_r = torch.autograd.grad(want, [x] + list(ref.parameters()), g)
    for a, b in zip(grads_f, grads_r):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


def test_to_torch_is_the_inverse():
    model = Model()
    original = {name: type(m) for name, m in recurrent_modules(model).items()}
    params = list(model.parameters())
    assert fused_rnn.to_torch(fused_rnn.to_fused(model)) is model
    assert {name: type(m) for name, m in recurrent_modules(model).items()} == original
    assert all(a is b for a, b in zip(model.parameters(), params))
    # Converting twice is harmless.
    fused_rnn.to_fused(fused_rnn.to_fused(model))
    assert type(model.lstm) is fused_rnn.LSTM
    fused_rnn.to_torch(fused_rnn.to_torch(model))
    assert type(model.lstm) is nn.LSTM


@pytest.mark.parametrize("torch_cls,fused_cls", PAIRS)
def test_bare_module(torch_cls, fused_cls):
    module = torch_cls(I, H)
    converted = fused_rnn.to_fused(module)
    assert converted is module and type(module) is fused_cls
    assert fused_rnn.to_torch(module) is module and type(module) is torch_cls
    # A module built as fused converts to torch.nn too.
    module = fused_cls(I, H)
    assert type(fused_rnn.to_torch(module)) is torch_cls


def test_keeps_device_dtype_and_training_mode():
    model = Model().to(torch.float64)
    model.lstm.eval()
    model.cells["gru"].train()
    fused_rnn.to_fused(model)
    assert model.training and not model.lstm.training and model.cells["gru"].training
    assert all(p.dtype == torch.float64 and p.device.type == "cpu" for p in model.parameters())
    assert all(w.dtype == torch.float64 for w in model.lstm._flat_weights)


def test_optimizer_built_before_conversion_keeps_working():
    torch.manual_seed(1)
    ref = Model().double()
    model = copy.deepcopy(ref)
    opt_ref = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    fused_rnn.to_fused(model)
    x = torch.randn(B, T, I, dtype=torch.float64)
    for _ in range(3):
        for net, opt_ in ((ref, opt_ref), (model, opt)):
            opt_.zero_grad()
            net(x).square().sum().backward()
            opt_.step()
    for a, b in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


def test_hooks_survive():
    model = nn.Sequential(nn.GRU(I, H))
    seen = []
    model[0].register_forward_hook(lambda mod, inp, out: seen.append(type(mod)))
    fused_rnn.to_fused(model)
    model(torch.randn(T, B, I))
    assert seen == [fused_rnn.GRU]


def test_parametrized_module():
    lstm = nn.LSTM(I, H, num_layers=2).double()
    parametrizations.weight_norm(lstm, "weight_hh_l0")
    parametrize.register_parametrization(lstm, "weight_ih_l1", nn.Identity())
    ref = copy.deepcopy(lstm)
    originals = list(lstm.parameters())
    fused_rnn.to_fused(lstm)
    assert isinstance(lstm, fused_rnn.LSTM) and parametrize.is_parametrized(lstm)
    assert type(lstm).__name__ == "ParametrizedLSTM"
    assert all(a is b for a, b in zip(lstm.parameters(), originals))
    assert list(lstm.state_dict()) == list(ref.state_dict())
    x = torch.randn(T, B, I, dtype=torch.float64)
    torch.testing.assert_close(lstm(x)[0], ref(x)[0], rtol=0, atol=1e-10)
    # The parametrization is still live, and can be removed again.
    with torch.no_grad():
        lstm.parametrizations.weight_hh_l0.original0.mul_(2)
        ref.parametrizations.weight_hh_l0.original0.mul_(2)
    torch.testing.assert_close(lstm(x)[0], ref(x)[0], rtol=0, atol=1e-10)
    parametrize.remove_parametrizations(lstm, "weight_hh_l0")
    parametrize.remove_parametrizations(lstm, "weight_ih_l1")
    assert type(lstm) is fused_rnn.LSTM
    torch.testing.assert_close(lstm(x)[0], ref(x)[0], rtol=0, atol=1e-10)


def test_parametrized_round_trip():
    gru = nn.GRU(I, H)
    parametrizations.weight_norm(gru, "weight_ih_l0")
    cls = type(gru)
    fused_rnn.to_torch(fused_rnn.to_fused(gru))
    assert type(gru) is cls


def test_converted_model_copies_and_saves():
    model = fused_rnn.to_fused(Model().double())
    x = torch.randn(B, T, I, dtype=torch.float64)
    want = model(x)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    for other in (copy.deepcopy(model), pickle.loads(pickle.dumps(model)),
                  torch.load(buffer, weights_only=False)):
        assert type(other.lstm) is fused_rnn.LSTM
        assert type(other.cells["lstm"]) is fused_rnn.LSTMCell
        torch.testing.assert_close(other(x), want, rtol=0, atol=1e-10)


def test_state_dict_moves_between_torch_and_fused_models():
    ref = Model()
    model = fused_rnn.to_fused(Model())
    model.load_state_dict(ref.state_dict())
    x = torch.randn(B, T, I)
    torch.testing.assert_close(model(x), ref(x), rtol=1e-5, atol=1e-6)


def test_rejects_non_modules():
    with pytest.raises(TypeError, match="expected an nn.Module, got int"):
        fused_rnn.to_fused(3)
