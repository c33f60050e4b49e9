"""Loads the compiled extension and gives its ops (torch.ops.fused_rnn.*) fake kernels for
torch.compile and autograd formulas (the backward ops; double backward via the reference)."""
import importlib
import math

import torch

from . import _torch_private, reference

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
    """How one cell's pair of ops (forward, backward) lays out its arguments and outputs.

    Layer ops (step=False), one layer and direction over a sequence:
        <cell>_forward(input, batch_sizes, *states0, *weights, *masks, *extras, reverse, need_workspace)
            -> (output, *states_n, workspace)
        <cell>_backward(grad_output, *grad_states_n, input, batch_sizes, *states0, *weights, *masks,
                        *extras, workspace, reverse) -> (grad_input, *grad_states0, *grad_weights)
    Single-step ops (step=True), one step of the cell:
        <cell>_cell_forward(input, *states0, *weights, *masks, *extras, need_workspace)
            -> (*states_n, workspace)
        <cell>_cell_backward(*grad_states_n, input, *states0, *weights, *masks, *extras, workspace)
            -> (grad_input, *grad_states0, *grad_weights)
    masks: the regularizers' (csrc/layer_masks.h), not differentiable: the layers' MASKS, the
    steps' zoneout only (STEP_MASKS).
    """

    def __init__(self, cell, n_states, weight_names, mask_names, n_extras, facts, step=False):
        self.cell, self.n_states, self.n_extras = cell, n_states, n_extras
        self.weight_names = weight_names  # as the schemas and fused_rnn.reference name them
        self.mask_names = STEP_MASKS[cell] if step else mask_names
        n_weights = len(weight_names)
        self.step = step
        self.name = f"{cell}_cell" if step else cell
        # From the C++ cell (csrc/cells): the one place the gate count and workspace are written.
        self.gates = facts["gates"]
        self.workspace_units = facts["workspace_units"]
        self.has_cell_state = facts["has_cell_state"]
        self.n_leading = 1 if step else 2  # input (, batch_sizes)
        self.n_differentiable = 1 + n_states + n_weights
        self.n_tensors = self.n_leading + n_states + n_weights + len(self.mask_names)
        self.n_flags = 1 if step else 2  # (reverse,) need_workspace

    def split(self, args):
        """The forward's arguments -> (tensors, extras, flags but need_workspace, need_workspace)."""
        n = self.n_tensors
        tensors, extras, flags = args[:n], args[n:n + self.n_extras], args[n + self.n_extras:]
        return tensors, extras, flags[:-1], flags[-1]

    def parts(self, tensors):
        """The forward's tensor arguments -> (input, batch_sizes or None, states0, weights)."""
        states = tensors[self.n_leading:self.n_leading + self.n_states]
        weights = tensors[self.n_leading + self.n_states:self.n_tensors - len(self.mask_names)]
        return tensors[0], None if self.step else tensors[1], states, weights

    def masks(self, tensors):
        """The forward's tensor arguments -> the masks (a tuple, empty for the step ops)."""
        return tuple(tensors[self.n_tensors - len(self.mask_names):self.n_tensors])

    def differentiable(self, tensors):
        """The tensor arguments that get a gradient: all but batch_sizes and the masks."""
        return [tensors[0], *tensors[self.n_leading:self.n_leading + self.n_differentiable - 1]]

    def needs_grad(self, ctx):
        """Whether each of `differentiable` needs a gradient, from ctx.needs_input_grad (one per
        forward argument)."""
        needs = ctx.needs_input_grad
        return [needs[0], *needs[self.n_leading:self.n_leading + self.n_differentiable - 1]]

    def forward_grads(self, result):
        """The gradients of `differentiable` -> one per forward argument (None for the others)."""
        tail = [None] * (len(self.mask_names) + self.n_extras + self.n_flags)
        return (*result, *tail) if self.step else (result[0], None, *result[1:], *tail)

    def workspace_width(self, hidden, state, proj, layer_norm, dropout=False):
        norm_cols = _C.norm_columns(self.gates, hidden, self.has_cell_state, layer_norm)
        if self.step:
            return _C.step_workspace_width(self.workspace_units, hidden, proj, norm_cols)
        return _C.workspace_width(self.workspace_units, hidden, state, proj, norm_cols, dropout)


_WEIGHTS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
# The weights of the cell variants (peephole; layer_norm): keyword-only in fused_rnn.functional
# and reference, None for a plain cell.
LAYER_NORM_WEIGHTS = {"lstm": ("ln_weight_ih", "ln_weight_hh", "ln_weight_c", "ln_bias_c"),
                      "gru": ("ln_weight_ih", "ln_weight_hh")}
