"""The rest of the PyTorch toolbox over fused modules and cells, each against torch.nn's same
module with the same weights (float64, checks.assert_close): activation checkpointing
(reentrant and not), torch.func.functional_call with a replaced parameter dict, torch.func.grad
and torch.func.jvp, torch.inference_mode, torch.jit.trace, and torch.func.vmap over inputs and
over a stack of models. The cases: a projected 2-layer LSTM, a bidirectional GRU, a relu RNN
(padded, time-major, with hx) and the cells (batched, with hx).

Works: checkpoint (both variants), functional_call (values and gradients), torch.func.grad,
inference_mode, torch.jit.trace (its default check too; training and inference, at new T and
B: under tracing the ops always keep what backward needs), and vmap over inputs and over a
stack of models, forward and gradients, through torch's per-sample fallback (a loop over the
vmapped dimension, with a "performance drop" warning naming fused_rnn::<cell>_forward; torch.nn's
modules cannot be vmapped at all: "Batching rule not implemented for aten::lstm.input").
Under torch.func's transforms fused_rnn.functional calls the ops through an autograd.Function
with setup_context (the one torch.library.register_autograd generates has none, which
torch.func refuses: pytorch/pytorch#168393).

Does not work: forward-mode AD (torch.func.jvp, jacfwd) raises torch's NotImplementedError
("You must implement the jvp function for custom autograd.Function ..."): the ops have no
forward-mode formula.
"""
import copy

import pytest
import torch
from torch import nn
from torch.func import functional_call, stack_module_state
from torch.utils import _pytree as pytree
from torch.utils.checkpoint import checkpoint

from checks import assert_close
from module_cases import CELL_IDS, CELLS, SIZES, build_cells, build_pair, make_leaves

pytestmark = pytest.mark.usefixtures("seeded")

# name -> (mode, projected, constructor options)
MODULE_CASES = {
    "LSTM-proj-L2": ("LSTM", True, {"num_layers": 2}),
    "GRU-bi": ("GRU", False, {"bidirectional": True}),
    "RNN_RELU": ("RNN_RELU", False, {}),
}
CASES = [*MODULE_CASES, *CELL_IDS]
N = 3  # the vmapped dimension: inputs, or models


def make_case(name):
    """(torch.nn module or cell, fused one with the same weights, float64 leaves [x, *hx]
    that require grad)."""
    if name in MODULE_CASES:
        mode, projected, kw = MODULE_CASES[name]
        ref, fused = build_pair(mode, projected, **kw)
        x, hx = make_leaves(ref, "padded", torch.float64)
        return ref, fused, [x, *hx]
    cell, kwargs = dict(zip(CELL_IDS, CELLS))[name]
    ref, fused = (m.double() for m in build_cells(cell, kwargs))
    s = SIZES["cpu"]
    states = 2 if cell == "LSTMCell" else 1
    leaves = [torch.randn(s.B, s.I, dtype=torch.float64)] + [torch.randn(s.B, s.H, dtype=torch.float64)
                                                             for _ in range(states)]
    return ref, fused, [t.requires_grad_() for t in leaves]


def state(hx):
    """The hx argument of a module or cell from the state leaves: None, h, or (h, c)."""
    return None if not hx else (tuple(hx) if len(hx) == 2 else hx[0])


def call(module, x, *hx):
    """module(x, hx)'s outputs, flat: (output, h_n[, c_n]) for a module, (h[, c]) for a cell."""
    return tuple(pytree.tree_leaves(module(x, state(hx))))


def call_with(module, params, x, *hx):
    """call() through torch.func.functional_call with `params` in place of the module's own."""
    return tuple(pytree.tree_leaves(functional_call(module, params, (x, state(hx)))))


def fresh(leaves):
    """New leaves holding the same values: each run accumulates its own .grad."""
    return [t.detach().clone().requires_grad_() for t in leaves]


def compare(got, want, what):
    assert len(got) == len(want), what
    for i, (a, b) in enumerate(zip(got, want)):
        assert a.dtype == b.dtype == torch.float64, f"{what} {i}: {a.dtype}, {b.dtype}"
        assert_close(a, b, f"{what} {i}")


def scaled_params(module, names=None):
    """New float64 tensors (requiring grad) for the parameters `names` (all by default): half
    the module's weights plus noise, so the outputs differ from the module's own by far."""
    return {n: (0.5 * p.detach() + 0.3 * torch.randn_like(p)).requires_grad_()
            for n, p in module.named_parameters() if names is None or n in names}


