"""Bad arguments to fused_rnn.functional, on every device: the steps in Python before the op
(hx's unpacking, the zero states for hx=None) give a clear error naming the argument too,
a TypeError for a wrong type and the op's RuntimeError for a wrong shape."""
import pytest
import torch

from fused_rnn import functional

from checks import DEVICES
from op_cases import OP, make_case


def _call(cell, device, packed=False, **replace):
    """functional.<cell's op> on make_case's arguments, those named in `replace` (input, hx,
    weight_ih, weight_hh, bias_ih, bias_hh, weight_hr, batch_sizes) replaced."""
    case = make_case(cell, packed=packed, device=device, requires_grad=False)
    lstm = cell.startswith("lstm")
    names = ["weight_ih", "weight_hh", "bias_ih", "bias_hh"] + (["weight_hr"] if lstm else [])
    args = dict(input=case.input, hx=tuple(case.states) if lstm else case.states[0],
                **dict(zip(names, case.weights)), batch_sizes=case.batch_sizes)
    args.update(replace)
    extra = {"nonlinearity": cell[4:]} if OP[cell] == "rnn" else {}
    return getattr(functional, OP[cell])(**args, **extra)


def _h(device, B=4):
    return torch.randn(B, 5, dtype=torch.float64, device=device)


def _packed_sizes(cell):
    return make_case(cell, packed=True, requires_grad=False).batch_sizes


# name: (cell, packed, the replaced arguments on a device, the exception, its message)
CASES = {
    "gru hx a tuple": ("gru", False, lambda d: dict(hx=(_h(d),)), TypeError,
                       r"gru: expected hx to be a Tensor or None, but got tuple"),
    "rnn hx a tuple": ("rnn_tanh", False, lambda d: dict(hx=(_h(d),)), TypeError,
                       r"rnn_tanh: expected hx to be a Tensor or None, but got tuple"),
    "lstm hx a tensor": ("lstm", False, lambda d: dict(hx=_h(d)), TypeError,
                         r"lstm: expected hx to be a pair \(h0, c0\) of tensors or None, but got Tensor"),
    "lstm hx of one": ("lstm", False, lambda d: dict(hx=(_h(d),)), RuntimeError,
                       r"lstm: expected hx to be a pair \(h0, c0\) of tensors, but got a tuple of 1"),
    "lstm hx of three": ("lstm", False, lambda d: dict(hx=[_h(d)] * 3), RuntimeError, r"but got a list of 3"),
    "lstm c0 None": ("lstm", False, lambda d: dict(hx=(_h(d), None)), TypeError,
                     r"lstm: expected c0 to be a Tensor, but got NoneType"),
    "batch_sizes a list": ("gru", True, lambda d: dict(hx=None, batch_sizes=_packed_sizes("gru").tolist()),
                           TypeError, r"gru: expected batch_sizes to be a Tensor or None, but got list"),
    "batch_sizes 2-D": ("lstm", True, lambda d: dict(hx=None, batch_sizes=_packed_sizes("lstm")[None]),
                        RuntimeError, r"lstm: expected batch_sizes to be a 1-D int64 CPU tensor, but got a 2-D Long"),
    "batch_sizes 0-D": ("rnn_relu", True, lambda d: dict(hx=None, batch_sizes=torch.tensor(4)), RuntimeError,
                        r"rnn_relu: expected batch_sizes to be a 1-D int64 CPU tensor, but got a 0-D Long"),
    "weight_hh 1-D": ("lstm", False, lambda d: dict(hx=None, weight_hh=torch.randn(20, dtype=torch.float64, device=d)),
                      RuntimeError, r"lstm: expected weight_hh to be 2-D"),
    "weight_hh 0-D": ("gru", False, lambda d: dict(hx=None, weight_hh=torch.tensor(1.0, dtype=torch.float64, device=d)),
                      RuntimeError, r"gru: expected weight_hh to be 2-D"),
    "weight_ih None": ("rnn_tanh", False, lambda d: dict(weight_ih=None), TypeError,
                       r"rnn_tanh: expected weight_ih to be a Tensor, but got NoneType"),
    "input a list": ("lstm", False, lambda d: dict(input=[[1.0]]), TypeError,
                     r"lstm: expected input to be a Tensor, but got list"),
    "weight_hr a str": ("lstm_proj", False, lambda d: dict(weight_hr="w"), TypeError,
                        r"lstm: expected weight_hr to be a Tensor or None, but got str"),
    "bias_hh a float": ("gru", False, lambda d: dict(bias_hh=1.0), TypeError,
                        r"gru: expected bias_hh to be a Tensor or None, but got float"),
}


@pytest.mark.parametrize("cell,packed,replace,error,message", CASES.values(), ids=CASES.keys())
@pytest.mark.parametrize("device", DEVICES)
def test_bad_argument_named(device, cell, packed, replace, error, message):
    with pytest.raises(error, match=message):
        _call(cell, device, packed, **replace(device))
