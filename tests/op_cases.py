"""Random arguments for one layer of each cell, shared by the op tests (every device) and
tests/sanitize_cuda.py, and the comparison of a case with the float64 reference."""
import itertools
import math
from dataclasses import dataclass, field
from typing import Optional

import torch

from fused_rnn import _ops, functional, reference

from checks import TOLERANCE, assert_close, rel_error

CELLS = ["lstm", "lstm_proj", "lstm_peephole", "lstm_ln", "lstm_peephole_ln_proj", "gru", "gru_ln", "rnn_tanh",
         "rnn_relu"]
# The op each cell runs through; its gate count comes from the C++ cell (_C.cells).
OP = {cell: cell.split("_")[0] for cell in CELLS}
GATES = {cell: _ops.SPECS[op].gates for cell, op in OP.items()}
LENGTHS = [5, 5, 3, 1]  # packed case: unequal lengths, with a tie
LOW_PRECISION = [torch.float16, torch.bfloat16]
# relu's derivative jumps at 0: a pre-activation within rounding of 0 can take the other side
# in fp16/bf16 and move the gradient by O(1) there, so relu's low-precision gradients are only
# checked to be finite (the same template code is checked in fp32/fp64).
LOW_PRECISION_GRADS_UNCHECKED = {"rnn_relu"}

# Every cell x bias x padded/packed x forward/reverse, with its ids.
GRID = list(itertools.product(CELLS, [True, False], [False, True], [False, True]))


def projected(cell):
    return cell.endswith("_proj")


def peephole(cell):
    return "_peephole" in cell


def layer_norm(cell):
    return "_ln" in cell


GRID_IDS = [f"{c}-{'bias' if b else 'nobias'}-{'packed' if p else 'padded'}-{'rev' if r else 'fwd'}"
            for c, b, p, r in GRID]


@dataclass
class Case:
    cell: str
    input: torch.Tensor
    batch_sizes: Optional[torch.Tensor]
    states: list  # h0 (, c0)
    weights: list  # the op's (fused_rnn._ops.SPECS[op].weight_names); biases and variants' may be None
    reverse: bool
    step: bool = False  # one step of the cell: input [B, I], the single-step ops; states [] = hx omitted
    masks: dict = field(default_factory=dict)  # the regularizers' (name -> tensor, _ops.MASKS), not leaves

    def leaves(self):
        return [t for t in [self.input, *self.states, *self.weights] if t is not None]

    def with_leaves(self, leaves, masks=None):
        """The same case with other tensors in place of input, states and weights (and masks)."""
        it = iter(leaves)
        case = Case(self.cell, next(it), self.batch_sizes, [next(it) for _ in self.states],
                    [next(it) if w is not None else None for w in self.weights], self.reverse, self.step,
                    self.masks if masks is None else masks)
        assert next(it, None) is None, "more leaves than the case has tensors"
        return case

    def op_args(self, need_workspace):
        """(forward op name, its arguments) of torch.ops.fused_rnn for this case."""
        extras = [self.cell[4:]] if OP[self.cell] == "rnn" else []  # the nonlinearity
        if self.step:
            masks = [self.masks.get(name) for name in _ops.STEP_MASKS[OP[self.cell]]]
            return f"{OP[self.cell]}_cell_forward", (self.input, *self.states, *self.weights, *masks, *extras,
                                                     need_workspace)
        masks = [self.masks.get(name) for name in _ops.MASKS[OP[self.cell]]]
        return f"{OP[self.cell]}_forward", (self.input, self.batch_sizes, *self.states, *self.weights, *masks,
                                            *extras, self.reverse, need_workspace)

    def weight_args(self):
        """The weights as fused_rnn.functional and reference take them: (positional, keyword);
        a variant's weights (weight_ch) are keyword-only."""
        names = _ops.SPECS[OP[self.cell]].weight_names
        named = dict(zip(names, self.weights))
        variant = {n: named.pop(n) for n in _ops.VARIANT_WEIGHTS if n in named}
        return list(named.values()), variant

    def run(self, module):
        """(output, *final_states) through `module` (fused_rnn.functional or reference); a
        step case: the states after the step, through the module's cell functions."""
        if self.step:
            return self._run_step(module)
        kw = dict(batch_sizes=self.batch_sizes, reverse=self.reverse, **self.masks)
        if self.cell.startswith("lstm"):
            weights, variant = self.weight_args()
            out, (h, c) = module.lstm(self.input, tuple(self.states), *weights, **kw, **variant)
            return out, h, c
        if OP[self.cell] == "gru":
            weights, variant = self.weight_args()
            return module.gru(self.input, self.states[0], *weights, **kw, **variant)
        return module.rnn(self.input, self.states[0], *self.weights, nonlinearity=self.cell[4:], **kw)

    def _run_step(self, module):
        hx = None if not self.states else tuple(self.states) if self.cell.startswith("lstm") else self.states[0]
        if self.cell.startswith("lstm"):
            weights, variant = self.weight_args()
            return module.lstm_cell(self.input, hx, *weights, **variant, **self.masks)
        if OP[self.cell] == "gru":
            weights, variant = self.weight_args()
            return (module.gru_cell(self.input, hx, *weights, **variant, **self.masks),)
        return (module.rnn_cell(self.input, hx, *self.weights, nonlinearity=self.cell[4:], **self.masks),)

    def function(self, module=functional):
        """The case as a function of its leaves, (output, *final states) through `module`: what
        gradcheck, gradgradcheck and torch.compile take."""
        return lambda *leaves: self.with_leaves(leaves).run(module)


