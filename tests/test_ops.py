"""The registered CPU ops against fused_rnn.reference: values, every gradient, gradcheck,
opcheck, torch.compile, and argument checking."""
import itertools

import pytest
import torch

import fused_rnn
from fused_rnn import _ops, functional
from op_cases import CELLS, LOW_PRECISION, check_against_reference, compare, make_case, nn_scaled, rel_error


@pytest.fixture(autouse=True)
def poison_buffers():
    """Every buffer the ops allocate starts as NaN, so an unwritten element fails."""
    _ops._C.set_poison(True)
    yield
    _ops._C.set_poison(False)


GRID = list(itertools.product(CELLS, [True, False], [False, True], [False, True]))
GRID_IDS = [f"{c}-{'bias' if b else 'nobias'}-{'packed' if p else 'padded'}-{'rev' if r else 'fwd'}"
            for c, b, p, r in GRID]


@pytest.mark.parametrize("cell,bias,packed,reverse", GRID, ids=GRID_IDS)
def test_float64_matches_reference(cell, bias, packed, reverse):
    case = make_case(cell, bias=bias, packed=packed, reverse=reverse)
    outputs, gradients = compare(case)
    for fused, ref in outputs + gradients:
        assert fused.shape == ref.shape
        assert (fused - ref).abs().max().item() <= 1e-10


@pytest.mark.parametrize("cell,bias,packed,reverse", GRID, ids=GRID_IDS)
def test_float32_matches_reference(cell, bias, packed, reverse):
    case = make_case(cell, bias=bias, packed=packed, reverse=reverse, dtype=torch.float32, H=37, I=11, B=4)
    outputs, gradients = compare(case)
    for fused, ref in outputs + gradients:
        assert fused.dtype == torch.float32
        assert rel_error(fused, ref) <= 1e-5


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=["f64", "f32", "bf16"])
@pytest.mark.parametrize("cell", CELLS)
def test_empty_batch_matches_reference(cell, dtype):
    """B = 0: nothing to run, and every weight gradient is a sum over no rows: exactly zero."""
    case = make_case(cell, dtype=dtype, T=3, B=0, I=4, H=5)
    outputs, gradients = compare(case)
    for fused, ref in outputs + gradients:
        assert fused.shape == ref.shape and fused.dtype == dtype
        assert torch.equal(fused.double(), ref)


@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=["fp16", "bf16"])
@pytest.mark.parametrize("cell,bias,packed,reverse", GRID, ids=GRID_IDS)
def test_low_precision_matches_reference(cell, bias, packed, reverse, dtype):
    """float16 / bfloat16 storage, float32 math in the pointwise pass, ATen's GEMMs."""
    case = nn_scaled(make_case(cell, bias=bias, packed=packed, reverse=reverse, dtype=dtype, H=37, I=11, B=4))
    # relu's derivative jumps at 0: a pre-activation within rounding of 0 can take the other
    # side in fp16/bf16 and move the gradient by O(1) there, so relu's low-precision gradients
    # are only checked to be finite (the same template code is checked in fp32/fp64 above).
    check_against_reference(case, dtype, check_grads=cell != "rnn_relu")


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_gradcheck_and_gradgradcheck(cell, packed):
    case = make_case(cell, packed=packed, reverse=packed, T=3, B=3, I=2, H=3, P=2)

    def fn(*leaves):
        return case.with_leaves(leaves).run(functional)

    assert torch.autograd.gradcheck(fn, case.leaves())
    assert torch.autograd.gradgradcheck(fn, case.leaves())


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_opcheck(cell, packed):
    case = make_case(cell, packed=packed)
    name, args = case.op_args(need_workspace=True)
    torch.library.opcheck(getattr(torch.ops.fused_rnn, name), args)
    name, args = make_case(cell, packed=packed, requires_grad=False).op_args(need_workspace=False)
    torch.library.opcheck(getattr(torch.ops.fused_rnn, name), args)


@pytest.mark.parametrize("cell", CELLS)
def test_opcheck_backward_op(cell):
    case = make_case(cell, packed=True, reverse=True)
    name, args = case.op_args(need_workspace=True)
    with torch.no_grad():
        outs = getattr(torch.ops.fused_rnn, name)(*args)
    grads = [torch.randn_like(o) for o in outs[:-1]]
    tensors_and_extras = args[:-2]
    backward = getattr(torch.ops.fused_rnn, name.replace("forward", "backward"))
    torch.library.opcheck(backward, (*grads, *[a.detach() if torch.is_tensor(a) else a for a in tensors_and_extras],
                                     outs[-1], args[-2]))


