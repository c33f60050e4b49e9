"""fused_rnn.LSTM / GRU / RNN and the cells on CUDA against torch.nn on CUDA (cuDNN) with the
same weights: float32 with TF32 off (outputs, final states and every gradient, relative 1e-5),
float16 / bfloat16 modules, and torch.autocast("cuda").

All skipped without a GPU (tests/conftest.py and the marks below)."""

import pytest
import torch
from torch import nn

import fused_rnn
import module_cases
from module_cases import MODE_IDS
from op_cases import rel_error

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

T, B, I, H, P = 6, 4, 12, 32, 16
LENGTHS = [4, 6, 1, 5]  # packed, unsorted (enforce_sorted=False)
LAYOUTS = ["padded", "unbatched", "packed"]
MODES = module_cases.modes(P)


@pytest.fixture(autouse=True)
def cuda_settings():
    """Seeded, and float32 in full precision on both sides: cuBLAS (fused_rnn's GEMMs) and
    cuDNN (torch.nn's RNN) with TF32 off."""
    torch.manual_seed(0)
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def build_pair(mode, proj_size=0, dtype=torch.float32, **kw):
    """torch.nn module and fused module with the same weights, on CUDA."""
    return module_cases.build_pair(mode, I, H, proj_size, dtype, device="cuda", **kw)


def make_leaves(module, layout, dtype, with_hx=True):
    """The input and hx leaves ([h0] or [h0, c0], or [] without hx) for `module`."""
    return module_cases.make_leaves(module, layout, T, B, dtype, "cuda", with_hx)


def run(module, layout, x, hx):
    """[output data, h_n(, c_n)] of one forward."""
    return module_cases.run(module, x, hx, LENGTHS if layout == "packed" else None, enforce_sorted=False)[0]


def forward_and_grads(module, layout, leaves, grad_outputs=None):
    """Results of a forward and the gradients of the input, hx and every parameter."""
    return module_cases.forward_and_grads(module, *leaves, LENGTHS if layout == "packed" else None,
                                          enforce_sorted=False, grad_outputs=grad_outputs)


def names(module, hx):
    return module_cases.leaf_names(module, hx)


@module_cases.over_grid(LAYOUTS, P)
def test_float32_matches_torch_nn(mode, proj_size, num_layers, bias, bidirectional, batch_first, layout, with_hx):
    ref, fused = build_pair(mode, proj_size, num_layers=num_layers, bias=bias, bidirectional=bidirectional,
                            batch_first=batch_first)
    leaves = make_leaves(ref, layout, torch.float32, with_hx)
    want, want_grads, grad_outputs = forward_and_grads(ref, layout, leaves)
    got, got_grads, _ = forward_and_grads(fused, layout, leaves, grad_outputs)
    for name, a, b in zip(["output", "h_n", "c_n"], got, want):
        assert a.device == b.device and a.dtype == b.dtype == torch.float32 and a.shape == b.shape, name
        assert rel_error(a, b) <= 1e-5, f"{name}: relative error {rel_error(a, b):.3g}"
    for name, a, b in zip(names(ref, leaves[1]), got_grads, want_grads):
        assert a.dtype == b.dtype and a.shape == b.shape, name
        assert rel_error(a, b) <= 1e-5, f"grad of {name}: relative error {rel_error(a, b):.3g}"


def float64_truth(ref, layout, leaves, dtype, grad_outputs):
    """torch.nn in float64 on the CPU at the arguments rounded to `dtype`."""
    return module_cases.float64_truth(ref, *leaves, dtype, grad_outputs, LENGTHS if layout == "packed" else None,
                                      enforce_sorted=False)


@pytest.mark.parametrize("layout", ["padded", "packed"])
@pytest.mark.parametrize("mode,proj_size", MODES, ids=MODE_IDS)
def test_float16_modules(mode, proj_size, layout):
    """Modules converted with .half(): the same output dtype as torch.nn, values within 1e-2 of
    torch.nn and of the float64 truth; gradients within 1e-2 of the truth (not relu's: its
    derivative jumps at 0, where fp16 rounding can pick the other side)."""
    ref, fused = build_pair(mode, proj_size, dtype=torch.float16, num_layers=2, bidirectional=True)
    leaves = make_leaves(ref, layout, torch.float16)
    want, _, grad_outputs = forward_and_grads(ref, layout, leaves)
    got, got_grads, _ = forward_and_grads(fused, layout, leaves, grad_outputs)
    truth, truth_grads, _ = float64_truth(ref, layout, leaves, torch.float16, grad_outputs)
    for a, b, t in zip(got, want, truth):
        assert a.dtype == b.dtype == torch.float16
        assert rel_error(a, b) <= 1e-2 and rel_error(a.cpu(), t) <= 1e-2
    if mode != "RNN_RELU":
        for name, a, t in zip(names(ref, leaves[1]), got_grads, truth_grads):
            assert a.dtype == torch.float16
            assert rel_error(a.cpu(), t) <= 1e-2, f"grad of {name}: relative error {rel_error(a.cpu(), t):.3g}"