def make_case(cell, bias=True, packed=False, reverse=False, dtype=torch.float64, device="cpu",
              T=5, B=4, I=3, H=5, P=3, requires_grad=True, seed=0, scale=0.5, step=False, hx=True, masks=(),
              lengths=None):
    """A layer case, or with step=True one step of the cell (input [B, I]); hx=False: no states
    (the ops' hx=None, zeros); packed: sequences of `lengths` (B of them, decreasing), by
    default LENGTHS'. masks: regularizers given random masks, of "zoneout" (Bernoulli
    with p = 0.3: h, and the LSTM's c) and "dropout" (recurrent dropout with p = 0.3)."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, mean=0.0):
        t = torch.randn(*shape, generator=g, dtype=torch.float64) * scale + mean
        return t.to(dtype=dtype, device=device).requires_grad_(requires_grad)

    gh = GATES[cell] * H
    state = P if projected(cell) else H
    batch_sizes = None
    if packed:
        lengths = torch.tensor(lengths or LENGTHS[:B] + [1] * max(0, B - len(LENGTHS)))[:B]
        T = int(lengths.max())
        batch_sizes = torch.tensor([int((lengths > t).sum()) for t in range(T)], dtype=torch.int64)
        x = rand(int(lengths.sum()), I)
    elif step:
        x = rand(B, I)
    else:
        x = rand(T, B, I)
    states = [rand(B, state)] + ([rand(B, H)] if cell.startswith("lstm") else [])
    states = states if hx else []
    weights = [rand(gh, I), rand(gh, state), rand(gh) if bias else None, rand(gh) if bias else None]
    if cell.startswith("lstm"):
        weights.append(rand(P, H) if projected(cell) else None)
        weights.append(rand(3 * H) if peephole(cell) else None)
    if OP[cell] != "rnn":  # layer norm: γ_ih, γ_hh around 1 (and the LSTM's γ_c, β_c)
        norm = [rand(gh, mean=1.0), rand(gh, mean=1.0)]
        norm += [rand(H, mean=1.0), rand(H)] if cell.startswith("lstm") else []
        weights += norm if layer_norm(cell) else [None] * len(norm)
    return Case(cell, x, batch_sizes, states, weights, reverse, step, random_masks(cell, masks, x, B, H, state, g))


def random_masks(cell, which, x, batch, hidden, state, generator, p=0.3):
    """The masks of the regularizers in `which` for a case with input x (see make_case)."""
    def bernoulli(*shape, keep):
        return (torch.rand(*shape, generator=generator) < keep).to(dtype=x.dtype, device=x.device)

    leading = x.shape[:-1]  # a step's [B, I]: its masks [B, width]
    masks = {}
    if "zoneout" in which:
        masks["zoneout_h"] = bernoulli(*leading, state, keep=p)
        if cell.startswith("lstm"):
            masks["zoneout_c"] = bernoulli(*leading, hidden, keep=p)
    if "dropout" in which:
        masks["dropout_h"] = bernoulli(batch, state, keep=1 - p) / (1 - p)
    return masks


def grads(case, outputs, grad_outputs):
    leaves = case.leaves()
    return torch.autograd.grad(outputs, leaves, grad_outputs)


def compare(case):
    """Forward outputs and every gradient of the fused op and of the float64 CPU reference,
    as two lists of (fused, reference) pairs."""
    def as_ref(t):
        return None if t is None else t.detach().cpu().double().requires_grad_()

    ref_masks = {name: mask.cpu().double() for name, mask in case.masks.items()}
    ref_case = case.with_leaves([as_ref(t) for t in case.leaves()], ref_masks)
    fused_out = case.run(functional)
    ref_out = ref_case.run(reference)
    g = torch.Generator().manual_seed(1)
    grad_out = [torch.randn(o.shape, generator=g, dtype=torch.float64) for o in ref_out]
    fused_grads = grads(case, fused_out, [go.to(o) for go, o in zip(grad_out, fused_out)])
    ref_grads = grads(ref_case, ref_out, grad_out)
    return list(zip(fused_out, ref_out)), list(zip(fused_grads, ref_grads))


def nn_scaled(case):
    """Weights scaled to torch.nn's init size (std ~ 1/sqrt(H)): the conditioning of a real
    network. make_case's std 0.5 weights saturate the gates for H = 37, and in fp16/bf16 that
    makes the error of a saturated gate's derivative (1 - g^2 from a rounded g) dominate."""
    hidden = case.weights[1].shape[0] // GATES[case.cell]
    scale = 2.0 / math.sqrt(hidden)
    weights = [None if w is None else (w.detach() * scale).requires_grad_() for w in case.weights]
    return Case(case.cell, case.input, case.batch_sizes, case.states, weights, case.reverse, case.step, case.masks)


