"""Drop-in replacements for ``torch.nn.LSTM / GRU / RNN`` and their cells.

Each module here subclasses its torch.nn counterpart and overrides only ``forward``. So the
constructor (positional order, validation and messages), parameter names, shapes,
registration order and initialization (the same draws from the random generator),
``state_dict``, ``flatten_parameters``, ``all_weights``, ``extra_repr``, ``.to()``, deepcopy
and pickling are torch.nn's own, and ``isinstance(m, torch.nn.LSTM)`` stays true.

``forward`` follows torch.nn's forward step by step: the same input/hidden checks in the same
order (reusing ``check_forward_args`` / ``check_input`` / ``permute_hidden``), the same
unbatched and ``batch_first`` handling, the same ``PackedSequence`` permutations. Errors that
torch.nn raises from inside its C++ kernels are mirrored (``fused_rnn/_nn_checks.py``), because
the fused ops below do not run those kernels. Then layers x directions are composed from
``fused_rnn.functional`` (one op call per layer and direction, no Python loop over time), with
dropout between layers exactly where torch.nn puts it: ``torch.nn.functional.dropout`` on the
concatenated output of every layer but the last, in training mode, when ``dropout != 0``.
On CPU this draws the very same masks as torch.nn for the same seed.

Beyond torch.nn, keyword-only options select cell variants (fused_rnn/variants.py: their
parameters): ``LSTM(..., *, peephole=False, layer_norm=False)``, ``GRU(..., *, layer_norm=False)``
and the same on LSTMCell / GRUCell; and regularizers of the layer modules
(fused_rnn/regularizers.py): ``weight_drop`` (DropConnect on W_hh), ``zoneout``,
``recurrent_dropout`` (variational, on h before W_hh) and ``residual``. Off by
default, so every torch.nn call is unchanged.
"""

import torch
import torch.nn.functional as torch_F
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from . import _autocast, _torch_private, functional, reference, regularizers, variants
from . import _nn_checks as checks

__all__ = ["LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell"]


# ---------------------------------------------------------------------------------------------
# Multi-layer modules.
# ---------------------------------------------------------------------------------------------

