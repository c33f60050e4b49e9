"""The regularizers section: fused_rnn's regularizer options (fused_rnn/regularizers.py) in
training (fwd+bwd) against the way a user gets the same regularizer without us, on the same
weights and input sets. Three sides per case:

- ``fused``: fused_rnn's module with the option (``LSTM(I, H, weight_drop=0.5)``,
  ``LSTM(H, H, num_layers=3, residual=True)``, ``LSTM(I, H, zoneout=0.1)``,
  ``LSTM(I, H, recurrent_dropout=0.25)``);
- the baseline, what users write today:
  - ``awd`` (weight_drop): AWD-LSTM's ``WeightDrop`` wrapper (salesforce/awd-lstm-lm,
    weight_drop.py) around ``torch.nn.LSTM``, written here from its description (WeightDrop
    below);
  - ``torch`` (residual): one single-layer ``torch.nn.LSTM`` per layer, ``x + layer(x)`` from
    the second layer on (ResidualLayers below);
  - ``loop`` (zoneout, recurrent_dropout): a Python loop over one ``torch.nn.LSTMCell`` that
    draws the masks and applies them around the cell (CellLoop below);
- ``plain``: fused_rnn's module without the option (``LSTM(I, H)``, ``LSTM(H, H,
  num_layers=3)``), the same shape and weights: what the option costs over it.

Before the mode is timed, the fused side must agree with the baseline on the first
CHECK_STEPS steps of input set 0 (outputs, and every gradient: the input's, the initial
states', each weight's) within the dtype's tolerance (multiside.MultiSidePair.check); else the
row is an error and nothing is timed. The plain side computes other equations: timed, not
compared.

Weight drop, zoneout and recurrent dropout draw random masks, and the check compares the two
sides on the same ones: the global generator is seeded (the same seed) right before each
side's call, and during the check the baseline draws its masks as fused_rnn does
(``same_masks_as_fused``): WeightDrop with regularizers.weight_drop_masks, one mask per W_hh
before the wrapped module runs, as fused_rnn before any layer runs; CellLoop with
regularizers.recurrence_masks, all the steps' masks in one go before the loop, as fused_rnn
before its one layer runs. Nothing else in either call draws from the generator, so both
sides draw the same masks from the same state, and the check compares the outputs and the
gradients (WeightDrop's raw W_hh's, ``module.weight_hh_l0_raw.grad``, against fused_rnn's
``weight_hh_l0.grad``) exactly as for a deterministic module. A side that drew other masks
(another p, another seed, one draw more) fails the check: the streams matching is what it
verifies, and no side is given a mask explicitly. The timed calls draw the user's way
(F.dropout in WeightDrop, a fresh zoneout mask per step in CellLoop): masks of the same
distribution, at the user's cost.

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

SIDES = ("fused", "awd", "torch", "loop", "plain")  # the table's columns: a case has fused, its baseline, plain
SIDE_LABEL = {"fused": "fused", "awd": "AWD", "torch": "torch.nn", "loop": "LSTMCell loop", "plain": "plain"}
# The ratios of the medians, (numerator, denominator): "baseline" is the case's baseline side
# (awd, torch or loop); > 1 in the first = fused faster; the second is what the option costs
# over our plain module.
RATIOS = {"baseline_over_fused": ("baseline", "fused"), "fused_over_plain": ("fused", "plain")}
RATIO_LABEL = {"baseline_over_fused": "baseline/fused", "fused_over_plain": "fused/plain"}
RATIO_COLORS = {"baseline_over_fused": "tab:red", "fused_over_plain": "tab:gray"}
# The targets, reported and never asserted (speed is no test): fwd+bwd at the standard
# shape (T100 I=H=512 fp32) at B 64 and B 8.
TARGET_MODE, TARGET_BATCHES = "fwdbwd", (64, 8)
TARGETS = {"baseline_over_fused": (">=", 3.0), "fused_over_plain": ("<=", 1.2)}
WEIGHT_DROP = 0.5  # AWD-LSTM's wdrop
RESIDUAL_LAYERS = 3
ZONEOUT = 0.1  # for h and c alike (fused_rnn's one option sets both)
RECURRENT_DROPOUT = 0.25
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


class CellLoop(nn.Module):
    """Zoneout and recurrent dropout as a user writes them without us: a Python loop over one
    torch.nn.LSTMCell, called as a one-layer torch.nn.LSTM (x [T, B, I], (h0, c0) [1, B, H] ->
    output [T, B, H], (h_n, c_n) [1, B, H]).

    ``zoneout`` p: at each step a fresh mask for h and one for c (``torch.rand(B, H) < p``),
    ``h = m * h_prev + (1 - m) * h~`` (c likewise with its mask); in eval m = p.
    ``recurrent_dropout`` p: one mask per call, ``(torch.rand(B, H) < 1 - p) / (1 - p)``; the
    cell is given h * d (its c unchanged), zoneout keeps the undropped h_prev.

    ``same_masks_as_fused``: the agreement check draws all the steps' masks in one go as
    fused_rnn does (regularizers.recurrence_masks: the same masks for the same seed) and takes
    step t's rows; the timed calls always draw the user's way."""

    def __init__(self, input_size, hidden_size, zoneout=0.0, recurrent_dropout=0.0):
        super().__init__()
        self.cell = nn.LSTMCell(input_size, hidden_size)
        self.zoneout, self.recurrent_dropout = zoneout, recurrent_dropout
        self.same_masks_as_fused = False

    def _dropout_mask(self, x):
        """Recurrent dropout's mask for the whole call, or None when off."""
        if not (self.recurrent_dropout and self.training):
            return None
        keep = 1.0 - self.recurrent_dropout
        return (torch.rand(x.size(1), self.cell.hidden_size, device=x.device) < keep).to(x.dtype) / keep

    def _zoneout_masks(self, x):
        """Zoneout's (m_h, m_c) per step, each step's drawn as the loop reaches it; None when off."""
        for _ in range(x.size(0)):
            if not self.zoneout:
                yield None
            elif not self.training:
                yield self.zoneout, self.zoneout
            else:
                shape = (x.size(1), self.cell.hidden_size)
                m_h = (torch.rand(shape, device=x.device) < self.zoneout).to(x.dtype)
                m_c = (torch.rand(shape, device=x.device) < self.zoneout).to(x.dtype)
                yield m_h, m_c

    def _fused_masks(self, x):
        """What _dropout_mask and _zoneout_masks give, drawn as fused_rnn draws its one layer's:
        the whole sequence's zoneout masks (h's, then c's), then the dropout mask."""
        hidden = self.cell.hidden_size
        options = SimpleNamespace(zoneout=self.zoneout, recurrent_dropout=self.recurrent_dropout,
                                  training=self.training)
        masks = fused_regularizers.recurrence_masks(options, x, None, hidden, hidden, cell_state=True)
        zoneout = zip(masks["zoneout_h"], masks["zoneout_c"]) if self.zoneout else [None] * x.size(0)
        return masks.get("dropout_h"), zoneout

    def forward(self, x, hx):
        h, c = hx[0][0], hx[1][0]
        drop, zoneout = (self._fused_masks(x) if self.same_masks_as_fused
                         else (self._dropout_mask(x), self._zoneout_masks(x)))
        outputs = []
        for x_t, zone in zip(x, zoneout):
            h_new, c_new = self.cell(x_t, (h if drop is None else h * drop, c))
            if zone is not None:
                m_h, m_c = zone
                h_new, c_new = m_h * h + (1 - m_h) * h_new, m_c * c + (1 - m_c) * c_new
            h, c = h_new, c_new
            outputs.append(h)
        return torch.stack(outputs), (h[None], c[None])


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