def test_workspace_only_when_a_gradient_is_possible():
    case = make_case("lstm", requires_grad=False)
    name, args = case.op_args(need_workspace=False)
    assert torch.ops.fused_rnn.lstm_forward(*args)[-1].numel() == 0
    case = make_case("lstm")
    with torch.no_grad():
        out, _ = functional.lstm(case.input, tuple(case.states), *case.weights)
    assert out.grad_fn is None


@pytest.mark.parametrize("cell", CELLS)
def test_backward_twice_gives_identical_grads(cell):
    case = make_case(cell, packed=True, dtype=torch.float32)
    outs = case.run(functional)
    loss = sum((o * torch.randn_like(o)).sum() for o in outs)
    first = torch.autograd.grad(loss, case.leaves(), retain_graph=True)
    second = torch.autograd.grad(loss, case.leaves())
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_eval_mode_backward_and_unused_outputs():
    """Only h_n used: the other outputs' grads are zeros, not an error."""
    case = make_case("lstm", packed=True)
    _, h, _ = case.run(functional)
    h.sum().backward()
    assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in case.leaves())


def test_inputs_are_not_modified():
    case = make_case("gru", packed=True)
    before = [t.detach().clone() for t in case.leaves()]
    outs = case.run(functional)
    sum(o.sum() for o in outs).backward()
    for t, b in zip(case.leaves(), before):
        assert torch.equal(t.detach(), b)


@pytest.mark.parametrize("cell", ["lstm_proj", "gru", "rnn_relu"])
def test_torch_compile_fullgraph_matches_eager(cell):
    case = make_case(cell, dtype=torch.float32, packed=True, reverse=True)

    def loss_and_output(*leaves):
        outs = case.with_leaves(leaves).run(functional)
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
def test_no_grad_call_below_autograd_matches(cell):
    """Under no_grad, eager calls skip the ops' autograd wrapper (functional._call) and
    compiled ones trace the plain call: both match the call that records grads."""
    case = make_case(cell, dtype=torch.float32, packed=True, reverse=True)

    def outputs(*leaves):
        return case.with_leaves(leaves).run(functional)

    with_grad = outputs(*case.leaves())
    compiled = torch.compile(outputs, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        eager, traced = outputs(*case.leaves()), compiled(*case.leaves())
    for g, e, t in zip(with_grad, eager, traced):
        assert e.grad_fn is None and not e.requires_grad
        assert torch.equal(e, g.detach())
        torch.testing.assert_close(t, e, rtol=1e-6, atol=1e-6)


# ---- bad input: a clear error naming the argument, never a crash or a wrong answer ----

def _lstm(x, h0=None, c0=None, w_ih=None, w_hh=None, batch_sizes=None, H=5, I=3):
    B = x.size(1) if batch_sizes is None and x.dim() == 3 else (int(batch_sizes[0]) if batch_sizes is not None else 2)
    h0 = torch.randn(B, H) if h0 is None else h0
    c0 = torch.randn(B, H) if c0 is None else c0
    w_ih = torch.randn(4 * H, I) if w_ih is None else w_ih
    w_hh = torch.randn(4 * H, H) if w_hh is None else w_hh
    return functional.lstm(x, (h0, c0), w_ih, w_hh, batch_sizes=batch_sizes)


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda: _lstm(torch.randn(5, 2, 3, 1)), "expected input to be 3-D"),
        (lambda: _lstm(torch.randn(5, 3)), "expected input to be 3-D"),
        (lambda: _lstm(torch.randn(0, 2, 3)), "T = 0"),
        (lambda: _lstm(torch.randn(5, 2, 4)), "expected weight_ih of shape"),
        (lambda: _lstm(torch.randn(5, 2, 3), h0=torch.randn(3, 5)), "expected h0 of shape"),
        (lambda: _lstm(torch.randn(5, 2, 3), c0=torch.randn(2, 4)), "expected c0 of shape"),
        (lambda: _lstm(torch.randn(5, 2, 3), w_hh=torch.randn(4 * 5, 4)), "expected weight_hh of shape"),
        (lambda: _lstm(torch.randn(5, 2, 3), w_hh=torch.randn(7, 5)), "expected weight_hh to be 2-D"),
        (lambda: _lstm(torch.randn(5, 2, 3), h0=torch.randn(2, 5, dtype=torch.float64)), "expected h0 to have dtype"),
        (lambda: _lstm(torch.randn(5, 2, 3, dtype=torch.float64)), "expected weight_ih to have dtype"),
        (lambda: _lstm(torch.randn(6, 3), batch_sizes=torch.tensor([2, 3, 1])), "non-increasing"),
        (lambda: _lstm(torch.randn(7, 3), batch_sizes=torch.tensor([3, 2, 1])), "sum to 6"),
        (lambda: _lstm(torch.randn(6, 3), batch_sizes=torch.tensor([3, 3, 0])), "positive"),
        (lambda: _lstm(torch.randn(6, 3), batch_sizes=torch.tensor([3.0, 2.0, 1.0])), "int64 CPU"),
        (lambda: functional.lstm(torch.randn(5, 2, 3, dtype=torch.complex64), None,
                                 torch.randn(20, 3, dtype=torch.complex64), torch.randn(20, 5, dtype=torch.complex64)),
         "floating-point input, but got ComplexFloat"),
        (lambda: _lstm(torch.randint(0, 3, (5, 2, 3))), "floating-point input"),
    ],
)
def test_bad_input_raises_clear_error(make, message):
    with pytest.raises(RuntimeError, match=message):
        make()


