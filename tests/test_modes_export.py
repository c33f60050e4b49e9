"""torch.export and AOTInductor of models holding fused modules (issue #14).

Each model is exported strict and non-strict with dynamic T and B (torch.export.Dim) and
checked three ways: its graph calls torch.ops.fused_rnn.* once per layer and direction (per
step for cells) and holds no matrix product outside them, also in the core ATen IR of
run_decompositions() that AOTInductor and ExecuTorch take; the fake kernels' shapes are those
of each call's inputs, and the program's output shapes are in T's and B's symbols; and the
program, run at other T and B, gives the eager fused model's outputs and torch.nn's on the same
weights. torch.nn itself exports only with a static T (its RNN ops decompose into one step per
time step), so the comparison is with its eager outputs.

Packing: torch 2.13 cannot export pack_padded_sequence (Dynamo skips it; its fake kernel gives
a float batch_sizes and T rows of data), for torch.nn as for us, so the packed models pack
with plain tensor ops (_pack) and are checked against pack_padded_sequence / pad_packed_sequence.

AOTInductor compiles C++ here (about 20 s on 2 CPUs), so it compiles one package: a projected,
bidirectional 2-layer LSTM on a padded batch and on its packed form."""
import pytest
import torch
from torch import nn
from torch.export import Dim, export
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence
from torch.utils import _pytree as pytree

from checks import assert_close
from module_cases import CELL_IDS, CELLS, build_cells, build_pair

pytestmark = pytest.mark.usefixtures("seeded")

T_DIM, B_DIM = Dim("T", min=1, max=64), Dim("B", min=1, max=64)
# Export traces at T0 x B0, apart from every other size of the models (module_cases' I, H, P,
# layers x directions and their products), so that an output dimension of T0 (B0) means T (B).
T0, B0 = 7, 9
# (T, B, longest sequence) the exported programs run at: other sizes than the trace's; in the
# second every sequence is shorter than the padded T; the third is the least the dims allow.
RUN_SIZES = [(12, 4, 12), (3, 2, 2), (1, 1, 1)]
STRICT = [pytest.param(True, id="strict"), pytest.param(False, id="nonstrict")]
# The layer ops, and the single-step ops of the cells (and of T = 1 layers).
FUSED_OPS = {getattr(torch.ops.fused_rnn, f"{cell}{kind}_forward").default
             for cell in ("lstm", "gru", "rnn") for kind in ("", "_cell")}
# What a decomposed recurrence runs: matrix products, or torch.nn's own RNN ops.
DECOMPOSED = {f"aten::{name}" for name in ("mm", "addmm", "bmm", "matmul", "linear", "lstm", "gru", "rnn_tanh",
                                           "rnn_relu", "lstm_cell", "gru_cell", "rnn_tanh_cell", "rnn_relu_cell")}
# The module cases: each option of the issue at least once; hx given to the exported program or
# left to the module (zeros of the symbolic batch).
MODULE_CASES = [
    pytest.param("LSTM", True, {}, False, id="LSTM-proj"),
    pytest.param("LSTM", False, {"num_layers": 2, "bidirectional": True}, True, id="LSTM-L2-bi-hx"),
    pytest.param("GRU", False, {"batch_first": True}, False, id="GRU-bfirst"),
    pytest.param("RNN_RELU", False, {"num_layers": 2, "batch_first": True}, True, id="RNN_RELU-L2-bfirst-hx"),
    pytest.param("RNN_TANH", False, {"bidirectional": True}, False, id="RNN_TANH-bi"),
]
PACKED_CASES = [
    pytest.param("LSTM", True, {"num_layers": 2, "bidirectional": True}, id="LSTM-proj-L2-bi"),
    pytest.param("GRU", False, {"batch_first": True}, id="GRU-bfirst"),
    pytest.param("RNN_TANH", False, {}, id="RNN_TANH"),
]


# ---------------------------------------------------------------------------------------------
# Models and inputs.
# ---------------------------------------------------------------------------------------------