class _FusedRNNMixin(variants.VariantOptions):
    """forward() for the three RNNBase subclasses below (and the variant options); everything
    else is torch.nn's."""

    # regularizers.py, set by the constructors
    weight_drop, zoneout, recurrent_dropout, residual = 0.0, 0.0, 0.0, False

    def _setup_options(self, regularizer_options, **variant_options):
        regularizers.check(self, **regularizer_options)
        directions = ["", "_reverse"] if self.bidirectional else [""]
        suffixes = [f"_l{layer}{d}" for layer in range(self.num_layers) for d in directions]
        variants.setup(self, self.mode, self._gates, suffixes, **variant_options)

    def extra_repr(self):
        return super().extra_repr() + regularizers.options_repr(self)

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

    def _check_args(self, input, hx, batch_sizes):
        """torch.nn's Python checks of input and hx (zero states always have the right size)."""
        if hx is None:
            self.check_input(input, batch_sizes)
        else:
            self.check_forward_args(input, hx, batch_sizes)

    def _check_kernel_args(self, input, hx, batch_sizes, weights):
        """What torch.nn's kernel (ATen's _VF.lstm / gru / rnn_*, its CPU path) rejects, in its
        order, after torch.nn's Python checks: the fused ops below run none of it.
        Returns hx, an LSTM cell state converted to the weights' dtype where torch.nn promotes it."""
        checks.check_flat_weights(weights, 2 if batch_sizes is None else 3)
        if self.mode == "LSTM":
            checks.check_two_states(hx, "lstm")
        w_ih, w_hh, b_ih, b_hh = self._layer_weights(weights[:self._per_direction(weights)])[:4]  # layer 0's
        if batch_sizes is None:
            checks.check_same_device(input, hx, weights)
            if input.size(1 if self.batch_first else 0) == 0:
                raise RuntimeError("Expected sequence length to be larger than 0 in RNN")
        else:
            self._check_packed(input, hx, batch_sizes, w_ih, b_ih)
        return hx if hx is None else self._check_first_step(hx, w_hh, b_hh)

    def _check_first_step(self, hx, w_hh, b_hh):
        """The kernel's first step with layer 0's states: h @ W_hh^T + b_hh, then LSTM's
        forget_gate * c. Returns hx, c converted to the weights' dtype where torch.nn promotes it."""
        if self.mode != "LSTM":
            checks.check_linear(hx[0], w_hh, b_hh)
            return hx
        checks.check_linear(hx[0][0], w_hh, b_hh)
        checks.check_cell_state_device(hx[1][0], w_hh)
        c = checks.cell_state_as_weights(hx[1], w_hh)
        if c is None:  # torch.nn's result then depends on its kernel (oneDNN or ATen's), T and layers
            raise RuntimeError(
                f"hx[1] (c_0) must have the weights' dtype {w_hh.dtype} (or one that promotes to it), "
                f"got {hx[1].dtype}"
            )
        return hx[0], c

    def _check_packed(self, input, hx, batch_sizes, w_ih, b_ih):
        """The packed kernel reads batch_sizes as int64, then multiplies all of input by W_ih.
        torch.nn's LSTM hands packed input to its kernel unchecked: mirror what that GEMM rejects,
        and check hx as the padded path does."""
        if batch_sizes.dtype != torch.int64:
            raise RuntimeError(f"expected scalar type Long but found {checks.scalar_type_name(batch_sizes.dtype)}")
        if self.mode != "LSTM":
            checks.check_linear(input, w_ih, b_ih)  # devices: check_input compared dtypes and sizes
            return
        if input.dim() != 2:
            self.check_input(input, batch_sizes)
        checks.check_linear(input, w_ih, b_ih)
        if input.size(-1) != w_ih.size(1):
            raise RuntimeError(
                f"mat1 and mat2 shapes cannot be multiplied ({input.size(0)}x{input.size(1)} "
                f"and {w_ih.size(1)}x{w_ih.size(0)})"
            )
        if hx is not None:
            self.check_forward_args(input, hx, batch_sizes)

    def _variant_weights(self, index):
        """Layer-and-direction `index`'s weights of a cell variant, as the functional op's keywords."""
        if not self._variant_weight_names:
            return {}
        layer, direction = divmod(index, 2 if self.bidirectional else 1)
        return variants.weights(self, f"_l{layer}{'_reverse' if direction else ''}")

    def _per_direction(self, weights):
        """How many of the flat weights each layer and direction has."""
        return len(weights) // (self.num_layers * (2 if self.bidirectional else 1))

    def _run_layers(self, input, hx, batch_sizes, weights):
        """input: time-major [T, B, I] or packed data [N, I]; hx: checked states or None.

        Returns (output of the last layer, h_n [L*D, B, ...], c_n or None)."""
        layer_op, op_kwargs = _LAYER_OPS[self.mode]
        num_directions = 2 if self.bidirectional else 1
        per_direction = self._per_direction(weights)
        layer_weights = [self._layer_weights(weights[i * per_direction:(i + 1) * per_direction])
                         for i in range(self.num_layers * num_directions)]
        if self.weight_drop and self.training:  # one mask per W_hh and call, drawn before any layer runs
            masks = regularizers.weight_drop_masks(self, [w[1] for w in layer_weights])
            layer_weights = [(w[0], w[1] * mask, *w[2:]) for w, mask in zip(layer_weights, masks)]
        states_n = []  # per layer and direction: h, or (h, c)
        layer_input = input
        state = self.proj_size if getattr(self, "proj_size", 0) > 0 else self.hidden_size
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(num_directions):
                index = layer * num_directions + direction
                masks = regularizers.recurrence_masks(self, layer_input, batch_sizes, state, self.hidden_size,
                                                      cell_state=self.mode == "LSTM")
                out, state_n = layer_op(
                    layer_input, _layer_state(hx, index), *layer_weights[index],
                    batch_sizes=batch_sizes, reverse=direction == 1, **op_kwargs, **self._variant_weights(index),
                    **masks,
                )
                outputs.append(out)
                states_n.append(state_n)
            layer_output = outputs[0] if num_directions == 1 else torch.cat(outputs, -1)
            if self.residual and layer > 0:
                layer_output = layer_output + layer_input
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
            if not is_lstm:  # torch.nn's LSTM checks packed input in its kernel only
                self._check_args(input, hx, batch_sizes)
        else:
            if input.dim() not in (2, 3):
                raise self._input_dim_error(input.dim())
            is_batched = input.dim() == 3
            batch_dim = 0 if self.batch_first else 1
            if not is_batched:
                input = input.unsqueeze(batch_dim)
            if hx is not None:
                hx = self._check_hx_dims(hx, is_batched)
            self._check_args(input, hx, batch_sizes)
        # The initial state torch.nn's pointwise math promotes with under autocast.
        initial_dtype = input.dtype if hx is None else (hx[1] if is_lstm else hx).dtype
        hx = self._check_kernel_args(input, hx, batch_sizes, weights)

        if batch_sizes is None and self.batch_first:
            input = input.transpose(0, 1)
        with _autocast.region(input.device):
            output, h_n, c_n = self._run_layers(input, hx, batch_sizes, weights)
        (output, h_n), c_n = _autocast.module_results(self, batch_sizes, input.device, initial_dtype,
                                                      (output, h_n), c_n)
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


