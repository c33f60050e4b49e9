"""The variants section: each variant of fused_rnn's modules (the peephole LSTM, the
layer-normalized LSTM with and without peepholes, the layer-normalized GRU) against the same
equations written the way a user would without us, on the same weights and input sets. Four
sides per case:

- ``fused``: fused_rnn's module with the variant (``LSTM(I, H, peephole=True)``,
  ``LSTM(I, H, layer_norm=True)``, ``LSTM(I, H, peephole=True, layer_norm=True)``,
  ``GRU(I, H, layer_norm=True)``);
- ``torchscript``: a loop over time calling a cell, both scripted with torch.jit.script, in the
  style of PyTorch's benchmarks/fastrnns/custom_lstms.py (the cell holds the parameters, the
  layer loops over ``input.unbind(0)``): what a user writes for a custom cell today;
- ``python``: the same loop in plain Python over an nn.Module cell written with torch ops;
- ``plain``: fused_rnn's module without the variant (``LSTM(I, H)``), the same shape and the
  same torch.nn weights: what the variant costs over the cell it extends.

Before a mode is timed, the fused and the TorchScript sides must agree with the Python loop on
input set 0 (outputs, and in fwd+bwd every gradient) within the dtype's tolerance; if they do
not, the row is an error and nothing is timed, so the ratios never compare a fast wrong
result. The variant's own parameters are drawn before the sides load them (γ around 1, β and
the peepholes small): at the modules' init (γ ones, β zeros) a side that ignored them would
agree. The plain side computes other equations: it is timed, not compared.

A new variant is one ``Variant`` in VARIANTS: its fused module, a TorchScript cell and a Python
cell whose parameters are named like the fused module's without the ``_l0`` suffix (they load
its state_dict), and, for a cell whose state is not LSTM's (h, c), a scripted layer typed for it
(ScriptGRULayer: one Tensor).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import partial
from typing import Callable, List, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import GRU, LSTM
from .multiside import CHECK_STEPS, MultiSidePair, Section, SidesDisagree, targets_text  # noqa: F401 - re-exported

SIDES = ("fused", "torchscript", "python", "plain")
SIDE_LABEL = {"fused": "fused", "torchscript": "TorchScript", "python": "Python", "plain": "plain"}
REFERENCE, COMPARED = "python", ("fused", "torchscript")  # the equations as a user writes them
# The ratios of the medians, (numerator, denominator): > 1 in the first two = fused faster;
# the third is what the variant costs over our plain module (the 1.35x bound).
RATIOS = {"torchscript_over_fused": ("torchscript", "fused"), "python_over_fused": ("python", "fused"),
          "fused_over_plain": ("fused", "plain")}
RATIO_LABEL = {"torchscript_over_fused": "TS/fused", "python_over_fused": "Py/fused",
               "fused_over_plain": "fused/plain"}
# The targets, reported and never asserted (speed is no test): fwd+bwd at the standard
# shape (T100 I=H=512 fp32) at B 64 and B 8.
TARGET_MODE, TARGET_BATCHES = "fwdbwd", (64, 8)
TARGETS = {"torchscript_over_fused": (">=", 5.0), "fused_over_plain": ("<=", 1.35)}
RATIO_COLORS = {"torchscript_over_fused": "tab:red", "python_over_fused": "tab:purple",
                "fused_over_plain": "tab:gray"}


def _lstm_parameters(cell, input_size, hidden_size, peephole, layer_norm):
    """An LSTM cell's parameters under the fused module's names (without ``_l0``); weight_ch
    is None without peepholes (TorchScript compiles the branches on it away)."""
    cell.hidden_size = hidden_size
    cell.weight_ih = nn.Parameter(torch.empty(4 * hidden_size, input_size))
    cell.weight_hh = nn.Parameter(torch.empty(4 * hidden_size, hidden_size))
    cell.bias_ih = nn.Parameter(torch.empty(4 * hidden_size))
    cell.bias_hh = nn.Parameter(torch.empty(4 * hidden_size))
    cell.weight_ch = nn.Parameter(torch.empty(3 * hidden_size)) if peephole else None
    if layer_norm:
        cell.ln_weight_ih = nn.Parameter(torch.empty(4 * hidden_size))
        cell.ln_weight_hh = nn.Parameter(torch.empty(4 * hidden_size))
        cell.ln_weight_c = nn.Parameter(torch.empty(hidden_size))
        cell.ln_bias_c = nn.Parameter(torch.empty(hidden_size))


def _gru_parameters(cell, input_size, hidden_size):
    """The layer-normalized GRU cell's parameters under the fused module's names."""
    cell.hidden_size = hidden_size
    cell.weight_ih = nn.Parameter(torch.empty(3 * hidden_size, input_size))
    cell.weight_hh = nn.Parameter(torch.empty(3 * hidden_size, hidden_size))
    cell.bias_ih = nn.Parameter(torch.empty(3 * hidden_size))
    cell.bias_hh = nn.Parameter(torch.empty(3 * hidden_size))
    cell.ln_weight_ih = nn.Parameter(torch.empty(3 * hidden_size))
    cell.ln_weight_hh = nn.Parameter(torch.empty(3 * hidden_size))


class ScriptPeepholeLSTMCell(nn.Module):
    """custom_lstms.py's LSTMCell with peepholes, as written for TorchScript: a typed forward,
    torch.mm on the transposed weights, the state in and out as a tuple."""

    def __init__(self, input_size, hidden_size):
        super().__init__()
        _lstm_parameters(self, input_size, hidden_size, peephole=True, layer_norm=False)

    def forward(self, input: Tensor, state: Tuple[Tensor, Tensor]) -> Tuple[Tensor, Tuple[Tensor, Tensor]]:
        hx, cx = state
        gates = (torch.mm(input, self.weight_ih.t()) + self.bias_ih
                 + torch.mm(hx, self.weight_hh.t()) + self.bias_hh)
        ingate, forgetgate, cellgate, outgate = gates.chunk(4, 1)
        w_ci, w_cf, w_co = self.weight_ch.chunk(3, 0)
        ingate = torch.sigmoid(ingate + w_ci * cx)
        forgetgate = torch.sigmoid(forgetgate + w_cf * cx)
        cellgate = torch.tanh(cellgate)
        cy = (forgetgate * cx) + (ingate * cellgate)
        outgate = torch.sigmoid(outgate + w_co * cy)
        hy = outgate * torch.tanh(cy)
        return hy, (hy, cy)


class ScriptLSTMLayer(nn.Module):
    """custom_lstms.py's LSTMLayer: one cell call per time step over ``input.unbind(0)``, the
    outputs stacked. Typed for an (h, c) state (a GRU cell's is one Tensor: ScriptGRULayer)."""

    def __init__(self, cell):
        super().__init__()
        self.cell = cell

    def forward(self, input: Tensor, state: Tuple[Tensor, Tensor]) -> Tuple[Tensor, Tuple[Tensor, Tensor]]:
        inputs = input.unbind(0)
        outputs = torch.jit.annotate(List[Tensor], [])
        for i in range(len(inputs)):
            out, state = self.cell(inputs[i], state)
            outputs += [out]
        return torch.stack(outputs), state


class ScriptLayerNormLSTMCell(nn.Module):
    """custom_lstms.py's LayerNormLSTMCell, with peepholes where ``peephole``. Two differences
    from it, both fused_rnn's equations: the LN rows are F.layer_norm calls on parameters named
    like the fused module's (custom_lstms.py's nn.LayerNorm modules have their own names and a β
    in the gate rows, where the cell biases act instead), and the state carries c', not LN(c').
    F.layer_norm's LN is fused_rnn's: biased variance, eps 1e-5 inside the square root."""

    def __init__(self, input_size, hidden_size, peephole=False):
        super().__init__()
        _lstm_parameters(self, input_size, hidden_size, peephole, layer_norm=True)

    def forward(self, input: Tensor, state: Tuple[Tensor, Tensor]) -> Tuple[Tensor, Tuple[Tensor, Tensor]]:
        hx, cx = state
        # The cell biases go in as LN's β: LN(v; γ) + b in one call.
        igates = F.layer_norm(torch.mm(input, self.weight_ih.t()), [4 * self.hidden_size], self.ln_weight_ih,
                              self.bias_ih, 1e-5)
        hgates = F.layer_norm(torch.mm(hx, self.weight_hh.t()), [4 * self.hidden_size], self.ln_weight_hh,
                              self.bias_hh, 1e-5)
        ingate, forgetgate, cellgate, outgate = (igates + hgates).chunk(4, 1)
        weight_ch = self.weight_ch
        # One branch that uses all three chunks: TorchScript's autodiff of a chunk with an unused
        # output (``w_ci, w_cf, _``) returns a gradient of the wrong size once the graph is
        # optimized (from the second fwd+bwd call on).
        if weight_ch is not None:
            w_ci, w_cf, w_co = weight_ch.chunk(3, 0)
            ingate = ingate + w_ci * cx
            forgetgate = forgetgate + w_cf * cx
            cy = torch.sigmoid(forgetgate) * cx + torch.sigmoid(ingate) * torch.tanh(cellgate)
            outgate = outgate + w_co * cy  # the output gate sees c'
        else:
            cy = torch.sigmoid(forgetgate) * cx + torch.sigmoid(ingate) * torch.tanh(cellgate)
        hy = torch.sigmoid(outgate) * torch.tanh(
            F.layer_norm(cy, [self.hidden_size], self.ln_weight_c, self.ln_bias_c, 1e-5))
        return hy, (hy, cy)


class ScriptLayerNormGRUCell(nn.Module):
    """The layer-normalized GRU cell for TorchScript (gate order r|z|n; b_hn inside r * (...),
    as in torch.nn.GRU): the state is one Tensor, in and out."""

    def __init__(self, input_size, hidden_size):
        super().__init__()
        _gru_parameters(self, input_size, hidden_size)

    def forward(self, input: Tensor, state: Tensor) -> Tuple[Tensor, Tensor]:
        igates = F.layer_norm(torch.mm(input, self.weight_ih.t()), [3 * self.hidden_size], self.ln_weight_ih,
                              self.bias_ih, 1e-5)
        hgates = F.layer_norm(torch.mm(state, self.weight_hh.t()), [3 * self.hidden_size], self.ln_weight_hh,
                              self.bias_hh, 1e-5)
        i_r, i_z, i_n = igates.chunk(3, 1)
        h_r, h_z, h_n = hgates.chunk(3, 1)
        resetgate = torch.sigmoid(i_r + h_r)
        updategate = torch.sigmoid(i_z + h_z)
        newgate = torch.tanh(i_n + resetgate * h_n)
        hy = (1 - updategate) * newgate + updategate * state
        return hy, hy


class ScriptGRULayer(nn.Module):
    """ScriptLSTMLayer typed for a GRU cell's state: one Tensor."""

    def __init__(self, cell):
        super().__init__()
        self.cell = cell

    def forward(self, input: Tensor, state: Tensor) -> Tuple[Tensor, Tensor]:
        inputs = input.unbind(0)
        outputs = torch.jit.annotate(List[Tensor], [])
        for i in range(len(inputs)):
            out, state = self.cell(inputs[i], state)
            outputs += [out]
        return torch.stack(outputs), state


class PythonPeepholeLSTMCell(nn.Module):
    """The peephole LSTM step as a user writes it in eager PyTorch (gate order i|f|g|o)."""

    def __init__(self, input_size, hidden_size):
        super().__init__()
        _lstm_parameters(self, input_size, hidden_size, peephole=True, layer_norm=False)

    def forward(self, x, state):
        h, c = state
        i, f, g, o = (F.linear(x, self.weight_ih, self.bias_ih) + F.linear(h, self.weight_hh, self.bias_hh)).chunk(4, 1)
        w_ci, w_cf, w_co = self.weight_ch.chunk(3)
        c = torch.sigmoid(f + w_cf * c) * c + torch.sigmoid(i + w_ci * c) * torch.tanh(g)
        h = torch.sigmoid(o + w_co * c) * torch.tanh(c)
        return h, (h, c)


class PythonLayerNormLSTMCell(nn.Module):
    """The layer-normalized LSTM step (peepholes where ``peephole``) in eager PyTorch."""

    def __init__(self, input_size, hidden_size, peephole=False):
        super().__init__()
        _lstm_parameters(self, input_size, hidden_size, peephole, layer_norm=True)

    def forward(self, x, state):
        h, c = state
        n = 4 * self.hidden_size
        gates = (F.layer_norm(F.linear(x, self.weight_ih), (n,), self.ln_weight_ih, self.bias_ih, 1e-5)
                 + F.layer_norm(F.linear(h, self.weight_hh), (n,), self.ln_weight_hh, self.bias_hh, 1e-5))
        i, f, g, o = gates.chunk(4, 1)
        if self.weight_ch is not None:
            w_ci, w_cf, w_co = self.weight_ch.chunk(3)
            i, f = i + w_ci * c, f + w_cf * c
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        if self.weight_ch is not None:
            o = o + w_co * c
        h = torch.sigmoid(o) * torch.tanh(F.layer_norm(c, (self.hidden_size,), self.ln_weight_c, self.ln_bias_c,
                                                       1e-5))
        return h, (h, c)


class PythonLayerNormGRUCell(nn.Module):
    """The layer-normalized GRU step in eager PyTorch (gate order r|z|n)."""

    def __init__(self, input_size, hidden_size):
        super().__init__()
        _gru_parameters(self, input_size, hidden_size)

    def forward(self, x, h):
        n = 3 * self.hidden_size
        x_r, x_z, x_n = F.layer_norm(F.linear(x, self.weight_ih), (n,), self.ln_weight_ih, self.bias_ih,
                                     1e-5).chunk(3, 1)
        h_r, h_z, h_n = F.layer_norm(F.linear(h, self.weight_hh), (n,), self.ln_weight_hh, self.bias_hh,
                                     1e-5).chunk(3, 1)
        r, z = torch.sigmoid(x_r + h_r), torch.sigmoid(x_z + h_z)
        h = (1 - z) * torch.tanh(x_n + r * h_n) + z * h
        return h, h


class PythonLayer(nn.Module):
    """A plain Python loop over time around any cell that maps (x_t, state) to (out, state)."""

    def __init__(self, cell):
        super().__init__()
        self.cell = cell

    def forward(self, input, state):
        outputs = []
        for x in input.unbind(0):
            out, state = self.cell(x, state)
            outputs.append(out)
        return torch.stack(outputs), state


@dataclass(frozen=True)
class Variant:
    """One variant: how each side is built from (input_size, hidden_size). The plain side is
    PLAIN[cell]; the TorchScript side is ``torch.jit.script(script_layer(script_cell(I, H)))``."""
    name: str  # the case name's second token: "lstm peephole T100 B64 ..."
    cell: str  # "lstm" or "gru": the plain module, the initial states, --cells
    fused: Callable[[int, int], nn.Module]
    script_cell: Callable[[int, int], nn.Module]
    python_cell: Callable[[int, int], nn.Module]
    script_layer: Callable[[nn.Module], nn.Module] = ScriptLSTMLayer


PLAIN = {"lstm": LSTM, "gru": GRU}
VARIANTS = (
    Variant("peephole", "lstm", fused=partial(LSTM, peephole=True), script_cell=ScriptPeepholeLSTMCell,
            python_cell=PythonPeepholeLSTMCell),
    Variant("layer_norm", "lstm", fused=partial(LSTM, layer_norm=True), script_cell=ScriptLayerNormLSTMCell,
            python_cell=PythonLayerNormLSTMCell),
    Variant("peephole+layer_norm", "lstm", fused=partial(LSTM, peephole=True, layer_norm=True),
            script_cell=partial(ScriptLayerNormLSTMCell, peephole=True),
            python_cell=partial(PythonLayerNormLSTMCell, peephole=True)),
    Variant("layer_norm", "gru", fused=partial(GRU, layer_norm=True), script_cell=ScriptLayerNormGRUCell,
            python_cell=PythonLayerNormGRUCell, script_layer=ScriptGRULayer),
)
# The variant's own parameters as the pair draws them: LN's γ (ln_weight_*) normal around 1, the
# rest (LN's β, the peepholes) normal around 0, (mean, std) each.
GAIN_DRAW, SHIFT_DRAW = (1.0, 0.5), (0.0, 0.1)


def variant_of(case):
    return next(v for v in VARIANTS if (v.cell, v.name) == (case.cell, case.variant))


def _script(module):
    """torch.jit.script warns that TorchScript is deprecated; the user this side stands for
    scripts anyway (it is what custom_lstms.py does), so the warning says nothing here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit", category=DeprecationWarning)
        return torch.jit.script(module)


def _layer_state(hx):
    """A module's initial states [1, B, H] as a cell's [B, H] (a view: nothing copied)."""
    return tuple(t[0] for t in hx) if isinstance(hx, tuple) else hx[0]


def _module_state(state):
    return tuple(t.unsqueeze(0) for t in state) if isinstance(state, tuple) else state.unsqueeze(0)


def _plain_name(name):
    """weight_ih_l0 (fused) and cell.weight_ih (a loop's) are both weight_ih."""
    return name.rsplit(".", 1)[-1].removesuffix("_l0")


def draw_variant_parameters(module, plain_names):
    """Draw the parameters ``module`` has beyond ``plain_names`` (the plain module's): at their
    init γ is ones and β zeros, where a side that ignored them would agree with one that does
    not; drawn, each one moves the result. In place, from the global generator (seeded)."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name not in plain_names:
                p.normal_(*(GAIN_DRAW if _plain_name(name).startswith("ln_weight") else SHIFT_DRAW))


def _legend(section, timing_line, mem):
    return [
        ("fused = fused_rnn with the variant; TorchScript = torch.jit.script of a loop over time calling a "
         "cell (custom_lstms.py style); Python = that loop in eager Python over an nn.Module cell; plain = "
         "fused_rnn without the variant, same shape and torch.nn weights. Median ms of repeats; forward = "
         "inference under no_grad; fwd+bwd includes all weight gradients"),
        ("TS/fused, Py/fused = that side's ms / fused ms (> 1 = fused faster); fused/plain = fused ms / "
         f"plain ms (the variant's cost). Targets, reported, never asserted: {section.targets_text}"),
        timing_line,
        ("rel diff = ||side - Python|| / ||Python|| (float64, largest over fused and TorchScript, over "
         "outputs and, for fwd+bwd, every gradient); above the dtype's tolerance the mode is an error, "
         "not timed"),
        f"memory (fwd+bwd, JSON only: <side>_mem_bytes): {mem}",
    ]


_CONFIG = {
    "sides": "fused: fused_rnn with the variant; torchscript: torch.jit.script of a loop over time calling a "
             "cell (benchmarks/fastrnns/custom_lstms.py style); python: that loop in eager Python over an "
             "nn.Module cell; plain: fused_rnn without the variant (same shape, the same torch.nn weights)",
    "rel_diff": "||side - python||_2 / ||python||_2 in float64 for side = fused and torchscript "
                "(rel_diff_<side>), max over outputs (fwd) and outputs + all gradients (fwdbwd); above "
                "the dtype's tolerance the mode is an error and is not timed. plain is not compared",
    "ratio": "= torchscript_over_fused: the headline ratio, under the other sections' key",
    "ratios": {k: f"{a} median ms / {b} median ms" for k, (a, b) in RATIOS.items()},
    "targets": f"reported, never asserted: {targets_text(RATIO_LABEL, TARGETS, TARGET_MODE, TARGET_BATCHES)}",
}
# The section as the options, the report and the plot see it.
SECTION = Section(
    name="variants", kind="variant",
    scope="times one unidirectional layer on padded input against TorchScript and Python loops",
    against="TorchScript and Python loops, plain module", sides=SIDES, side_label=SIDE_LABEL, ratios=RATIOS,
    ratio_label=RATIO_LABEL, ratio_colors=RATIO_COLORS, targets=TARGETS, config=_CONFIG, legend=_legend,
    reading="fused faster; in fused/plain: the variant slower", target_mode=TARGET_MODE,
    target_batches=TARGET_BATCHES)


class VariantPair(MultiSidePair):
    """Pair's interface (runner, clear_grads, set_mode, cuda_peak_bytes) over the four sides of
    a variant case; the input sets are a one-layer module's (x [T, B, I], h0 (c0) [1, B, H])."""

    section, sides = SECTION, SIDES
    ratios = {**RATIOS, "ratio": RATIOS["torchscript_over_fused"]}  # "ratio": the headline
    reference, compared, reference_text = REFERENCE, COMPARED, "the Python loop"

    def _build_modules(self, candidate, seed):
        """The fused module draws the weights (torch.nn's init, then the variant's parameters
        by draw_variant_parameters, on the CPU: the same values on every device); the other
        sides load them."""
        case, variant = self.case, variant_of(self.case)
        place = {"device": self.device, "dtype": self.dtype}
        torch.manual_seed(seed)
        fused = variant.fused(case.input_size, case.hidden)
        plain = PLAIN[variant.cell](case.input_size, case.hidden)
        draw_variant_parameters(fused, set(plain.state_dict()))
        fused, plain = fused.to(**place), plain.to(**place)
        weights = fused.state_dict()
        cells = {}
        for side, make in (("torchscript", variant.script_cell), ("python", variant.python_cell)):
            cells[side] = make(case.input_size, case.hidden).to(**place)
            cells[side].load_state_dict({_plain_name(k): v for k, v in weights.items()})
        plain.load_state_dict({k: v for k, v in weights.items() if k in plain.state_dict()})
        return {"fused": fused, "torchscript": _script(variant.script_layer(cells["torchscript"])),
                "python": PythonLayer(cells["python"]), "plain": plain}

    def forward(self, side, s):
        module = self.modules[side]
        if side in ("fused", "plain"):
            return module(s.x, s.hx)
        out, state = module(s.x, _layer_state(s.hx))
        return out, _module_state(state)

    def _param_name(self, side, name):
        return _plain_name(name)
