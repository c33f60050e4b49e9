"""fused_rnn.LSTM / GRU / RNN against torch.nn with the same weights, and against the float64
truth: every check builds the torch.nn module and the fused one with the same state_dict, runs
both on the same fresh random input, and compares outputs, final states and the gradients of
the input, of hx and of every parameter (module_cases.check_pair). Also dropout between layers
and a few training steps."""
import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence
from torch.utils._python_dispatch import TorchDispatchMode

import fused_rnn

import module_cases
from checks import DEVICES, DTYPE_IDS, assert_close, per_device
from module_cases import MODE_IDS, MODES, B, H, I, T, build_pair, check_pair, make_leaves, packing, run

pytestmark = pytest.mark.usefixtures("seeded")

OUTPUT_NAMES = ["output", "h_n", "c_n"]
# The whole grid runs in float64 on the CPU (torch.nn's own float64 path) and in float32 on
# CUDA (against cuDNN).
GRID_DTYPES = {"cpu": [torch.float64], "cuda": [torch.float32]}
# cuDNN takes no bfloat16 RNN (torch.nn would run its slow native path): there a low-precision
# module is checked against the float64 truth only.
LOW_PRECISION_AGAINST_TORCH_NN = {"cpu": {torch.float16, torch.bfloat16}, "cuda": {torch.float16}}


@module_cases.over_grid(module_cases.LAYOUTS)
@pytest.mark.parametrize("device,dtype", per_device(GRID_DTYPES))
def test_grid(device, dtype, mode, projected, num_layers, bias, batch_first, bidirectional, layout, with_hx):
    ref, fused = build_pair(mode, projected, dtype, device, num_layers=num_layers, bias=bias,
                            batch_first=batch_first, bidirectional=bidirectional)
    check_pair(ref, fused, layout, with_hx, dtype, device)


@pytest.mark.parametrize("layout", module_cases.LAYOUTS)
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("mode,projected", MODES, ids=MODE_IDS)
@pytest.mark.parametrize("device", DEVICES)
def test_float32(device, mode, projected, bidirectional, layout):
    ref, fused = build_pair(mode, projected, torch.float32, device, num_layers=2, batch_first=True,
                            bidirectional=bidirectional)
    check_pair(ref, fused, layout, True, torch.float32, device)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=DTYPE_IDS.get)
@pytest.mark.parametrize("layout", ["padded", "packed_unsorted"])
@pytest.mark.parametrize("mode,projected", MODES, ids=MODE_IDS)
@pytest.mark.parametrize("device", DEVICES)
def test_low_precision_modules(device, mode, projected, layout, dtype):
    """Modules converted with .half() / .bfloat16(): the same dtypes as torch.nn, outputs and
    every gradient within 1e-2 of the float64 truth (docs/DESIGN.md §3), outputs within 1e-2 of
    torch.nn's. relu's gradients are only required finite: its derivative jumps at 0, where
    rounding can pick the other side."""
    ref, fused = build_pair(mode, projected, dtype, device, num_layers=2, bidirectional=True)
    x, hx = make_leaves(ref, layout, dtype, device)
    packed = packing(layout, device)
    got, got_grads, grad_outputs = module_cases.forward_and_grads(fused, x, hx, *packed)
    truth, truth_grads, _ = module_cases.float64_truth(ref, x, hx, dtype, grad_outputs, *packed)
    against_torch_nn = dtype in LOW_PRECISION_AGAINST_TORCH_NN[device]
    if against_torch_nn:
        want, _, _ = module_cases.forward_and_grads(ref, x, hx, *packed, grad_outputs=grad_outputs)
    for i, (name, a, t) in enumerate(zip(OUTPUT_NAMES, got, truth)):
        assert a.dtype == dtype, name
        assert_close(a, t, f"{name} against the float64 truth")
        if against_torch_nn:
            assert want[i].dtype == dtype, name
            assert_close(a, want[i], f"{name} against torch.nn")
    for name, a, t in zip(module_cases.leaf_names(ref, hx), got_grads, truth_grads):
        assert a.dtype == dtype and torch.isfinite(a).all(), name
        if mode != "RNN_RELU":
            assert_close(a, t, f"grad of {name}")


