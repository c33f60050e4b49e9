"""Bad arguments to the ops, on every device: a clear error naming the argument, what was
expected and what came, never a crash or a wrong answer."""
import pytest
import torch

from fused_rnn import functional

from checks import DEVICES
from op_cases import GATES, make_case

pytestmark = pytest.mark.usefixtures("poison_buffers")


def _lstm(device, x, h0=None, c0=None, w_ih=None, w_hh=None, batch_sizes=None, H=5, I=3):
    """functional.lstm with the given arguments (made on the CPU, moved to `device`; batch_sizes
    stays on the CPU) and well-formed ones for the rest."""
    B = x.size(1) if batch_sizes is None and x.dim() == 3 else (int(batch_sizes[0]) if batch_sizes is not None else 2)
    gh = GATES["lstm"] * H
    h0 = torch.randn(B, H) if h0 is None else h0
    c0 = torch.randn(B, H) if c0 is None else c0
    w_ih = torch.randn(gh, I) if w_ih is None else w_ih
    w_hh = torch.randn(gh, H) if w_hh is None else w_hh
    x, h0, c0, w_ih, w_hh = (t.to(device) for t in (x, h0, c0, w_ih, w_hh))
    return functional.lstm(x, (h0, c0), w_ih, w_hh, batch_sizes=batch_sizes)


def _complex_lstm(device):
    gh = GATES["lstm"] * 5
    x, w_ih, w_hh = (torch.randn(*shape, dtype=torch.complex64, device=device)
                     for shape in [(5, 2, 3), (gh, 3), (gh, 5)])
    return functional.lstm(x, None, w_ih, w_hh)


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda d: _lstm(d, torch.randn(5, 2, 3, 1)), "expected input to be 3-D"),
        (lambda d: _lstm(d, torch.randn(5, 3)), "expected input to be 3-D"),
        (lambda d: _lstm(d, torch.randn(0, 2, 3)), "T = 0"),
        (lambda d: _lstm(d, torch.randn(5, 2, 4)), "expected weight_ih of shape"),
        (lambda d: _lstm(d, torch.randn(5, 2, 3), h0=torch.randn(3, 5)), "expected h0 of shape"),
        (lambda d: _lstm(d, torch.randn(5, 2, 3), c0=torch.randn(2, 4)), "expected c0 of shape"),
        (lambda d: _lstm(d, torch.randn(5, 2, 3), w_hh=torch.randn(GATES["lstm"] * 5, 4)),
         "expected weight_hh of shape"),
        (lambda d: _lstm(d, torch.randn(5, 2, 3), w_hh=torch.randn(7, 5)), "expected weight_hh to be 2-D"),
        (lambda d: _lstm(d, torch.randn(5, 2, 3), h0=torch.randn(2, 5, dtype=torch.float64)),
         "expected h0 to have dtype"),
        (lambda d: _lstm(d, torch.randn(5, 2, 3, dtype=torch.float64)), "expected weight_ih to have dtype"),
        (lambda d: _lstm(d, torch.randn(6, 3), batch_sizes=torch.tensor([2, 3, 1])), "non-increasing"),
        (lambda d: _lstm(d, torch.randn(7, 3), batch_sizes=torch.tensor([3, 2, 1])), "sum to 6"),
        (lambda d: _lstm(d, torch.randn(6, 3), batch_sizes=torch.tensor([3, 3, 0])), "positive"),
        (lambda d: _lstm(d, torch.randn(6, 3), batch_sizes=torch.tensor([3.0, 2.0, 1.0])), "int64 CPU"),
        # Summing to 2**64 + 6 wrapped around to the 6 rows and passed, then asked for 8 TB.
        (lambda d: _lstm(d, torch.randn(6, 3), h0=torch.zeros(1, 1).expand(2**62 + 2, 1),
                         c0=torch.zeros(1, 1).expand(2**62 + 2, 1), H=1,
                         batch_sizes=torch.tensor([2**62 + 2, 2**62 + 2, 2**62 + 1, 2**62 + 1])),
         "batch_sizes sum to more than the 6 rows"),
        (lambda d: _lstm(d, torch.randn(5, 2, 4)), r"input_size from input"),
        (lambda d: _complex_lstm(d), "floating-point input, but got ComplexFloat"),
        (lambda d: _lstm(d, torch.randint(0, 3, (5, 2, 3))), "floating-point input"),
    ],
)
@pytest.mark.parametrize("device", DEVICES)
def test_bad_input_raises_clear_error(device, make, message):
    with pytest.raises(RuntimeError, match=message):
        make(device)


