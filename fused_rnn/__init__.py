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
    """Bytes of CPU scratch memory (input projections, gate gradients) that the calling
    thread keeps between calls, so that the next call of the same size allocates nothing."""
    return _ops._C.scratch_bytes()


def release_cpu_scratch():
    """Frees the calling thread's kept CPU scratch memory; the next call allocates afresh."""
    _ops._C.release_scratch()
