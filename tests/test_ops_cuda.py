"""The registered ops on CUDA: every op against the float64 CPU reference in float32, float16
and bfloat16, gradcheck in float64, CUDA against CPU, poisoned memory, CUDA graph capture and
replay, a non-default stream, a second GPU, deterministic bias gradients, and autocast.

All skipped without a GPU (tests/conftest.py and the marks below)."""
import itertools

import pytest
import torch

from fused_rnn import _ops, functional, reference
from op_cases import (CELLS, LOW_PRECISION, check_against_reference, compare, make_case, nn_scaled,
                      rel_error)

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

GRID = list(itertools.product(CELLS, [True, False], [False, True], [False, True]))
GRID_IDS = [f"{c}-{'bias' if b else 'nobias'}-{'packed' if p else 'padded'}-{'rev' if r else 'fwd'}"
            for c, b, p, r in GRID]


@pytest.fixture(autouse=True)
def cuda_settings():
    """float32 GEMMs in full precision (no TF32), and every buffer the ops allocate poisoned
    with NaN, so an element a kernel forgets to write fails the comparison."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    _ops._C.set_poison(True)
    yield
    _ops._C.set_poison(False)
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_extension_has_cuda_kernels():
    assert _ops._C.has_cuda, "fused_rnn._C was built without CUDA (torch has CUDA: rebuild)"
    for op in ("lstm", "gru", "rnn"):
        for kind in ("forward", "backward"):
            assert torch._C._dispatch_has_kernel_for_dispatch_key(f"fused_rnn::{op}_{kind}", "CUDA")


@pytest.mark.parametrize("cell,bias,packed,reverse", GRID, ids=GRID_IDS)
def test_float32_matches_reference(cell, bias, packed, reverse):
    case = make_case(cell, bias=bias, packed=packed, reverse=reverse, dtype=torch.float32, device="cuda",
                     H=37, I=11, B=4)
    check_against_reference(case, torch.float32)


@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=["fp16", "bf16"])
@pytest.mark.parametrize("cell,bias,packed,reverse", GRID, ids=GRID_IDS)
def test_low_precision_matches_reference(cell, bias, packed, reverse, dtype):
    case = nn_scaled(make_case(cell, bias=bias, packed=packed, reverse=reverse, dtype=dtype, device="cuda",
                               H=37, I=11, B=4))
    # relu's derivative jumps at 0: a pre-activation within rounding of 0 can take the other
    # side in fp16/bf16 and move the gradient by O(1) there, so relu's low-precision gradients
    # are only checked to be finite (the same template code is checked in fp32/fp64 above).
    check_against_reference(case, dtype, check_grads=cell != "rnn_relu")


@pytest.mark.parametrize("cell,bias,packed,reverse", GRID, ids=GRID_IDS)
def test_gradcheck_float64(cell, bias, packed, reverse):
    sizes = dict(T=3, B=3, I=2, H=3, P=2)
    case = make_case(cell, bias=bias, packed=packed, reverse=reverse, device="cuda", **sizes)

    def fn(*leaves):
        return case.with_leaves(leaves).run(functional)

    assert torch.autograd.gradcheck(fn, case.leaves())


@pytest.mark.parametrize("cell", CELLS)
def test_gradgradcheck_float64(cell):
    case = make_case(cell, packed=True, reverse=True, device="cuda", T=3, B=3, I=2, H=3, P=2)

    def fn(*leaves):
        return case.with_leaves(leaves).run(functional)

    assert torch.autograd.gradgradcheck(fn, case.leaves())


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("cell,bias,packed,reverse", GRID, ids=GRID_IDS)
def test_cuda_matches_cpu(cell, bias, packed, reverse, dtype):
    kw = dict(bias=bias, packed=packed, reverse=reverse, dtype=dtype, H=37, I=11, B=4)
    cpu, gpu = make_case(cell, **kw), make_case(cell, device="cuda", **kw)
    cpu_out, gpu_out = cpu.run(functional), gpu.run(functional)
    g = torch.Generator().manual_seed(2)
    grad_out = [torch.randn(o.shape, generator=g, dtype=dtype) for o in cpu_out]
    cpu_grads = torch.autograd.grad(cpu_out, cpu.leaves(), grad_out)
    gpu_grads = torch.autograd.grad(gpu_out, gpu.leaves(), [t.cuda() for t in grad_out])
    for a, b in zip([*gpu_out, *gpu_grads], [*cpu_out, *cpu_grads]):
        assert a.device.type == "cuda" and a.dtype == b.dtype and a.shape == b.shape
        if dtype == torch.float64:
            torch.testing.assert_close(a.cpu(), b, rtol=0, atol=1e-10)
        else:
            assert rel_error(a, b) <= 1e-5


@pytest.mark.parametrize("cell", CELLS)
def test_inference_without_workspace(cell):
    case = make_case(cell, packed=True, reverse=True, dtype=torch.float32, device="cuda", H=37, I=11,
                     requires_grad=False)
    with torch.no_grad():
        outs = case.run(functional)
    ref_case = case.with_leaves([t.double().cpu() for t in case.leaves()])
    for a, b in zip(outs, ref_case.run(reference)):
        assert a.dtype == torch.float32 and rel_error(a, b) <= 1e-5


def _poison_caching_allocator():
    """Fill the blocks the caching allocator will hand out next with NaN (all-ones bytes are a
    NaN in every float format), then free them: the next allocations reuse poisoned memory."""
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    blocks = [torch.full((1 << 20,), 0xFF, dtype=torch.uint8, device="cuda") for _ in range(32)]  # small pool
    blocks += [torch.full((64 << 20,), 0xFF, dtype=torch.uint8, device="cuda")]  # large pool
    blocks += [torch.full((n << 10,), 0xFF, dtype=torch.uint8, device="cuda") for n in (1, 4, 16, 64, 256)]
    torch.cuda.synchronize()
    del blocks


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("cell", CELLS)
def test_outputs_fully_written_over_poisoned_allocator(cell, dtype):
    """Without the driver's own poisoning: memory reused from the caching allocator is NaN."""
    _ops._C.set_poison(False)
    case = nn_scaled(make_case(cell, packed=True, reverse=True, dtype=dtype, device="cuda", H=37, I=11, B=4))
    _poison_caching_allocator()
    check_against_reference(case, dtype, check_grads=cell != "rnn_relu" or dtype == torch.float32)


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
        for a, ref in zip(graph_outs, ref_case.run(reference)):
            assert rel_error(a, ref) <= 1e-5


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


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
@pytest.mark.parametrize("cell", CELLS)
def test_second_gpu_while_first_is_current(cell):
    """Tensors on cuda:1 with cuda:0 current: the op's device guard picks cuda:1 and its stream."""
    torch.cuda.set_device(0)
    case = make_case(cell, packed=True, reverse=True, dtype=torch.float32, device="cuda:1", H=37, I=11, B=4)
    outputs, gradients = compare(case)
    for fused, ref in outputs + gradients:
        assert fused.device == torch.device("cuda", 1)
        assert rel_error(fused, ref) <= 1e-5
    assert torch.cuda.current_device() == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("cell", CELLS)
