"""The one skip mechanism, and the fixtures the op and module tests share.

A test that needs a GPU carries `@pytest.mark.cuda` (a device-generic check gets it from the
`cuda` entry of checks.DEVICES); `@pytest.mark.cuda(gpus=2)` asks for two. Without them it is
skipped here, and nowhere else: CPU tests never skip (docs/DESIGN.md §4)."""
import pytest
import torch

# The CUDA checks of `gpu_smoke` (bench/gpu_check.sh runs them first, in minutes): every op and
# dtype once against the reference, both IO paths, graph capture, a second stream, the modules,
# the regularizers' masks.
GPU_SMOKE = {
    "tests/test_ops_dispatch.py::test_extension_has_cuda_kernels",
    "tests/test_ops_numerics.py::test_float32_matches_reference",
    "tests/test_ops_numerics.py::test_float64_matches_reference",
    "tests/test_ops_numerics.py::test_low_precision_matches_reference",
    "tests/test_ops_numerics.py::test_vector_and_scalar_units_per_thread",
    "tests/test_ops_dispatch.py::test_cuda_graph_capture_and_replay",
    "tests/test_ops_dispatch.py::test_non_default_stream",
    "tests/test_modules_numerics.py::test_float32",
    "tests/test_modes_autocast.py::test_cells_return_torch_nn_dtypes",
    "tests/test_ops_masks.py::test_float32_matches_reference",
    "tests/test_ops_masks.py::test_single_step_zoneout_matches_reference",
}


def pytest_collection_modifyitems(config, items):
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    for item in items:
        if item.get_closest_marker("cuda") is not None and item.nodeid.split("[")[0] in GPU_SMOKE:
            item.add_marker(pytest.mark.gpu_smoke)
        mark = item.get_closest_marker("cuda")
        needed = mark.kwargs.get("gpus", 1) if mark is not None else 0
        if gpus < needed:
            reason = "needs a CUDA GPU" if needed == 1 else f"needs {needed} CUDA GPUs"
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(autouse=True)
def full_precision_float32():
    """float32 GEMMs in full precision on CUDA: TF32 off for cuBLAS (fused_rnn's GEMMs) and
    cuDNN (torch.nn's RNN), as the float32 tolerances of docs/DESIGN.md §3 assume. No effect on the CPU."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.fixture
def poison_buffers():
    """Every buffer the ops allocate starts as NaN, so an element a kernel forgets to write
    fails the comparison. The op test files use it for every test."""
    from fused_rnn import _ops

    _ops._C.testing.set_poison(True)
    yield
    _ops._C.testing.set_poison(False)


@pytest.fixture
def seeded():
    """The global generator seeded: the module tests draw their inputs from it."""
    torch.manual_seed(0)
