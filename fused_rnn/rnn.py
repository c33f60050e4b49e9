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

from . import functional as _ops

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
        self._update_flat_weights()
        return self._flat_weights

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
        if hx is not None and len(hx) != 2:
            raise RuntimeError("lstm expects two hidden states")
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
        num_directions = 2 if self.bidirectional else 1
        per_direction = len(weights) // (self.num_layers * num_directions)
        has_bias = self.bias
        has_proj = self.mode == "LSTM" and self.proj_size > 0
        h_n, c_n = [], []
        layer_input = input
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(num_directions):
                index = layer * num_directions + direction
                w = weights[index * per_direction:(index + 1) * per_direction]
                weight_ih, weight_hh = w[0], w[1]
                bias_ih, bias_hh = (w[2], w[3]) if has_bias else (None, None)
                reverse = direction == 1
                if self.mode == "LSTM":
                    state = None if hx is None else (hx[0][index], hx[1][index])
                    out, (h, c) = _ops.lstm(
                        layer_input, state, weight_ih, weight_hh, bias_ih, bias_hh,
                        w[-1] if has_proj else None, batch_sizes=batch_sizes, reverse=reverse,
                    )
                    c_n.append(c)
                elif self.mode == "GRU":
                    state = None if hx is None else hx[index]
                    out, h = _ops.gru(
                        layer_input, state, weight_ih, weight_hh, bias_ih, bias_hh,
                        batch_sizes=batch_sizes, reverse=reverse,
                    )
                else:
                    state = None if hx is None else hx[index]
                    out, h = _ops.rnn(
                        layer_input, state, weight_ih, weight_hh, bias_ih, bias_hh,
                        batch_sizes=batch_sizes, reverse=reverse,
                        nonlinearity="tanh" if self.mode == "RNN_TANH" else "relu",
                    )
                outputs.append(out)
                h_n.append(h)
            layer_output = outputs[0] if num_directions == 1 else torch.cat(outputs, -1)
            # torch.nn: dropout on the outputs of every layer but the last, in training only.
            if self.dropout != 0 and self.training and layer < self.num_layers - 1:
                layer_output = torch_F.dropout(layer_output, self.dropout, training=True)
            layer_input = layer_output
        return layer_input, torch.stack(h_n), (torch.stack(c_n) if c_n else None)

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
            if is_lstm and hx is not None and len(hx) != 2:
                raise RuntimeError("lstm expects two hidden states")
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


class LSTM(_FusedRNNMixin, nn.LSTM):
    __doc__ = nn.LSTM.__doc__


class GRU(_FusedRNNMixin, nn.GRU):
    __doc__ = nn.GRU.__doc__


class RNN(_FusedRNNMixin, nn.RNN):
    __doc__ = nn.RNN.__doc__


# ---------------------------------------------------------------------------------------------
# Cells: one time step = the layer op with T = 1.
# ---------------------------------------------------------------------------------------------

def _check_cell_ranks(name, input, hidden, hidden_label="hidden"):
    if input.dim() not in (1, 2):
        raise ValueError(f"{name}: Expected input to be 1D or 2D, got {input.dim()}D instead")
    if hidden is not None and hidden.dim() not in (1, 2):
        raise ValueError(
            f"{name}: Expected {hidden_label} to be 1D or 2D, got {hidden.dim()}D instead"
        )


def _single_state_cell_forward(cell, name, input, hx, step):
    """GRUCell / RNNCell forward: torch.nn's checks, then ``step(x [1, B, I], h0 or None)``."""
    _check_cell_ranks(name, input, hx)
    is_batched = input.dim() == 2
    if not is_batched:
        input = input.unsqueeze(0)
    if hx is not None and not is_batched:
        hx = hx.unsqueeze(0)
    nonlinearity = getattr(cell, "nonlinearity", None)  # RNNCell's is checked at each call
    if nonlinearity is not None and nonlinearity not in ("tanh", "relu"):
        raise RuntimeError(f"Unknown nonlinearity: {nonlinearity}")
    weight_ih, weight_hh = cell.weight_ih, cell.weight_hh
    _check_cell_input(input, weight_ih)
    if hx is not None:
        _check_cell_hidden(input, hx, weight_hh.size(1), 0)
    _check_matmul_dtype(input, weight_ih)
    if hx is not None:
        _check_matmul_dtype(hx, weight_hh)
    h = step(input.unsqueeze(0), hx)
    return h if is_batched else h.squeeze(0)


class RNNCell(nn.RNNCell):
    __doc__ = nn.RNNCell.__doc__

    def forward(self, input, hx=None):
        def step(x, h0):
            _, h = _ops.rnn(x, h0, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh,
                            nonlinearity=self.nonlinearity)
            return h

        return _single_state_cell_forward(self, "RNNCell", input, hx, step)


class GRUCell(nn.GRUCell):
    __doc__ = nn.GRUCell.__doc__

    def forward(self, input, hx=None):
        def step(x, h0):
            _, h = _ops.gru(x, h0, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)
            return h

        return _single_state_cell_forward(self, "GRUCell", input, hx, step)


class LSTMCell(nn.LSTMCell):
    __doc__ = nn.LSTMCell.__doc__

    def forward(self, input, hx=None):
        if input.dim() not in (1, 2):
            raise ValueError(
                f"LSTMCell: Expected input to be 1D or 2D, got {input.dim()}D instead"
            )
        if hx is not None:
            for idx, value in enumerate(hx):
                if value.dim() not in (1, 2):
                    raise ValueError(
                        f"LSTMCell: Expected hx[{idx}] to be 1D or 2D, got {value.dim()}D instead"
                    )
        is_batched = input.dim() == 2
        if not is_batched:
            input = input.unsqueeze(0)
        if hx is not None and not is_batched:
            hx = (hx[0].unsqueeze(0), hx[1].unsqueeze(0))
        weight_ih, weight_hh = self.weight_ih, self.weight_hh
        if hx is not None:
            if not isinstance(hx, (tuple, list)):
                raise TypeError(
                    "lstm_cell(): argument 'hx' (position 2) must be tuple of Tensors, "
                    f"not {type(hx).__name__}"
                )
            if len(hx) != 2:
                raise RuntimeError("lstm_cell expects two hidden states")
        _check_cell_input(input, weight_ih)
        if hx is not None:
            _check_cell_hidden(input, hx[0], weight_hh.size(1), 0)
            _check_cell_hidden(input, hx[1], weight_hh.size(1), 1)
        _check_matmul_dtype(input, weight_ih)
        if hx is not None:
            _check_matmul_dtype(hx[0], weight_hh)
            hx = (hx[0], _match_cell_state_dtype(hx[1], weight_hh, "hx[1] (c_0)"))
        _, (h, c) = _ops.lstm(input.unsqueeze(0), hx, weight_ih, weight_hh,
                              self.bias_ih, self.bias_hh)
        if not is_batched:
            return h.squeeze(0), c.squeeze(0)
        return h, c