_LAYER_OPS = {
    "LSTM": (functional.lstm, {}),
    "GRU": (functional.gru, {}),
    "RNN_TANH": (functional.rnn, {"nonlinearity": "tanh"}),
    "RNN_RELU": (functional.rnn, {"nonlinearity": "relu"}),
}
# The same step in plain ATen ops, for the arguments the fused ops cannot take (see _step).
_REFERENCE_STEPS = {functional.lstm: reference.lstm_cell, functional.gru: reference.gru_cell,
                    functional.rnn: reference.rnn_cell}



class LSTM(_FusedRNNMixin, nn.LSTM):
    __doc__ = nn.LSTM.__doc__
    _gates = 4

    def __init__(self, *args, peephole=False, layer_norm=False, weight_drop=0.0, zoneout=0.0, recurrent_dropout=0.0,
                 residual=False, **kwargs):
        super().__init__(*args, **kwargs)
        self._setup_options(dict(weight_drop=weight_drop, zoneout=zoneout, recurrent_dropout=recurrent_dropout,
                                 residual=residual), peephole=peephole, layer_norm=layer_norm)


class GRU(_FusedRNNMixin, nn.GRU):
    __doc__ = nn.GRU.__doc__
    _gates = 3

    def __init__(self, *args, layer_norm=False, weight_drop=0.0, zoneout=0.0, recurrent_dropout=0.0, residual=False,
                 **kwargs):
        super().__init__(*args, **kwargs)
        self._setup_options(dict(weight_drop=weight_drop, zoneout=zoneout, recurrent_dropout=recurrent_dropout,
                                 residual=residual), layer_norm=layer_norm)


class RNN(_FusedRNNMixin, nn.RNN):
    __doc__ = nn.RNN.__doc__
    _gates = 1

    def __init__(self, *args, weight_drop=0.0, zoneout=0.0, recurrent_dropout=0.0, residual=False, **kwargs):
        super().__init__(*args, **kwargs)
        self._setup_options(dict(weight_drop=weight_drop, zoneout=zoneout, recurrent_dropout=recurrent_dropout,
                                 residual=residual))


# torch.compile(model, fullgraph=True) traces these without the user setting a dynamo flag.
_torch_private.allow_in_dynamo(_FusedRNNMixin)


# ---------------------------------------------------------------------------------------------
# Cells: one time step = the single-step op (or the reference where the op cannot run: _step).
# ---------------------------------------------------------------------------------------------