class _ForwardOpCalls(TorchDispatchMode):
    """Records the `reverse` argument of every fused_rnn forward op called under it."""

    def __init__(self):
        super().__init__()
        self.reverse = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "fused_rnn" and func.name().endswith("_forward"):
            self.reverse.append(args[-2])  # (..., reverse, need_workspace)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("mode,projected", MODES, ids=MODE_IDS)
def test_one_op_call_per_layer_and_direction(mode, projected):
    """Layers x directions are composed from the ops of one layer and direction; no loop over
    time steps (counted at the dispatcher, however the module reaches the ops)."""
    _, fused = build_pair(mode, projected, num_layers=3, bidirectional=True)
    with _ForwardOpCalls() as calls:
        fused(torch.randn(T, B, I, dtype=torch.float64))
    assert calls.reverse == [False, True] * 3


@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous_input_and_hx(device):
    s = module_cases.SIZES[device]
    ref, fused = build_pair("LSTM", num_layers=2, bidirectional=True, device=device)
    f64 = dict(dtype=torch.float64, device=device)
    x = torch.randn(s.I, s.T, s.B, **f64).permute(1, 2, 0)
    h = torch.randn(s.B, 2 * 2, s.H, **f64).transpose(0, 1)  # layers x directions
    c = torch.randn(s.H, s.B, 2 * 2, **f64).permute(2, 1, 0)
    out_f, (h_f, c_f) = fused(x, (h, c))
    out_r, (h_r, c_r) = ref(x, (h, c))
    for name, a, b in zip(OUTPUT_NAMES, (out_f, h_f, c_f), (out_r, h_r, c_r)):
        assert a.dtype == b.dtype, name
        assert_close(a, b, name)


@pytest.mark.parametrize("mode,projected", MODES, ids=MODE_IDS)
def test_empty_batch(mode, projected):
    """torch.nn accepts a batch of zero sequences."""
    ref, fused = build_pair(mode, projected, num_layers=2, bidirectional=True)
    x = torch.randn(T, 0, I, dtype=torch.float64)
    got, _ = run(fused, x, None)
    want, _ = run(ref, x, None)
    for a, b in zip(got, want):
        assert a.shape == b.shape


def test_lstm_state_dtype_promotion():
    """torch.nn's LSTM takes a float32 c with float64 weights; the result is float64."""
    ref, fused = build_pair("LSTM", num_layers=2)
    x, h = torch.randn(T, B, I, dtype=torch.float64), torch.randn(2, B, H, dtype=torch.float64)
    c = torch.randn(2, B, H)
    got, want = fused(x, (h, c)), ref(x, (h, c))
    for name, a, b in [("output", got[0], want[0]), ("c_n", got[1][1], want[1][1])]:
        assert a.dtype == b.dtype, name
        assert_close(a, b, name)


# ---- Dropout between layers (CPU: the same masks as torch.nn for the same seed) -------------

@pytest.mark.parametrize("layout", ["padded", "packed_unsorted"])
@pytest.mark.parametrize("mode,projected", MODES, ids=MODE_IDS)
def test_dropout_zero_and_eval_match_exactly(mode, projected, layout):
    ref, fused = build_pair(mode, projected, num_layers=2, bidirectional=True)
    check_pair(ref, fused, layout, True, torch.float64)  # p = 0 in training mode
    ref, fused = build_pair(mode, projected, num_layers=3, dropout=0.5, bidirectional=True)
    ref.eval()
    fused.eval()
    check_pair(ref, fused, layout, True, torch.float64)


