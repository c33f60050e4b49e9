"""Swap torch.nn recurrent modules inside a model for the fused ones, and back.

``to_fused(model)`` turns every ``torch.nn.LSTM / GRU / RNN / LSTMCell / GRUCell / RNNCell``
inside ``model`` (``model`` itself included) into its ``fused_rnn`` counterpart, in place;
``to_torch(model)`` is the inverse. Both return ``model``.

The fused modules subclass their torch.nn counterparts and add no state of their own, so a
conversion only changes each module's class: the very same Parameter objects (an optimizer
built before the conversion keeps working), buffers, device, dtype, training mode, hooks and
state_dict keys stay as they are.

A cell variant or regularizer torch.nn does not have (``peephole``, ``layer_norm``,
``weight_drop``, ``zoneout``, ``recurrent_dropout``, ``residual``) has no torch.nn counterpart:
``to_torch`` refuses a model that holds one, before converting anything.

Only modules of exactly these classes are converted. A user's own subclass of ``nn.LSTM``
may have its own ``forward`` and is left alone. A module with parametrized weights
(``torch.nn.utils.parametrize``, e.g. ``parametrizations.weight_norm``) has a class that
torch generated as a subclass of its original class; it gets a matching class generated over
the new base, carrying the same parametrization properties.
"""
import torch.nn as nn
from torch.nn.utils import parametrize

from . import regularizers, variants
from . import rnn as _fused

__all__ = ["to_fused", "to_torch"]

_TORCH_TO_FUSED = {
    nn.LSTM: _fused.LSTM,
    nn.GRU: _fused.GRU,
    nn.RNN: _fused.RNN,
    nn.LSTMCell: _fused.LSTMCell,
    nn.GRUCell: _fused.GRUCell,
    nn.RNNCell: _fused.RNNCell,
}
_FUSED_TO_TORCH = {fused: torch_cls for torch_cls, fused in _TORCH_TO_FUSED.items()}

# (generated parametrized class, new base) -> generated class over the new base, so converting
# a module back and forth does not mint a new class each time.
_parametrized_classes = {}


def _parametrized_class_over(cls, new_base):
    """A class like torch.nn.utils.parametrize's generated ``cls`` but deriving from new_base."""
    key = (cls, new_base)
    if key not in _parametrized_classes:
        namespace = {k: v for k, v in vars(cls).items() if k not in ("__dict__", "__weakref__")}
        new_cls = type(f"Parametrized{new_base.__name__}", (new_base,), namespace)
        _parametrized_classes[key] = new_cls
        _parametrized_classes[(new_cls, cls.__bases__[0])] = cls  # the way back
    return _parametrized_classes[key]


def _target_class(module, mapping):
    cls = type(module)
    if cls in mapping:
        return mapping[cls]
    if parametrize.is_parametrized(module):
        # torch.nn.utils.parametrize replaced the class by a generated subclass of the original
        # one (its only base); convert when that original class is one we map.
        (base,) = cls.__bases__
        if base in mapping:
            return _parametrized_class_over(cls, mapping[base])
    return None


def _refuse_variants(model):
    for name, module in model.named_modules():
        options = (variants.options_repr(module) + regularizers.options_repr(module)).lstrip(", ")
        if options:
            where = f"model.{name}" if name else "model"
            dropped = module._variant_weight_names
            raise ValueError(
                f"to_torch: {where} is a {type(module).__name__} with {options}, which torch.nn does not have: "
                "converting it would change what it computes"
                + (f" and drop its parameters {', '.join(dropped)}" if dropped else ""))


def _convert(model, mapping):
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected an nn.Module, got {type(model).__name__}")
    if mapping is _FUSED_TO_TORCH:
        _refuse_variants(model)
    for module in model.modules():
        new_cls = _target_class(module, mapping)
        if new_cls is not None:
            module.__class__ = new_cls
    return model


def to_fused(model):
    """Replace every torch.nn LSTM/GRU/RNN (and cell) in ``model`` by the fused one, in place.

    Weights (the same Parameter objects), device, dtype and training mode are kept.
    Returns ``model``, so ``model = fused_rnn.to_fused(model)`` works, a bare ``nn.LSTM``
    included.
    """
    return _convert(model, _TORCH_TO_FUSED)


def to_torch(model):
    """The inverse of :func:`to_fused`: fused modules in ``model`` become torch.nn's again."""
    return _convert(model, _FUSED_TO_TORCH)