class _FusedCellMixin(variants.VariantOptions):
    """forward() for the three RNNCellBase subclasses below: torch.nn's checks in torch.nn's
    order, then one step of the cell (the single-step op). States are handled as a tuple
    throughout: (h,) for GRU/RNN cells, (h, c) for LSTMCell. The cells' regularizer (zoneout,
    fused_rnn/regularizers.py): each call draws its masks, which the single-step op applies."""

    zoneout = 0.0

    def _setup_zoneout(self, zoneout):
        regularizers.check(self, zoneout=zoneout)

    def extra_repr(self):
        return super().extra_repr() + regularizers.options_repr(self)

    def forward(self, input, hx=None):
        result = self._common_call(input, hx)
        return result if result is not None else self._checked_call(input, hx)

    def _common_call(self, input, hx):
        """The call a decoder loop makes every step -- batched input, hx None or states of its
        shape, outside autocast and torch.compile -- straight to the op, which checks every
        shape, dtype and device itself; None where the checked call must run instead. That is
        also so wherever the op refuses the arguments: the checked call then raises torch.nn's
        error, or computes what torch.nn computes where it accepts them (a c0 wider than the
        weights). The checks cost about 8 us of a 45 us LSTMCell step at B = 1, H = 256."""
        if not isinstance(input, torch.Tensor) or input.dim() != 2 or torch.compiler.is_compiling():
            return None
        if _autocast.autocast_dtype(input.device) is not None:
            return None
        weights = (self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)
        op_kwargs = self._variant_weights()
        if hx is None:  # torch.nn's zero states have hidden_size columns: a replaced weight_hh must agree
            if not isinstance(weights[1], torch.Tensor) or weights[1].dim() != 2 or \
                    weights[1].size(1) != self.hidden_size:
                return None
        elif not self._states_of_rank_2(hx):
            return None
        layer_op, mode_kwargs = _LAYER_OPS.get(self._mode, (None, None))
        if layer_op is None:  # an RNNCell nonlinearity torch.nn refuses
            return None
        try:
            return functional.STEPS[layer_op](input, hx, *weights, **mode_kwargs, **op_kwargs,
                                              **self._zoneout_masks(input))
        except (RuntimeError, TypeError, ValueError):  # the op's argument checks and schema
            # Only these: other exceptions unwind on purpose (non-reentrant checkpoint stops a
            # recomputation with one) and must pass through.
            return None

    def _variant_weights(self):
        """The cell variant's weights, as the functional op's keywords."""
        return variants.weights(self) if self._variant_weight_names else {}

    def _states_of_rank_2(self, hx):
        states = (hx,) if self._n_states == 1 else hx
        if self._n_states == 2 and (not isinstance(hx, (tuple, list)) or len(hx) != 2):
            return False
        return all(isinstance(s, torch.Tensor) and s.dim() == 2 for s in states)

    def _checked_call(self, input, hx):
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
            states = None if states is None else self._unbatched_states(states)
        nonlinearity = getattr(self, "nonlinearity", None)  # RNNCell's is checked at each call
        if nonlinearity is not None and nonlinearity not in ("tanh", "relu"):
            raise RuntimeError(f"Unknown nonlinearity: {nonlinearity}")
        checks.check_cell_hx(self, hx)
        weights = (self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)
        checks.check_cell_weight_types(self, weights)
        for check in self._shape_checks:
            check(self, input, states, weights)
        checks.check_cell_gemms(self, input, states, weights)
        if states is not None:
            self._refuse_3d_states(name, states)
        out = self._step(input, states, weights)
        out = out if isinstance(out, tuple) else (out,)
        initial_dtype = input.dtype if states is None else states[-1].dtype  # c0 for LSTMCell
        c = out[1] if self._n_states == 2 else None
        (h,), c = _autocast.as_torch_nn(self._kind, input.device, initial_dtype, out[:1], c)
        out = (h,) if c is None else (h, c)
        if not is_batched:
            out = tuple(s.squeeze(0) for s in out)
        return out if self._n_states == 2 else out[0]

    def _unbatched_states(self, states):
        """The states of an unbatched call with the batch dimension added, as torch.nn adds it:
        an LSTM hx is read as hx[0] and hx[1] (IndexError for one state), a 2-D state becomes
        3-D (see _refuse_3d_states)."""
        if len(states) < self._n_states:
            raise IndexError("tuple index out of range")
        return tuple(s.unsqueeze(0) for s in states[:self._n_states])

    def _refuse_3d_states(self, name, states):
        """A 2-D state given with unbatched input, which passed every check torch.nn makes: there
        torch.nn's kernel broadcasts the [1, B, H] state into a wrongly shaped result, or crashes
        (GRUCell, torch 2.13). Refused instead; where torch.nn's checks reject it, they ran first,
        with torch.nn's messages."""
        for i, value in enumerate(states):
            if value.dim() == 3:
                label = f"hx[{i}]" if self._n_states == 2 else "hidden"
                raise RuntimeError(f"{name}: for unbatched 1-D input, {label} should also be 1-D, "
                                   "but got a 2-D tensor")

    def _step(self, x, states, weights):
        """One step on x [B, I]: the new state(s). The fused single-step op where it can run, else
        fused_rnn.reference (torch.nn's equations in ATen ops: torch.nn's results and gradients):
        with no hidden units (the op needs one), or an LSTM cell state that torch.nn's
        forget_gate * c promotes to a wider dtype than the weights' (the op runs in one dtype)."""
        layer_op, op_kwargs = _LAYER_OPS[self._mode]
        op_kwargs = {**op_kwargs, **self._variant_weights()}
        wide_c = False
        if states is not None and self._n_states == 2:
            c = checks.cell_state_as_weights(states[1], weights[1])
            wide_c = c is None
            states = states if wide_c else (states[0], c)
        state = None if states is None else (states if self._n_states == 2 else states[0])
        step = _REFERENCE_STEPS[layer_op] if wide_c or weights[1].size(1) == 0 else functional.STEPS[layer_op]
        return step(x, state, *weights, **op_kwargs, **self._zoneout_masks(x))

    def _zoneout_masks(self, x):
        """This call's zoneout masks as the single-step ops take them, [B, H] (drawn as for a
        layer of one step); none when off."""
        if not self.zoneout:
            return {}
        masks = regularizers.recurrence_masks(self, x.unsqueeze(0), None, self.hidden_size, self.hidden_size,
                                              cell_state=self._n_states == 2)
        return {name: mask[0] for name, mask in masks.items()}


