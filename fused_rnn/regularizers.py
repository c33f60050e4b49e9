"""Regularizers of the layer modules, as keyword-only options (off by default, so every
torch.nn call is unchanged):

    zoneout      (LSTM, GRU, RNN   Krueger et al. 2016: in training, per row, unit and step, with
    and the cells)                 probability p a unit keeps its previous value,
                                   h_t = m * h_{t-1} + (1 - m) * h~_t, m ~ Bernoulli(p); the
                                   LSTM's c likewise with its own m. In eval m = p (the
                                   expectation). The output sequence holds the zoned-out h_t.
                                   A cell's call is one step: its masks are drawn per call.
    recurrent_dropout  (LSTM, GRU, RNN)  variational dropout (Gal and Ghahramani 2016): in
                                   training, one mask per sequence and unit, fixed across the
                                   steps, on h_{t-1} before W_hh, scaled by 1 / (1 - p) (the
                                   GRU's direct path z * h_{t-1} keeps h_{t-1}).

    weight_drop  (LSTM, GRU, RNN)  DropConnect on each layer and direction's W_hh (Wan et al.
                                   2013), as AWD-LSTM uses it: in training, one mask over
                                   W_hh's elements per forward call, scaled by 1 / (1 - p);
                                   the gradient reaches the real parameter through the mask.
                                   No parameter is re-registered and nothing warns, so
                                   flatten_parameters() and optimizers see the module as it is.
    residual     (LSTM, GRU, RNN)  from the second layer on, each layer's output plus its input
                                   (before the dropout between layers).

zoneout and recurrent_dropout run inside the fused recurrence: the layer ops take their masks
(fused_rnn.functional's zoneout_h, zoneout_c, dropout_h). Masks come from PyTorch's generator,
so torch.manual_seed reproduces a run: weight_drop_masks(module) draws W_hh's before any layer
runs (layer, then direction), recurrence_masks those of each layer and direction as it runs;
a test can give the same masks to fused_rnn.reference.
"""
import torch

from ._ops import ops

__all__ = ["weight_drop_masks", "recurrence_masks"]

# option -> what its probability is the probability of (torch.nn's dropout message)
_RATES = {"weight_drop": "an element of weight_hh being zeroed",
          "zoneout": "a unit keeping its previous value at a step",
          "recurrent_dropout": "a unit of the recurrent state being zeroed"}


def check(module, residual=False, **rates):
    """Checks and records the options on module (torch.nn's dropout message for a rate)."""
    kind = type(module).__name__
    for name, rate in rates.items():
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate <= 1:
            raise ValueError(f"{kind}: {name} should be a number in range [0, 1] representing the probability of "
                             f"{_RATES[name]}, but got {rate!r}")
        setattr(module, name, float(rate))
    if not isinstance(residual, bool):
        raise TypeError(f"{kind}: residual should be a bool, but got {type(residual).__name__}")
    module.residual = residual


def weight_drop_masks(module, weights_hh):
    """One scaled mask per W_hh in `weights_hh` (layer, then direction): each element 0 with
    probability p = module.weight_drop, else 1 / (1 - p), drawn by bernoulli below: a 2048 x
    512 mask took 14 ms through F.dropout's bernoulli_ and 4 ms as torch.rand < 1 - p (2 threads)."""
    keep = 1.0 - module.weight_drop
    if keep == 0.0:
        return [torch.zeros_like(w) for w in weights_hh]
    return [bernoulli(w.shape, keep, w) / keep for w in weights_hh]


def recurrence_masks(module, input, batch_sizes, state, hidden, cell_state):
    """The masks of one layer and direction for fused_rnn.functional's layer op (keywords; none
    when the options are off): zoneout's per row, unit and step (input: the layer's time-major
    [T, B, I] or packed [N, I] input, with batch_sizes), drawn in one call each for the whole
    sequence, h's then, with cell_state (the LSTM), c's (hidden units); in eval one row of p,
    expanded; then in training recurrent dropout's [batch, state]. A cell's step is a layer of
    one step ([1, B, I]) here; cells have no recurrent dropout (a call does not see the sequence)."""
    masks = {}
    p, leading = module.zoneout, input.shape[:-1]
    if p:
        widths = {"zoneout_h": state, **({"zoneout_c": hidden} if cell_state else {})}
        for name, width in widths.items():
            if module.training:
                masks[name] = bernoulli((*leading, width), p, input)
            else:
                masks[name] = input.new_full((width,), p).expand(*leading, width)
    if getattr(module, "recurrent_dropout", 0.0) and module.training:
        keep = 1.0 - module.recurrent_dropout
        batch = input.size(1) if batch_sizes is None else int(batch_sizes[0])
        masks["dropout_h"] = bernoulli((batch, state), keep, input) / keep if keep else input.new_zeros(batch, state)
    return masks


def bernoulli(shape, p, like):
    """1 with probability p, else 0, in like's dtype and on its device: on the CPU fused_rnn's
    counter-based sampler (csrc/cpu/bernoulli.h) from a seed drawn from torch's generator,
    elsewhere torch.rand < p. For a [100, 64, 512] mask on 2 threads (Xeon): 15.3 ms through
    torch.rand < p, 1.1 ms so."""
    if like.device.type != "cpu":
        return (torch.rand(shape, device=like.device) < p).to(like.dtype)
    seed = torch.randint(-2**63, 2**63 - 1, (1,), dtype=torch.int64)
    return ops.bernoulli_mask(seed, shape, p, like.dtype)


def options_repr(module):
    """", weight_drop=0.5, zoneout=0.1, residual=True" for the options that are on ("" for
    none, and for modules without them)."""
    parts = [f", {name}={getattr(module, name)}" for name in _RATES if getattr(module, name, 0.0)]
    return "".join(parts + ([", residual=True"] if getattr(module, "residual", False) is True else []))
