"""Drop-in replacements for ``torch.nn.LSTM / GRU / RNN`` and their cells.

Each module here subclasses its torch.nn counterpart and overrides only ``forward``. So the
constructor (positional order, validation and messages), parameter names, shapes,
registration order and initialization (the same draws from the random generator),
``state_dict``, ``flatten_parameters``, ``all_weights``, ``extra_repr``, ``.to()``, deepcopy
and pickling are torch.nn's own, and ``isinstance(m, torch.nn.LSTM)`` stays true.

``forward`` follows torch.nn's forward step by step: the same input/hidden checks in the same
order (reusing ``check_forward_args`` / ``check_input`` / ``permute_hidden``), the same
unbatched and ``batch_first`` handling, the same ``PackedSequence`` permutations. Errors that
torch.nn raises from inside its C++ kernels are mirrored here (``_check_*`` helpers), because
the fused ops below do not run those kernels. Then layers x directions are composed from
``fused_rnn.functional`` (one op call per layer and direction, no Python loop over time), with
dropout between layers exactly where torch.nn puts it: ``torch.nn.functional.dropout`` on the
concatenated output of every layer but the last, in training mode, when ``dropout != 0``.
On CPU this draws the very same masks as torch.nn for the same seed.
"""
import torch
import torch.nn.functional as torch_F
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from . import _torch_private, functional

__all__ = ["LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell"]


# ---------------------------------------------------------------------------------------------
# Errors torch.nn raises from its C++ kernels (ATen), written out so the messages match.
# ---------------------------------------------------------------------------------------------

def _scalar_type_name(dtype):
    """c10's name of a dtype ("Float", "Double", "BFloat16", ...), as ATen's messages print it."""
    name = torch.empty((), dtype=dtype).type()  # e.g. "torch.DoubleTensor"
    return name[len("torch."):-len("Tensor")]


def _check_matmul_dtype(mat1, weight):
    """The check ATen's mm/addmm makes when ``mat1 @ weight.T`` mixes dtypes."""
    if mat1.dtype != weight.dtype:
        raise RuntimeError(
            "mat1 and mat2 must have the same dtype, but got "
            f"{_scalar_type_name(mat1.dtype)} and {_scalar_type_name(weight.dtype)}"
        )


def _match_cell_state_dtype(c, weight, what):
    """torch.nn's LSTM accepts a cell state whose dtype promotes to the weights' (the result has
    the weights' dtype) and rejects the rest. The fused op wants one dtype: convert, or reject."""
    if c.dtype == weight.dtype:
        return c
    if c.is_floating_point() and torch.promote_types(c.dtype, weight.dtype) == weight.dtype:
        return c.to(weight.dtype)
    raise RuntimeError(
        f"{what} must have the weights' dtype {weight.dtype} (or one that promotes to it), "
        f"got {c.dtype}"
    )


def _check_cell_input(input, weight_ih):
    # ATen check_rnn_cell_forward_input
    if input.size(1) != weight_ih.size(1):
        raise RuntimeError(
            f"input has inconsistent input_size: got {input.size(1)} expected {weight_ih.size(1)}"
        )


def _check_cell_hidden(input, hx, hidden_size, label):
    # ATen check_rnn_cell_forward_hidden
    if input.size(0) != hx.size(0):
        raise RuntimeError(
            f"Input batch size {input.size(0)} doesn't match hidden{label} batch size {hx.size(0)}"
        )
    if hx.size(1) != hidden_size:
        raise RuntimeError(
            f"hidden{label} has inconsistent hidden_size: got {hx.size(1)}, expected {hidden_size}"
        )


# ---------------------------------------------------------------------------------------------
# Multi-layer modules.
# ---------------------------------------------------------------------------------------------