# ---------------------------------------------------------------------------------------------
# Activation checkpointing.
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("use_reentrant", [True, False], ids=["reentrant", "nonreentrant"])
@pytest.mark.parametrize("name", CASES)
def test_checkpoint_matches_torch_nn_without_checkpoint(name, use_reentrant):
    """torch.utils.checkpoint.checkpoint over the fused module (forward without saving, then the
    forward again in backward): outputs and the gradients of the input, hx and every parameter
    equal torch.nn's run without checkpointing. (The reentrant variant supports .backward()
    only, not torch.autograd.grad: so both use .backward() and .grad.)"""
    ref, fused, leaves = make_case(name)
    leaves_r, leaves_f = fresh(leaves), fresh(leaves)
    want = call(ref, *leaves_r)
    got = checkpoint(call, fused, *leaves_f, use_reentrant=use_reentrant)
    compare(got, want, "output")
    grad_outputs = [torch.randn_like(t) for t in want]
    torch.autograd.backward(want, grad_outputs)
    torch.autograd.backward(got, grad_outputs)
    names = [n for n, _ in ref.named_parameters()]
    for i, (a, b) in enumerate(zip(leaves_f, leaves_r)):
        assert_close(a.grad, b.grad, f"grad of leaf {i}")
    for n, a, b in zip(names, fused.parameters(), ref.parameters()):
        assert_close(a.grad, b.grad, f"grad of {n}")


# ---------------------------------------------------------------------------------------------
# torch.func: functional_call, grad, jvp.
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("replace", ["all", "weight_hh"])
@pytest.mark.parametrize("name", CASES)
def test_functional_call_uses_the_given_parameters(name, replace):
    """functional_call with a dict of new tensors (every parameter, or only the first weight_hh)
    runs on those (torch.nn's functional_call with the same dict gives the same outputs, not the
    module's own), and the gradients flow to the dict's tensors, the input and hx, not to the
    replaced parameters; afterwards the module runs on its own weights again."""
    ref, fused, leaves = make_case(name)
    names = None if replace == "all" else [next(n for n, _ in ref.named_parameters() if "weight_hh" in n)]
    params = scaled_params(ref, names)
    got = call_with(fused, params, *leaves)
    want = call_with(ref, params, *leaves)
    compare(got, want, "output")
    own = call(fused, *leaves)
    assert max((a - b).abs().max().item() for a, b in zip(got, own)) > 1e-3, "the new weights were not used"

    grad_outputs = [torch.randn_like(t) for t in want]
    wrt_f = [*leaves, *params.values(), *fused.parameters()]
    wrt_r = [*leaves, *params.values(), *ref.parameters()]
    grads_f = torch.autograd.grad(got, wrt_f, grad_outputs, allow_unused=True)
    grads_r = torch.autograd.grad(want, wrt_r, grad_outputs, allow_unused=True)
    labels = ([f"leaf {i}" for i in range(len(leaves))] + [f"dict's {n}" for n in params]
              + [f"module's {n}" for n, _ in ref.named_parameters()])
    for label, a, b in zip(labels, grads_f, grads_r):
        assert (a is None) == (b is None), f"grad of {label}: {a is None}, {b is None}"
        if a is not None:
            assert_close(a, b, f"grad of {label}")
    replaced = [g for (n, _), g in zip(ref.named_parameters(), grads_f[len(leaves) + len(params):]) if n in params]
    assert replaced and all(g is None for g in replaced)
    compare(call(fused, *leaves), call(ref, *leaves), "output after functional_call")


@pytest.mark.parametrize("name", CASES)
def test_func_grad_of_parameter_dict_matches_torch_nn(name):
    """torch.func.grad of a scalar loss with respect to a parameter dict, through
    functional_call: the same gradients as torch.nn's."""
    ref, fused, leaves = make_case(name)
    leaves = [t.detach() for t in leaves]
    weights = [torch.randn_like(t) for t in call(ref, *leaves)]

    def loss(module):
        return lambda params, *args: sum((o * w).sum() for o, w in zip(call_with(module, params, *args), weights))

    params = {n: p.detach() for n, p in ref.named_parameters()}
    want = torch.func.grad(loss(ref))(params, *leaves)  # torch.nn's works
    got = torch.func.grad(loss(fused))(params, *leaves)
    assert list(got) == list(want)
    for n in want:
        assert_close(got[n], want[n], f"grad of {n}")


