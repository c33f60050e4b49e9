"""Loads the compiled extension and gives its ops (torch.ops.fused_rnn.*) fake kernels for
torch.compile and autograd formulas (the backward ops; double backward via the reference)."""
import importlib
import math

import torch

from . import reference

# fused_rnn._C_<level>: the extension built for each CPU level (setup.py). The widest that
# ATen itself runs at is loaded (torch.backends.cpu.get_cpu_capability(): the CPU's features,
# lowered by ATEN_CPU_CAPABILITY=default|avx2|avx512 as for ATen's kernels).
_LEVELS = {"AVX512": ("avx512", "avx2", "default"), "AVX2": ("avx2", "default")}


def _load_extension():
    capability = torch.backends.cpu.get_cpu_capability()
    errors = []
    for level in _LEVELS.get(capability, ("default",)):
        try:
            return importlib.import_module(f"{__package__}._C_{level}")
        except ImportError as error:
            errors.append(f"_C_{level}: {error}")
    raise ImportError(  # pragma: no cover - exercised only on a broken install
        f"fused_rnn's compiled extension could not be loaded (CPU capability {capability}): "
        f"{'; '.join(errors)}. Build it from the repository root with `make build` "
        "(or `pip install --no-build-isolation -e .`).")


_C = _load_extension()
ops = torch.ops.fused_rnn


class _OpSpec:
    """How one cell's forward op lays out its arguments and outputs.

    forward(input, batch_sizes, *states0, *weights, *extras, reverse, need_workspace)
        -> (output, *states_n, workspace)
    backward(grad_output, *grad_states_n, input, batch_sizes, *states0, *weights, *extras,
             workspace, reverse) -> (grad_input, *grad_states0, *grad_weights)
    """

    def __init__(self, cell, n_states, n_weights, n_extras, facts):
        self.cell, self.n_states, self.n_weights, self.n_extras = cell, n_states, n_weights, n_extras
        # From the C++ cell (csrc/cells): the one place the gate count and workspace are written.
        self.gates = facts["gates"]
        self.workspace_units = facts["workspace_units"]
        self.n_tensors = 2 + n_states + n_weights  # input, batch_sizes, states, weights

    def split(self, args):
        n = self.n_tensors
        tensors, extras = args[:n], args[n:n + self.n_extras]
        reverse, need_workspace = args[n + self.n_extras:]
        return tensors, extras, reverse, need_workspace

    def workspace_width(self, hidden, state, proj):
        return _C.workspace_width(self.workspace_units, hidden, state, proj)


SPECS = {
    "lstm": _OpSpec("lstm", n_states=2, n_weights=5, n_extras=0, facts=_C.cells["lstm"]),
    "gru": _OpSpec("gru", n_states=1, n_weights=4, n_extras=0, facts=_C.cells["gru"]),
    # tanh and relu share the gate count and workspace (the C++ cells say so for each).
    "rnn": _OpSpec("rnn", n_states=1, n_weights=4, n_extras=1, facts=_C.cells["rnn_tanh"]),
}


def _reference_call(spec, tensors, extras, reverse):
    """The same forward through fused_rnn.reference: (output, *states_n)."""
    input, batch_sizes = tensors[0], tensors[1]
    states = tensors[2:2 + spec.n_states]
    weights = tensors[2 + spec.n_states:]
    if spec.cell == "lstm":
        out, (h, c) = reference.lstm(input, tuple(states), *weights, batch_sizes=batch_sizes, reverse=reverse)
        return out, h, c
    fn = reference.gru if spec.cell == "gru" else reference.rnn
    kwargs = {"nonlinearity": extras[0]} if spec.cell == "rnn" else {}
    out, h = fn(input, states[0], *weights, batch_sizes=batch_sizes, reverse=reverse, **kwargs)
    return out, h


def _check_devices(op, args):
    """The C++ ops' device checks, in the fake kernels: a fake (or meta) tensor among real ones
    would otherwise dispatch here and be accepted. Every tensor on input's device, batch_sizes
    on the CPU; the message is the C++ one."""
    named = [(a.name, v) for a, v in zip(op._schema.arguments, args) if isinstance(v, torch.Tensor)]
    input = dict(named)["input"]
    for name, t in named:
        if name == "batch_sizes" and t.device.type != "cpu":
            raise RuntimeError(f"{op._schema.name}: expected batch_sizes to be a CPU tensor, but got {t.device}")
        if name != "batch_sizes" and t.device != input.device:
            raise RuntimeError(f"{op._schema.name}: expected {name} to be on {input.device} (the device of input), "
                               f"but got {t.device}")


