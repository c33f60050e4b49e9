"""Benchmark fused_rnn against torch.nn: ``python -m fused_rnn bench [options]``.

Both sides run in the same process, on the same device, with the same weights (the fused
module loads torch.nn's state_dict) and the same input tensors, following docs/DESIGN.md §5:

- every (case, mode) is warmed up on both sides, then timed in pairs whose order is drawn
  at random per pair, so slow drift (clocks, caches, other processes) hits both sides alike;
- the reported time is the median of the repeats; the ratio is torch.nn / fused_rnn
  (> 1 means fused_rnn is faster);
- on CUDA a pair of events brackets the region and is synchronized before reading;
- input sets are rotated when one set would fit in the last-level cache (L2 on CUDA);
- TF32 (CUDA, fp32) is set for both sides together and stated in every row.

Modes: ``fwd`` = inference (modules in eval(), under torch.no_grad()); ``fwdbwd`` = training
forward plus torch.autograd.backward with fixed random output gradients, producing the
gradients of the input, the initial states and every weight.

Each row also carries the relative difference of the fused result against torch.nn,
``‖fused − torch‖₂ / ‖torch‖₂`` computed in float64 (the largest over the outputs, and in
``fwdbwd`` also over every gradient), so a fast wrong kernel cannot hide, and, for
``fwdbwd``, the memory of both sides (CUDA: peak allocated above the pre-call baseline;
everywhere: the bytes autograd saves for backward).

Output: a table on stdout, a JSON file (environment + rows), a PNG plot of the ratio against
batch size and a Markdown copy of the table, see ``--out``.

The variants section (``--section variants``) times each variant of fused_rnn's modules
(``LSTM(peephole=True)``, ``LSTM(layer_norm=True)``, both, ``GRU(layer_norm=True)``) against
the same equations as a TorchScript cell loop and a plain Python loop, and against fused_rnn's
plain module of the same shape: four sides, three ratios. The regularizers section
(``--section regularizers``) times fused_rnn's regularizer options in training
(``LSTM(weight_drop=0.5)`` against AWD-LSTM's WeightDrop wrapper around torch.nn.LSTM,
``LSTM(num_layers=3, residual=True)`` against torch.nn layers with ``x + layer(x)``,
``LSTM(zoneout=0.1)`` and ``LSTM(recurrent_dropout=0.25)`` against a Python loop over
torch.nn.LSTMCell), and against the plain module: three sides per case, two ratios.

Modules: ``cases`` (the sweeps, ``Case``, ``build_cases``), ``pairing`` (``Pair``: both
modules and the input sets), ``decoder``, ``variants`` and ``regularizers`` (those sections'
pairs and models), ``multiside`` (what the variants and regularizers sections share: their
``Section``, ``MultiSidePair`` and its agreement check), ``checks`` (rel diff, saved bytes,
torch.nn's backend),
``timing`` (``measure``, ``run_case``, ``run``), ``tf32``, ``environment``, ``report``
(table, summary, files), ``plotting`` and ``cli`` (``parse_args``, ``main``).
"""
from .cases import (
    CELLS,
    MODE_LABEL,
    MODES,
    SHORT_BATCHES,
    STANDARD,
    SUSPECT_REL_DIFF,
    Case,
    build_cases,
    packed_lengths,
)
from .cli import main, parse_args, resolve_device, timing_from_args
from .environment import environment
from .pairing import Pair, fused_classes, torch_classes
from .plotting import plot
from .regularizers import REGULARIZERS, RegularizerPair
from .report import FORMAT, summary, table
from .tf32 import set_tf32
from .timing import measure, run, run_case
from .variants import VARIANTS, VariantPair

__all__ = [
    "CELLS", "FORMAT", "MODES", "MODE_LABEL", "REGULARIZERS", "SHORT_BATCHES", "STANDARD", "SUSPECT_REL_DIFF",
    "VARIANTS", "Case", "Pair", "RegularizerPair", "VariantPair", "build_cases", "environment", "fused_classes",
    "main", "measure", "packed_lengths", "parse_args", "plot", "resolve_device", "run", "run_case", "set_tf32",
    "summary", "table", "timing_from_args", "torch_classes",
]