class RNNCell(_FusedCellMixin, nn.RNNCell):
    __doc__ = nn.RNNCell.__doc__
    _kind, _n_states = "RNNCell", 1
    _shape_checks = (checks.check_cell_weights, checks.check_cell_input, checks.check_cell_hidden)

    def __init__(self, *args, zoneout=0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self._setup_zoneout(zoneout)

    @property
    def _mode(self):  # the nonlinearity may be changed after construction; forward checks it
        return {"tanh": "RNN_TANH", "relu": "RNN_RELU"}.get(self.nonlinearity, "RNN_UNKNOWN")


class GRUCell(_FusedCellMixin, nn.GRUCell):
    __doc__ = nn.GRUCell.__doc__
    _kind, _mode, _n_states = "GRUCell", "GRU", 1
    _shape_checks = (checks.check_cell_input, checks.check_cell_hidden, checks.check_cell_weights)

    def __init__(self, *args, layer_norm=False, zoneout=0.0, **kwargs):
        super().__init__(*args, **kwargs)
        variants.setup(self, "GRU", 3, [""], layer_norm=layer_norm)
        self._setup_zoneout(zoneout)


class LSTMCell(_FusedCellMixin, nn.LSTMCell):
    __doc__ = nn.LSTMCell.__doc__
    _kind, _mode, _n_states = "LSTMCell", "LSTM", 2
    _shape_checks = (checks.check_cell_input, checks.check_cell_weights, checks.check_cell_hidden)
    def __init__(self, *args, peephole=False, layer_norm=False, zoneout=0.0, **kwargs):
        super().__init__(*args, **kwargs)
        variants.setup(self, "LSTM", 4, [""], peephole=peephole, layer_norm=layer_norm)
        self._setup_zoneout(zoneout)
