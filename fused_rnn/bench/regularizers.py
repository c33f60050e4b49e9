"""The regularizers section: fused_rnn's regularizer options (fused_rnn/regularizers.py) in
training (fwd+bwd) against the way a user gets the same regularizer without us, on the same
weights and input sets. Three sides per case:

- ``fused``: fused_rnn's module with the option (``LSTM(I, H, weight_drop=0.5)``,
  ``LSTM(H, H, num_layers=3, residual=True)``);
- the baseline, what users write today:
  - ``awd`` (weight_drop): AWD-LSTM's ``WeightDrop`` wrapper (salesforce/awd-lstm-lm,
    weight_drop.py) around ``torch.nn.LSTM``, written here from its description (WeightDrop
    below);
  - ``torch`` (residual): one single-layer ``torch.nn.LSTM`` per layer, ``x + layer(x)`` from
    the second layer on (ResidualLayers below);
- ``plain``: fused_rnn's module without the option (``LSTM(I, H)``, ``LSTM(H, H,
  num_layers=3)``), the same shape and weights: what the option costs over it.

Before the mode is timed, the fused side must agree with the baseline on the first
CHECK_STEPS steps of input set 0 (outputs, and every gradient: the input's, the initial
states', each weight's) within the dtype's tolerance (multiside.MultiSidePair.check); else the
row is an error and nothing is timed. The plain side computes other equations: timed, not
compared.

Weight drop draws random masks, and the check compares the two sides on the same ones: the
global generator is seeded (the same seed) right before each side's call. fused_rnn draws one
mask per W_hh and call as ``F.dropout(torch.ones_like(W_hh), p, training=True)``
(regularizers.weight_drop_masks), layer after layer, before any layer runs; the WeightDrop
wrapper draws ``F.dropout(W_hh_raw, p, training)`` per W_hh, in the same order, before the
wrapped module runs; nothing else in either call draws from the generator. So both make one
Bernoulli draw of W_hh's shape and dtype per W_hh, in the same order, from the same state: the
same masks, scaled alike (0 or 1 / (1 - p)), and the check compares the outputs and the
gradient of the raw W_hh (fused_rnn's ``weight_hh_l0.grad``, the wrapper's
``module.weight_hh_l0_raw.grad``) exactly as for a deterministic module. A side that drew
another mask (another p, another seed, another order, one draw more) fails the check: the
streams matching is what it verifies, and no side is given a mask explicitly. (On CUDA both
calls go through the same dropout kernel on tensors of one shape; the check verifies it there
as well.)

A new regularizer is one ``Regularizer`` in REGULARIZERS: fused_rnn's option(s), its layers,
its baseline side (a side of SIDES) and how the baseline is built on the fused module's
weights, and how the baseline's parameter names map to the fused module's.
"""
from __future__ import annotations

import contextlib
import re
import warnings
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Callable, Dict

import torch
import torch.nn.functional as F
from torch import nn

from .. import regularizers as fused_regularizers
from .multiside import CHECK_STEPS, MultiSidePair, Section, SidesDisagree, targets_text  # noqa: F401 - re-exported
from .pairing import fused_classes, torch_classes

SIDES = ("fused", "awd", "torch", "plain")  # the table's columns: a case has fused, its baseline, plain
SIDE_LABEL = {"fused": "fused", "awd": "AWD", "torch": "torch.nn", "plain": "plain"}
# The ratios of the medians, (numerator, denominator): "baseline" is the case's baseline side
# (awd or torch); > 1 in the first = fused faster; the second is what the option costs over our
# plain module.
RATIOS = {"baseline_over_fused": ("baseline", "fused"), "fused_over_plain": ("fused", "plain")}
RATIO_LABEL = {"baseline_over_fused": "baseline/fused", "fused_over_plain": "fused/plain"}
RATIO_COLORS = {"baseline_over_fused": "tab:red", "fused_over_plain": "tab:gray"}
# The targets, reported and never asserted (speed is no test): fwd+bwd at the standard
# shape (T100 I=H=512 fp32) at B 64 and B 8.
TARGET_MODE, TARGET_BATCHES = "fwdbwd", (64, 8)
TARGETS = {"baseline_over_fused": (">=", 3.0), "fused_over_plain": ("<=", 1.2)}
WEIGHT_DROP = 0.5  # AWD-LSTM's wdrop
RESIDUAL_LAYERS = 3
# cuDNN's warning on every call of an RNN whose weights are not one flat buffer: the dropped
# W_hh never is, by design (AWD-LSTM's flatten_parameters workaround keeps it so).
_NOT_CONTIGUOUS = r"RNN module weights are not part of single contiguous chunk of memory"


