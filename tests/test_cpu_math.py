"""The nonlinearities of the CPU pointwise passes (csrc/cpu/vec_math.h), at the CPU level this
process loaded (test_cpu_levels.py runs this file again under every lower level): float32's
tanh is Sleef's 3.5-ULP one, not ATen's, so its error is checked here against float64, on a
dense grid, near zero, in the tails and for inf and NaN, as is every lane of a partial vector."""
import pytest
import torch

from fused_rnn import _ops

# float32 bounds: Sleef's u35 tanh promises 3.5 ULP, a relative error of at most 3.5 * 2^-23;
# sigmoid is 1 / (1 + exp(-x)) with ATen's 1-ULP exp, a few roundings more.
TANH_RTOL = 3.5 * 2 ** -23
SIGMOID_RTOL = 3e-7


def grid():
    dense = torch.linspace(-12, 12, 2_000_001, dtype=torch.float64)
    tiny = torch.logspace(-30, 0, 100_000, dtype=torch.float64)
    return torch.cat([dense, tiny, -tiny]).float()


def relative_error(got, want):
    return ((got.double() - want).abs() / want.abs().clamp_min(torch.finfo(torch.float32).tiny)).max().item()


def test_float32_tanh_relative_error():
    x = grid()
    assert relative_error(_ops._C.testing.nonlinearity("tanh", x), torch.tanh(x.double())) <= TANH_RTOL


def test_float32_sigmoid_relative_error():
    x = grid()
    assert relative_error(_ops._C.testing.nonlinearity("sigmoid", x), torch.sigmoid(x.double())) <= SIGMOID_RTOL


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", ["tanh", "sigmoid"])
def test_limits_and_nan(name, dtype):
    x = torch.tensor([float("inf"), -float("inf"), float("nan"), 0.0, -0.0, 40.0, -40.0], dtype=dtype)
    got = _ops._C.testing.nonlinearity(name, x)
    want = getattr(torch, name)(x)
    torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("name", ["tanh", "sigmoid"])
def test_float64_matches_torch(name):
    x = torch.linspace(-20, 20, 100_003, dtype=torch.float64)
    torch.testing.assert_close(_ops._C.testing.nonlinearity(name, x), getattr(torch, name)(x), rtol=1e-15, atol=0)


def test_tail_lanes():
    """Lengths that no vector width divides: the tail goes through the same function."""
    for n in range(1, 40):
        x = torch.linspace(-3, 3, n)
        got = _ops._C.testing.nonlinearity("tanh", x)
        assert relative_error(got, torch.tanh(x.double())) <= TANH_RTOL
