"""Regularizers of the layer modules that act on their weights and layers, as keyword-only
options (off by default, so every torch.nn call is unchanged):

    weight_drop  (LSTM, GRU, RNN)  DropConnect on each layer and direction's W_hh (Wan et al.
                                   2013), as AWD-LSTM uses it: in training, one mask over
                                   W_hh's elements per forward call, scaled by 1 / (1 - p);
                                   the gradient reaches the real parameter through the mask.
                                   No parameter is re-registered and nothing warns, so
                                   flatten_parameters() and optimizers see the module as it is.
    residual     (LSTM, GRU, RNN)  from the second layer on, each layer's output plus its input
                                   (before the dropout between layers).

Masks come from PyTorch's generator, so torch.manual_seed reproduces a run:
weight_drop_masks(module) draws them, in the order forward does (layer, then direction), and
a test can give the same masks to fused_rnn.reference.
"""
import torch

__all__ = ["weight_drop_masks"]


def check(module, weight_drop, residual):
    """Checks and records the options on module (torch.nn's dropout message for the rate)."""
    kind = type(module).__name__
    if isinstance(weight_drop, bool) or not isinstance(weight_drop, (int, float)) or not 0 <= weight_drop <= 1:
        raise ValueError(f"{kind}: weight_drop should be a number in range [0, 1] representing the probability of "
                         f"an element of weight_hh being zeroed, but got {weight_drop!r}")
    if not isinstance(residual, bool):
        raise TypeError(f"{kind}: residual should be a bool, but got {type(residual).__name__}")
    module.weight_drop, module.residual = float(weight_drop), residual


def weight_drop_masks(module, weights_hh):
    """One scaled mask per W_hh in `weights_hh` (layer, then direction): each element 0 with
    probability p = module.weight_drop, else 1 / (1 - p). Drawn as uniform < 1 - p: a 2048 x
    512 mask takes 4 ms that way, and 14 ms through F.dropout's bernoulli_ (2 threads)."""
    keep = 1.0 - module.weight_drop
    if keep == 0.0:
        return [torch.zeros_like(w) for w in weights_hh]
    return [(torch.rand_like(w) < keep).to(w.dtype) / keep for w in weights_hh]


def options_repr(module):
    """", weight_drop=0.5, residual=True" for the options that are on ("" for none, and for
    modules without them)."""
    weight_drop, residual = getattr(module, "weight_drop", 0.0), getattr(module, "residual", False)
    parts = [f", weight_drop={weight_drop}"] if weight_drop else []
    return "".join(parts + ([", residual=True"] if residual is True else []))