def _no_flatten(*args, **kwargs):
    """AWD-LSTM's stand-in for flatten_parameters (its widget_demagnetizer_y2k_edition)."""


class WeightDrop(nn.Module):
    """AWD-LSTM's WeightDrop (salesforce/awd-lstm-lm, weight_drop.py), minimal: DropConnect on
    the named weights of a wrapped torch.nn RNN. Each named weight leaves the module's
    parameters and comes back as ``<name>_raw``; before every forward the wrapper sets
    ``module.<name> = F.dropout(<name>_raw, p, training)``, a new tensor that torch.nn's RNN
    picks up (RNNBase.__setattr__, _update_flat_weights) and through which the gradient reaches
    the raw parameter. As in AWD-LSTM, the wrapped RNN's flatten_parameters becomes a no-op
    (the usual workaround: on CUDA it would copy the weights into one flat buffer, where the
    dropped W_hh is not), and the wrapped module's forward is called directly. Left out: the
    variational option (one mask per row) and the message it prints.

    ``same_masks_as_fused``: the agreement check draws the masks as fused_rnn does
    (regularizers.weight_drop_masks: the same masks for the same seed) instead of F.dropout's
    bernoulli_, whose draws differ; the timed calls always use F.dropout, as AWD-LSTM does."""

    def __init__(self, module, weights, dropout):
        super().__init__()
        self.module, self.weights, self.dropout = module, list(weights), dropout
        self.same_masks_as_fused = False
        if isinstance(module, nn.RNNBase):
            module.flatten_parameters = _no_flatten
        for name in self.weights:
            w = getattr(module, name)
            del module._parameters[name]
            module.register_parameter(f"{name}_raw", nn.Parameter(w.data))

    def _setweights(self):
        raws = [getattr(self.module, f"{name}_raw") for name in self.weights]
        if self.same_masks_as_fused and self.training:
            masks = fused_regularizers.weight_drop_masks(SimpleNamespace(weight_drop=self.dropout), raws)
            dropped = [raw * mask for raw, mask in zip(raws, masks)]
        else:
            dropped = [F.dropout(raw, p=self.dropout, training=self.training) for raw in raws]
        for name, weight in zip(self.weights, dropped):
            setattr(self.module, name, weight)

    def forward(self, *args):
        self._setweights()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_NOT_CONTIGUOUS)
            return self.module.forward(*args)


class ResidualLayers(nn.Module):
    """Residual layers as a user stacks them without us: one single-layer torch.nn module per
    layer, each layer's input added to its output from the second layer on (``x = x +
    layer(x)``). The states in and out are a multi-layer module's ([L, B, H], (h, c) for an
    LSTM). ``residual = False`` leaves the additions out."""

    def __init__(self, rnn_class, input_size, hidden_size, num_layers):
        super().__init__()
        self.layers = nn.ModuleList(rnn_class(input_size if k == 0 else hidden_size, hidden_size)
                                    for k in range(num_layers))
        self.residual = True

    def forward(self, x, hx):
        pair = isinstance(hx, tuple)
        states = []
        for k, layer in enumerate(self.layers):
            out, state = layer(x, tuple(t[k:k + 1] for t in hx) if pair else hx[k:k + 1])
            x = x + out if self.residual and k > 0 else out
            states.append(state)
        return x, (tuple(torch.cat(s) for s in zip(*states)) if pair else torch.cat(states))


_LAYER_SUFFIX = re.compile(r"^(.*)_l(\d+)$")


def _stack_name(name):
    """weight_ih_l1 (the fused module's) -> layers.1.weight_ih_l0 (ResidualLayers')."""
    base, layer = _LAYER_SUFFIX.match(name).groups()
    return f"layers.{layer}.{base}_l0"