def _cell_name(name):
    """weight_ih_l0 (the fused one-layer module's) -> cell.weight_ih (CellLoop's)."""
    return f"cell.{name.removesuffix('_l0')}"


def _uncell_name(name):
    """cell.weight_ih -> weight_ih_l0."""
    return f"{name.removeprefix('cell.')}_l0"


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


def _cell_loop(case, weights, place):
    """CellLoop with the case's options (fused_rnn's keywords are CellLoop's)."""
    loop = CellLoop(case.input_size, case.hidden, **regularizer_of(case).options).to(**place)
    loop.load_state_dict({_cell_name(k): v for k, v in weights.items()})
    return loop


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
    Regularizer("zoneout", "lstm", 1, {"zoneout": ZONEOUT}, "loop", _cell_loop, _uncell_name,
                "the LSTMCell loop (same seed)"),
    Regularizer("recurrent_dropout", "lstm", 1, {"recurrent_dropout": RECURRENT_DROPOUT}, "loop", _cell_loop,
                _uncell_name, "the LSTMCell loop (same seed)"),
)


def regularizer_of(case):
    return next(r for r in REGULARIZERS if (r.cell, r.name) == (case.cell, case.variant))


def _legend(section, timing_line, mem):
    return [
        (f"fused = fused_rnn with the regularizer; AWD = AWD-LSTM's WeightDrop wrapper around torch.nn.LSTM "
         f"(weight_drop, p {WEIGHT_DROP:g}); torch.nn = one torch.nn.LSTM per layer, x + layer(x) from the second "
         f"(residual); LSTMCell loop = a Python loop over torch.nn.LSTMCell drawing the masks (zoneout, p "
         f"{ZONEOUT:g}: a fresh mask per step for h and for c; recurrent_dropout, p {RECURRENT_DROPOUT:g}: one mask "
         "per sequence on h before W_hh); plain = fused_rnn without the regularizer, same shape and weights. "
         "Median ms of repeats; fwd+bwd (training) only, all weight gradients"),
        ("baseline/fused = the case's baseline (AWD, torch.nn or LSTMCell loop) ms / fused ms (> 1 = fused faster); "
         "fused/plain = fused ms / plain ms (the regularizer's cost). Targets, reported, never asserted: "
         f"{section.targets_text}"),
        timing_line,
        (f"rel diff = ||fused - baseline|| / ||baseline|| (float64, over outputs and every gradient, the raw "
         f"W_hh's included, on the first {CHECK_STEPS} steps; both sides' masks drawn fused_rnn's way under the same "
         "seed); above the dtype's tolerance the mode is an error, not timed"),
        f"memory (fwd+bwd, JSON only: <side>_mem_bytes): {mem}",
    ]