def test_bias_grads_are_deterministic(cell, dtype):
    """Bias gradients are reductions over all rows (thousands here, so many blocks): two
    backward passes give bitwise the same result (no atomics)."""
    case = nn_scaled(make_case(cell, packed=False, dtype=dtype, device="cuda", T=40, B=64, I=16, H=64, P=32))
    outs = case.run(functional)
    grad_out = [torch.randn_like(o) for o in outs]
    biases = [w for w in case.weights[2:4]]
    first = torch.autograd.grad(outs, biases, grad_out, retain_graph=True)
    second = torch.autograd.grad(outs, biases, grad_out)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


@pytest.mark.parametrize("cell", ["gru", "rnn_tanh"])
def test_more_rows_than_one_grid_dimension(cell):
    """B = 70000 rows of H = 256 need more than 65535 blocks along rows: the kernels' grid-stride
    loop over rows covers the rest (the loop is the same for every cell)."""
    case = make_case(cell, dtype=torch.float32, device="cuda", T=2, B=70_000, I=2, H=256)
    check_against_reference(nn_scaled(case), torch.float32)


# A thread owns 16 bytes of consecutive units (VectorIO in csrc/cuda/pointwise.cu) when H and
# every pointer and row stride of the step allow it: H = 40 does for every dtype (4 float,
# 2 double, 8 half per thread); a bias that is a view at an odd offset makes the step fall
# back to one unit per thread. tests/cuda_host_check.cu checks the same IO on the host.
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, *LOW_PRECISION], ids=["fp64", "fp32", "fp16", "bf16"])
@pytest.mark.parametrize("misaligned_bias", [False, True], ids=["aligned", "odd-bias-view"])
@pytest.mark.parametrize("cell", CELLS)
def test_vector_and_scalar_units_per_thread(cell, misaligned_bias, dtype):
    case = nn_scaled(make_case(cell, packed=True, reverse=True, dtype=dtype, device="cuda", H=40, I=11, B=4))
    if misaligned_bias:
        b_ih = case.weights[2]
        storage = torch.zeros(b_ih.numel() + 1, dtype=dtype, device="cuda")
        view = storage[1:].view_as(b_ih).copy_(b_ih.detach()).requires_grad_()
        case.weights[2] = view
        assert view.data_ptr() % 16 != 0
    low = dtype in LOW_PRECISION
    check_against_reference(case, dtype, check_grads=not (low and cell == "rnn_relu"))


