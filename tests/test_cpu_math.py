"""The nonlinearities of the CPU pointwise passes (csrc/cpu/vec_math.h), at the CPU level this
process loaded (test_cpu_levels.py runs this file again under every lower level): float32
storage's tanh is Sleef's 3.5-ULP one, not ATen's, and bfloat16/float16 storage's our own
rational approximation, so their errors are checked here against float64, on a dense grid,
near zero, in the tails and for inf and NaN, as is every lane of a partial vector."""
import pytest
import torch

from fused_rnn import _ops

# float32 bounds: Sleef's u35 tanh promises 3.5 ULP, a relative error of at most 3.5 * 2^-23;
# sigmoid is 1 / (1 + exp(-x)) with ATen's 1-ULP exp, a few roundings more.
TANH_RTOL = 3.5 * 2 ** -23
SIGMOID_RTOL = 3e-7
# bfloat16/float16 storage: the rational tanh measured 3.2e-7 at most with FMA (AVX2, AVX-512)
# and 3.9e-7 in the scalar build (its fmadd rounds twice), 4.7e-8 on average, where the storage
# itself rounds to 2^-9 (bf16) or 2^-11 (fp16) relative.
REDUCED_TANH_RTOL = 4e-7
REDUCED_TANH_MEAN = 6e-8


def grid():
    dense = torch.linspace(-12, 12, 2_000_001, dtype=torch.float64)
    tiny = torch.logspace(-30, 0, 100_000, dtype=torch.float64)
    return torch.cat([dense, tiny, -tiny]).float()


def relative_error(got, want):
    return ((got.double() - want).abs() / want.abs().clamp_min(torch.finfo(torch.float32).tiny)).max().item()


def test_float32_tanh_relative_error():
    x = grid()
    assert relative_error(_ops._C.testing.nonlinearity("tanh", x), torch.tanh(x.double())) <= TANH_RTOL


def test_reduced_storage_tanh_relative_error():
    x = grid()
    got = _ops._C.testing.nonlinearity("tanh", x, reduced_storage=True).double()
    want = torch.tanh(x.double())
    errors = (got - want).abs() / want.abs().clamp_min(torch.finfo(torch.float32).tiny)
    assert errors.max().item() <= REDUCED_TANH_RTOL
    assert errors.mean().item() <= REDUCED_TANH_MEAN


def test_float32_sigmoid_relative_error():
    x = grid()
    assert relative_error(_ops._C.testing.nonlinearity("sigmoid", x), torch.sigmoid(x.double())) <= SIGMOID_RTOL


@pytest.mark.parametrize("dtype,reduced", [(torch.float32, False), (torch.float32, True), (torch.float64, False)],
                         ids=["f32", "f32-reduced-storage", "f64"])
@pytest.mark.parametrize("name", ["tanh", "sigmoid"])
def test_limits_and_nan(name, dtype, reduced):
    x = torch.tensor([float("inf"), -float("inf"), float("nan"), 0.0, -0.0, 40.0, -40.0], dtype=dtype)
    got = _ops._C.testing.nonlinearity(name, x, reduced_storage=reduced)
    want = getattr(torch, name)(x)
    torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("name", ["tanh", "sigmoid"])
def test_float64_matches_torch(name):
    x = torch.linspace(-20, 20, 100_003, dtype=torch.float64)
    torch.testing.assert_close(_ops._C.testing.nonlinearity(name, x), getattr(torch, name)(x), rtol=1e-15, atol=0)


@pytest.mark.parametrize("reduced", [False, True], ids=["f32", "reduced-storage"])
def test_tail_lanes(reduced):
    """Lengths that no vector width divides: the tail goes through the same function."""
    for n in range(1, 40):
        x = torch.linspace(-3, 3, n)
        got = _ops._C.testing.nonlinearity("tanh", x, reduced_storage=reduced)
        assert relative_error(got, torch.tanh(x.double())) <= (REDUCED_TANH_RTOL if reduced else TANH_RTOL)