@pytest.mark.parametrize("name", CASES)
def test_func_jvp_raises(name):
    """torch.func.jvp (forward mode) along the input raises torch's error for an
    autograd.Function without a jvp (torch.nn's works): an error, not a zero tangent."""
    ref, fused, leaves = make_case(name)
    x, *hx = [t.detach() for t in leaves]
    tangent = torch.randn_like(x)
    torch.func.jvp(lambda x: call(ref, x, *hx), (x,), (tangent,))
    with pytest.raises(NotImplementedError, match="must implement the jvp function"):
        torch.func.jvp(lambda x: call(fused, x, *hx), (x,), (tangent,))


# ---------------------------------------------------------------------------------------------
# torch.inference_mode.
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", CASES)
def test_inference_mode_matches_torch_nn(name):
    """Under torch.inference_mode (parameters that require grad, inputs that do or do not),
    the outputs equal torch.nn's and are inference tensors."""
    ref, fused, leaves = make_case(name)
    for args in (leaves, [t.detach() for t in leaves]):
        with torch.inference_mode():
            got, want = call(fused, *args), call(ref, *args)
        assert all(t.is_inference() and not t.requires_grad for t in got)
        compare(got, want, "output")


# ---------------------------------------------------------------------------------------------
# torch.jit.trace.
# ---------------------------------------------------------------------------------------------

class Holder(nn.Module):
    """A model holding the recurrent module or cell: a linear head on its output."""

    def __init__(self, rnn, width):
        super().__init__()
        self.rnn = rnn
        self.head = nn.Linear(width, 2).double()

    def forward(self, x, *hx):
        outs = call(self.rnn, x, *hx)
        return (self.head(outs[0]), *outs[1:])


def holders(name):
    """(torch.nn Holder, fused Holder with the same weights, leaves, leaves of other sizes:
    modules a new T and B, cells a new B)."""
    ref, fused, leaves = make_case(name)
    width = call(ref, *leaves)[0].shape[-1]
    model_r = Holder(ref, width)
    model_f = Holder(fused, width)
    model_f.head.load_state_dict(model_r.head.state_dict())
    s = SIZES["cpu"]
    if name in MODULE_CASES:  # T, B -> T + 3, B - 1 (x [T, B, I], hx [L*D, B, H])
        other = [torch.randn(s.T + 3, s.B - 1, s.I, dtype=torch.float64)]
        other += [torch.randn(h.shape[0], s.B - 1, h.shape[2], dtype=torch.float64) for h in leaves[1:]]
    else:  # B -> B + 2
        other = [torch.randn(s.B + 2, *t.shape[1:], dtype=torch.float64) for t in leaves]
    return model_r, model_f, leaves, [t.requires_grad_() for t in other]


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
@pytest.mark.parametrize("name", CASES)
def test_jit_trace_default_check(name):
    """torch.jit.trace(model, inputs) as a user calls it, in grad mode, with its default check
    (which re-traces under no_grad: need_workspace must not differ between the traces), then
    equal to eager."""
    model_r, model_f, leaves, _ = holders(name)
    traced = torch.jit.trace(model_f, tuple(leaves))
    compare(traced(*leaves), model_r(*leaves), "traced output")


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
@pytest.mark.parametrize("name", CASES)
def test_jit_trace_for_training_matches_torch_nn(name):
    """Traced in grad mode with check_trace=False: at the traced sizes and at others (a new T
    and B; B for cells: the trace reads sizes from the input), outputs equal eager fused and
    torch.nn's, and the gradients of inputs and of every parameter equal torch.nn's."""
    model_r, model_f, leaves, other = holders(name)
    traced = torch.jit.trace(model_f, tuple(leaves), check_trace=False)
    for what, args in (("traced sizes", leaves), ("other sizes", other)):
        got, want = traced(*args), model_r(*args)
        compare(got, model_f(*args), f"traced vs eager, {what}")
        compare(got, want, f"traced vs torch.nn, {what}")
        grad_outputs = [torch.randn_like(t) for t in want]
        grads_f = torch.autograd.grad(got, [*args, *model_f.parameters()], grad_outputs)
        grads_r = torch.autograd.grad(want, [*args, *model_r.parameters()], grad_outputs)
        compare(grads_f, grads_r, f"grad, {what}")


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
@pytest.mark.parametrize("name", CASES)
def test_jit_trace_under_no_grad_can_be_trained(name):
    """Traced under torch.no_grad: outputs equal torch.nn's at the traced and other sizes, and
    the trace can be trained (under tracing the ops keep their workspace): the gradients equal
    torch.nn's."""
    model_r, model_f, leaves, other = holders(name)
    with torch.no_grad():
        traced = torch.jit.trace(model_f, tuple(leaves))
        for what, args in (("traced sizes", leaves), ("other sizes", other)):
            compare(traced(*args), model_r(*args), f"traced vs torch.nn, {what}")
    got, want = traced(*other), model_r(*other)
    grad_outputs = [torch.randn_like(t) for t in want]
    grads_f = torch.autograd.grad(got, [*other, *model_f.parameters()], grad_outputs)
    grads_r = torch.autograd.grad(want, [*other, *model_r.parameters()], grad_outputs)
    compare(grads_f, grads_r, "grad")


