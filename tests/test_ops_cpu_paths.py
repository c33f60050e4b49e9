"""CPU-only paths of the ops: the per-step GEMMs (packed weights, dot products of rows), a
forward's steps split over threads by hidden units, and the per-thread scratch memory."""
import sys
import threading

import pytest
import torch

import fused_rnn
from fused_rnn import _ops, functional

from checks import assert_close
from op_cases import (
    CELLS,
    GATES,
    LOW_PRECISION_GRADS_UNCHECKED,
    check_against_reference,
    compare,
    make_case,
    nn_scaled,
    projected,
)

pytestmark = pytest.mark.usefixtures("poison_buffers")


# The CPU's per-step GEMMs (CpuDevice::StepWeight): sequences of 4+ steps multiply a packed
# copy of the weight in blocks of up to 8 rows, depth slices of 512 and panels of one SIMD
# vector (H = 37: the last panel is partial; backward's depth G*H = 520 at H = 130: two
# slices, with values scaled to torch.nn's init so that float32 stays well-conditioned);
# shorter ones multiply a few rows by W^T as dot products of rows (up to 4 rows, with the
# input projection's too at T * B <= 4: k = I = 11 and k = H = 37 end in partial vectors, the
# 1 + 4 + 4 + ... rows of W in blocks of 4 and single rows), or call oneDNN.
GEMM_PATHS = {"packed-row-blocks-8-5": dict(T=6, B=13, H=37), "packed-row-blocks-8-8-1": dict(T=6, B=17, H=37),
              "packed-two-depth-slices": dict(T=5, B=3, H=130, scale=130 ** -0.5),
              "short-few-rows": dict(T=3, B=2, H=37), "short-more-rows": dict(T=3, B=6, H=37),
              "single-step-one-row": dict(T=1, B=1, H=37), "short-four-rows-everywhere": dict(T=2, B=2, H=37)}


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("path", GEMM_PATHS)
def test_float32_every_step_gemm_path(cell, path):
    """In forward and backward (GRU's accumulating GEMM and the projection's too). Weights of
    torch.nn's init size (nn_scaled): with make_case's std 0.5 a layer-normalized, projected
    cell in float32 is so ill-conditioned that plain PyTorch's own error varies from 1e-6 to
    1e-5 between seeds, and the comparison would measure that, not the GEMM path."""
    case = make_case(cell, reverse=True, dtype=torch.float32, I=11, **GEMM_PATHS[path])
    check_against_reference(case if "scale" in GEMM_PATHS[path] else nn_scaled(case))


# A forward of a few rows is split over the CPU threads by hidden units, all steps in one
# parallel region (CpuDevice::for_each_step): each thread runs the GEMM columns and the pass of
# its units, with barriers between. H = 184 is not a whole number of SIMD vectors (the last
# thread's share is partial) and makes even RNN's step at B = 1 large enough to split. A
# projected LSTM's steps are never split.
SPLIT_CELLS = [cell for cell in CELLS if not projected(cell)]


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)
    _ops._C.testing.set_split_steps(True)  # the default, whatever a test left


def _split_case(cell, B, packed, reverse, dtype, masks=()):
    H = 184
    case = make_case(cell, packed=packed, reverse=reverse, dtype=dtype, T=6, B=B, I=7, H=H, scale=H ** -0.5,
                     masks=masks)
    steps = len(case.batch_sizes) if packed else 6
    workers = _ops._C.testing.split_workers(B, H, GATES[cell], H, steps, True, dtype == torch.float64)
    assert workers == 2, "the case no longer exercises the split steps"
    return case


@pytest.mark.parametrize("cell", SPLIT_CELLS)
@pytest.mark.parametrize("B", [1, 3])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("masks", [(), ("zoneout", "dropout")], ids=["plain", "masks"])
def test_split_steps_match_reference(two_threads, cell, B, packed, reverse, dtype, masks):
    """Training forward (with workspace) and backward against the reference, and the
    inference forward bit for bit against the same call run whole (splitting off) on the same
    threads: on another thread count MKL's sgemm (the input projection) may give other bits.
    With the regularizers' masks too: every split's pass writes its units of h * d, which the
    next step's GEMM of every split reads."""
    case = _split_case(cell, B, packed, reverse, dtype, masks)
    check_against_reference(case)
    with torch.no_grad():
        split = case.run(functional)
        _ops._C.testing.set_split_steps(False)
        whole = case.run(functional)
    for a, b in zip(split, whole):
        assert torch.equal(a, b)