@pytest.mark.parametrize("layout", ["padded", "packed"])
@pytest.mark.parametrize("mode,proj_size", MODES, ids=MODE_IDS)
def test_bfloat16_modules(mode, proj_size, layout):
    """Modules converted to bfloat16, against the float64 truth (cuDNN takes no bf16 RNN, so
    torch.nn would run its slow native path: no reference worth matching)."""
    ref, fused = build_pair(mode, proj_size, dtype=torch.bfloat16, num_layers=2, bidirectional=True)
    leaves = make_leaves(ref, layout, torch.bfloat16)
    got, got_grads, grad_outputs = forward_and_grads(fused, layout, leaves)
    truth, truth_grads, _ = float64_truth(ref, layout, leaves, torch.bfloat16, grad_outputs)
    for a, t in zip(got, truth):
        assert a.dtype == torch.bfloat16 and rel_error(a.cpu(), t) <= 1e-2
    if mode != "RNN_RELU":
        for name, a, t in zip(names(ref, leaves[1]), got_grads, truth_grads):
            assert a.dtype == torch.bfloat16
            assert rel_error(a.cpu(), t) <= 1e-2, f"grad of {name}: relative error {rel_error(a.cpu(), t):.3g}"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("layers,bidirectional", [(1, False), (2, True)], ids=["L1-uni", "L2-bi"])
@pytest.mark.parametrize("layout", ["padded", "packed"])
@pytest.mark.parametrize("mode,proj_size", MODES, ids=MODE_IDS)
def test_autocast_matches_torch_nn(mode, proj_size, layout, layers, bidirectional, dtype):
    """float32 modules under torch.autocast("cuda"): outputs in low precision, values within
    1e-2 of torch.nn's, gradients in float32 for the float32 leaves, and outputs and gradients
    within 1e-2 of the float64 truth at the arguments rounded to the autocast dtype.

    Output dtype: torch.nn's cuDNN RNN runs float16 under ANY autocast dtype (ATen's autocast
    wrapper of _cudnn_rnn casts to half); fused_rnn runs the autocast dtype. So under float16
    both give float16, under bfloat16 fused_rnn gives bfloat16 and torch.nn float16."""
    ref, fused = build_pair(mode, proj_size, num_layers=layers, bidirectional=bidirectional)
    leaves = make_leaves(ref, layout, torch.float32)
    with torch.autocast("cuda", dtype=dtype):
        want = run(ref, layout, *leaves)
        got = run(fused, layout, *leaves)
    for name, a, b in zip(["output", "h_n", "c_n"], got, want):
        assert a.dtype == dtype, f"{name}: {a.dtype}"
        assert b.dtype in (dtype, torch.float16), f"torch.nn's {name}: {b.dtype}"
        assert a.shape == b.shape
        assert rel_error(a, b) <= 1e-2, f"{name}: relative error {rel_error(a, b):.3g} to torch.nn"

    grad_outputs = [torch.randn_like(r, dtype=torch.float32) for r in got]
    x, hx = leaves
    got_grads = torch.autograd.grad(got, [x, *hx, *fused.parameters()], [g.to(dtype) for g in grad_outputs])
    want_grads = torch.autograd.grad(want, [x, *hx, *ref.parameters()], [g.to(w.dtype) for g, w in
                                                                          zip(grad_outputs, want)])
    truth, truth_grads, _ = float64_truth(ref, layout, leaves, dtype, [g.to(dtype) for g in grad_outputs])
    for name, a, t in zip(["output", "h_n", "c_n"], got, truth):
        assert rel_error(a.cpu(), t) <= 1e-2, f"{name}: relative error {rel_error(a.cpu(), t):.3g} to the truth"
    for name, a, b, t in zip(names(ref, hx), got_grads, want_grads, truth_grads):
        assert a.dtype == b.dtype == torch.float32, f"grad of {name}: {a.dtype}, torch.nn's {b.dtype}"
        assert torch.isfinite(a).all(), name
        if mode != "RNN_RELU":
            assert rel_error(a.cpu(), t) <= 1e-2, f"grad of {name}: relative error {rel_error(a.cpu(), t):.3g}"


CELL_CLASSES = [("LSTMCell", {}), ("GRUCell", {}), ("RNNCell", {"nonlinearity": "tanh"}),
                ("RNNCell", {"nonlinearity": "relu"})]
CELL_IDS = ["LSTMCell", "GRUCell", "RNNCell-tanh", "RNNCell-relu"]


@pytest.mark.parametrize("batched", [True, False], ids=["batched", "unbatched"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("name,kwargs", CELL_CLASSES, ids=CELL_IDS)
def test_cells_float32_match_torch_nn(name, kwargs, bias, batched):
    ref = getattr(nn, name)(I, H, bias=bias, **kwargs)
    fused = getattr(fused_rnn, name)(I, H, bias=bias, **kwargs)
    fused.load_state_dict(ref.state_dict())
    ref, fused = ref.cuda(), fused.cuda()
    batch = (B,) if batched else ()
    x = torch.randn(*batch, I, device="cuda", requires_grad=True)
    hx = [torch.randn(*batch, H, device="cuda", requires_grad=True)
          for _ in range(2 if name == "LSTMCell" else 1)]
    state = tuple(hx) if name == "LSTMCell" else hx[0]
    want, got = ref(x, state), fused(x, state)
    want = list(want) if isinstance(want, tuple) else [want]
    got = list(got) if isinstance(got, tuple) else [got]
    for a, b in zip(got, want):
        assert a.dtype == b.dtype and a.shape == b.shape and rel_error(a, b) <= 1e-5
    grad_outputs = [torch.randn_like(w) for w in want]
    for a, b in zip(torch.autograd.grad(got, [x, *hx, *fused.parameters()], grad_outputs),
                    torch.autograd.grad(want, [x, *hx, *ref.parameters()], grad_outputs)):
        assert rel_error(a, b) <= 1e-5