VARIANT_WEIGHTS = ("weight_ch", *LAYER_NORM_WEIGHTS["lstm"])
# The regularizers' masks the layer ops take (keyword-only in fused_rnn.functional and reference).
MASKS = {"lstm": ("zoneout_h", "zoneout_c", "dropout_h"), "gru": ("zoneout_h", "dropout_h"),
         "rnn": ("zoneout_h", "dropout_h")}
STEP_MASKS = {cell: tuple(name for name in names if name != "dropout_h") for cell, names in MASKS.items()}
_CELL_OPS = {  # cell: n_states, weight names, mask names, n_extras, the C++ cell's facts
    "lstm": (2, (*_WEIGHTS, "weight_hr", "weight_ch", *LAYER_NORM_WEIGHTS["lstm"]), MASKS["lstm"], 0,
             _C.cells["lstm"]),
    "gru": (1, (*_WEIGHTS, *LAYER_NORM_WEIGHTS["gru"]), MASKS["gru"], 0, _C.cells["gru"]),
    # tanh and relu share the gate count and workspace (the C++ cells say so for each).
    "rnn": (1, _WEIGHTS, MASKS["rnn"], 1, _C.cells["rnn_tanh"]),
}
SPECS = {cell: _OpSpec(cell, *args) for cell, args in _CELL_OPS.items()}
STEP_SPECS = {cell: _OpSpec(cell, *args, step=True) for cell, args in _CELL_OPS.items()}


_REFERENCE_CELLS = {"lstm": reference.lstm_cell, "gru": reference.gru_cell, "rnn": reference.rnn_cell}


def _reference_call(spec, tensors, extras, flags):
    """The same forward through fused_rnn.reference: (output, *states_n) for a layer op,
    states_n for a single step."""
    input, batch_sizes, states, weights = spec.parts(tensors)
    kwargs = {"nonlinearity": extras[0]} if spec.cell == "rnn" else {}
    kwargs.update(zip(spec.weight_names, weights))
    kwargs.update((name, mask) for name, mask in zip(spec.mask_names, spec.masks(tensors)) if mask is not None)
    state = tuple(states) if spec.cell == "lstm" else states[0]
    if spec.step:
        out = _REFERENCE_CELLS[spec.cell](input, state, **kwargs)
        return out if spec.cell == "lstm" else (out,)
    layer = {"lstm": reference.lstm, "gru": reference.gru, "rnn": reference.rnn}[spec.cell]
    out, state_n = layer(input, state, batch_sizes=batch_sizes, reverse=flags[0], **kwargs)
    return (out, *state_n) if spec.cell == "lstm" else (out, state_n)


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
    forward_op = getattr(ops, f"{spec.name}_forward")
    backward_op = getattr(ops, f"{spec.name}_backward")

    @torch.library.register_fake(f"fused_rnn::{spec.name}_forward")
    def _forward_fake(*args):
        _check_devices(forward_op.default, args)
        tensors, _, _, need_workspace = spec.split(args)
        input, _, states0, weights = spec.parts(tensors)
        named = dict(zip(spec.weight_names, weights))
        w_hh = named["weight_hh"]
        hidden, state = w_hh.shape[0] // spec.gates, w_hh.shape[1]
        proj, layer_norm = named.get("weight_hr") is not None, named.get("ln_weight_hh") is not None
        dropout = dict(zip(spec.mask_names, spec.masks(tensors))).get("dropout_h") is not None
        outputs = [s.new_empty(s.shape) for s in states0]
        if not spec.step:
            outputs.insert(0, input.new_empty((*input.shape[:-1], state)))
        if need_workspace:
            rows = math.prod(input.shape[:-1])  # not numel // input_size: that may be 0
            workspace = input.new_empty((rows, spec.workspace_width(hidden, state, proj, layer_norm, dropout)))
        else:
            workspace = input.new_empty((0,))
        return (*outputs, workspace)

    @torch.library.register_fake(f"fused_rnn::{spec.name}_backward")
    def _backward_fake(*args):
        _check_devices(backward_op.default, args)
        n_grads = spec.n_states + (0 if spec.step else 1)
        input, _, states0, weights = spec.parts(args[n_grads:n_grads + spec.n_tensors])
        shapes = [input.shape, *(s.shape for s in states0), *(w.shape if w is not None else (0,) for w in weights)]
        mask = args[-1] if spec.step else [True] * len(shapes)  # the step ops' output_mask
        return tuple(input.new_empty(shape if wanted else (0,)) for shape, wanted in zip(shapes, mask))

    def setup_context(ctx, inputs, output):
        tensors, extras, flags, need_workspace = spec.split(inputs)
        workspace = output[-1]
        ctx.mark_non_differentiable(workspace)
        # Unused outputs' grads arrive as None (no zero-filled [N, width] workspace grad).
        ctx.set_materialize_grads(False)
        ctx.batch_sizes, ctx.extras, ctx.flags = spec.parts(tensors)[1], extras, flags
        ctx.need_workspace = need_workspace
        ctx.output_shapes = [o.shape for o in output[:-1]]
        ctx.save_for_backward(*spec.differentiable(tensors), *spec.masks(tensors), workspace)

    def backward(ctx, *grads):
        saved = ctx.saved_tensors
        differentiable, workspace = list(saved[:spec.n_differentiable]), saved[-1]
        masks = saved[spec.n_differentiable:-1]
        tensors = (*differentiable, *masks) if spec.step else (differentiable[0], ctx.batch_sizes, *differentiable[1:],
                                                               *masks)
        grads = [g if g is not None else differentiable[0].new_zeros(shape)
                 for g, shape in zip(grads[:-1], ctx.output_shapes)]
        if torch.is_grad_enabled():
            result = _reference_grads(spec, tensors, ctx.extras, ctx.flags, differentiable, grads)
        else:
            if not ctx.need_workspace:
                raise RuntimeError(
                    f"fused_rnn::{spec.name}_forward was called with need_workspace=False, so it kept "
                    "nothing to differentiate; call it with need_workspace=True (fused_rnn.functional "
                    "does this whenever a gradient is needed)"
                )
            # The step ops compute only the gradients autograd asks for.
            wanted = [t is not None and needed for t, needed in zip(differentiable, spec.needs_grad(ctx))]
            mask = [wanted] if spec.step else []
            raw = backward_op(*grads, *tensors, *ctx.extras, workspace, *ctx.flags, *mask)
            result = [g if w else None for g, w in zip(raw, wanted)]
        return spec.forward_grads(result)

    torch.library.register_autograd(f"fused_rnn::{spec.name}_forward", backward, setup_context=setup_context)

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

    class EagerFunction(torch.autograd.Function):
        """The same formula for the eager training path (fused_rnn.functional), with the op
        called below autograd. Calling the op itself runs torch.library's Python autograd wrapper
        (fill_defaults, redispatch), and a Function with a separate setup_context binds its
        arguments with inspect.signature on every apply: together about 60 us of a single-step
        call. So forward takes ctx and sets it up itself."""

        @staticmethod
        def forward(ctx, *args):
            with _torch_private.below_autograd():
                output = forward_op(*args)
            setup_context(ctx, args, output)
            return output

    EagerFunction.backward = staticmethod(backward)
    if not spec.step:  # eager single steps get a C++ node instead (step_with_grad)
        EAGER_FUNCTIONS[forward_op] = EagerFunction