def test_bad_nonlinearity():
    case = make_case("rnn_tanh")
    with pytest.raises(ValueError, match="Unknown nonlinearity 'sigmoid'"):
        functional.rnn(case.input, case.states[0], *case.weights, nonlinearity="sigmoid")


def test_extension_is_built():
    assert fused_rnn._ops._C.workspace_width("lstm", 5, 5, False) == 7 * 5
    assert isinstance(fused_rnn._ops._C.has_cuda, bool)


def test_cpu_autocast_region_runs_in_the_input_dtype():
    case = make_case("lstm", dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, h, c = case.run(functional)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, case.run(functional)[0])


# The CPU's per-step GEMMs (CpuDevice::StepWeight): sequences of 4+ steps multiply a packed
# copy of the weight in blocks of up to 8 rows, depth slices of 512 and panels of one SIMD
# vector (H = 37: the last panel is partial; backward's depth G*H = 520 at H = 130: two
# slices, with values scaled to torch.nn's init so that float32 stays well-conditioned);
# shorter ones multiply a few rows by W^T as dot products of rows (up to 4 rows, with the
# input projection's too at T * B <= 4: k = I = 11 and k = H = 37 end in partial vectors, the
# 1 + 4 + 4 + ... rows of W in blocks of 4 and single rows), or call oneDNN.
GEMM_PATHS = {"packed-row-blocks-8-5": dict(T=6, B=13, H=37), "packed-row-blocks-8-8-1": dict(T=6, B=17, H=37),
              "packed-two-depth-slices": dict(T=5, B=3, H=130, scale=130 ** -0.5), "short-few-rows": dict(T=3, B=2, H=37),
              "short-more-rows": dict(T=3, B=6, H=37), "single-step-one-row": dict(T=1, B=1, H=37),
              "short-four-rows-everywhere": dict(T=2, B=2, H=37)}


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("path", GEMM_PATHS)
def test_float32_every_step_gemm_path(cell, path):
    """In forward and backward (GRU's accumulating GEMM and the projection's too)."""
    case = make_case(cell, reverse=True, dtype=torch.float32, I=11, **GEMM_PATHS[path])
    outputs, gradients = compare(case)
    for fused, ref in outputs + gradients:
        assert rel_error(fused, ref) <= 1e-5