def _pack(x, lengths):
    """pack_padded_sequence(x, lengths, enforce_sorted=False) for time-major x, in tensor ops
    export traces. Returns the PackedSequence and the [T, B] mask of real steps (sorted order)."""
    sorted_lengths, sorted_indices = lengths.sort(descending=True)
    mask = torch.arange(x.shape[0])[:, None] < sorted_lengths
    longest = sorted_lengths[0].item()
    # What export cannot know of a data-dependent size; pack_padded_sequence checks the same.
    torch._check(longest >= 1)
    torch._check(longest <= x.shape[0])
    # No zero batch sizes past the longest sequence: the fused ops reject them.
    batch_sizes = mask.sum(1)[:longest]
    # Boolean indexing walks [T, B] row by row: step by step, as PackedSequence's data.
    data = x[:, sorted_indices][mask]
    return PackedSequence(data, batch_sizes, sorted_indices, sorted_indices.argsort()), mask


def _unpack(packed, mask):
    """pad_packed_sequence(packed, total_length=T)'s padded output, time-major."""
    padded = packed.data.new_zeros((*mask.shape, packed.data.shape[-1]))
    padded[mask] = packed.data
    return padded[:, packed.unsorted_indices]


class Packed(nn.Module):
    """A padded batch and its lengths in, the padded output and the final states out; the
    RNN runs on the packed sequences."""

    def __init__(self, rnn):
        super().__init__()
        self.rnn = rnn

    def forward(self, x, lengths):
        packed, mask = _pack(x.transpose(0, 1) if self.rnn.batch_first else x, lengths)
        out, hidden = self.rnn(packed)
        out = _unpack(out, mask)
        return out.transpose(0, 1) if self.rnn.batch_first else out, hidden


def _packed_by_torch(rnn, x, lengths):
    """What Packed computes, through torch.nn.utils.rnn's packing."""
    packed = pack_padded_sequence(x, lengths, batch_first=rnn.batch_first, enforce_sorted=False)
    out, hidden = rnn(packed)
    steps = x.shape[1 if rnn.batch_first else 0]
    return pad_packed_sequence(out, batch_first=rnn.batch_first, total_length=steps)[0], hidden


class CellLoop(nn.Module):
    """A cell stepped over time in a Python loop, from zero states: export unrolls the loop, so
    T is static (as it is for torch.nn's cells)."""

    def __init__(self, cell):
        super().__init__()
        self.cell = cell

    def forward(self, x):
        state, outputs = None, []
        for step in x.unbind(0):
            state = self.cell(step, state)
            outputs.append(state[0] if isinstance(state, tuple) else state)
        return torch.stack(outputs), state


class PaddedAndPacked(nn.Module):
    """One RNN on a padded batch and on its packed form: one AOTInductor compile for both."""

    def __init__(self, rnn):
        super().__init__()
        self.rnn, self.packed = rnn, Packed(rnn)

    def forward(self, x, lengths):
        return self.rnn(x), self.packed(x, lengths)


def _padded(rnn, T, B, dtype=torch.float64):
    return torch.randn((B, T, rnn.input_size) if rnn.batch_first else (T, B, rnn.input_size), dtype=dtype)


def _module_inputs(rnn, T, B, with_hx):
    """(x,) or (x, hx) for an RNN module at T x B."""
    x = _padded(rnn, T, B)
    if not with_hx:
        return (x,)
    h = torch.randn(_directions(rnn), B, rnn.proj_size or rnn.hidden_size, dtype=x.dtype)
    return (x, (h, torch.randn(_directions(rnn), B, rnn.hidden_size, dtype=x.dtype)) if rnn.mode == "LSTM" else h)


def _padded_dims(rnn):
    return {0: B_DIM, 1: T_DIM} if rnn.batch_first else {0: T_DIM, 1: B_DIM}


def _module_dims(rnn, with_hx):
    if not with_hx:
        return (_padded_dims(rnn),)
    return (_padded_dims(rnn), ({1: B_DIM}, {1: B_DIM}) if rnn.mode == "LSTM" else {1: B_DIM})