def plain_pytorch_errors(case, truth):
    """The relative error against `truth` (compare's float64 pairs) of every output and gradient
    of the reference run in the case's own dtype: what the same equations written in PyTorch
    ops reach in that precision."""
    low = case.with_leaves([t.detach().clone().requires_grad_() for t in case.leaves()])
    out = low.run(reference)
    g = torch.Generator().manual_seed(1)  # compare's grad_outputs
    grad_out = [torch.randn(o.shape, generator=g, dtype=torch.float64).to(o) for o in out]
    results = [*out, *grads(low, out, grad_out)]
    return [rel_error(r, ref) for r, (_, ref) in zip(results, truth)]


def check_against_reference(case, check_grads=True):
    """Outputs and every gradient of the case (on its device, in its dtype) against the float64
    reference, by checks.assert_close; gradients not checked are still required to be finite.
    float32 (1e-5), fp16/bf16 (1e-2): or within 2x the error of the reference run in that
    dtype, where the precision itself allows no better (docs/DESIGN.md §3): a layer norm over
    a few values, a projection to a few."""
    outputs, gradients = compare(case)
    device, dtype = case.input.device, case.input.dtype
    named = [(f"output {i}", pair, True) for i, pair in enumerate(outputs)]
    named += [(f"gradient {i}", pair, check_grads) for i, pair in enumerate(gradients)]
    tols = [None] * len(named)
    if dtype != torch.float64:
        tols = [max(TOLERANCE[dtype], 2 * e) for e in plain_pytorch_errors(case, outputs + gradients)]
    for (what, (fused, ref), checked), tol in zip(named, tols):
        assert fused.device == device and fused.dtype == dtype, f"{what}: {fused.device}, {fused.dtype}"
        assert torch.isfinite(fused).all(), f"{what} is not finite"
        if checked:
            assert_close(fused, ref, what, tol=tol)