# A forward of a few rows is split over the CPU threads by hidden units, all steps in one
# parallel region (CpuDevice::for_each_step): each thread runs the GEMM columns and the pass of
# its units, with barriers between. H = 184 is not a whole number of SIMD vectors (the last
# thread's share is partial) and makes even RNN's step at B = 1 large enough to split.
SPLIT_GATES = {"lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def _split_case(cell, B, packed, reverse, dtype):
    H = 184
    case = make_case(cell, packed=packed, reverse=reverse, dtype=dtype, T=6, B=B, I=7, H=H, scale=H ** -0.5)
    steps = len(case.batch_sizes) if packed else 6
    workers = _ops._C.split_workers(B, H, SPLIT_GATES[cell], H, steps, True, dtype == torch.float64)
    assert workers == 2, "the case no longer exercises the split steps"
    return case


@pytest.mark.parametrize("cell", list(SPLIT_GATES))
@pytest.mark.parametrize("B", [1, 3])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_split_steps_match_reference(two_threads, cell, B, packed, reverse, dtype):
    """Training forward (with workspace) and backward against the reference, and the
    inference forward bit for bit against the same call on one thread (not split)."""
    case = _split_case(cell, B, packed, reverse, dtype)
    outputs, gradients = compare(case)
    for fused, ref in outputs + gradients:
        if dtype == torch.float64:
            assert (fused - ref).abs().max().item() <= 1e-10
        else:
            assert rel_error(fused, ref) <= 1e-5
    with torch.no_grad():
        split = case.run(functional)
        torch.set_num_threads(1)
        whole = case.run(functional)
    for a, b in zip(split, whole):
        assert torch.equal(a, b)


def test_split_steps_only_where_they_pay(two_threads):
    split_workers = _ops._C.split_workers
    assert split_workers(1, 256, 4, 256, 100, True, False) == 2  # B = 1 streaming inference
    assert split_workers(8, 256, 4, 256, 100, True, False) == 2
    assert split_workers(9, 256, 4, 256, 100, True, False) == 1  # many rows: whole steps
    assert split_workers(1, 256, 4, 256, 3, True, False) == 1    # too short to pack W_hh
    assert split_workers(1, 16, 4, 16, 100, True, False) == 1    # too little work to share
    assert split_workers(1, 256, 4, 256, 100, False, False) == 1  # projected LSTM
    torch.set_num_threads(1)
    assert split_workers(1, 256, 4, 256, 100, True, False) == 1


# CPU scratch memory (the input projection, the gate gradients) is kept per thread between
# calls (csrc/recurrence.cpp, scratch_buffer): nothing a call returns may live in it, and a
# call must not depend on what an earlier, larger or other-dtype call left there.
@pytest.mark.parametrize("cell", CELLS)
def test_scratch_reuse_across_calls(cell):
    small = make_case(cell, packed=True)
    big = make_case(cell, T=9, B=7, H=11, dtype=torch.float32, seed=1)
    out_small, grads_small = compare(small)
    kept = [t.detach().clone() for t, _ in out_small + grads_small]
    out_big, grads_big = compare(big)  # larger and float32: reallocates and overwrites
    for (fused, _), before in zip(out_small + grads_small, kept):
        assert torch.equal(fused, before), "a returned tensor shares the kept scratch memory"
    for fused, ref in out_big + grads_big:
        assert rel_error(fused, ref) <= 1e-5
    again, grads_again = compare(small)
    for (fused, _), before in zip(again + grads_again, kept):
        assert torch.equal(fused, before)


def test_release_scratch():
    case = make_case("gru")
    compare(case)
    assert fused_rnn.cpu_scratch_bytes() > 0
    fused_rnn.release_cpu_scratch()
    assert fused_rnn.cpu_scratch_bytes() == 0
    for fused, ref in sum(compare(case), []):
        assert rel_error(fused, ref) <= 1e-10


def test_scratch_is_per_thread():
    """Two threads running ops at once each get their own scratch memory."""
    import threading

    cases = [make_case("gru", T=7, B=5, H=9, seed=s) for s in (3, 4)]
    expected = [[f.detach().clone() for f, _ in sum(compare(c), [])] for c in cases]
    errors = []

    def work(case, want):
        for _ in range(20):
            got = [f.detach() for f, _ in sum(compare(case), [])]
            if not all(torch.equal(g, w) for g, w in zip(got, want)):
                errors.append("results changed while another thread ran")
                return

    threads = [threading.Thread(target=work, args=(c, e)) for c, e in zip(cases, expected)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


@pytest.mark.parametrize("cell", CELLS)
def test_scratch_kept_from_inference_mode(cell):
    """Scratch first taken inside torch.inference_mode is reused by a call that records grads."""
    fused_rnn.release_cpu_scratch()
    case = make_case(cell, T=3, B=2)  # float64, a short sequence: the at::mm_out paths
    with torch.inference_mode():
        case.run(functional)
    for fused, ref in sum(compare(case), []):
        assert rel_error(fused, ref) <= 1e-10