class _FusedRNNMixin:
    """forward() for the three RNNBase subclasses below; everything else is torch.nn's."""

    def _current_weights(self):
        # torch.nn's own refresh: re-reads every weight by name when one has been replaced
        # (assignment, torch.func.functional_call, parametrizations / weight_norm recompute).
        return _torch_private.current_flat_weights(self)

    def _input_dim_error(self, dim):
        if self.mode == "LSTM":
            return ValueError(f"LSTM: Expected input to be 2D or 3D, got {dim}D instead")
        if self.mode == "GRU":
            return ValueError(f"GRU: Expected input to be 2D or 3D, got {dim}D instead")
        return ValueError(f"RNN: Expected input to be 2D or 3D, got {dim}D tensor instead")

    def _check_hx_dims(self, hx, is_batched):
        """torch.nn's rank checks of a given hx; unsqueezes the batch dim for unbatched input."""
        want = 3 if is_batched else 2
        kind = "batched 3-D" if is_batched else "unbatched 2-D"
        if self.mode == "LSTM":
            if hx[0].dim() != want or hx[1].dim() != want:
                raise RuntimeError(
                    f"For {kind} input, hx and cx should also be {want}-D but got "
                    f"({hx[0].dim()}-D, {hx[1].dim()}-D) tensors"
                )
            return hx if is_batched else (hx[0].unsqueeze(1), hx[1].unsqueeze(1))
        if hx.dim() != want:
            raise RuntimeError(
                f"For {kind} input, hx should also be {want}-D but got {hx.dim()}-D tensor"
            )
        return hx if is_batched else hx.unsqueeze(1)

    def _check_lstm_packed(self, input, hx, batch_sizes, weights):
        """torch.nn's LSTM hands packed input to its kernel unchecked; mirror what the kernel
        rejects (the input GEMM's dtype and shape errors), and check hx as the padded path does."""
        if input.dim() != 2:
            self.check_input(input, batch_sizes)
        _check_two_states(hx, "lstm")
        weight_ih = weights[0]
        _check_matmul_dtype(input, weight_ih)
        if input.size(-1) != weight_ih.size(1):
            raise RuntimeError(
                f"mat1 and mat2 shapes cannot be multiplied ({input.size(0)}x{input.size(1)} "
                f"and {weight_ih.size(1)}x{weight_ih.size(0)})"
            )
        if hx is not None:
            self.check_forward_args(input, hx, batch_sizes)

    def _check_hidden_dtypes(self, hx, weights):
        """The dtype errors torch.nn's kernels raise for hx (it is the left operand of h @ W_hh^T).
        Returns hx with an LSTM cell state converted where torch.nn would promote it."""
        if hx is None:
            return hx
        weight_hh = weights[1]
        if self.mode == "LSTM":
            _check_matmul_dtype(hx[0], weight_hh)
            return hx[0], _match_cell_state_dtype(hx[1], weight_hh, "hx[1] (c_0)")
        _check_matmul_dtype(hx, weight_hh)
        return hx

    def _run_layers(self, input, hx, batch_sizes, weights):
        """input: time-major [T, B, I] or packed data [N, I]; hx: checked states or None.

        Returns (output of the last layer, h_n [L*D, B, ...], c_n or None)."""
        layer_op, op_kwargs = _LAYER_OPS[self.mode]
        num_directions = 2 if self.bidirectional else 1
        per_direction = len(weights) // (self.num_layers * num_directions)
        states_n = []  # per layer and direction: h, or (h, c)
        layer_input = input
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(num_directions):
                index = layer * num_directions + direction
                out, state_n = layer_op(
                    layer_input, _layer_state(hx, index),
                    *self._layer_weights(weights[index * per_direction:(index + 1) * per_direction]),
                    batch_sizes=batch_sizes, reverse=direction == 1, **op_kwargs,
                )
                outputs.append(out)
                states_n.append(state_n)
            layer_output = outputs[0] if num_directions == 1 else torch.cat(outputs, -1)
            # torch.nn: dropout on the outputs of every layer but the last, in training only.
            if self.dropout != 0 and self.training and layer < self.num_layers - 1:
                layer_output = torch_F.dropout(layer_output, self.dropout, training=True)
            layer_input = layer_output
        if self.mode == "LSTM":
            return layer_input, torch.stack([h for h, _ in states_n]), torch.stack([c for _, c in states_n])
        return layer_input, torch.stack(states_n), None

    def _layer_weights(self, w):
        """One layer and direction's slice of _flat_weights -> the functional op's
        (weight_ih, weight_hh, bias_ih, bias_hh[, weight_hr]), absent ones None."""
        biases = (w[2], w[3]) if self.bias else (None, None)
        if self.mode != "LSTM":
            return (w[0], w[1], *biases)
        return (w[0], w[1], *biases, w[-1] if self.proj_size > 0 else None)

    def forward(self, input, hx=None):
        weights = self._current_weights()
        is_lstm = self.mode == "LSTM"
        orig_input = input
        batch_sizes = sorted_indices = unsorted_indices = None
        is_batched = True
        if isinstance(orig_input, PackedSequence):
            input, batch_sizes, sorted_indices, unsorted_indices = orig_input
            if hx is not None:
                # Row b of hx belongs to the b-th sequence the user passed in.
                hx = self.permute_hidden(hx, sorted_indices)
            if is_lstm:
                self._check_lstm_packed(input, hx, batch_sizes, weights)
            elif hx is None:
                self.check_input(input, batch_sizes)
            else:
                self.check_forward_args(input, hx, batch_sizes)
        else:
            if input.dim() not in (2, 3):
                raise self._input_dim_error(input.dim())
            is_batched = input.dim() == 3
            batch_dim = 0 if self.batch_first else 1
            if not is_batched:
                input = input.unsqueeze(batch_dim)
            if hx is not None:
                hx = self._check_hx_dims(hx, is_batched)
            if hx is None:
                self.check_input(input, batch_sizes)  # zeros states always have the right size
            else:
                self.check_forward_args(input, hx, batch_sizes)
            if is_lstm:
                _check_two_states(hx, "lstm")
            if input.size(1 if self.batch_first else 0) == 0:
                raise RuntimeError("Expected sequence length to be larger than 0 in RNN")
        hx = self._check_hidden_dtypes(hx, weights)

        if batch_sizes is None and self.batch_first:
            input = input.transpose(0, 1)
        output, h_n, c_n = self._run_layers(input, hx, batch_sizes, weights)
        hidden = (h_n, c_n) if is_lstm else h_n

        if isinstance(orig_input, PackedSequence):
            output = PackedSequence(output, batch_sizes, sorted_indices, unsorted_indices)
            return output, self.permute_hidden(hidden, unsorted_indices)
        if self.batch_first:
            output = output.transpose(0, 1)
        if not is_batched:
            output = output.squeeze(batch_dim)
            hidden = (h_n.squeeze(1), c_n.squeeze(1)) if is_lstm else h_n.squeeze(1)
        return output, self.permute_hidden(hidden, unsorted_indices)