@pytest.mark.parametrize("cell", CELLS)
def test_tiny_sizes(cell):
    case = make_case(cell, packed=False, dtype=torch.float32, device="cuda", T=1, B=1, I=1, H=1, P=1)
    check_against_reference(case, torch.float32)


@pytest.mark.parametrize("cell", CELLS)
def test_empty_batch(cell):
    """B = 0: steps of zero rows launch nothing; the results have the CPU op's shapes."""
    kw = dict(packed=False, dtype=torch.float32, T=3, B=0, I=4, H=5, P=3)
    cpu, gpu = make_case(cell, **kw), make_case(cell, device="cuda", **kw)
    cpu_out, gpu_out = cpu.run(functional), gpu.run(functional)
    gpu_grads = torch.autograd.grad(gpu_out, gpu.leaves(), [torch.ones_like(o) for o in gpu_out])
    cpu_grads = torch.autograd.grad(cpu_out, cpu.leaves(), [torch.ones_like(o) for o in cpu_out])
    for a, b in zip([*gpu_out, *gpu_grads], [*cpu_out, *cpu_grads]):
        assert a.device.type == "cuda" and a.shape == b.shape
        torch.testing.assert_close(a.cpu(), b)


@pytest.mark.parametrize("cell", CELLS)
def test_opcheck(cell):
    case = make_case(cell, packed=True, reverse=True, dtype=torch.float32, device="cuda")
    name, args = case.op_args(need_workspace=True)
    torch.library.opcheck(getattr(torch.ops.fused_rnn, name), args)


@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=["fp16", "bf16"])
@pytest.mark.parametrize("cell", ["lstm_proj", "gru", "rnn_tanh"])
def test_functional_under_autocast(cell, dtype):
    """Under torch.autocast("cuda") float32 arguments run in the autocast dtype; gradients come
    back to the float32 leaves in float32; float64 arguments are left alone."""
    case = nn_scaled(make_case(cell, packed=True, reverse=True, dtype=torch.float32, device="cuda", H=37, I=11))
    with torch.autocast("cuda", dtype=dtype):
        outs = case.run(functional)
    assert all(o.dtype == dtype for o in outs)
    grad_out = [torch.randn_like(o) for o in outs]
    grads = torch.autograd.grad(outs, case.leaves(), grad_out)
    assert all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)
    # the same as calling the op on the arguments cast by hand, and close to the float64
    # reference at those (rounded) arguments
    rounded = case.with_leaves([t.detach().to(dtype).requires_grad_() for t in case.leaves()])
    outputs, _ = compare(rounded)
    for a, (by_hand, ref) in zip(outs, outputs):
        assert torch.equal(a, by_hand)
        assert rel_error(a, ref) <= 1e-2

    case64 = make_case(cell, packed=True, device="cuda", T=3, B=3, I=2, H=3, P=2)
    with torch.autocast("cuda", dtype=dtype):
        outs64 = case64.run(functional)
    assert all(o.dtype == torch.float64 for o in outs64)
