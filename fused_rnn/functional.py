"""One layer, one direction of LSTM / GRU / Elman RNN on the fused ops, and one step of each cell.

Same signatures as fused_rnn.reference. ``input`` is time-major ``[T, B, I]``, or packed data
``[sum(batch_sizes), I]`` with ``batch_sizes`` exactly as in ``PackedSequence``; ``reverse``
runs each sequence backwards within its own length. ``hx=None`` means zeros. A layer of one
time step runs the single-step op of its cell (``lstm_cell``...), whose ``h_n`` its output
then is (a view of it).

The cell variants' weights are keyword-only (``weight_ch`` for a peephole LSTM; ``ln_weight_ih``,
``ln_weight_hh`` and the LSTM's ``ln_weight_c``, ``ln_bias_c`` for a layer-normalized cell; their
equations are fused_rnn.reference's), None for the plain cells. So are the layers' regularizer
masks (fused_rnn.reference: ``zoneout_h`` with the output's leading shape and the LSTM's
``zoneout_c``, the weight of the previous state per row and unit; ``dropout_h`` [B, P],
recurrent dropout's scaled mask), None when off; a layer given one runs the layer op even for
one time step.

Under ``torch.autocast`` the ops run in the autocast dtype (their floating arguments but
float64 cast to it, weights once per autocast region) and return it; the modules convert
their results to torch.nn's dtypes (fused_rnn/_autocast.py).
"""
import torch

from . import _autocast, _torch_private
from ._ops import EAGER_FUNCTIONS, FUNCTIONS, STEP_SPECS, ops, step_with_grad

__all__ = ["lstm", "gru", "rnn", "lstm_cell", "gru_cell", "rnn_cell"]


def _check_types(op, hx, n_states, input, weight_ih, weight_hh, **optional):
    """A TypeError naming the argument for one of the wrong Python type, and a RuntimeError for an
    LSTM hx that is not a pair, before the steps here touch them: they would fail with an
    AttributeError, the op's schema with the dispatcher's message. Shapes, dtypes and devices are
    the op's to check. optional: {name: value} of the arguments that may be None."""
    required = {"input": input, "weight_ih": weight_ih, "weight_hh": weight_hh}
    if n_states == 1:
        optional["hx"] = hx
    elif hx is not None:
        if not isinstance(hx, (tuple, list)):
            raise TypeError(f"{op}: expected hx to be a pair (h0, c0) of tensors or None, but got {type(hx).__name__}")
        if len(hx) != 2:
            raise RuntimeError(
                f"{op}: expected hx to be a pair (h0, c0) of tensors, but got a {type(hx).__name__} of {len(hx)}")
        required.update(h0=hx[0], c0=hx[1])
    for name, value in (*required.items(), *optional.items()):
        if not (isinstance(value, torch.Tensor) or (value is None and name in optional)):
            kind = "a Tensor or None" if name in optional else "a Tensor"
            raise TypeError(f"{op}: expected {name} to be {kind}, but got {type(value).__name__}")


def _batch(input, batch_sizes):
    """The batch of zero initial states. Any will do where input or batch_sizes is malformed: the
    op rejects those (with a message naming them) before it reads h0."""
    if batch_sizes is not None:
        well_formed = (batch_sizes.dim() == 1 and batch_sizes.numel() > 0 and batch_sizes.dtype == torch.int64
                       and batch_sizes.device.type == "cpu")
        # .item(), not int(): export (non-strict) makes an unbacked size of it, where int()
        # would need the data-dependent value itself.
        return batch_sizes[0].item() if well_formed else 0
    return input.size(1) if input.dim() == 3 else 0


def _zeros(input, batch_sizes, weight_hh, dim, gates=1, step=False):
    """Zeros [B, weight_hh.size(dim) // gates] for hx=None; as in _batch, a weight_hh that is not
    2-D gets some zeros, for the op to reject weight_hh by name. step: input is one step's [B, I]."""
    width = weight_hh.size(dim) // gates if weight_hh.dim() == 2 else 0
    batch = (input.size(0) if input.dim() == 2 else 0) if step else _batch(input, batch_sizes)
    return input.new_zeros((batch, width))