def _layer_state(hx, index):
    """Layer-and-direction `index`'s initial state: h, or (h, c) for LSTM; None when hx is."""
    if hx is None:
        return None
    return tuple(h[index] for h in hx) if isinstance(hx, tuple) else hx[index]


def _check_two_states(hx, what):
    if hx is not None and len(hx) != 2:
        raise RuntimeError(f"{what} expects two hidden states")


# torch.nn's `mode` -> the functional op of one layer and direction, and its extra arguments.
_LAYER_OPS = {
    "LSTM": (functional.lstm, {}),
    "GRU": (functional.gru, {}),
    "RNN_TANH": (functional.rnn, {"nonlinearity": "tanh"}),
    "RNN_RELU": (functional.rnn, {"nonlinearity": "relu"}),
}


class LSTM(_FusedRNNMixin, nn.LSTM):
    __doc__ = nn.LSTM.__doc__


class GRU(_FusedRNNMixin, nn.GRU):
    __doc__ = nn.GRU.__doc__


class RNN(_FusedRNNMixin, nn.RNN):
    __doc__ = nn.RNN.__doc__


# ---------------------------------------------------------------------------------------------
# Cells: one time step = the layer op with T = 1.
# ---------------------------------------------------------------------------------------------

def _check_cell_hx(cell, hx):
    """torch.nn's checks of a cell's hx type and count (LSTMCell: a pair of tensors)."""
    if cell._n_states == 1 or hx is None:
        return
    if not isinstance(hx, (tuple, list)):
        raise TypeError(
            "lstm_cell(): argument 'hx' (position 2) must be tuple of Tensors, "
            f"not {type(hx).__name__}"
        )
    _check_two_states(hx, "lstm_cell")