_CONFIG = {
    "sides": f"fused: fused_rnn with the regularizer (weight_drop: LSTM(I, H, weight_drop={WEIGHT_DROP:g}); "
             f"residual: LSTM(H, H, num_layers={RESIDUAL_LAYERS}, residual=True); zoneout: LSTM(I, H, "
             f"zoneout={ZONEOUT:g}); recurrent_dropout: LSTM(I, H, recurrent_dropout={RECURRENT_DROPOUT:g})); "
             "awd (weight_drop's baseline): AWD-LSTM's WeightDrop wrapper (salesforce/awd-lstm-lm weight_drop.py) "
             f"around torch.nn.LSTM, p {WEIGHT_DROP:g}; torch (residual's baseline): one torch.nn.LSTM per layer, "
             "x + layer(x) from the second layer on; loop (zoneout's and recurrent_dropout's baseline): a Python "
             "loop over one torch.nn.LSTMCell, zoneout with a fresh torch.rand(B, H) < p mask per step for h and "
             "for c (h = m * h_prev + (1 - m) * h~; eval m = p), recurrent dropout with one (torch.rand(B, H) < "
             "1 - p) / (1 - p) mask per call on the h given to the cell; plain: fused_rnn without the regularizer "
             "(same shape, the same weights). baseline (per row): the case's baseline side",
    "rel_diff": "||fused - baseline||_2 / ||baseline||_2 in float64 (rel_diff_fused), max over outputs + all "
                f"gradients (awd: the raw W_hh's) on the first {CHECK_STEPS} steps of input set 0, both sides "
                "called right after the same torch.manual_seed, the baseline drawing its masks as fused_rnn does "
                "(the same masks; its timed calls draw the user's way); above the dtype's tolerance the mode is "
                "an error and is not timed. plain is not compared",
    "ratio": "= baseline_over_fused: the headline ratio, under the other sections' key",
    "ratios": {"baseline_over_fused": "baseline (awd, torch or loop) median ms / fused median ms",
               "fused_over_plain": "fused median ms / plain median ms"},
    "targets": f"reported, never asserted: {targets_text(RATIO_LABEL, TARGETS, TARGET_MODE, TARGET_BATCHES)}",
}
# The section as the options, the report and the plot see it.
SECTION = Section(
    name="regularizers", kind="regularizer",
    scope=(f"times each regularizer in training at its own layers (weight_drop 1, residual {RESIDUAL_LAYERS}, "
           "zoneout 1, recurrent_dropout 1), unidirectional, on padded input, against AWD-LSTM's WeightDrop, "
           "torch.nn layers and an LSTMCell loop"),
    against="AWD-LSTM's WeightDrop / torch.nn layers / LSTMCell loop, plain module",
    sides=SIDES, side_label=SIDE_LABEL, ratios=RATIOS, ratio_label=RATIO_LABEL, ratio_colors=RATIO_COLORS,
    targets=TARGETS, config=_CONFIG, legend=_legend, reading="fused faster; in fused/plain: the regularizer slower",
    target_mode=TARGET_MODE, target_batches=TARGET_BATCHES, modes=("fwdbwd",))


@contextlib.contextmanager
def _masks_as_fused(baseline):
    """The baseline draws its masks as fused_rnn does while inside (WeightDrop, CellLoop:
    same_masks_as_fused); a baseline without masks is left as it is."""
    if not hasattr(baseline, "same_masks_as_fused"):
        yield
        return
    baseline.same_masks_as_fused = True
    try:
        yield
    finally:
        baseline.same_masks_as_fused = False


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
        """The same seed before each side's call of the check (the same masks); the
        generator's state outside the check is left as it was."""
        devices = [self.device.index if self.device.index is not None else torch.cuda.current_device()] \
            if self.device.type == "cuda" else []
        return _seeded(self._check_seed, devices)

    def check(self, mode):
        with _masks_as_fused(self.modules[self.regularizer.baseline]):
            return {"baseline": self.regularizer.baseline, **super().check(mode)}
