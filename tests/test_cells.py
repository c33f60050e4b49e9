"""fused_rnn.LSTMCell / GRUCell / RNNCell against torch.nn's cells with the same weights:
outputs and the gradients of input, hx and every parameter (module_cases.check_cells) on
every device, and construction, copies, an empty batch and dtype promotion as torch.nn's."""
import copy
import pickle

import pytest
import torch
from torch import nn

import fused_rnn

from checks import assert_close, per_device
from module_cases import CELL_IDS, CELLS, B, H, I, build_cells, check_cells

pytestmark = pytest.mark.usefixtures("seeded")

# float64 and float32 on the CPU; float32 on CUDA (against cuDNN's cells).
CELL_DTYPES = {"cpu": [torch.float64, torch.float32], "cuda": [torch.float32]}


@pytest.mark.parametrize("with_hx", [True, False], ids=["hx", "no_hx"])
@pytest.mark.parametrize("batched", [True, False], ids=["batched", "unbatched"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("name,kwargs", CELLS, ids=CELL_IDS)
@pytest.mark.parametrize("device,dtype", per_device(CELL_DTYPES))
def test_cells(device, dtype, name, kwargs, bias, batched, with_hx):
    ref, fused = build_cells(name, kwargs, device, bias=bias, dtype=dtype)
    check_cells(ref, fused, batched, with_hx, dtype, device)


@pytest.mark.parametrize("name,kwargs", CELLS, ids=CELL_IDS)
def test_cell_construction(name, kwargs):
    torch.manual_seed(3)
    ref = getattr(nn, name)(I, H, False, **kwargs)
    after_ref = torch.rand(2)
    torch.manual_seed(3)
    fused = getattr(fused_rnn, name)(I, H, False, **kwargs)
    assert torch.equal(torch.rand(2), after_ref)
    assert isinstance(fused, getattr(nn, name))
    assert list(fused.state_dict()) == list(ref.state_dict())
    for key, value in ref.state_dict().items():
        assert torch.equal(fused.state_dict()[key], value)
    assert repr(fused) == repr(ref)
    for other in (copy.deepcopy(fused), pickle.loads(pickle.dumps(fused))):
        assert type(other) is type(fused)
        check_cells(ref.double(), other.double(), True, True, torch.float64)


@pytest.mark.parametrize("name,kwargs", CELLS, ids=CELL_IDS)
def test_cell_empty_batch(name, kwargs):
    """torch.nn's cells accept a batch of zero rows."""
    ref, fused = build_cells(name, kwargs, dtype=torch.float64)
    x = torch.randn(0, I, dtype=torch.float64)
    got, want = fused(x), ref(x)
    got = got if isinstance(got, tuple) else (got,)
    want = want if isinstance(want, tuple) else (want,)
    assert [t.shape for t in got] == [t.shape for t in want]


def test_cell_state_dtype_promotion():
    """torch.nn's LSTMCell takes a float32 c with float64 weights; the result is float64."""
    ref, fused = build_cells("LSTMCell", {}, dtype=torch.float64)
    x, h = torch.randn(B, I, dtype=torch.float64), torch.randn(B, H, dtype=torch.float64)
    c = torch.randn(B, H)
    for name, a, b in zip(["h", "c"], fused(x, (h, c)), ref(x, (h, c))):
        assert a.dtype == b.dtype == torch.float64, name
        assert_close(a, b, name)



@pytest.mark.parametrize("name,kwargs", CELLS, ids=CELL_IDS)
def test_cell_input_size_zero(name, kwargs):
    """input_size = 0: torch.nn computes the step from hx and the biases; fused_rnn once died
    with SIGFPE (a division by the input size in the layer setup)."""
    ref = getattr(nn, name)(0, H, **kwargs).double()
    fused = getattr(fused_rnn, name)(0, H, **kwargs).double()
    fused.load_state_dict(ref.state_dict())
    x = torch.randn(B, 0, dtype=torch.float64)
    for got, want in zip(*(out if isinstance(out, tuple) else (out,) for out in (fused(x), ref(x)))):
        assert_close(got, want, "output")
