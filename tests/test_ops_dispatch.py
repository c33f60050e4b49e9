"""How the ops are registered and called: what the extension was built with, opcheck of the
forward and backward ops, torch.compile, the plain call under no_grad, autocast; on CUDA also
graph capture and replay, a non-default stream and a second GPU."""
import pytest
import torch

import fused_rnn
from fused_rnn import _ops, functional, reference

from checks import DEVICES, DTYPE_IDS, assert_close
from op_cases import CELLS, LOW_PRECISION, compare, make_case, nn_scaled

pytestmark = pytest.mark.usefixtures("poison_buffers")


def test_extension_is_built():
    C = fused_rnn._ops._C
    assert set(C.cells) == {"lstm", "gru", "rnn_tanh", "rnn_relu"}
    assert [name for name, facts in C.cells.items() if facts["has_cell_state"]] == ["lstm"]
    assert {name: spec.gates for name, spec in _ops.SPECS.items()} == \
        {"lstm": C.cells["lstm"]["gates"], "gru": C.cells["gru"]["gates"], "rnn": C.cells["rnn_tanh"]["gates"]}
    assert C.workspace_width(C.cells["lstm"]["workspace_units"], 5, 5, False, 0, False) == 7 * 5
    # recurrent dropout: h_prev, then h_prev * d
    assert C.workspace_width(C.cells["lstm"]["workspace_units"], 5, 3, False, 0, True) == 6 * 5 + 3 + 3
    # layer norm: x̂ and ĥ (4H each), their 1/σ, c's mean and 1/σ
    assert C.norm_columns(4, 5, True, True) == 2 * 20 + 2 + 2 and C.norm_columns(3, 5, False, False) == 0
    assert isinstance(C.has_cuda, bool)


@pytest.mark.cuda
def test_extension_has_cuda_kernels():
    assert _ops._C.has_cuda, "fused_rnn._C was built without CUDA (torch has CUDA: rebuild)"
    for op in ("lstm", "gru", "rnn"):
        for kind in ("forward", "backward"):
            assert torch._C._dispatch_has_kernel_for_dispatch_key(f"fused_rnn::{op}_{kind}", "CUDA")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=DTYPE_IDS.get)
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device, cell, packed, dtype):
    """The forward op with its workspace (a gradient possible) and without."""
    kw = dict(packed=packed, reverse=packed, dtype=dtype, device=device)
    name, args = make_case(cell, **kw).op_args(need_workspace=True)
    torch.library.opcheck(getattr(torch.ops.fused_rnn, name), args)
    name, args = make_case(cell, requires_grad=False, **kw).op_args(need_workspace=False)
    torch.library.opcheck(getattr(torch.ops.fused_rnn, name), args)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_backward_op(device, cell):
    case = make_case(cell, packed=True, reverse=True, device=device)
    name, args = case.op_args(need_workspace=True)
    with torch.no_grad():
        outs = getattr(torch.ops.fused_rnn, name)(*args)
    grads = [torch.randn_like(o) for o in outs[:-1]]
    tensors_and_extras = args[:-2]
    backward = getattr(torch.ops.fused_rnn, name.replace("forward", "backward"))
    torch.library.opcheck(backward, (*grads, *[a.detach() if torch.is_tensor(a) else a for a in tensors_and_extras],
                                     outs[-1], args[-2]))


@pytest.mark.parametrize("cell", ["lstm_proj", "gru", "rnn_relu"])
@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_fullgraph_matches_eager(device, cell):
    case = make_case(cell, dtype=torch.float32, packed=True, reverse=True, device=device)
    run = case.function()

    def loss_and_output(*leaves):
        outs = run(*leaves)
        return outs[0], sum(o.square().sum() for o in outs)

    compiled = torch.compile(loss_and_output, fullgraph=True, backend="aot_eager")
    eager_out, eager_loss = loss_and_output(*case.leaves())
    comp_out, comp_loss = compiled(*case.leaves())
    torch.testing.assert_close(comp_out, eager_out, rtol=1e-6, atol=1e-6)
    g_eager = torch.autograd.grad(eager_loss, case.leaves())
    g_comp = torch.autograd.grad(comp_loss, case.leaves())
    for a, b in zip(g_comp, g_eager):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh"])