def _check_cell_dtypes(input, hx, weight_ih, weight_hh):
    """The dtype errors of torch.nn's cell kernels; returns hx with an LSTM cell state converted
    where torch.nn would promote it."""
    _check_matmul_dtype(input, weight_ih)
    if hx is None:
        return None
    _check_matmul_dtype(hx[0], weight_hh)
    if len(hx) == 1:
        return hx
    return hx[0], _match_cell_state_dtype(hx[1], weight_hh, "hx[1] (c_0)")


class _FusedCellMixin:
    """forward() for the three RNNCellBase subclasses below: torch.nn's checks in torch.nn's
    order, then one step of the layer op (T = 1). States are handled as a tuple throughout:
    (h,) for GRU/RNN cells, (h, c) for LSTMCell."""

    def forward(self, input, hx=None):
        name = type(self).__name__
        if input.dim() not in (1, 2):
            raise ValueError(f"{name}: Expected input to be 1D or 2D, got {input.dim()}D instead")
        states = None if hx is None else (tuple(hx) if self._n_states == 2 else (hx,))
        for i, value in enumerate(states or ()):
            label = f"hx[{i}]" if self._n_states == 2 else "hidden"
            if value.dim() not in (1, 2):
                raise ValueError(f"{name}: Expected {label} to be 1D or 2D, got {value.dim()}D instead")
        is_batched = input.dim() == 2
        if not is_batched:
            input = input.unsqueeze(0)
            states = None if states is None else tuple(s.unsqueeze(0) for s in states)
        nonlinearity = getattr(self, "nonlinearity", None)  # RNNCell's is checked at each call
        if nonlinearity is not None and nonlinearity not in ("tanh", "relu"):
            raise RuntimeError(f"Unknown nonlinearity: {nonlinearity}")
        _check_cell_hx(self, hx)
        _check_cell_input(input, self.weight_ih)
        for index, value in enumerate(states or ()):
            _check_cell_hidden(input, value, self.weight_hh.size(1), index)
        states = _check_cell_dtypes(input, states, self.weight_ih, self.weight_hh)
        out = self._step(input.unsqueeze(0), states)
        out = out if isinstance(out, tuple) else (out,)
        if not is_batched:
            out = tuple(s.squeeze(0) for s in out)
        return out if self._n_states == 2 else out[0]

    def _step(self, x, states):
        """One step of the layer op on x [1, B, I]: the new state(s)."""
        layer_op, op_kwargs = _LAYER_OPS[self._mode]
        state = None if states is None else (states if self._n_states == 2 else states[0])
        _, state_n = layer_op(x, state, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh, **op_kwargs)
        return state_n


class RNNCell(_FusedCellMixin, nn.RNNCell):
    __doc__ = nn.RNNCell.__doc__
    _n_states = 1

    @property
    def _mode(self):  # the nonlinearity may be changed after construction; forward checks it
        return "RNN_TANH" if self.nonlinearity == "tanh" else "RNN_RELU"


class GRUCell(_FusedCellMixin, nn.GRUCell):
    __doc__ = nn.GRUCell.__doc__
    _mode, _n_states = "GRU", 1


class LSTMCell(_FusedCellMixin, nn.LSTMCell):
    __doc__ = nn.LSTMCell.__doc__
    _mode, _n_states = "LSTM", 2