def _unstack_name(name):
    """layers.1.weight_ih_l0 -> weight_ih_l1."""
    _, layer, base = name.split(".", 2)
    return f"{base.removesuffix('_l0')}_l{layer}"


def _unwrap_name(name):
    """module.weight_hh_l0_raw (WeightDrop's) -> weight_hh_l0: its gradient is the raw W_hh's."""
    return name.removeprefix("module.").removesuffix("_raw")


def _awd(case, weights, place):
    """torch.nn's module of the case on the fused module's weights, in AWD-LSTM's WeightDrop
    on every layer's W_hh (the fused module drops each of them)."""
    rnn = torch_classes()[case.cell](case.input_size, case.hidden, num_layers=case.layers).to(**place)
    rnn.load_state_dict(weights)
    return WeightDrop(rnn, [f"weight_hh_l{k}" for k in range(case.layers)], WEIGHT_DROP)


def _residual_layers(case, weights, place):
    stack = ResidualLayers(torch_classes()[case.cell], case.input_size, case.hidden, case.layers).to(**place)
    stack.load_state_dict({_stack_name(k): v for k, v in weights.items()})
    return stack


@dataclass(frozen=True)
class Regularizer:
    """One regularizer case: fused_rnn's option(s) on its cell at its number of layers, and its
    baseline side."""
    name: str  # the case name's second token: "lstm weight_drop T100 B64 ..."
    cell: str  # "lstm": the modules, the initial states, --cells
    layers: int
    options: Dict[str, object]  # fused_rnn's keyword arguments
    baseline: str  # a side of SIDES
    build: Callable  # (case, the fused module's state_dict, {device, dtype}) -> the baseline module
    param_name: Callable[[str], str]  # a baseline parameter's name -> the fused module's
    reference_text: str  # "against <this>, fused 1.0e-01" in SidesDisagree's message


REGULARIZERS = (
    Regularizer("weight_drop", "lstm", 1, {"weight_drop": WEIGHT_DROP}, "awd", _awd, _unwrap_name,
                "AWD-LSTM's WeightDrop (same seed)"),
    Regularizer("residual", "lstm", RESIDUAL_LAYERS, {"residual": True}, "torch", _residual_layers, _unstack_name,
                "the torch.nn layers"),
)


def regularizer_of(case):
    return next(r for r in REGULARIZERS if (r.cell, r.name) == (case.cell, case.variant))


def _legend(section, timing_line, mem):
    return [
        (f"fused = fused_rnn with the regularizer; AWD = AWD-LSTM's WeightDrop wrapper around torch.nn.LSTM "
         f"(weight_drop, p {WEIGHT_DROP:g}); torch.nn = one torch.nn.LSTM per layer, x + layer(x) from the second "
         "(residual); plain = fused_rnn without the regularizer, same shape and weights. Median ms of repeats; "
         "fwd+bwd (training) only, all weight gradients"),
        ("baseline/fused = the case's baseline (AWD or torch.nn) ms / fused ms (> 1 = fused faster); "
         "fused/plain = fused ms / plain ms (the regularizer's cost). Targets, reported, never asserted: "
         f"{section.targets_text}"),
        timing_line,
        (f"rel diff = ||fused - baseline|| / ||baseline|| (float64, over outputs and every gradient, the raw "
         f"W_hh's included, on the first {CHECK_STEPS} steps; both sides' weight-drop masks drawn under the same "
         "seed); above the dtype's tolerance the mode is an error, not timed"),
        f"memory (fwd+bwd, JSON only: <side>_mem_bytes): {mem}",
    ]


