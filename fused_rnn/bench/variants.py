"""The variants section: each variant of fused_rnn's modules (the peephole LSTM; the
layer-normalized LSTM/GRU to come) against the same equations written the way a user would
without us, on the same weights and input sets. Four sides per case:

- ``fused``: fused_rnn's module with the variant (``LSTM(I, H, peephole=True)``);
- ``torchscript``: a loop over time calling a cell, both scripted with torch.jit.script, in the
  style of PyTorch's benchmarks/fastrnns/custom_lstms.py (the cell holds the parameters, the
  layer loops over ``input.unbind(0)``): what a user writes for a custom cell today;
- ``python``: the same loop in plain Python over an nn.Module cell written with torch ops;
- ``plain``: fused_rnn's module without the variant (``LSTM(I, H)``), the same shape and the
  same torch.nn weights: what the variant costs over the cell it extends.

Before a mode is timed, the fused and the TorchScript sides must agree with the Python loop on
input set 0 (outputs, and in fwd+bwd every gradient) within the dtype's tolerance; if they do
not, the row is an error and nothing is timed, so the ratios never compare a fast wrong
result. The plain side computes other equations: it is timed, not compared.

A new variant is one ``Variant`` in VARIANTS: its fused module, a TorchScript cell and a Python
cell whose parameters are named like the fused module's without the ``_l0`` suffix (they load
its state_dict), and, for a cell whose state is not LSTM's (h, c), a scripted layer typed for it.
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
from .cases import SUSPECT_REL_DIFF
from .checks import _grad_diff, _train_step, dtype_fields, flat_outputs, rel_diff
from .pairing import Pair

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


class ScriptPeepholeLSTMCell(nn.Module):
    """custom_lstms.py's LSTMCell with peepholes, as written for TorchScript: a typed forward,
    torch.mm on the transposed weights, the state in and out as a tuple."""

    def __init__(self, input_size, hidden_size):
        super().__init__()
        self.weight_ih = nn.Parameter(torch.empty(4 * hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(4 * hidden_size, hidden_size))
        self.bias_ih = nn.Parameter(torch.empty(4 * hidden_size))
        self.bias_hh = nn.Parameter(torch.empty(4 * hidden_size))
        self.weight_ch = nn.Parameter(torch.empty(3 * hidden_size))

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
    outputs stacked. Typed for an (h, c) state: a GRU variant needs one with a Tensor state."""

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


class PythonPeepholeLSTMCell(nn.Module):
    """The peephole LSTM step as a user writes it in eager PyTorch (gate order i|f|g|o)."""

    def __init__(self, input_size, hidden_size):
        super().__init__()
        self.weight_ih = nn.Parameter(torch.empty(4 * hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(4 * hidden_size, hidden_size))
        self.bias_ih = nn.Parameter(torch.empty(4 * hidden_size))
        self.bias_hh = nn.Parameter(torch.empty(4 * hidden_size))
        self.weight_ch = nn.Parameter(torch.empty(3 * hidden_size))

    def forward(self, x, state):
        h, c = state
        i, f, g, o = (F.linear(x, self.weight_ih, self.bias_ih) + F.linear(h, self.weight_hh, self.bias_hh)).chunk(4, 1)
        w_ci, w_cf, w_co = self.weight_ch.chunk(3)
        c = torch.sigmoid(f + w_cf * c) * c + torch.sigmoid(i + w_ci * c) * torch.tanh(g)
        h = torch.sigmoid(o + w_co * c) * torch.tanh(c)
        return h, (h, c)


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
)


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


class SidesDisagree(Exception):
    """The fused or the TorchScript side does not compute the Python loop's result."""


class VariantPair(Pair):
    """Pair's interface (runner, clear_grads, set_mode, cuda_peak_bytes) over the four sides of
    a variant case; the input sets are a one-layer module's (x [T, B, I], h0 (c0) [1, B, H])."""

    sides = SIDES
    ratios = {**RATIOS, "ratio": RATIOS["torchscript_over_fused"]}  # "ratio": the headline

    def _build_modules(self, candidate, seed):
        """The fused module draws the weights; the other sides load them."""
        case, variant = self.case, variant_of(self.case)
        place = {"device": self.device, "dtype": self.dtype}
        torch.manual_seed(seed)
        fused = variant.fused(case.input_size, case.hidden).to(**place)
        weights = fused.state_dict()
        cells = {}
        for side, make in (("torchscript", variant.script_cell), ("python", variant.python_cell)):
            cells[side] = make(case.input_size, case.hidden).to(**place)
            cells[side].load_state_dict({_plain_name(k): v for k, v in weights.items()})
        plain = PLAIN[variant.cell](case.input_size, case.hidden).to(**place)
        plain.load_state_dict({k: v for k, v in weights.items() if k in plain.state_dict()})
        return {"fused": fused, "torchscript": _script(variant.script_layer(cells["torchscript"])),
                "python": PythonLayer(cells["python"]), "plain": plain}

    def forward(self, side, s):
        module = self.modules[side]
        if side in ("fused", "plain"):
            return module(s.x, s.hx)
        out, state = module(s.x, _layer_state(s.hx))
        return out, _module_state(state)

    def _results(self, mode, s):
        """{side: (outputs, {name: gradient} or None, saved bytes or None)} on input set s."""
        if mode == "fwd":
            with torch.no_grad():
                return {side: (flat_outputs(self.forward(side, s)), None, None) for side in self.sides}
        results = {}
        for side in self.sides:
            outs, grads, saved = _train_step(self, side, s)
            names = [f"leaf{i}" for i in range(len(s.leaves))]
            names += [_plain_name(n) for n, _ in sorted(self.modules[side].named_parameters())]
            results[side] = (outs, dict(zip(names, grads)), saved)
            self.clear_grads(side, s)
        return results

    def check(self, mode):
        """Each side once on input set 0 in the code path ``mode`` times; the fused and the
        TorchScript sides against the Python loop (SidesDisagree above the tolerance)."""
        self.set_mode(mode)
        results = self._results(mode, self.sets[0])
        ref_outs, ref_grads, _ = results[REFERENCE]
        info = dtype_fields(results["fused"][0], ref_outs)
        for side in COMPARED:
            outs, grads, _ = results[side]
            out = max(rel_diff(a, b) for a, b in zip(outs, ref_outs))
            grad = None if grads is None else max(_grad_diff(grads.get(k), ref_grads.get(k))
                                                  for k in {*grads, *ref_grads})
            info[f"rel_diff_{side}"] = out if grad is None else max(out, grad)
            info["rel_diff_out"] = max(info.get("rel_diff_out", 0.0), out)
            if grad is not None:
                info["rel_diff_grad"] = max(info.get("rel_diff_grad", 0.0), grad)
        info["rel_diff"] = max(info[f"rel_diff_{side}"] for side in COMPARED)
        if mode == "fwdbwd":
            info.update({f"{side}_saved_bytes": results[side][2] for side in self.sides})
        limit = SUSPECT_REL_DIFF.get(self.case.precision, 1e-4)
        if not info["rel_diff"] <= limit or "dtype_mismatch" in info:
            raise SidesDisagree(
                f"not timed: against the Python loop, fused {info['rel_diff_fused']:.1e}, TorchScript "
                f"{info['rel_diff_torchscript']:.1e} (tolerance {limit:g})"
                + (f"; {info['dtype_mismatch']}" if "dtype_mismatch" in info else ""))
        return info