def _lengths(B, longest):
    """Random lengths in [1, longest], one of them `longest`."""
    lengths = torch.randint(1, longest + 1, (B,))
    lengths[torch.randint(B, ())] = longest
    return lengths


def _packed_dims(rnn):
    return _padded_dims(rnn), {0: B_DIM}


def _directions(rnn):
    """Layers x directions: the fused op calls of one forward."""
    return rnn.num_layers * (2 if rnn.bidirectional else 1)


# ---------------------------------------------------------------------------------------------
# Checks of an exported program.
# ---------------------------------------------------------------------------------------------

def _symbolic(shape):
    return tuple(s.node.expr if isinstance(s, torch.SymInt) else s for s in shape)


def _check_graph(program, calls):
    """`calls` fused op calls and no decomposed recurrence, in the exported graph and in the
    core ATen IR."""
    for graph in (program.graph, program.run_decompositions().graph):
        nodes = [n for n in graph.nodes if n.op == "call_function"]
        assert sum(n.target in FUSED_OPS for n in nodes) == calls
        names = {n.target.name() for n in nodes if isinstance(n.target, torch._ops.OpOverload)}
        assert not names & DECOMPOSED


def _check_fake_shapes(program):
    """Each fused call's fake results against its own inputs: output rows [T, B] (or packed
    rows [N]) those of input, states those of h0 (and c0), the workspace one row per input row
    where kept (export traces with grad enabled unless told otherwise), else empty."""
    for call in (n for n in program.graph.nodes if n.target in FUSED_OPS):
        output, *states_n, workspace = call.meta["val"]
        input, states = call.args[0].meta["val"], [a.meta["val"] for a in call.args[2:2 + len(states_n)]]
        assert _symbolic(output.shape[:-1]) == _symbolic(input.shape[:-1])
        assert [_symbolic(s.shape) for s in states_n] == [_symbolic(s.shape) for s in states]
        rows = input.shape[0] * input.shape[1] if input.dim() == 3 else input.shape[0]
        assert _symbolic(workspace.shape[:1]) == (_symbolic([rows]) if call.args[-1] else (0,))


def _check_output_shapes(program, eager_outputs, dynamic):
    """Every output dimension that was T0 (B0) at the trace is T's (B's) symbol, and the rest
    are the eager sizes: no size was specialized. `dynamic`: the trace sizes of the input's
    dims that export was asked to keep symbolic."""
    x = next(n for n in program.graph.nodes if n.name == program.graph_signature.user_inputs[0]).meta["val"]
    symbols = {s.node.hint: s.node.expr for s in x.shape if isinstance(s, torch.SymInt)}
    assert set(symbols) == set(dynamic)
    output = next(n for n in program.graph.nodes if n.op == "output")
    got = [_symbolic(node.meta["val"].shape) for node in pytree.tree_leaves(output.args)]
    assert got == [tuple(symbols.get(d, d) for d in t.shape) for t in pytree.tree_leaves(eager_outputs)]


def _check_program(program, example, eager, calls, dynamic):
    _check_graph(program, calls)
    _check_fake_shapes(program)
    _check_output_shapes(program, eager(*example), dynamic)


def _assert_all_close(got, want, what):
    got, want = pytree.tree_leaves(got), pytree.tree_leaves(want)
    assert len(got) == len(want), what
    for i, (a, b) in enumerate(zip(got, want)):
        assert_close(a, b, f"{what}, output {i}")


def _check_runs(program, inputs, eager, torch_nn):
    """The program at `inputs` against the eager fused model and torch.nn (same weights)."""
    got = program.module()(*inputs)
    _assert_all_close(got, eager(*inputs), "against eager")
    _assert_all_close(got, torch_nn(*inputs), "against torch.nn")