_CONFIG = {
    "sides": f"fused: fused_rnn with the regularizer (weight_drop: LSTM(I, H, weight_drop={WEIGHT_DROP:g}); "
             f"residual: LSTM(H, H, num_layers={RESIDUAL_LAYERS}, residual=True)); awd (weight_drop's baseline): "
             "AWD-LSTM's WeightDrop wrapper (salesforce/awd-lstm-lm weight_drop.py) around torch.nn.LSTM, "
             f"p {WEIGHT_DROP:g}; torch (residual's baseline): one torch.nn.LSTM per layer, x + layer(x) from the "
             "second layer on; plain: fused_rnn without the regularizer (same shape, the same weights). "
             "baseline (per row): the case's baseline side",
    "rel_diff": "||fused - baseline||_2 / ||baseline||_2 in float64 (rel_diff_fused), max over outputs + all "
                f"gradients (awd: the raw W_hh's) on the first {CHECK_STEPS} steps of input set 0, both sides "
                "called right after the same torch.manual_seed (the same weight-drop masks); above the dtype's "
                "tolerance the mode is an error and is not timed. plain is not compared",
    "ratio": "= baseline_over_fused: the headline ratio, under the other sections' key",
    "ratios": {"baseline_over_fused": "baseline (awd or torch) median ms / fused median ms",
               "fused_over_plain": "fused median ms / plain median ms"},
    "targets": f"reported, never asserted: {targets_text(RATIO_LABEL, TARGETS, TARGET_MODE, TARGET_BATCHES)}",
}
# The section as the options, the report and the plot see it.
SECTION = Section(
    name="regularizers", kind="regularizer",
    scope=(f"times each regularizer in training at its own layers (weight_drop 1, residual {RESIDUAL_LAYERS}), "
           "unidirectional, on padded input, against AWD-LSTM's WeightDrop and torch.nn layers"),
    against="AWD-LSTM's WeightDrop / torch.nn layers, plain module", sides=SIDES, side_label=SIDE_LABEL,
    ratios=RATIOS, ratio_label=RATIO_LABEL, ratio_colors=RATIO_COLORS, targets=TARGETS, config=_CONFIG,
    legend=_legend, reading="fused faster; in fused/plain: the regularizer slower", target_mode=TARGET_MODE,
    target_batches=TARGET_BATCHES, modes=("fwdbwd",))


@contextlib.contextmanager
def _seeded(seed, devices):
    """torch.manual_seed(seed) inside torch.random.fork_rng: the generators' states come back after."""
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


class RegularizerPair(MultiSidePair):
    """Pair's interface over the three sides of a regularizer case (fused, its baseline,
    plain); the input sets are the case's multi-layer module's (x [T, B, I], h0 (c0) [L, B, H])."""

    section, compared = SECTION, ("fused",)

    @property
    def regularizer(self):
        return regularizer_of(self.case)

    @property
    def sides(self):
        return ("fused", self.regularizer.baseline, "plain")

    @property
    def ratios(self):
        baseline = self.regularizer.baseline
        return {"baseline_over_fused": (baseline, "fused"), "fused_over_plain": ("fused", "plain"),
                "ratio": (baseline, "fused")}  # "ratio": the headline

    @property
    def reference(self):
        return self.regularizer.baseline

    @property
    def reference_text(self):
        return self.regularizer.reference_text

    def _build_modules(self, candidate, seed):
        """The fused module draws the weights (torch.nn's init, on the CPU: the same values on
        every device); the baseline and the plain module load them."""
        case, reg = self.case, self.regularizer
        place = {"device": self.device, "dtype": self.dtype}
        self._check_seed = seed
        torch.manual_seed(seed)
        make = fused_classes()[case.cell]
        fused = make(case.input_size, case.hidden, num_layers=case.layers, **reg.options).to(**place)
        plain = make(case.input_size, case.hidden, num_layers=case.layers).to(**place)
        weights = fused.state_dict()
        plain.load_state_dict(weights)
        return {"fused": fused, reg.baseline: reg.build(case, weights, place), "plain": plain}

    def _param_name(self, side, name):
        return self.regularizer.param_name(name) if side == self.regularizer.baseline else name

    def _side_call(self, side):
        """The same seed before each side's call of the check (the same weight-drop masks); the
        generator's state outside the check is left as it was."""
        devices = [self.device.index if self.device.index is not None else torch.cuda.current_device()] \
            if self.device.type == "cuda" else []
        return _seeded(self._check_seed, devices)

    def check(self, mode):
        baseline = self.modules[self.regularizer.baseline]
        same = isinstance(baseline, WeightDrop)
        if same:
            baseline.same_masks_as_fused = True
        try:
            return {"baseline": self.regularizer.baseline, **super().check(mode)}
        finally:
            if same:
                baseline.same_masks_as_fused = False