def _reference_grads(spec, tensors, extras, flags, differentiable, grads):
    """backward with create_graph=True: the gradients of the reference, which are differentiable.
    A tensor passed in two slots (tied weights) gets its whole gradient, which covers both uses,
    in its first slot only: autograd adds up what the slots return."""
    wanted = []
    for t in differentiable:
        if t is not None and t.requires_grad and not any(t is w for w in wanted):
            wanted.append(t)
    with torch.enable_grad():
        outs = _reference_call(spec, tensors, extras, flags)
    found = torch.autograd.grad(outs, wanted, grads, create_graph=True, allow_unused=True)
    result, given = [], set()
    for t in differentiable:
        index = next((i for i, w in enumerate(wanted) if t is w), None)
        result.append(None if index is None or index in given else found[index])
        given.add(index)
    return result


def step_double_backward(name, inputs, masks, extras, grads):
    """The gradient of each input of a single-step call whose node is C++'s
    (_C.step_with_grad, csrc/step_autograd.h), for backward with create_graph=True."""
    spec = STEP_SPECS[name[:-len("_cell")]]
    return _reference_grads(spec, [*inputs, *masks], tuple(extras), (), list(inputs), grads)


_C.set_step_double_backward(step_double_backward)


def step_with_grad(spec, args):
    """The single-step op of `spec` on the forward's arguments but need_workspace, in eager
    training: (*states_n, None), the states with their autograd node in C++."""
    n, masks = spec.n_tensors, len(spec.mask_names)
    return (*_C.step_with_grad(spec.name, list(args[:n - masks]), list(args[n - masks:n]), list(args[n:]),
                               spec.n_states), None)


@torch.library.register_fake("fused_rnn::bernoulli_mask")
def _bernoulli_mask_fake(seed, size, p, dtype):
    return torch.empty(size, dtype=dtype, device="cpu")


# forward op -> its autograd.Function (see FusedFunction); layer op -> the same for eager calls.
FUNCTIONS = {}
EAGER_FUNCTIONS = {}
for _spec in (*SPECS.values(), *STEP_SPECS.values()):
    _register(_spec)