def _register(spec):
    forward_name = f"fused_rnn::{spec.cell}_forward"
    backward_op = getattr(ops, f"{spec.cell}_backward")

    @torch.library.register_fake(forward_name)
    def _forward_fake(*args):
        _check_devices(getattr(ops, f"{spec.cell}_forward").default, args)
        tensors, _, _, need_workspace = spec.split(args)
        input, states0, weights = tensors[0], tensors[2:2 + spec.n_states], tensors[2 + spec.n_states:]
        w_hh = weights[1]
        hidden, state = w_hh.shape[0] // spec.gates, w_hh.shape[1]
        proj = spec.cell == "lstm" and weights[4] is not None
        output = input.new_empty((*input.shape[:-1], state))
        if need_workspace:
            rows = math.prod(input.shape[:-1])  # not numel // input_size: that may be 0
            workspace = input.new_empty((rows, spec.workspace_width(hidden, state, proj)))
        else:
            workspace = input.new_empty((0,))
        return (output, *(s.new_empty(s.shape) for s in states0), workspace)

    @torch.library.register_fake(f"fused_rnn::{spec.cell}_backward")
    def _backward_fake(*args):
        _check_devices(backward_op.default, args)
        tensors = args[1 + spec.n_states:1 + spec.n_states + spec.n_tensors]
        input, states0, weights = tensors[0], tensors[2:2 + spec.n_states], tensors[2 + spec.n_states:]
        grads = [input.new_empty(input.shape)] + [s.new_empty(s.shape) for s in states0]
        grads += [w.new_empty(w.shape) if w is not None else input.new_empty((0,)) for w in weights]
        return tuple(grads)

    def setup_context(ctx, inputs, output):
        tensors, extras, reverse, need_workspace = spec.split(inputs)
        workspace = output[-1]
        ctx.mark_non_differentiable(workspace)
        # Unused outputs' grads arrive as None (no zero-filled [N, width] workspace grad).
        ctx.set_materialize_grads(False)
        ctx.batch_sizes, ctx.extras, ctx.reverse = tensors[1], extras, reverse
        ctx.need_workspace = need_workspace
        ctx.output_shapes = [o.shape for o in output[:-1]]
        ctx.save_for_backward(tensors[0], *tensors[2:], workspace)

    def backward(ctx, *grads):
        saved = ctx.saved_tensors
        input, rest, workspace = saved[0], saved[1:-1], saved[-1]
        tensors = (input, ctx.batch_sizes, *rest)
        grads = [
            g if g is not None else input.new_zeros(shape)
            for g, shape in zip(grads[:-1], ctx.output_shapes)
        ]
        differentiable = [input, *rest]  # every tensor argument but batch_sizes
        if torch.is_grad_enabled():
            # create_graph=True: differentiate the reference so the result is differentiable.
            # A tensor passed in two slots (tied weights) gets its whole gradient, which covers
            # both uses, in its first slot only: autograd adds up what the slots return.
            wanted = []
            for t in differentiable:
                if t is not None and t.requires_grad and not any(t is w for w in wanted):
                    wanted.append(t)
            with torch.enable_grad():
                outs = _reference_call(spec, tensors, ctx.extras, ctx.reverse)
            found = torch.autograd.grad(outs, wanted, grads, create_graph=True, allow_unused=True)
            result, given = [], set()
            for t in differentiable:
                index = next((i for i, w in enumerate(wanted) if t is w), None)
                result.append(None if index is None or index in given else found[index])
                given.add(index)
        else:
            if not ctx.need_workspace:
                raise RuntimeError(
                    f"fused_rnn::{spec.cell}_forward was called with need_workspace=False, so it kept "
                    "nothing to differentiate; call it with need_workspace=True (fused_rnn.functional "
                    "does this whenever a gradient is needed)"
                )
            raw = backward_op(*grads, *tensors, *ctx.extras, workspace, ctx.reverse)
            result = [g if t is not None else None for g, t in zip(raw, differentiable)]
        # Map onto the forward's arguments: batch_sizes, the extras and the flags get None.
        return (result[0], None, *result[1:], *([None] * spec.n_extras), None, None)

    torch.library.register_autograd(forward_name, backward, setup_context=setup_context)

    forward_op = getattr(ops, f"{spec.cell}_forward")

    class FusedFunction(torch.autograd.Function):
        """The same autograd formula as an autograd.Function, for torch.func's transforms
        (grad, vjp, jacrev, vmap): they refuse the Function register_autograd generates, which
        has no setup_context (torch 2.11-2.13). Forward-mode AD (jvp, jacfwd) raises torch's
        "implement the jvp function" error here, where the op would give zero tangents."""

        generate_vmap_rule = True  # the op under vmap: torch's per-sample fallback

        @staticmethod
        def forward(*args):
            return forward_op(*args)

    FusedFunction.setup_context = staticmethod(setup_context)
    FusedFunction.backward = staticmethod(backward)
    FUNCTIONS[forward_op] = FusedFunction


# forward op -> its autograd.Function (see FusedFunction).
FUNCTIONS = {}
for _spec in SPECS.values():
    _register(_spec)
