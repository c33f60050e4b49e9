"""The private torch Python APIs fused_rnn uses, each wrapped once here, with the torch
versions it was checked against (pyproject.toml's torch range agrees with this file; the
private C++ functions are in csrc/torch_private.h)."""
import functools
import importlib.abc
import importlib.util
import sys

import torch


def below_autograd():
    """A context that dispatches below the Autograd keys, so a registered op with a Python
    autograd formula (torch.library.register_autograd) runs without its wrapper.
    torch._C._AutoDispatchBelowAutograd: checked with torch 2.11 and 2.13."""
    return torch._C._AutoDispatchBelowAutograd()


def known_true(condition):
    """A condition on sizes that may be symbolic: its value where it is known, else False, with
    no guard (torch.export's packed batch_sizes have an unbacked length).
    torch.fx.experimental.symbolic_shapes.guard_or_false: checked with torch 2.11 and 2.13."""
    from torch.fx.experimental.symbolic_shapes import guard_or_false

    return guard_or_false(condition)


def current_flat_weights(module):
    """An RNNBase module's weights in torch.nn's flat order, re-read by name first, so that a
    replaced weight (assignment, torch.func.functional_call, parametrizations) is seen.
    RNNBase._update_flat_weights / _flat_weights: checked with torch 2.11 and 2.13."""
    module._update_flat_weights()
    return module._flat_weights


# torch._dynamo refuses to trace any instance of nn.RNN / nn.GRU / nn.LSTM unless the global
# torch._dynamo.config.allow_rnn is set (VariableBuilder.wrap_module), and fused_rnn's modules
# are such instances (isinstance stays true for users and to_fused). Setting the flag globally
# would change how torch.nn's own RNNs compile in the same program, so wrap_module is wrapped to
# set it only while it wraps a fused module. Dynamo is imported lazily by torch (2 s), so the
# wrapper goes in when torch._dynamo.variables.builder is first imported, or now if it is.
# VariableBuilder.wrap_module and config.allow_rnn: checked with torch 2.11 and 2.13.
_DYNAMO_BUILDER = "torch._dynamo.variables.builder"


def allow_in_dynamo(module_types):
    """Lets torch.compile trace modules of `module_types` (nn.RNN subclasses) in full graphs."""
    if _DYNAMO_BUILDER in sys.modules:
        _wrap_module_builder(sys.modules[_DYNAMO_BUILDER], module_types)
    else:
        sys.meta_path.insert(0, _AfterImport(_DYNAMO_BUILDER, lambda m: _wrap_module_builder(m, module_types)))


def _wrap_module_builder(builder, module_types):
    original = builder.VariableBuilder.wrap_module
    if getattr(original, "_fused_rnn_types", None) is not None:
        return

    @functools.wraps(original)
    def wrap_module(self, value):
        if isinstance(value, module_types) and not builder.config.allow_rnn:
            with builder.config.patch(allow_rnn=True):
                return original(self, value)
        return original(self, value)

    wrap_module._fused_rnn_types = module_types
    builder.VariableBuilder.wrap_module = wrap_module


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs `then(module)` right after the module `name` is imported; removes itself."""

    def __init__(self, name, then):
        self.name, self.then = name, then

    def find_spec(self, name, path, target=None):
        if name != self.name:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)  # the real finders' spec
        exec_module = spec.loader.exec_module

        def exec_then(module):
            exec_module(module)
            self.then(module)

        spec.loader.exec_module = exec_then
        return spec
