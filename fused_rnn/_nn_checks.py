"""The errors torch.nn raises from inside its C++ kernels (ATen), mirrored for the fused modules
and cells (fused_rnn/rnn.py), whose ops do not run those kernels: the same checks in the same
order, so that the same bad call gets the same exception type and message."""
import torch
import torch.nn.functional as torch_F

from ._ops import SPECS

# Gates per mode, from the C++ cells (the one place they are written).
GATES = {mode: SPECS[cell].gates for mode, cell in
         (("LSTM", "lstm"), ("GRU", "gru"), ("RNN_TANH", "rnn"), ("RNN_RELU", "rnn"))}


def scalar_type_name(dtype):
    """c10's name of a dtype ("Float", "Double", "BFloat16", ...), as ATen's messages print it."""
    name = torch.empty((), dtype=dtype).type()  # e.g. "torch.DoubleTensor"
    return name[len("torch."):-len("Tensor")]


def check_linear(mat, weight, bias):
    """torch.nn's kernels compute ``mat @ weight.T + bias`` with ATen's linear (the input and, at
    the first step, h). Where dtypes or devices differ, the same call on no rows raises linear's
    own error: addmm's message with a bias, mm's without, each pair of devices its own."""
    dtype, device = weight.dtype, weight.device
    if (mat.dtype != dtype or mat.device != device
            or (bias is not None and (bias.dtype != dtype or bias.device != device))):
        torch_F.linear(mat[:0], weight, bias)


def check_cell_state_device(c, weight_hh):
    """torch.nn's LSTM kernels multiply forget_gate (on the weights' device) by c: that product's
    error where c's device differs (on no rows, as in check_linear)."""
    if c.device != weight_hh.device:
        torch.mul(weight_hh.new_empty((0, c.size(-1))), c[:0])


def cell_state_as_weights(c, weight_hh):
    """c in the weights' dtype where torch.nn's ``forget_gate * c`` promotes to that dtype (then
    the result is torch.nn's); None where it promotes to a wider one."""
    if torch.promote_types(c.dtype, weight_hh.dtype) != weight_hh.dtype:
        return None
    return c.to(weight_hh.dtype)


def check_flat_weights(weights, position):
    """The argument parser's check of the weight list torch.nn hands its kernel (argument
    `position` of _VF.lstm / gru / rnn_*): a weight set to None, or left None by a deleted one."""
    for index, weight in enumerate(weights):
        if not isinstance(weight, torch.Tensor):
            raise TypeError(
                f"expected Tensor as element {index} in argument {position}, but got {type(weight).__name__}"
            )


def check_same_device(input, hx, weights):
    """ATen's check_attributes, the first check of torch.nn's padded kernel: the hidden states,
    then every weight, on input's device."""
    hidden = () if hx is None else (tuple(hx) if isinstance(hx, (tuple, list)) else (hx,))
    for what, tensors in (("hidden", hidden), ("parameter", weights)):
        for t in tensors:
            if t.device != input.device:
                raise RuntimeError(
                    f"Input and {what} tensors are not at the same device, found input tensor at "
                    f"{input.device} and {what} tensor at {t.device}"
                )


def check_two_states(hx, what):
    if hx is not None and len(hx) != 2:
        raise RuntimeError(f"{what} expects two hidden states")


# torch.nn's `mode` -> the functional op of one layer and direction, and its extra arguments.


# ---- cells ----------------------------------------------------------------------------------
# `weights` is the cell's (weight_ih, weight_hh, bias_ih, bias_hh), read once per call.

def check_cell_hx(cell, hx):
    """torch.nn's checks of a cell's hx type and count (LSTMCell: a pair of tensors)."""
    if cell._n_states == 1 or hx is None:
        return
    if not isinstance(hx, (tuple, list)):
        raise TypeError(
            "lstm_cell(): argument 'hx' (position 2) must be tuple of Tensors, "
            f"not {type(hx).__name__}"
        )
    check_two_states(hx, "lstm_cell")


def check_cell_weight_types(cell, weights):
    """The argument parser's check of w_ih and w_hh (positions 3 and 4 of ATen's lstm_cell /
    gru_cell / rnn_*_cell): a weight set to None. The biases may be None."""
    for position, (arg, weight) in enumerate((("w_ih", weights[0]), ("w_hh", weights[1])), start=3):
        if not isinstance(weight, torch.Tensor):
            raise TypeError(
                f"{cell._mode.lower()}_cell(): argument '{arg}' (position {position}) must be Tensor, "
                f"not {type(weight).__name__}"
            )


# The shape checks of ATen's cells; each cell class lists them in its kernel's order.

def check_cell_input(cell, input, states, weights):
    # ATen check_rnn_cell_forward_input
    if input.size(1) != weights[0].size(1):
        raise RuntimeError(
            f"input has inconsistent input_size: got {input.size(1)} expected {weights[0].size(1)}"
        )


def check_cell_weights(cell, input, states, weights):
    # ATen check_rnn_cell_forward_weights (hidden_size from weight_hh)
    gates, hidden_size = GATES[cell._mode], weights[1].size(1)
    for name, weight in (("weight_ih", weights[0]), ("weight_hh", weights[1])):
        rows = weight.size(0)
        if rows != gates * hidden_size:
            raise RuntimeError(
                f"{name} first dim must be {gates} * hidden_size = {gates * hidden_size}, but got {rows}"
            )


def check_cell_hidden(cell, input, states, weights):
    # ATen check_rnn_cell_forward_hidden, for each state; torch.nn's zeros for hx=None have
    # cell.hidden_size columns, which a replaced weight_hh may not match.
    hidden_size = weights[1].size(1)
    for label, hx in enumerate(states or [input.new_empty((input.size(0), cell.hidden_size))]):
        if input.size(0) != hx.size(0):
            raise RuntimeError(
                f"Input batch size {input.size(0)} doesn't match hidden{label} batch size {hx.size(0)}"
            )
        if hx.size(1) != hidden_size:
            raise RuntimeError(
                f"hidden{label} has inconsistent hidden_size: got {hx.size(1)}, expected {hidden_size}"
            )


def check_cell_gemms(cell, input, states, weights):
    """The dtype and device errors of the cell kernel's first operations: ATen's LSTM and Elman
    cells compute h @ W_hh^T before input @ W_ih^T, its GRU cell the other way round; then LSTM's
    forget_gate * c. torch.nn's zero h for hx=None has input's dtype and device."""
    w_ih, w_hh, b_ih, b_hh = weights
    h = states[0] if states else input.new_empty((0, w_hh.size(1)))
    if cell._mode == "GRU":
        check_linear(input, w_ih, b_ih)
        check_linear(h, w_hh, b_hh)
    else:
        check_linear(h, w_hh, b_hh)
        check_linear(input, w_ih, b_ih)
    if states and len(states) == 2:
        check_cell_state_device(states[1], w_hh)