@pytest.mark.parametrize("layout", ["padded", "packed_unsorted"])
@pytest.mark.parametrize("mode,projected", MODES, ids=MODE_IDS)
def test_dropout_one_zeroes_between_layers(mode, projected, layout):
    ref, fused = build_pair(mode, projected, num_layers=2, dropout=1.0, bidirectional=True)
    check_pair(ref, fused, layout, True, torch.float64)
    # Only the inputs of upper layers are zeroed: the last layer's output is not, and with a
    # zero input, layer 2 of the fused module runs on its hx and biases alone.
    x, _ = make_leaves(fused, "padded", torch.float64, with_hx=False)
    out, _ = fused(x)
    assert out.abs().sum() > 0
    single = module_cases.FUSED_CLASS[mode](2 * (fused.proj_size or H), H, **module_cases.module_kwargs(
        mode, fused.proj_size, bidirectional=True, dtype=torch.float64))
    single.load_state_dict({name.replace("_l1", "_l0"): value
                            for name, value in fused.state_dict().items() if "_l1" in name})
    expected, _ = single(torch.zeros(T, B, single.input_size, dtype=torch.float64))
    assert out.dtype == expected.dtype
    assert_close(out, expected, "output with a zeroed layer-2 input")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=DTYPE_IDS.get)
@pytest.mark.parametrize("layout", ["padded", "packed_unsorted"])
@pytest.mark.parametrize("mode,projected", MODES, ids=MODE_IDS)
def test_dropout_same_seed_same_masks(mode, projected, layout, dtype):
    """On CPU the fused modules draw the very masks torch.nn draws for the same seed."""
    ref, fused = build_pair(mode, projected, dtype, num_layers=3, dropout=0.4, bidirectional=True)
    x, _ = make_leaves(ref, layout, dtype, with_hx=False)
    torch.manual_seed(123)
    got, _ = run(fused, x, None, *packing(layout))
    torch.manual_seed(123)
    want, _ = run(ref, x, None, *packing(layout))
    for name, a, b in zip(OUTPUT_NAMES, got, want):
        assert a.dtype == b.dtype, name
        assert_close(a, b, name)


@pytest.mark.parametrize("mode,projected", MODES, ids=MODE_IDS)
def test_dropout_changed_after_construction(mode, projected):
    ref, fused = build_pair(mode, projected, num_layers=2)
    ref.dropout = fused.dropout = 1.0
    check_pair(ref, fused, "padded", True, torch.float64)
    x, _ = make_leaves(fused, "padded", torch.float64, with_hx=False)
    with_dropout, _ = fused(x)
    fused.dropout = 0.0
    without, _ = fused(x)
    assert not torch.allclose(with_dropout, without)
    ref.dropout = 0.0
    assert_close(without, ref(x)[0], "output")


# ---- Training: same seed, same losses --------------------------------------------------------

class _Net(nn.Module):
    def __init__(self, ns):
        super().__init__()
        self.lstm = ns.LSTM(I, 6, num_layers=2, batch_first=True, bidirectional=True,
                            proj_size=3, dropout=0.25)
        self.gru = ns.GRU(6, H)
        self.rnn = ns.RNN(H, 4, nonlinearity="relu")
        self.cell = ns.LSTMCell(4, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, x, lengths):
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        y, _ = self.lstm(packed)
        y, _ = nn.utils.rnn.pad_packed_sequence(y)  # [T, B, 6]
        y, h = self.gru(y)
        y, _ = self.rnn(y)
        state = None
        for t in range(y.size(0)):  # the user's own loop over a cell
            state = self.cell(y[t], state)
        return self.head(state[0])


def _train(ns, steps=20):
    torch.manual_seed(0)
    net = _Net(ns).double()
    opt = torch.optim.Adam(net.parameters(), lr=0.02)
    data = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(steps):
        x = torch.randn(4, 7, I, generator=data, dtype=torch.float64)
        lengths = torch.randint(1, 8, (4,), generator=data)
        target = torch.randn(4, 2, generator=data, dtype=torch.float64)
        loss = nn.functional.mse_loss(net(x, lengths), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_training_same_losses():
    want = _train(nn)
    got = _train(fused_rnn)
    assert got == pytest.approx(want, abs=1e-5, rel=0)
    assert want[-1] < want[0]  # it did learn something