@pytest.mark.parametrize("device", DEVICES)
def test_bad_nonlinearity(device):
    case = make_case("rnn_tanh", device=device)
    with pytest.raises(ValueError, match="Unknown nonlinearity 'sigmoid'"):
        functional.rnn(case.input, case.states[0], *case.weights, nonlinearity="sigmoid")


def _backward_args(case, grad_h_n=None, grad_c_n=None):
    """(backward op, its arguments) after the forward op of `case` with need_workspace=True:
    grads for every output, with grad_h_n / grad_c_n replaced where given."""
    name, args = case.op_args(need_workspace=True)
    outputs = getattr(torch.ops.fused_rnn, name)(*args)
    grads = [torch.randn_like(o) for o in outputs[:-1]]
    if grad_h_n is not None:
        grads[1] = grad_h_n
    if grad_c_n is not None:
        grads[2] = grad_c_n
    forward_args = list(args[:-1])  # without need_workspace
    reverse = forward_args.pop()
    backward = getattr(torch.ops.fused_rnn, name.replace("forward", "backward"))
    return backward, (*grads, *forward_args, outputs[-1], reverse)


@pytest.mark.parametrize("device", DEVICES)
def test_backward_op_checks_workspace_dtype_and_device(device):
    """Before: a float32 workspace of the right shape failed in data_ptr<double> with "expected
    scalar type Double but found Float", naming no argument."""
    case = make_case("gru", device=device, requires_grad=False)
    op, args = _backward_args(case)
    args = list(args)
    args[-2] = args[-2].float()
    with pytest.raises(RuntimeError, match="expected workspace to have the dtype and device of input"):
        op(*args)


@pytest.mark.parametrize("rows", [2, 6], ids=["fewer_rows", "more_rows"])
@pytest.mark.parametrize("cell,which", [("lstm", "grad_h_n"), ("lstm", "grad_c_n"), ("gru", "grad_h_n"),
                                        ("rnn_tanh", "grad_h_n")])
@pytest.mark.parametrize("device", DEVICES)
def test_backward_op_checks_final_state_grads(device, cell, which, rows):
    """The backward ops index grad_h_n / grad_c_n with the full batch: a smaller one was memory
    corruption, a larger one a gradient of the wrong shape. Now a clear error (B = 4 here)."""
    case = make_case(cell, device=device, B=4, requires_grad=False)
    op, args = _backward_args(case, **{which: torch.randn(rows, 5, dtype=torch.float64, device=device)})
    with pytest.raises(RuntimeError, match=f"expected {which} of shape"):
        op(*args)


@pytest.mark.parametrize("which", range(5))
def test_a_meta_tensor_among_cpu_ones_is_refused(which):
    """A meta tensor makes the dispatcher pick the fake kernel, which accepted it and returned
    meta outputs for a CPU call; it now checks devices as the C++ ops do."""
    case = make_case("gru", requires_grad=False)
    args = [case.input, case.states[0], *case.weight_args()[0]]
    names = ["input", "h0", "weight_ih", "weight_hh", "bias_ih"]
    args[which] = args[which].to("meta")
    expected = "h0" if which == 0 else names[which]  # a meta input: the next tensor is off its device
    with pytest.raises(RuntimeError, match=f"expected {expected} to be on"):
        functional.gru(*args, reverse=case.reverse)
