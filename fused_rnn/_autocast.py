"""The dtypes torch.nn's RNNs return under autocast, which the fused modules and cells return too.

Under ``torch.autocast`` the fused ops cast their floating arguments (but float64) to the
autocast dtype and run in it (csrc/autocast.h): GEMMs in bf16/fp16, pointwise math in fp32.
torch.nn returns different dtypes per module, because its kernels differ:

CPU
  * LSTM without projection on padded input, or on packed input whose sequences all have one
    length, runs oneDNN, whose autocast kernel casts every argument: output, h_n and c_n come
    back in the autocast dtype.
  * Every other module and every cell runs ATen's cell loop, in which only the GEMMs (linear)
    autocast; the pointwise math promotes with the state it updates. So a state becomes
    ``promote_types(autocast dtype, dtype of its initial value)`` where the update mixes the
    GEMM result with the previous state (LSTM's c and the h derived from it, GRU's h), and
    stays in the autocast dtype where it does not (Elman RNN, LSTM's projected h). The initial
    value is hx's or, for hx=None, torch.nn's zeros in input's dtype: float32 input keeps
    float32 states, low-precision input gets low-precision ones.
CUDA
  * Every module runs cuDNN, whose autocast wrapper runs in float16 whatever the autocast
    dtype: so do the fused modules (`region`).
  * Cells: ATen's cell autocast kernels cast every argument: all in the autocast dtype.

Where torch.nn keeps a state in float32, the fused op still runs in the autocast dtype and the
state is returned converted: within one call it is rounded to that dtype between steps.
"""
import contextlib

import torch

AUTOCAST = "autocast dtype"
PROMOTED = "promoted"  # promote_types(autocast dtype, dtype of the initial state)
FLOAT16 = "float16"

# kind -> the dtype rule of (h: output and h_n, or a cell's h; LSTM's c).
RULES = {
    "cpu": {
        "LSTM": (PROMOTED, PROMOTED),
        "LSTM, padded, no proj_size": (AUTOCAST, AUTOCAST),  # oneDNN
        "LSTM with proj_size": (AUTOCAST, PROMOTED),
        "GRU": (PROMOTED,),
        "RNN": (AUTOCAST,),
        "LSTMCell": (PROMOTED, PROMOTED),
        "GRUCell": (PROMOTED,),
        "RNNCell": (AUTOCAST,),
    },
    "cuda": {
        # cuDNN: every module, padded or packed, with or without proj_size.
        "LSTM": (FLOAT16, FLOAT16),
        "LSTM, padded, no proj_size": (FLOAT16, FLOAT16),
        "LSTM with proj_size": (FLOAT16, FLOAT16),
        "GRU": (FLOAT16,),
        "RNN": (FLOAT16,),
        "LSTMCell": (AUTOCAST, AUTOCAST),
        "GRUCell": (AUTOCAST,),
        "RNNCell": (AUTOCAST,),
    },
}


def autocast_dtype(device):
    """The autocast dtype in force for tensors on `device`; None outside autocast."""
    if device.type not in RULES or not torch.is_autocast_enabled(device.type):
        return None
    return torch.get_autocast_dtype(device.type)


def module_kind(module, batch_sizes):
    """The RULES key of a multi-layer module call (batch_sizes: None for padded input)."""
    if module.mode != "LSTM":
        return "GRU" if module.mode == "GRU" else "RNN"
    if module.proj_size > 0:
        return "LSTM with proj_size"
    return "LSTM, padded, no proj_size" if batch_sizes is None or _same_lengths(batch_sizes) else "LSTM"


def _same_lengths(batch_sizes):
    """torch.nn runs a packed LSTM whose sequences all have one length through oneDNN as padded
    input. (batch_sizes does not increase: all equal iff the first equals the last.) Under
    torch.compile this data-dependent test would break the graph: there packed input counts as
    of varied lengths."""
    return not torch.compiler.is_compiling() and bool(batch_sizes[0] == batch_sizes[-1])


def module_results(module, batch_sizes, device, initial_dtype, h_results, c_result=None):
    """as_torch_nn for a module call: unchanged outside autocast."""
    if autocast_dtype(device) is None:
        return h_results, c_result
    return as_torch_nn(module_kind(module, batch_sizes), device, initial_dtype, h_results, c_result)


def region(device):
    """Where the fused modules run under autocast: in float16 under CUDA autocast (as cuDNN),
    else in the autocast dtype in force (nothing to change)."""
    if device.type == "cuda" and autocast_dtype(device) not in (None, torch.float16):
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def as_torch_nn(kind, device, initial_dtype, h_results, c_result=None):
    """The results of a call as the fused ops returned them -- `h_results` (output and h_n, or a
    cell's h) and LSTM's `c_result` -- converted to the dtypes torch.nn returns under autocast,
    unchanged outside it. `initial_dtype`: the dtype of the initial state the rules promote with
    (c0's for LSTM, h0's otherwise; input's for hx=None). Returns (h_results, c_result)."""
    low = autocast_dtype(device)
    if low is None:
        return h_results, c_result
    want = {AUTOCAST: low, PROMOTED: torch.promote_types(low, initial_dtype), FLOAT16: torch.float16}
    h_dtype, *c_dtype = (want[rule] for rule in RULES[device.type][kind])

    def convert(result, dtype):
        # Only what the op computed in low precision: autocast leaves float64 calls alone.
        return result.to(dtype) if result.dtype in (low, torch.float16) else result

    h_results = tuple(convert(r, h_dtype) for r in h_results)
    return h_results, (c_result if c_result is None else convert(c_result, c_dtype[0]))
