"""The ops' autograd on every device: gradcheck and gradgradcheck in float64, the workspace
kept only where a gradient is possible, repeated and partial backward passes, inputs left
alone; on CUDA, bias gradients without atomics."""
import pytest
import torch

from fused_rnn import functional, reference

from checks import DEVICES
from op_cases import CELLS, GRID, GRID_IDS, make_case, nn_scaled

pytestmark = pytest.mark.usefixtures("poison_buffers")

GRADCHECK_SIZES = dict(T=3, B=3, I=2, H=3, P=2)


@pytest.mark.parametrize("cell,bias,packed,reverse", GRID, ids=GRID_IDS)
@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck(device, cell, bias, packed, reverse):
    case = make_case(cell, bias=bias, packed=packed, reverse=reverse, device=device, **GRADCHECK_SIZES)
    assert torch.autograd.gradcheck(case.function(), case.leaves())


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("device", DEVICES)
def test_gradgradcheck(device, cell, packed):
    """Double backward goes through the reference (fused_rnn/_ops.py)."""
    case = make_case(cell, packed=packed, reverse=packed, device=device, **GRADCHECK_SIZES)
    assert torch.autograd.gradgradcheck(case.function(), case.leaves())


@pytest.mark.parametrize("device", DEVICES)
def test_workspace_only_when_a_gradient_is_possible(device):
    case = make_case("lstm", requires_grad=False, device=device)
    name, args = case.op_args(need_workspace=False)
    assert torch.ops.fused_rnn.lstm_forward(*args)[-1].numel() == 0
    case = make_case("lstm", device=device)
    with torch.no_grad():
        out, _ = functional.lstm(case.input, tuple(case.states), *case.weight_args()[0])
    assert out.grad_fn is None


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("device", DEVICES)
def test_backward_twice_gives_identical_grads(device, cell):
    case = make_case(cell, packed=True, dtype=torch.float32, device=device)
    outs = case.run(functional)
    loss = sum((o * torch.randn_like(o)).sum() for o in outs)
    first = torch.autograd.grad(loss, case.leaves(), retain_graph=True)
    second = torch.autograd.grad(loss, case.leaves())
    for a, b in zip(first, second):
        assert torch.equal(a, b)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("cell", CELLS)
def test_bias_grads_are_deterministic(cell, dtype):
    """Bias gradients are reductions over all rows (thousands here, so many blocks): two
    backward passes give bitwise the same result (no atomics)."""
    case = nn_scaled(make_case(cell, packed=False, dtype=dtype, device="cuda", T=40, B=64, I=16, H=64, P=32))
    outs = case.run(functional)
    grad_out = [torch.randn_like(o) for o in outs]
    biases = [w for w in case.weights[2:4]]
    first = torch.autograd.grad(outs, biases, grad_out, retain_graph=True)
    second = torch.autograd.grad(outs, biases, grad_out)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


@pytest.mark.parametrize("device", DEVICES)
def test_eval_mode_backward_and_unused_outputs(device):
    """Only h_n used: the other outputs' grads are zeros, not an error."""
    case = make_case("lstm", packed=True, device=device)
    _, h, _ = case.run(functional)
    h.sum().backward()
    assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in case.leaves())


@pytest.mark.parametrize("device", DEVICES)
def test_inputs_are_not_modified(device):
    case = make_case("gru", packed=True, device=device)
    before = [t.detach().clone() for t in case.leaves()]
    outs = case.run(functional)
    sum(o.sum() for o in outs).backward()
    for t, b in zip(case.leaves(), before):
        assert torch.equal(t.detach(), b)


@pytest.mark.parametrize("device", DEVICES)
def test_tied_weights_double_backward(device):
    """One tensor in two slots (weight_ih is weight_hh, bias_ih is bias_hh): with create_graph
    the gradient goes through the reference and must count each use once, as the reference
    itself does (it was doubled)."""
    g = torch.Generator().manual_seed(0)
    x, h0, c0 = (torch.randn(*shape, generator=g, dtype=torch.float64) for shape in [(4, 3, 5), (3, 5), (3, 5)])
    w = (torch.randn(20, 5, generator=g, dtype=torch.float64) * 0.5).requires_grad_()
    b = (torch.randn(20, generator=g, dtype=torch.float64) * 0.5).requires_grad_()

    def weight_grads(module, dev):
        wd, bd = w.to(dev), b.to(dev)
        out, _ = module.lstm(x.to(dev), (h0.to(dev), c0.to(dev)), wd, wd, bd, bd)
        return torch.autograd.grad(out.sum(), [wd, bd], create_graph=True)

    for got, want in zip(weight_grads(functional, device), weight_grads(reference, "cpu")):
        torch.testing.assert_close(got.detach().cpu(), want.detach(), rtol=1e-10, atol=1e-10)
