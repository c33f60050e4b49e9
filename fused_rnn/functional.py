"""One layer, one direction of LSTM / GRU / Elman RNN on the fused ops.

Same signatures as fused_rnn.reference. ``input`` is time-major ``[T, B, I]``, or packed data
``[sum(batch_sizes), I]`` with ``batch_sizes`` exactly as in ``PackedSequence``; ``reverse``
runs each sequence backwards within its own length. ``hx=None`` means zeros.

Under ``torch.autocast`` the ops run in the autocast dtype (their floating arguments but
float64 cast to it, weights once per autocast region) and return it; the modules convert
their results to torch.nn's dtypes (fused_rnn/_autocast.py).
"""
import torch

from . import _torch_private
from ._ops import FUNCTIONS, ops

__all__ = ["lstm", "gru", "rnn"]


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


def _zeros(input, batch_sizes, weight_hh, dim, gates=1):
    """Zeros [B, weight_hh.size(dim) // gates] for hx=None; as in _batch, a weight_hh that is not
    2-D gets some zeros, for the op to reject weight_hh by name."""
    width = weight_hh.size(dim) // gates if weight_hh.dim() == 2 else 0
    return input.new_zeros((_batch(input, batch_sizes), width))


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


def _call(op, need_workspace, *args):
    """``op(*args, need_workspace)``; below autograd when no gradient can be asked for.

    The ops' autograd kernel is torch.library's Python wrapper, which runs even under no_grad
    only to pass the call on: measured at B = 1, H = 256, it cost 9 us a call, and 60 us of a
    1.0 ms T = 100 LSTM call when other work between calls leaves the caches cold. torch.compile
    traces the plain call (it does not trace the dispatch-key guard).
    """
    if _functorch_active():
        return FUNCTIONS[op].apply(*args, need_workspace)
    if need_workspace or torch.compiler.is_compiling():
        return op(*args, need_workspace)
    with _torch_private.below_autograd():
        return op(*args, need_workspace)


def lstm(input, hx, weight_ih, weight_hh, bias_ih=None, bias_hh=None, weight_hr=None,
         batch_sizes=None, reverse=False):
    """Returns ``(output, (h_n, c_n))``; with ``weight_hr`` [P, H] the output and h are projected."""
    _check_types("lstm", hx, 2, input, weight_ih, weight_hh, bias_ih=bias_ih, bias_hh=bias_hh, weight_hr=weight_hr,
                 batch_sizes=batch_sizes)
    if hx is None:
        hx = (_zeros(input, batch_sizes, weight_hh, 1), _zeros(input, batch_sizes, weight_hh, 0, gates=4))
    h0, c0 = hx
    need = _needs_workspace(input, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr)
    output, h_n, c_n, _ = _call(ops.lstm_forward, need, input, batch_sizes, h0, c0, weight_ih, weight_hh, bias_ih,
                                bias_hh, weight_hr, reverse)
    return output, (h_n, c_n)


def gru(input, hx, weight_ih, weight_hh, bias_ih=None, bias_hh=None, batch_sizes=None, reverse=False):
    """Returns ``(output, h_n)``."""
    _check_types("gru", hx, 1, input, weight_ih, weight_hh, bias_ih=bias_ih, bias_hh=bias_hh, batch_sizes=batch_sizes)
    h0 = _zeros(input, batch_sizes, weight_hh, 1) if hx is None else hx
    need = _needs_workspace(input, h0, weight_ih, weight_hh, bias_ih, bias_hh)
    output, h_n, _ = _call(ops.gru_forward, need, input, batch_sizes, h0, weight_ih, weight_hh, bias_ih, bias_hh,
                           reverse)
    return output, h_n


def rnn(input, hx, weight_ih, weight_hh, bias_ih=None, bias_hh=None, batch_sizes=None, reverse=False,
        nonlinearity="tanh"):
    """Returns ``(output, h_n)``; ``nonlinearity`` is ``"tanh"`` or ``"relu"``."""
    _check_types(f"rnn_{nonlinearity}", hx, 1, input, weight_ih, weight_hh, bias_ih=bias_ih, bias_hh=bias_hh,
                 batch_sizes=batch_sizes)
    h0 = _zeros(input, batch_sizes, weight_hh, 1) if hx is None else hx
    need = _needs_workspace(input, h0, weight_ih, weight_hh, bias_ih, bias_hh)
    output, h_n, _ = _call(ops.rnn_forward, need, input, batch_sizes, h0, weight_ih, weight_hh, bias_ih, bias_hh,
                           nonlinearity, reverse)
    return output, h_n
