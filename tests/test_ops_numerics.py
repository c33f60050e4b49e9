"""The registered ops against the float64 reference (fused_rnn.reference) on every device:
outputs and every gradient over the grid of cells and options in float64, float32, float16
and bfloat16, empty and tiny sizes, and inference without a workspace. On CUDA also: against
the CPU op, over memory the caching allocator poisoned, both IO paths of the pointwise
kernels, and more rows than one grid dimension holds."""
import pytest
import torch

from fused_rnn import _ops, functional, reference

from checks import DEVICES, DTYPE_IDS, assert_close
from op_cases import (
    CELLS,
    GRID,
    GRID_IDS,
    LOW_PRECISION,
    LOW_PRECISION_GRADS_UNCHECKED,
    check_against_reference,
    compare,
    make_case,
    nn_scaled,
)

pytestmark = pytest.mark.usefixtures("poison_buffers")

# The float32 and low-precision sizes: H = 37 ends in a partial SIMD vector (CPU) and is no
# multiple of a CUDA thread's units.
SIZES = dict(H=37, I=11, B=4)


@pytest.mark.parametrize("cell,bias,packed,reverse", GRID, ids=GRID_IDS)
@pytest.mark.parametrize("device", DEVICES)
def test_float64_matches_reference(device, cell, bias, packed, reverse):
    check_against_reference(make_case(cell, bias=bias, packed=packed, reverse=reverse, device=device))


@pytest.mark.parametrize("cell,bias,packed,reverse", GRID, ids=GRID_IDS)
@pytest.mark.parametrize("device", DEVICES)
def test_float32_matches_reference(device, cell, bias, packed, reverse):
    check_against_reference(make_case(cell, bias=bias, packed=packed, reverse=reverse, dtype=torch.float32,
                                      device=device, **SIZES))


@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=DTYPE_IDS.get)
@pytest.mark.parametrize("cell,bias,packed,reverse", GRID, ids=GRID_IDS)
@pytest.mark.parametrize("device", DEVICES)
def test_low_precision_matches_reference(device, cell, bias, packed, reverse, dtype):
    """float16 / bfloat16 storage, float32 math in the pointwise pass, ATen's GEMMs."""
    case = nn_scaled(make_case(cell, bias=bias, packed=packed, reverse=reverse, dtype=dtype, device=device,
                               **SIZES))
    check_against_reference(case, check_grads=cell not in LOW_PRECISION_GRADS_UNCHECKED)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=DTYPE_IDS.get)
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("device", DEVICES)
def test_empty_batch_matches_reference(device, cell, dtype):
    """B = 0: steps of zero rows run nothing, the results have the reference's shapes, and
    every weight gradient is a sum over no rows: exactly zero."""
    case = make_case(cell, dtype=dtype, device=device, T=3, B=0, I=4, H=5)
    outputs, gradients = compare(case)
    for fused, ref in outputs + gradients:
        assert fused.shape == ref.shape and fused.dtype == dtype and fused.device == case.input.device
        assert torch.equal(fused.cpu().double(), ref)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("device", DEVICES)
def test_tiny_sizes(device, cell):
    check_against_reference(make_case(cell, dtype=torch.float32, device=device, T=1, B=1, I=1, H=1, P=1))


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("device", DEVICES)
def test_inference_without_workspace(device, cell):
    case = make_case(cell, packed=True, reverse=True, dtype=torch.float32, device=device, H=37, I=11,
                     requires_grad=False)
    with torch.no_grad():
        outs = case.run(functional)
    ref_case = case.with_leaves([t.double().cpu() for t in case.leaves()])
    for i, (a, b) in enumerate(zip(outs, ref_case.run(reference))):
        assert a.dtype == torch.float32
        assert_close(a, b, f"output {i}")


# ---- CUDA only: what has no CPU counterpart -------------------------------------------------

@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("cell,bias,packed,reverse", GRID, ids=GRID_IDS)
def test_cuda_matches_cpu(cell, bias, packed, reverse, dtype):
    kw = dict(bias=bias, packed=packed, reverse=reverse, dtype=dtype, **SIZES)
    cpu, gpu = make_case(cell, **kw), make_case(cell, device="cuda", **kw)
    cpu_out, gpu_out = cpu.run(functional), gpu.run(functional)
    g = torch.Generator().manual_seed(2)
    grad_out = [torch.randn(o.shape, generator=g, dtype=dtype) for o in cpu_out]
    cpu_grads = torch.autograd.grad(cpu_out, cpu.leaves(), grad_out)
    gpu_grads = torch.autograd.grad(gpu_out, gpu.leaves(), [t.cuda() for t in grad_out])
    for i, (a, b) in enumerate(zip([*gpu_out, *gpu_grads], [*cpu_out, *cpu_grads])):
        assert a.device.type == "cuda" and a.dtype == b.dtype
        assert_close(a, b, f"result {i}")


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


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("cell", CELLS)
def test_outputs_fully_written_over_poisoned_allocator(cell, dtype):
    """Without the driver's own poisoning: memory reused from the caching allocator is NaN."""
    _ops._C.testing.set_poison(False)
    case = nn_scaled(make_case(cell, packed=True, reverse=True, dtype=dtype, device="cuda", **SIZES))
    _poison_caching_allocator()
    check_against_reference(case, check_grads=dtype == torch.float32 or cell not in LOW_PRECISION_GRADS_UNCHECKED)


@pytest.mark.cuda
@pytest.mark.parametrize("cell", ["gru", "rnn_tanh"])
def test_more_rows_than_one_grid_dimension(cell):
    """B = 70000 rows of H = 256 need more than 65535 blocks along rows: the kernels' grid-stride
    loop over rows covers the rest (the loop is the same for every cell)."""
    check_against_reference(nn_scaled(make_case(cell, dtype=torch.float32, device="cuda", T=2, B=70_000, I=2,
                                                H=256)))


# A thread owns 16 bytes of consecutive units (VectorIO in csrc/cuda/pointwise.cu) when H and
# every pointer and row stride of the step allow it: H = 40 does for every dtype (4 float,
# 2 double, 8 half per thread); a bias that is a view at an odd offset makes the step fall
# back to one unit per thread. tests/cuda_host_check.cu checks the same IO on the host.
@pytest.mark.cuda
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
    check_against_reference(case, check_grads=not (low and cell in LOW_PRECISION_GRADS_UNCHECKED))


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("device", DEVICES)
def test_input_size_zero_matches_reference(device, cell, packed):
    """input_size = 0 is valid (torch.nn accepts it: the gates come from h and the biases); the
    layer setup once divided by it (SIGFPE)."""
    check_against_reference(make_case(cell, packed=packed, device=device, I=0))


@pytest.mark.parametrize("device", DEVICES)
def test_relu_gradient_passes_nan_as_torch_does(device):
    """A NaN pre-activation: torch.relu keeps it and threshold_backward passes the gradient
    (only result <= 0 gives 0); the fused relu once gave 0 there and hid the NaN."""
    case = make_case("rnn_relu", device=device)
    x = case.input.detach().clone()
    x[1, 2, 0] = float("nan")
    case = case.with_leaves([x.requires_grad_(), *case.leaves()[1:]])
    outputs, gradients = compare(case)
    for fused, ref in outputs + gradients:
        assert torch.isnan(fused).any() or not torch.isnan(ref).any()
        torch.testing.assert_close(fused.cpu(), ref, equal_nan=True, rtol=1e-10, atol=1e-10)
