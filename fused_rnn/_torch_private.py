"""The private torch Python APIs fused_rnn uses, each wrapped once here, with the torch
versions it was checked against (pyproject.toml's torch range agrees with this file; the
private C++ functions are in csrc/torch_private.h)."""
import torch


def below_autograd():
    """A context that dispatches below the Autograd keys, so a registered op with a Python
    autograd formula (torch.library.register_autograd) runs without its wrapper.
    torch._C._AutoDispatchBelowAutograd: checked with torch 2.11 and 2.13."""
    return torch._C._AutoDispatchBelowAutograd()


def current_flat_weights(module):
    """An RNNBase module's weights in torch.nn's flat order, re-read by name first, so that a
    replaced weight (assignment, torch.func.functional_call, parametrizations) is seen.
    RNNBase._update_flat_weights / _flat_weights: checked with torch 2.11 and 2.13."""
    module._update_flat_weights()
    return module._flat_weights
