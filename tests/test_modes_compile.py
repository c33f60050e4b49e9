"""torch.compile of whole models that contain fused modules and cells: full graphs with the
inductor backend, training and inference, new T and B, without the user setting any dynamo
flag, and without changing how torch.nn's own RNNs compile in the same program."""
import pytest
import torch
from torch import nn
from torch._dynamo.utils import counters

import fused_rnn

from checks import assert_close

pytestmark = pytest.mark.usefixtures("seeded")

MODULES = {"LSTM": dict(cls=fused_rnn.LSTM, proj_size=3), "GRU": dict(cls=fused_rnn.GRU, bidirectional=True),
           "RNN": dict(cls=fused_rnn.RNN, nonlinearity="relu")}


class Classifier(nn.Module):
    """A recurrent layer stack and a linear head on the last step: the shape of a real model."""

    def __init__(self, cls, **kw):
        super().__init__()
        self.rnn = cls(4, 6, num_layers=2, batch_first=True, **kw)
        width = (kw.get("proj_size") or 6) * (2 if kw.get("bidirectional") else 1)
        self.head = nn.Linear(width, 3)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(torch.tanh(out[:, -1]))


def eager_and_compiled(name, **compile_kw):
    torch._dynamo.reset()
    kw = dict(MODULES[name])
    model = Classifier(kw.pop("cls"), **kw).double()
    return model, torch.compile(model, fullgraph=True, **compile_kw)


def grads(model):
    return [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("name", sorted(MODULES))
def test_full_graph_inductor_training_and_inference_match_eager(name):
    model, compiled = eager_and_compiled(name, dynamic=True)
    assert isinstance(model.rnn, getattr(nn, name))  # what to_fused and user code rely on
    for T, B in [(5, 3), (7, 2)]:  # a new T and B: dynamic shapes, no failure
        x = torch.randn(B, T, 4, dtype=torch.float64)
        model.zero_grad()
        compiled(x).square().sum().backward()
        got = grads(model)
        model.zero_grad()
        want_out = model(x)
        want_out.square().sum().backward()
        for i, (a, b) in enumerate(zip(got, grads(model))):
            assert_close(a, b, f"grad of parameter {i}, T={T} B={B}")
        with torch.no_grad():
            assert_close(compiled(x), want_out.detach(), f"inference output, T={T} B={B}")


def recompiles(model, shapes, **compile_kw):
    """Frames compiled by torch.compile(model) over calls at `shapes` [(B, T), ...]."""
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager", **compile_kw)
    for B, T in shapes:
        compiled(torch.randn(B, T, 4, dtype=torch.float64))
    return counters["stats"]["unique_graphs"]


@pytest.mark.parametrize("dynamic", [None, True], ids=["automatic", "dynamic"])
def test_recompiles_no_more_than_torch_nn(dynamic):
    """Over new T and B, the model with a fused LSTM compiles no more graphs than the same
    model on torch.nn's LSTM (compiled with torch's allow_rnn, its only way in)."""
    shapes = [(3, 5), (3, 7), (2, 9), (5, 4)]
    fused = Classifier(fused_rnn.LSTM).double()
    reference = Classifier(nn.LSTM).double()
    reference.load_state_dict(fused.state_dict())
    with torch._dynamo.config.patch(allow_rnn=True):
        torch_count = recompiles(reference, shapes, dynamic=dynamic)
    fused_count = recompiles(fused, shapes, dynamic=dynamic)
    assert fused_count <= torch_count, (fused_count, torch_count)


def test_torch_nn_rnns_still_need_their_flag():
    """The fused modules get into dynamo without touching allow_rnn: torch.nn's own LSTM in the
    same program is refused as before (fullgraph), and the flag is still off."""
    torch._dynamo.reset()
    model = Classifier(nn.LSTM)
    with pytest.raises(torch._dynamo.exc.Unsupported, match="Attempted to wrap RNN, GRU, or LSTM"):
        torch.compile(model, fullgraph=True, backend="aot_eager")(torch.randn(2, 3, 4))
    assert torch._dynamo.config.allow_rnn is False
    torch.compile(Classifier(fused_rnn.LSTM), fullgraph=True, backend="aot_eager")(torch.randn(2, 3, 4))
    assert torch._dynamo.config.allow_rnn is False


def test_cell_loop_full_graph_inductor_matches_eager():
    """A decoder-style Python loop over fused cells, compiled whole."""
    torch._dynamo.reset()
    cell, head = fused_rnn.LSTMCell(4, 5).double(), nn.Linear(5, 4).double()

    def unroll(x, steps):
        h = c = x.new_zeros(x.shape[0], 5)
        outs = []
        for _ in range(steps):
            h, c = cell(x, (h, c))
            x = head(h)
            outs.append(x)
        return torch.stack(outs)

    x = torch.randn(3, 4, dtype=torch.float64)
    assert_close(torch.compile(unroll, fullgraph=True)(x, 4), unroll(x, 4), "unrolled cell outputs")