@pytest.mark.parametrize("device", DEVICES)
def test_no_grad_call_below_autograd_matches(device, cell):
    """Under no_grad, eager calls skip the ops' autograd wrapper (functional._call) and
    compiled ones trace the plain call: both match the call that records grads."""
    case = make_case(cell, dtype=torch.float32, packed=True, reverse=True, device=device)
    outputs = case.function()
    with_grad = outputs(*case.leaves())
    compiled = torch.compile(outputs, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        eager, traced = outputs(*case.leaves()), compiled(*case.leaves())
    for g, e, t in zip(with_grad, eager, traced):
        assert e.grad_fn is None and not e.requires_grad
        assert torch.equal(e, g.detach())
        torch.testing.assert_close(t, e, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=DTYPE_IDS.get)
@pytest.mark.parametrize("cell", ["lstm_proj", "gru", "rnn_tanh"])
@pytest.mark.parametrize("device", DEVICES)
def test_functional_under_autocast(device, cell, dtype):
    """Under torch.autocast float32 arguments run in the autocast dtype (the ops' autocast
    kernels); gradients come back to the float32 leaves in float32; float64 arguments are left
    alone."""
    case = nn_scaled(make_case(cell, packed=True, reverse=True, dtype=torch.float32, device=device, H=37, I=11))
    with torch.autocast(device, dtype=dtype):
        outs = case.run(functional)
    assert all(o.dtype == dtype for o in outs)
    grad_out = [torch.randn_like(o) for o in outs]
    grads = torch.autograd.grad(outs, case.leaves(), grad_out)
    assert all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)
    # the same as calling the op on the arguments cast by hand, and close to the float64
    # reference at those (rounded) arguments
    rounded = case.with_leaves([t.detach().to(dtype).requires_grad_() for t in case.leaves()])
    outputs, _ = compare(rounded)
    for i, (a, (by_hand, ref)) in enumerate(zip(outs, outputs)):
        assert torch.equal(a, by_hand)
        assert_close(a, ref, f"output {i}")

    case64 = make_case(cell, packed=True, device=device, T=3, B=3, I=2, H=3, P=2)
    with torch.autocast(device, dtype=dtype):
        outs64 = case64.run(functional)
    assert all(o.dtype == torch.float64 for o in outs64)


@pytest.mark.cuda
@pytest.mark.parametrize("cell,packed", [("lstm_proj", True), ("lstm", False), ("gru", True), ("rnn_tanh", False)])
def test_cuda_graph_capture_and_replay(cell, packed):
    """Forward + backward captured in one CUDA graph and replayed on new inputs gives what eager
    gives: nothing in the op syncs with the host or allocates outside the graph's pool."""
    kw = dict(packed=packed, reverse=packed, dtype=torch.float32, device="cuda", H=37, I=11, B=4)
    case = make_case(cell, **kw)
    static = [t.detach().clone().requires_grad_() for t in case.leaves()]
    static_case = case.with_leaves(static)
    with torch.no_grad():
        shapes = [o.shape for o in static_case.run(functional)]
    grad_out = [torch.randn(s, device="cuda") for s in shapes]

    def step(c, leaves):
        outs = c.run(functional)
        return list(outs), list(torch.autograd.grad(outs, leaves, grad_out))

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm up (cuBLAS handles, workspaces) off the capture
        for _ in range(3):
            step(static_case, static)
    torch.cuda.current_stream().wait_stream(side)

    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        graph_outs, graph_grads = step(static_case, static)

    for replay in range(2):
        fresh = make_case(cell, seed=10 + replay, **kw)
        with torch.no_grad():
            for s, f in zip(static, fresh.leaves()):
                s.copy_(f)
        graph.replay()
        torch.cuda.synchronize()
        eager_outs, eager_grads = step(fresh, fresh.leaves())
        for a, b in zip(graph_outs + graph_grads, eager_outs + eager_grads):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        # and the replay is right, not just repeatable
        ref_case = fresh.with_leaves([t.detach().double().cpu() for t in fresh.leaves()])
        for i, (a, ref) in enumerate(zip(graph_outs, ref_case.run(reference))):
            assert_close(a, ref, f"replayed output {i}")


@pytest.mark.cuda
@pytest.mark.parametrize("cell", ["lstm_proj", "gru", "rnn_relu"])
def test_non_default_stream(cell):
    """On a side stream, behind a long sleep: a kernel launched on any other stream would run
    before the GEMMs it depends on and read garbage."""
    case = make_case(cell, packed=True, reverse=True, dtype=torch.float32, device="cuda", H=37, I=11, B=4)
    leaves = case.leaves()
    outs = case.run(functional)
    grad_out = [torch.randn_like(o) for o in outs]
    expected = [*outs, *torch.autograd.grad(outs, leaves, grad_out)]

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        torch.cuda._sleep(100_000_000)  # ~50 ms of GPU time queued ahead of the op
        outs = case.run(functional)
        got = [*outs, *torch.autograd.grad(outs, leaves, grad_out)]
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.cuda(gpus=2)
@pytest.mark.parametrize("cell", CELLS)
def test_second_gpu_while_first_is_current(cell):
    """Tensors on cuda:1 with cuda:0 current: the op's device guard picks cuda:1 and its stream."""
    torch.cuda.set_device(0)
    case = make_case(cell, packed=True, reverse=True, dtype=torch.float32, device="cuda:1", H=37, I=11, B=4)
    outputs, gradients = compare(case)
    for i, (fused, ref) in enumerate(outputs + gradients):
        assert fused.device == torch.device("cuda", 1)
        assert_close(fused, ref, f"result {i}")
    assert torch.cuda.current_device() == 0