def _one_step(input, batch_sizes):
    """Whether a layer's input is a single time step: [1, B, I], or packed with one batch size
    (where that is unknown, under torch.export, the layer op runs it)."""
    if batch_sizes is None:
        return input.dim() == 3 and input.size(0) == 1
    return batch_sizes.dim() == 1 and input.dim() == 2 and _torch_private.known_true(batch_sizes.numel() == 1)


def _step_input(input, batch_sizes):
    return input if batch_sizes is not None else input[0]


def _step_output(h, batch_sizes):
    return h if batch_sizes is not None else h.unsqueeze(0)


def _needs_workspace(*tensors):
    """Keep what backward needs only when a gradient can be asked for: in grad mode with a
    tensor that requires grad; always under torch.func's transforms (a batched tensor reports
    requires_grad=False even when the tensor under it requires grad) and while torch.jit.trace
    records (the trace keeps the value as a constant, and its check re-traces under no_grad)."""
    if _functorch_active() or torch.jit.is_tracing():
        return True
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _functorch_active():
    return torch._C._are_functorch_transforms_active()


# single-step forward op -> its spec: eager training calls them through step_with_grad.
STEP_OPS = {getattr(ops, f"{spec.name}_forward"): spec for spec in STEP_SPECS.values()}


def _call(op, need_workspace, *args):
    """``op(*args, need_workspace)``, with the op's autograd formula when a gradient can be
    asked for, and without torch.library's Python autograd wrapper in eager mode.

    That wrapper runs even under no_grad only to pass the call on: measured at B = 1, H = 256,
    it cost 9 us a call, and 60 us of a 1.0 ms T = 100 LSTM call when other work between calls
    leaves the caches cold; in training it costs about 60 us more (EAGER_FUNCTIONS).
    torch.compile traces the plain call (it does not trace the dispatch-key guard). Under
    autocast the op's autocast kernel must cast before autograd sees the arguments, as the
    dispatcher orders them, so the op itself is called.
    """
    if _functorch_active():
        return FUNCTIONS[op].apply(*args, need_workspace)
    if torch.compiler.is_compiling() or torch.jit.is_tracing() or _autocast.autocast_dtype(args[0].device):
        return op(*args, need_workspace)
    if need_workspace:
        step = STEP_OPS.get(op)
        return EAGER_FUNCTIONS[op].apply(*args, need_workspace) if step is None else step_with_grad(step, args)
    with _torch_private.below_autograd():
        return op(*args, need_workspace)


def lstm(input, hx, weight_ih, weight_hh, bias_ih=None, bias_hh=None, weight_hr=None,
         batch_sizes=None, reverse=False, *, weight_ch=None, ln_weight_ih=None, ln_weight_hh=None,
         ln_weight_c=None, ln_bias_c=None, zoneout_h=None, zoneout_c=None, dropout_h=None):
    """Returns ``(output, (h_n, c_n))``; with ``weight_hr`` [P, H] the output and h are projected.
    The variants (fused_rnn.reference.lstm_cell): ``weight_ch`` [3H] = (w_ci, w_cf, w_co), a
    peephole LSTM; ``ln_weight_ih``, ``ln_weight_hh`` [4H], ``ln_weight_c``, ``ln_bias_c`` [H]
    (all four), a layer-normalized LSTM."""
    variant = dict(weight_ch=weight_ch, ln_weight_ih=ln_weight_ih, ln_weight_hh=ln_weight_hh, ln_weight_c=ln_weight_c,
                   ln_bias_c=ln_bias_c)
    masks = (zoneout_h, zoneout_c, dropout_h)
    _check_types("lstm", hx, 2, input, weight_ih, weight_hh, bias_ih=bias_ih, bias_hh=bias_hh, weight_hr=weight_hr,
                 batch_sizes=batch_sizes, **variant, zoneout_h=zoneout_h, zoneout_c=zoneout_c, dropout_h=dropout_h)
    if hx is None:
        hx = (_zeros(input, batch_sizes, weight_hh, 1), _zeros(input, batch_sizes, weight_hh, 0, gates=4))
    if _one_step(input, batch_sizes) and masks == (None,) * 3:
        h_n, c_n = _lstm_step(_step_input(input, batch_sizes), hx, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr,
                              **variant)
        return _step_output(h_n, batch_sizes), (h_n, c_n)
    h0, c0 = hx
    need = _needs_workspace(input, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr, *variant.values())
    output, h_n, c_n, _ = _call(ops.lstm_forward, need, input, batch_sizes, h0, c0, weight_ih, weight_hh, bias_ih,
                                bias_hh, weight_hr, *variant.values(), *masks, reverse)
    return output, (h_n, c_n)


