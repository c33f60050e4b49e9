"""One layer, one direction of LSTM / GRU / Elman RNN on the fused ops.

Same signatures as fused_rnn.reference. ``input`` is time-major ``[T, B, I]``, or packed data
``[sum(batch_sizes), I]`` with ``batch_sizes`` exactly as in ``PackedSequence``; ``reverse``
runs each sequence backwards within its own length. ``hx=None`` means zeros.
"""
import torch

from ._ops import ops

__all__ = ["lstm", "gru", "rnn"]


def _batch(input, batch_sizes):
    if batch_sizes is not None:
        return int(batch_sizes[0]) if batch_sizes.numel() > 0 else 0
    return input.size(1) if input.dim() == 3 else 0


def _zeros(input, batch_sizes, size):
    return input.new_zeros((_batch(input, batch_sizes), size))


def _needs_workspace(*tensors):
    """Keep what backward needs only when a gradient can be asked for."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def lstm(input, hx, weight_ih, weight_hh, bias_ih=None, bias_hh=None, weight_hr=None,
         batch_sizes=None, reverse=False):
    """Returns ``(output, (h_n, c_n))``; with ``weight_hr`` [P, H] the output and h are projected."""
    if hx is None:
        hx = (_zeros(input, batch_sizes, weight_hh.size(1)), _zeros(input, batch_sizes, weight_hh.size(0) // 4))
    h0, c0 = hx
    need = _needs_workspace(input, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr)
    output, h_n, c_n, _ = ops.lstm_forward(input, batch_sizes, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh,
                                           weight_hr, reverse, need)
    return output, (h_n, c_n)


def gru(input, hx, weight_ih, weight_hh, bias_ih=None, bias_hh=None, batch_sizes=None, reverse=False):
    """Returns ``(output, h_n)``."""
    h0 = _zeros(input, batch_sizes, weight_hh.size(1)) if hx is None else hx
    need = _needs_workspace(input, h0, weight_ih, weight_hh, bias_ih, bias_hh)
    output, h_n, _ = ops.gru_forward(input, batch_sizes, h0, weight_ih, weight_hh, bias_ih, bias_hh, reverse, need)
    return output, h_n


def rnn(input, hx, weight_ih, weight_hh, bias_ih=None, bias_hh=None, batch_sizes=None, reverse=False,
        nonlinearity="tanh"):
    """Returns ``(output, h_n)``; ``nonlinearity`` is ``"tanh"`` or ``"relu"``."""
    h0 = _zeros(input, batch_sizes, weight_hh.size(1)) if hx is None else hx
    need = _needs_workspace(input, h0, weight_ih, weight_hh, bias_ih, bias_hh)
    output, h_n, _ = ops.rnn_forward(input, batch_sizes, h0, weight_ih, weight_hh, bias_ih, bias_hh, nonlinearity,
                                     reverse, need)
    return output, h_n