# ---------------------------------------------------------------------------------------------
# torch.export.
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("strict", STRICT)
@pytest.mark.parametrize("mode,projected,options,with_hx", MODULE_CASES)
def test_export_module(mode, projected, options, with_hx, strict):
    ref, fused = build_pair(mode, projected, **options)
    example = _module_inputs(fused, T0, B0, with_hx)
    program = export(fused, example, dynamic_shapes=_module_dims(fused, with_hx), strict=strict)
    _check_program(program, example, fused, _directions(fused), {T0, B0})
    for T, B, _ in RUN_SIZES:
        _check_runs(program, _module_inputs(fused, T, B, with_hx), fused, ref)


@pytest.mark.parametrize("strict", STRICT)
@pytest.mark.parametrize("mode,projected,options", PACKED_CASES)
def test_export_packed(mode, projected, options, strict):
    ref, fused = build_pair(mode, projected, **options)
    model = Packed(fused)
    example = (_padded(fused, T0, B0), _lengths(B0, T0))
    program = export(model, example, dynamic_shapes=_packed_dims(fused), strict=strict)
    _check_program(program, example, model, _directions(fused), {T0, B0})
    for T, B, longest in RUN_SIZES:
        inputs = (_padded(fused, T, B), _lengths(B, longest))
        _check_runs(program, inputs, lambda *a: _packed_by_torch(fused, *a), lambda *a: _packed_by_torch(ref, *a))


@pytest.mark.parametrize("strict", STRICT)
@pytest.mark.parametrize("name,kwargs", CELLS, ids=CELL_IDS)
def test_export_cells_in_a_loop(name, kwargs, strict):
    ref, fused = build_cells(name, kwargs)
    ref, fused = ref.double(), fused.double()
    model = CellLoop(fused)
    example = (torch.randn(T0, B0, fused.input_size, dtype=torch.float64),)
    program = export(model, example, dynamic_shapes=({1: B_DIM},), strict=strict)
    _check_program(program, example, model, T0, {B0})
    for _, B, _ in RUN_SIZES:
        _check_runs(program, (torch.randn(T0, B, fused.input_size, dtype=torch.float64),), model, CellLoop(ref))


# ---------------------------------------------------------------------------------------------
# AOTInductor.
# ---------------------------------------------------------------------------------------------

@pytest.mark.slow  # compiles the package's C++: about 20 s on 2 CPUs
def test_aoti_padded_and_packed_lstm(tmp_path, monkeypatch):
    """Exported for inference (no_grad: the fused ops keep no workspace), strict, compiled,
    loaded, run at two shapes.
    The package calls the fused ops through AOTInductor's proxy executor, which finds them in
    the dispatcher: fused_rnn must be imported before aoti_load_package."""
    ref, fused = build_pair("LSTM", True, torch.float32, num_layers=2, bidirectional=True)
    model = PaddedAndPacked(fused)
    example = (_padded(fused, T0, B0, torch.float32), _lengths(B0, T0))
    with torch.no_grad():
        program = export(model, example, dynamic_shapes=_packed_dims(fused), strict=True)
    assert not any(n.args[-1] for n in program.graph.nodes if n.target in FUSED_OPS)  # need_workspace
    _check_program(program, example, model, 2 * _directions(fused), {T0, B0})
    package = torch._inductor.aoti_compile_and_package(program, package_path=str(tmp_path / "lstm.pt2"))
    # Read once, at the compiled model's first run: then it checks the sizes and strides of its
    # inputs and of every fused op's results against the fake kernels' at the trace.
    monkeypatch.setenv("AOTI_RUNTIME_CHECK_INPUTS", "1")
    compiled = torch._inductor.aoti_load_package(package)
    # Not T = B = 1: AOTInductor compiles for dims >= 2 (its input checks reject 1), although
    # the program's range starts at 1.
    for T, B, longest in RUN_SIZES[:2]:
        inputs = (_padded(fused, T, B, torch.float32), _lengths(B, longest))
        got = compiled(*inputs)
        _assert_all_close(got, model(*inputs), "against eager")
        _assert_all_close(got, (ref(inputs[0]), _packed_by_torch(ref, *inputs)), "against torch.nn")
