"""fused_rnn: LSTM, GRU and Elman RNN with fused C++/CUDA kernels.

Drop-in replacements for ``torch.nn.LSTM/GRU/RNN`` and their cells, plus the functional
single-layer ops they are built from (``fused_rnn.functional``) and the pure-PyTorch
reference every kernel is tested against (``fused_rnn.reference``).
"""
__version__ = "0.1.0"

# _ops loads the compiled extension and registers the ops (functional and rnn use them).
from . import _ops, functional, reference, tbptt
from .convert import to_fused, to_torch
from .rnn import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell

__all__ = ["functional", "reference", "tbptt", "__version__",
           "LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell", "to_fused", "to_torch",
           "cpu_scratch_bytes", "release_cpu_scratch"]


def cpu_scratch_bytes():
    """Bytes of CPU memory kept between calls so that the next call of the same size gets
    memory it has touched already: the calling thread's scratch (input projections, gate
    gradients) and the process's blocks for the ops' buffers of 256 KiB and more (at most
    256 MiB; kept when their tensors die)."""
    return _ops._C.scratch_bytes()


def release_cpu_scratch():
    """Frees the calling thread's kept CPU scratch memory and the kept blocks; the next call
    allocates afresh."""
    _ops._C.release_scratch()