def test_split_steps_only_where_they_pay(two_threads):
    """For an LSTM step (rows, depth, gates, hidden, steps, splittable, float64)."""
    split_workers, G = _ops._C.testing.split_workers, GATES["lstm"]
    assert split_workers(1, 256, G, 256, 100, True, False) == 2  # B = 1 streaming inference
    assert split_workers(8, 256, G, 256, 100, True, False) == 2
    assert split_workers(9, 256, G, 256, 100, True, False) == 1  # many rows: whole steps
    assert split_workers(1, 256, G, 256, 3, True, False) == 1    # too short to pack W_hh
    assert split_workers(1, 16, G, 16, 100, True, False) == 1    # too little work to share
    assert split_workers(1, 256, G, 256, 100, False, False) == 1  # projected LSTM
    _ops._C.testing.set_split_steps(False)
    assert split_workers(1, 256, G, 256, 100, True, False) == 1  # turned off (by tests)
    _ops._C.testing.set_split_steps(True)
    torch.set_num_threads(1)
    assert split_workers(1, 256, G, 256, 100, True, False) == 1


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
    for i, (fused, ref) in enumerate(out_big + grads_big):
        assert_close(fused, ref, f"result {i} of the larger float32 call")
    again, grads_again = compare(small)
    for (fused, _), before in zip(again + grads_again, kept):
        assert torch.equal(fused, before)


def test_large_buffers_come_from_kept_blocks():
    """Buffers of 256 KiB and more (here a step's two 1 MiB weight gradients) get the blocks of
    the previous call's, once those tensors are gone, and a live result keeps its own memory."""
    case = make_case("lstm", step=True, dtype=torch.float32, B=1, I=256, H=256, requires_grad=False)
    name, args = case.op_args(need_workspace=True)
    outs = getattr(torch.ops.fused_rnn, name)(*args)
    backward = getattr(torch.ops.fused_rnn, name.replace("forward", "backward"))

    def weight_grads():
        grads = backward(*[torch.ones_like(o) for o in outs[:2]], *args[:-1], outs[-1], [True] * 13)
        return grads[3], grads[4]

    fused_rnn.release_cpu_scratch()
    first = weight_grads()
    kept = [g.clone() for g in first]
    blocks = {g.data_ptr() for g in first}
    del first
    again = weight_grads()
    assert {g.data_ptr() for g in again} == blocks
    assert all(torch.equal(a, b) for a, b in zip(again, kept))
    while_alive = weight_grads()
    assert not {g.data_ptr() for g in while_alive} & blocks


def test_release_scratch():
    case = make_case("gru")
    compare(case)
    assert fused_rnn.cpu_scratch_bytes() > 0
    fused_rnn.release_cpu_scratch()
    assert fused_rnn.cpu_scratch_bytes() == 0
    check_against_reference(case)


def test_scratch_is_per_thread():
    """Two threads running ops at once each get their own scratch memory."""
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
    check_against_reference(case)


# bfloat16 steps multiply W_hh (forward) and W_hh^T (backward) packed once per call by oneDNN
# (cpu/onednn_weight.h) on CPUs that multiply bf16 in hardware, for calls of 32+ steps and
# weights of 16384+ elements; elsewhere, and when tests turn it off, ATen's mm. Both routes
# against the reference, padded and packed input (steps of fewer rows than the first);
# H = 130 ends in a partial SIMD vector and makes even RNN's W_hh (130 x 130) large enough,
# as P = 127 does a projected LSTM's.
@pytest.fixture
def onednn_step_weights():
    yield
    _ops._C.testing.set_onednn_step_weights(True)


def test_onednn_bf16_route_where_the_cpu_has_bf16():
    flags = open("/proc/cpuinfo").read() if sys.platform == "linux" else ""
    hardware = any(f" {flag}" in flags for flag in ("avx512_bf16", "amx_bf16"))
    assert _ops._C.testing.onednn_step_weights() == (hardware and torch.backends.mkldnn.is_available())


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("onednn", [True, False], ids=["onednn", "aten"])
def test_bfloat16_step_weight_routes(onednn_step_weights, cell, packed, onednn):
    _ops._C.testing.set_onednn_step_weights(onednn)
    H, P, T = 130, 127, 33
    case = nn_scaled(make_case(cell, packed=packed, reverse=True, dtype=torch.bfloat16, T=T, B=9, I=11, H=H, P=P,
                               lengths=[T, T, 30, 21, 21, 8, 3, 1, 1]))
    state = P if projected(cell) else H
    routed = _ops._C.testing.onednn_step_weight_pays(GATES[cell] * H, state, T)
    assert routed == _ops._C.testing.onednn_step_weights(), "the case no longer exercises the oneDNN route"
    check_against_reference(case, check_grads=cell not in LOW_PRECISION_GRADS_UNCHECKED)