# ---------------------------------------------------------------------------------------------
# torch.func.vmap.
# ---------------------------------------------------------------------------------------------

FUSED_OP = {"LSTM-proj-L2": "lstm", "GRU-bi": "gru", "RNN_RELU": "rnn", "LSTMCell": "lstm_cell",
            "GRUCell": "gru_cell", "RNNCell-tanh": "rnn_cell", "RNNCell-relu": "rnn_cell"}


@pytest.mark.parametrize("params", ["trainable", "frozen"])
@pytest.mark.parametrize("name", CASES)
def test_vmap_over_inputs_matches_looping_torch_nn(name, params):
    """vmap of the fused call over a leading dimension of N inputs and hx works, through torch's
    per-sample fallback (a loop, with its "performance drop" warning naming the fused op): the
    outputs, and the gradients of the stacked inputs and of every parameter that requires grad
    (trainable or frozen parameters), equal those of torch.nn called on each sample in a loop
    (torch.nn's modules cannot be vmapped)."""
    ref, fused, leaves = make_case(name)
    for module in (ref, fused):
        module.requires_grad_(params == "trainable")
    stacked = [torch.randn(N, *t.shape, dtype=torch.float64, requires_grad=True) for t in leaves]
    with pytest.warns(UserWarning, match=f"batching rule for fused_rnn::{FUSED_OP[name]}_forward"):
        got = torch.func.vmap(lambda *args: call(fused, *args))(*stacked)
    samples = [call(ref, *(t[i] for t in stacked)) for i in range(N)]
    want = [torch.stack(outs) for outs in zip(*samples)]
    compare(got, want, "output")
    grad_outputs = [torch.randn_like(t) for t in want]
    trainable = params == "trainable"
    grads_r = torch.autograd.grad(want, [*stacked, *(ref.parameters() if trainable else [])], grad_outputs)
    grads_f = torch.autograd.grad(got, [*stacked, *(fused.parameters() if trainable else [])], grad_outputs)
    compare(grads_f, grads_r, "grad")


@pytest.mark.parametrize("name", CASES)
def test_vmap_over_a_stack_of_models_matches_looping_torch_nn(name):
    """Model ensembling: N fused copies with different weights stacked (stack_module_state),
    vmapped over their parameters and a batch of inputs each through functional_call; equal to
    N torch.nn modules holding those weights, each on its inputs; so are the gradients of the
    stacked parameters (every tensor that requires grad is batched)."""
    ref, fused, leaves = make_case(name)
    refs = [copy.deepcopy(ref) for _ in range(N)]
    for model in refs:
        model.load_state_dict(scaled_params(ref))
    fuseds = [copy.deepcopy(fused) for _ in range(N)]
    for model_f, model_r in zip(fuseds, refs):
        model_f.load_state_dict(model_r.state_dict())
    params, buffers = stack_module_state(fuseds)
    stacked = [torch.randn(N, *t.shape, dtype=torch.float64) for t in leaves]
    got = torch.func.vmap(lambda p, b, *args: call_with(fused, (p, b), *args))(params, buffers, *stacked)
    samples = [call(model, *(t[i] for t in stacked)) for i, model in enumerate(refs)]
    want = [torch.stack(outs) for outs in zip(*samples)]
    compare(got, want, "output")
    grad_outputs = [torch.randn_like(t) for t in want]
    per_model = [list(m.parameters()) for m in refs]
    grads_r = torch.autograd.grad(want, [p for ps in per_model for p in ps], grad_outputs)
    grads_f = torch.autograd.grad(got, list(params.values()), grad_outputs)
    count = len(per_model[0])
    for i, n in enumerate(params):
        want_grad = torch.stack([grads_r[m * count + i] for m in range(N)])
        assert_close(grads_f[i], want_grad, f"grad of stacked {n}")
