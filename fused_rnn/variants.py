"""The cell variants torch.nn does not have, as keyword-only options of the drop-in modules:
which module takes which option, the parameters each option adds to a layer and direction
(names, shapes, initialization), and their values as the functional ops' keywords.

    peephole    (LSTM, LSTMCell)  weight_ch [3H] = (w_ci, w_cf, w_co), uniform in +-1/sqrt(H)
                                  like torch.nn's weights
    layer_norm  (LSTM, LSTMCell,  ln_weight_ih, ln_weight_hh [G*H] = γ_ih, γ_hh, ones;
                 GRU, GRUCell)    LSTM also ln_weight_c, ln_bias_c [H] = γ_c, β_c, ones and zeros

The equations are fused_rnn.reference's (lstm_cell, gru_cell). A layer's parameters carry
torch.nn's suffixes (weight_ch_l1_reverse); a cell's none. They are registered after torch.nn's
own, so torch.nn's parameters are drawn exactly as torch.nn draws them.
"""
import math

import torch
from torch import nn

__all__ = ["OPTIONS"]

# module mode -> the variant options its modules and cells take
OPTIONS = {"LSTM": ("peephole", "layer_norm"), "GRU": ("layer_norm",)}


def _parameters(mode, option, gates, hidden):
    """(name, size) of the parameters `option` adds to one layer and direction."""
    if option == "peephole":
        return [("weight_ch", 3 * hidden)]
    sizes = [("ln_weight_ih", gates * hidden), ("ln_weight_hh", gates * hidden)]
    return sizes + ([("ln_weight_c", hidden), ("ln_bias_c", hidden)] if mode == "LSTM" else [])


def setup(module, mode, gates, suffixes, **options):
    """Checks and records `options` (name -> bool) on module and registers the parameters of
    those that are on, for each of `suffixes` ("_l0", "_l0_reverse", ...; "" for a cell)."""
    kind = type(module).__name__
    for name, value in options.items():
        if not isinstance(value, bool):
            raise TypeError(f"{kind}: {name} should be a bool, but got {type(value).__name__}")
        setattr(module, name, value)
    sizes = [p for option, on in options.items() if on for p in _parameters(mode, option, gates, module.hidden_size)]
    module._variant_weight_names = tuple(name for name, _ in sizes)
    like = module.weight_hh_l0 if isinstance(module, nn.RNNBase) else module.weight_hh
    for suffix in suffixes:
        for name, size in sizes:
            module.register_parameter(name + suffix, nn.Parameter(torch.empty(size, device=like.device,
                                                                              dtype=like.dtype)))
    reset(module, draw=True)


def reset(module, draw):
    """Layer norm's γ to ones and β to zeros; with draw, the peephole weights uniform in
    +-1/sqrt(hidden_size) (after torch.nn's reset_parameters they are already)."""
    bound = 1.0 / math.sqrt(module.hidden_size) if module.hidden_size > 0 else 0.0
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.startswith("ln_weight"):
                p.fill_(1.0)
            elif name.startswith("ln_bias"):
                p.zero_()
            elif name.startswith("weight_ch") and draw:
                p.uniform_(-bound, bound)


def weights(module, suffix=""):
    """The variant parameters of one layer and direction (`suffix`) as the functional op's keywords."""
    return {name: getattr(module, name + suffix) for name in module._variant_weight_names}


def options_repr(module):
    """", peephole=True, layer_norm=True" for the options that are on ("" for none)."""
    on = [name for mode in OPTIONS.values() for name in mode if getattr(module, name, False) is True]
    return "".join(f", {name}=True" for name in dict.fromkeys(on))


class VariantOptions:
    """Mixed into the fused modules and cells before their torch.nn class: the options' defaults
    (so also on a torch.nn module converted by to_fused), and torch.nn's reset_parameters and
    extra_repr extended to the variants."""

    peephole = layer_norm = False
    _variant_weight_names = ()

    def reset_parameters(self):
        super().reset_parameters()
        reset(self, draw=False)

    def extra_repr(self):
        return super().extra_repr() + options_repr(self)
