"""The single-step ops (<cell>_cell_forward / _backward: the cells, decoder loops and every T = 1
layer call) on every device: values and every gradient against the float64 reference in each
dtype, gradcheck and gradgradcheck, opcheck, torch.compile of a Python loop over steps, and a
T = 1 module call bit-identical to a cell call."""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import fused_rnn
from fused_rnn import _ops, functional, reference

from checks import DEVICES, DTYPE_IDS
from op_cases import CELLS, LOW_PRECISION, OP, check_against_reference, make_case, nn_scaled

pytestmark = pytest.mark.usefixtures("poison_buffers")

DTYPES = [torch.float64, torch.float32, *LOW_PRECISION]
# H = 37: a partial SIMD vector on the CPU, no multiple of a CUDA thread's units.
SIZES = dict(I=11, H=37, P=5)


@pytest.mark.parametrize("hx", [True, False], ids=["hx", "no_hx"])
@pytest.mark.parametrize("B", [0, 1, 5])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
@pytest.mark.parametrize("device", DEVICES)
def test_step_matches_reference(device, dtype, cell, bias, B, hx):
    case = nn_scaled(make_case(cell, bias=bias, step=True, hx=hx, B=B, dtype=dtype, device=device, **SIZES))
    # relu's derivative jumps at 0, which rounding can cross in fp16/bf16 (test_ops_numerics).
    check_against_reference(case, check_grads=not (cell == "rnn_relu" and dtype in LOW_PRECISION))


@pytest.mark.parametrize("hx", [True, False], ids=["hx", "no_hx"])
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("device", DEVICES)
def test_step_gradcheck_and_gradgradcheck(device, cell, hx):
    """Double backward goes through the reference (fused_rnn/_ops.py), as for the layer ops."""
    case = make_case(cell, step=True, hx=hx, device=device, B=3, I=2, H=3, P=2)
    assert torch.autograd.gradcheck(case.function(), case.leaves())
    assert torch.autograd.gradgradcheck(case.function(), case.leaves())


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=DTYPE_IDS.get)
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("device", DEVICES)
def test_step_opcheck(device, cell, dtype):
    """Both ops, the forward with its workspace (a gradient possible) and without; with zoneout's
    masks too."""
    kw = dict(step=True, dtype=dtype, device=device, **SIZES)
    zoned = make_case(cell, masks=("zoneout",), **kw).op_args(need_workspace=True)[1]
    torch.library.opcheck(getattr(torch.ops.fused_rnn, make_case(cell, **kw).op_args(True)[0]), zoned)
    name, args = make_case(cell, **kw).op_args(need_workspace=True)
    forward = getattr(torch.ops.fused_rnn, name)
    torch.library.opcheck(forward, args)
    torch.library.opcheck(forward, make_case(cell, requires_grad=False, **kw).op_args(need_workspace=False)[1])
    with torch.no_grad():
        outs = forward(*args)
    grads = [torch.randn_like(o) for o in outs[:-1]]
    inputs = [a.detach() if torch.is_tensor(a) else a for a in args[:-1]]
    backward = getattr(torch.ops.fused_rnn, name.replace("forward", "backward"))
    n_grads = _ops.STEP_SPECS[OP[cell]].n_differentiable  # the masks (None here) get none
    for mask in ([True] * n_grads, [i % 2 == 0 for i in range(n_grads)]):
        torch.library.opcheck(backward, (*grads, *inputs, outs[-1], mask))


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("device", DEVICES)
def test_step_backward_computes_what_its_mask_asks_for(device, cell):
    """output_mask: a False entry gives an empty tensor, the others the full backward's values."""
    name, args = make_case(cell, step=True, device=device, **SIZES).op_args(need_workspace=True)
    with torch.no_grad():
        outs = getattr(torch.ops.fused_rnn, name)(*args)
    grads = [torch.randn_like(o) for o in outs[:-1]]
    inputs = [a.detach() if torch.is_tensor(a) else a for a in args[:-1]]
    backward = getattr(torch.ops.fused_rnn, name.replace("forward", "backward"))
    n_grads = _ops.STEP_SPECS[OP[cell]].n_differentiable  # the masks (None here) get none
    full = backward(*grads, *inputs, outs[-1], [True] * n_grads)
    for skipped in range(n_grads):
        mask = [i != skipped for i in range(n_grads)]
        partial = backward(*grads, *inputs, outs[-1], mask)
        for i, (p, f) in enumerate(zip(partial, full)):
            assert p.numel() == 0 if i == skipped else torch.equal(p, f), (skipped, i)


class _OpsCalled(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func.name())
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("grad", [False, True], ids=["inference", "training"])
def test_layer_of_one_step_runs_the_step_op(grad, packed):
    """T = 1 (padded, or packed with one batch size) goes to the single-step op."""
    case = make_case("gru", T=1, B=3, requires_grad=grad)
    x, batch_sizes = case.input, None
    if packed:
        x, batch_sizes = x[0], torch.tensor([3])
    with _OpsCalled() as called:
        functional.gru(x, case.states[0], *case.weight_args()[0], batch_sizes=batch_sizes)
    assert "fused_rnn::gru_cell_forward" in called.names and "fused_rnn::gru_forward" not in called.names


@pytest.mark.parametrize("name,kwargs", [("LSTM", {}), ("LSTM", {"proj_size": 3}), ("GRU", {}),
                                         ("RNN", {"nonlinearity": "relu"})])