def gru(input, hx, weight_ih, weight_hh, bias_ih=None, bias_hh=None, batch_sizes=None, reverse=False, *,
        ln_weight_ih=None, ln_weight_hh=None, zoneout_h=None, dropout_h=None):
    """Returns ``(output, h_n)``. ``ln_weight_ih``, ``ln_weight_hh`` [3H] (both): a
    layer-normalized GRU (fused_rnn.reference.gru_cell)."""
    variant = dict(ln_weight_ih=ln_weight_ih, ln_weight_hh=ln_weight_hh)
    _check_types("gru", hx, 1, input, weight_ih, weight_hh, bias_ih=bias_ih, bias_hh=bias_hh, batch_sizes=batch_sizes,
                 **variant, zoneout_h=zoneout_h, dropout_h=dropout_h)
    h0 = _zeros(input, batch_sizes, weight_hh, 1) if hx is None else hx
    if _one_step(input, batch_sizes) and zoneout_h is None and dropout_h is None:
        h_n = _gru_step(_step_input(input, batch_sizes), h0, weight_ih, weight_hh, bias_ih, bias_hh, **variant)
        return _step_output(h_n, batch_sizes), h_n
    need = _needs_workspace(input, h0, weight_ih, weight_hh, bias_ih, bias_hh, *variant.values())
    output, h_n, _ = _call(ops.gru_forward, need, input, batch_sizes, h0, weight_ih, weight_hh, bias_ih, bias_hh,
                           *variant.values(), zoneout_h, dropout_h, reverse)
    return output, h_n


def rnn(input, hx, weight_ih, weight_hh, bias_ih=None, bias_hh=None, batch_sizes=None, reverse=False,
        nonlinearity="tanh", *, zoneout_h=None, dropout_h=None):
    """Returns ``(output, h_n)``; ``nonlinearity`` is ``"tanh"`` or ``"relu"``."""
    _check_types(f"rnn_{nonlinearity}", hx, 1, input, weight_ih, weight_hh, bias_ih=bias_ih, bias_hh=bias_hh,
                 batch_sizes=batch_sizes, zoneout_h=zoneout_h, dropout_h=dropout_h)
    h0 = _zeros(input, batch_sizes, weight_hh, 1) if hx is None else hx
    if _one_step(input, batch_sizes) and zoneout_h is None and dropout_h is None:
        h_n = rnn_cell(_step_input(input, batch_sizes), h0, weight_ih, weight_hh, bias_ih, bias_hh, nonlinearity)
        return _step_output(h_n, batch_sizes), h_n
    need = _needs_workspace(input, h0, weight_ih, weight_hh, bias_ih, bias_hh)
    output, h_n, _ = _call(ops.rnn_forward, need, input, batch_sizes, h0, weight_ih, weight_hh, bias_ih, bias_hh,
                           zoneout_h, dropout_h, nonlinearity, reverse)
    return output, h_n


def lstm_cell(input, hx, weight_ih, weight_hh, bias_ih=None, bias_hh=None, weight_hr=None, *, weight_ch=None,
              ln_weight_ih=None, ln_weight_hh=None, ln_weight_c=None, ln_bias_c=None, zoneout_h=None,
              zoneout_c=None):
    """One step: input [B, I], hx = (h [B, P or H], c [B, H]) or None -> (h', c'); the variants'
    weights as in ``lstm``; zoneout's masks ``zoneout_h`` [B, P or H], ``zoneout_c`` [B, H] (the
    weight of h and c in h', c', fused_rnn.reference), None when off."""
    variant = dict(weight_ch=weight_ch, ln_weight_ih=ln_weight_ih, ln_weight_hh=ln_weight_hh, ln_weight_c=ln_weight_c,
                   ln_bias_c=ln_bias_c)
    _check_types("lstm_cell", hx, 2, input, weight_ih, weight_hh, bias_ih=bias_ih, bias_hh=bias_hh,
                 weight_hr=weight_hr, **variant, zoneout_h=zoneout_h, zoneout_c=zoneout_c)
    return _lstm_step(input, hx, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr, **variant, zoneout_h=zoneout_h,
                      zoneout_c=zoneout_c)


def gru_cell(input, hx, weight_ih, weight_hh, bias_ih=None, bias_hh=None, *, ln_weight_ih=None, ln_weight_hh=None,
             zoneout_h=None):
    """One step: input [B, I], hx = h [B, H] or None -> h'; the layer-norm weights as in ``gru``;
    zoneout's mask ``zoneout_h`` [B, H] as in ``lstm_cell``."""
    variant = dict(ln_weight_ih=ln_weight_ih, ln_weight_hh=ln_weight_hh)
    _check_types("gru_cell", hx, 1, input, weight_ih, weight_hh, bias_ih=bias_ih, bias_hh=bias_hh, **variant,
                 zoneout_h=zoneout_h)
    return _gru_step(input, hx, weight_ih, weight_hh, bias_ih, bias_hh, **variant, zoneout_h=zoneout_h)


def rnn_cell(input, hx, weight_ih, weight_hh, bias_ih=None, bias_hh=None, nonlinearity="tanh", *, zoneout_h=None):
    """One step: input [B, I], hx = h [B, H] or None -> h' = act(...), act = tanh or relu;
    zoneout's mask ``zoneout_h`` [B, H] as in ``lstm_cell``."""
    _check_types(f"rnn_{nonlinearity}_cell", hx, 1, input, weight_ih, weight_hh, bias_ih=bias_ih, bias_hh=bias_hh,
                 zoneout_h=zoneout_h)
    return _rnn_step(input, hx, weight_ih, weight_hh, bias_ih, bias_hh, nonlinearity, zoneout_h=zoneout_h)


# The cells' steps after the type checks: what the modules' cells call, having checked more.

def _lstm_step(input, hx, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr=None, *, weight_ch=None,
               ln_weight_ih=None, ln_weight_hh=None, ln_weight_c=None, ln_bias_c=None, zoneout_h=None,
               zoneout_c=None):
    if hx is None:
        hx = (_zeros(input, None, weight_hh, 1, step=True), _zeros(input, None, weight_hh, 0, gates=4, step=True))
    h0, c0 = hx
    variant = (weight_ch, ln_weight_ih, ln_weight_hh, ln_weight_c, ln_bias_c)
    need = _needs_workspace(input, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr, *variant)
    h, c, _ = _call(ops.lstm_cell_forward, need, input, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr,
                    *variant, zoneout_h, zoneout_c)
    return h, c


def _gru_step(input, hx, weight_ih, weight_hh, bias_ih, bias_hh, *, ln_weight_ih=None, ln_weight_hh=None,
              zoneout_h=None):
    h0 = _zeros(input, None, weight_hh, 1, step=True) if hx is None else hx
    need = _needs_workspace(input, h0, weight_ih, weight_hh, bias_ih, bias_hh, ln_weight_ih, ln_weight_hh)
    return _call(ops.gru_cell_forward, need, input, h0, weight_ih, weight_hh, bias_ih, bias_hh, ln_weight_ih,
                 ln_weight_hh, zoneout_h)[0]


def _rnn_step(input, hx, weight_ih, weight_hh, bias_ih, bias_hh, nonlinearity="tanh", *, zoneout_h=None):
    h0 = _zeros(input, None, weight_hh, 1, step=True) if hx is None else hx
    need = _needs_workspace(input, h0, weight_ih, weight_hh, bias_ih, bias_hh)
    return _call(ops.rnn_cell_forward, need, input, h0, weight_ih, weight_hh, bias_ih, bias_hh, zoneout_h,
                 nonlinearity)[0]


# layer function -> its cell's step (modules' cells, after their own checks).
STEPS = {lstm: _lstm_step, gru: _gru_step, rnn: _rnn_step}