@pytest.mark.parametrize("device", DEVICES)
def test_module_of_one_step_is_bit_identical_to_its_cell(device, name, kwargs):
    """A one-layer module called with T = 1 and the cell with the same weights give the same
    bits, forward and backward (both run the single-step op)."""
    torch.manual_seed(0)
    module = getattr(fused_rnn, name)(6, 5, **kwargs).to(device)
    x = torch.randn(1, 4, 6, device=device, requires_grad=True)
    out, state = module(x)
    step = getattr(functional, f"{name.lower()}_cell")
    weights = [w for w in module._flat_weights]
    cell_kwargs = {"nonlinearity": "relu"} if name == "RNN" else {}
    if name == "LSTM":
        weights = weights[:4] + ([weights[4]] if "proj_size" in kwargs else [None])
    cell_state = step(x[0], None, *weights, **cell_kwargs)
    h = cell_state[0] if name == "LSTM" else cell_state
    assert torch.equal(out[0], h) and torch.equal(state[0][0] if name == "LSTM" else state[0], h)
    grads_module = torch.autograd.grad(out.square().sum(), [x, *module.parameters()])
    grads_cell = torch.autograd.grad(h.square().sum(), [x, *module.parameters()])
    for a, b in zip(grads_module, grads_cell):
        assert torch.equal(a, b)


@pytest.mark.parametrize("device", DEVICES)
def test_compiled_loop_over_cells_matches_eager(device):
    """torch.compile(fullgraph=True) of a Python loop over fused cells, forward and backward."""
    torch.manual_seed(0)
    lstm, gru = fused_rnn.LSTMCell(4, 6).to(device), fused_rnn.GRUCell(6, 6).to(device)
    xs = torch.randn(5, 3, 4, device=device)

    def run(xs):
        h = c = g = None
        total = 0
        for x in xs:
            h, c = lstm(x, None if h is None else (h, c))
            g = gru(h, g)
            total = total + g.square().sum()
        return total

    eager = run(xs)
    eager_grads = torch.autograd.grad(eager, list(lstm.parameters()) + list(gru.parameters()))
    compiled = torch.compile(run, fullgraph=True)(xs)
    compiled_grads = torch.autograd.grad(compiled, list(lstm.parameters()) + list(gru.parameters()))
    torch.testing.assert_close(compiled, eager)
    for a, b in zip(compiled_grads, eager_grads):
        torch.testing.assert_close(a, b)


def test_reference_cells_take_no_hx():
    x = torch.randn(3, 4, dtype=torch.float64)
    w_ih, w_hh = torch.randn(8, 4, dtype=torch.float64), torch.randn(8, 2, dtype=torch.float64)
    h, c = reference.lstm_cell(x, None, w_ih, w_hh)
    zeros = torch.zeros(3, 2, dtype=torch.float64)
    assert torch.equal(h, reference.lstm_cell(x, (zeros, zeros), w_ih, w_hh)[0])


@pytest.mark.parametrize("device", DEVICES)
def test_eager_training_node_is_cpp_and_behaves_like_autograd(device):
    """Eager training calls get their autograd node from C++ (csrc/step_autograd.h): a second
    backward raises torch's error unless the graph is retained, an unused state gets a zero
    gradient, and only the inputs that require grad receive one."""
    case = make_case("lstm_proj", step=True, device=device, B=3)
    h, c = case.run(functional)
    assert h.grad_fn.name() == "FusedRnnStepBackward" and h.grad_fn is c.grad_fn
    first = torch.autograd.grad(h.sum(), case.leaves(), retain_graph=True)
    second = torch.autograd.grad(h.sum(), case.leaves(), retain_graph=False)
    expected = torch.autograd.grad(case.run(reference)[0].sum(), case.leaves())
    for a, b, e in zip(first, second, expected):
        assert torch.equal(a, b)
        torch.testing.assert_close(a, e)
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        torch.autograd.grad(h.sum(), case.leaves())
    frozen = case.with_leaves([t.detach().requires_grad_(i >= 3) for i, t in enumerate(case.leaves())])
    h, _ = frozen.run(functional)
    h.sum().backward()
    assert all((t.grad is None) == (i < 3) for i, t in enumerate(frozen.leaves()))


@pytest.mark.parametrize("what,change,message", [
    ("workspace", lambda a: {**a, "ws": a["ws"][:, :3]}, "expected workspace of shape"),
    ("workspace dtype", lambda a: {**a, "ws": a["ws"].float()}, "expected workspace to have the dtype"),
    ("grad_h_n", lambda a: {**a, "g": a["g"][:2]}, "expected grad_h_n of shape"),
    ("input", lambda a: {**a, "x": a["x"][None]}, "expected input to be 2-D"),
])
def test_step_ops_refuse_bad_arguments(what, change, message):
    """The single-step ops check every argument they read through a pointer, naming it."""
    case = make_case("lstm", step=True, requires_grad=False)
    name, args = case.op_args(need_workspace=True)
    h, c, ws = torch.ops.fused_rnn.lstm_cell_forward(*args)
    a = change({"x": case.input, "g": h, "ws": ws})
    with pytest.raises(RuntimeError, match=message):
        torch.ops.fused_rnn.lstm_cell_backward(a["g"], c, a["x"], *args[1:-1], a["ws"], [True] * 13)
