"""Random arguments for one layer of each cell, shared by the op tests (CPU and CUDA)."""
import math
from dataclasses import dataclass
from typing import Optional

import torch

from fused_rnn import functional, reference

CELLS = ["lstm", "lstm_proj", "gru", "rnn_tanh", "rnn_relu"]
GATES = {"lstm": 4, "lstm_proj": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}
LENGTHS = [5, 5, 3, 1]  # packed case: unequal lengths, with a tie
LOW_PRECISION = [torch.float16, torch.bfloat16]
# DESIGN §3: ‖out − ref‖ / ‖ref‖ against the float64 reference.
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}


@dataclass
class Case:
    cell: str
    input: torch.Tensor
    batch_sizes: Optional[torch.Tensor]
    states: list  # h0 (, c0)
    weights: list  # w_ih, w_hh, b_ih, b_hh (, w_hr) — biases may be None
    reverse: bool

    def leaves(self):
        return [t for t in [self.input, *self.states, *self.weights] if t is not None]

    def with_leaves(self, leaves):
        """The same case with other tensors in place of input, states and weights."""
        it = iter(leaves)
        case = Case(self.cell, next(it), self.batch_sizes, [next(it) for _ in self.states],
                    [next(it) if w is not None else None for w in self.weights], self.reverse)
        assert next(it, None) is None, "more leaves than the case has tensors"
        return case

    def op_args(self, need_workspace):
        """(forward op name, its arguments) of torch.ops.fused_rnn for this case."""
        h, w = self.states, self.weights
        if self.cell.startswith("lstm"):
            return "lstm_forward", (self.input, self.batch_sizes, h[0], h[1], *w, self.reverse, need_workspace)
        if self.cell == "gru":
            return "gru_forward", (self.input, self.batch_sizes, h[0], *w, self.reverse, need_workspace)
        return "rnn_forward", (self.input, self.batch_sizes, h[0], *w, self.cell[4:], self.reverse, need_workspace)

    def run(self, module):
        """(output, *final_states) through `module` (fused_rnn.functional or reference)."""
        kw = dict(batch_sizes=self.batch_sizes, reverse=self.reverse)
        if self.cell.startswith("lstm"):
            out, (h, c) = module.lstm(self.input, tuple(self.states), *self.weights, **kw)
            return out, h, c
        if self.cell == "gru":
            return module.gru(self.input, self.states[0], *self.weights, **kw)
        return module.rnn(self.input, self.states[0], *self.weights, nonlinearity=self.cell[4:], **kw)


def make_case(cell, bias=True, packed=False, reverse=False, dtype=torch.float64, device="cpu",
              T=5, B=4, I=3, H=5, P=3, requires_grad=True, seed=0, scale=0.5):
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        t = torch.randn(*shape, generator=g, dtype=torch.float64) * scale
        return t.to(dtype=dtype, device=device).requires_grad_(requires_grad)

    gh = GATES[cell] * H
    state = P if cell == "lstm_proj" else H
    batch_sizes = None
    if packed:
        lengths = torch.tensor(LENGTHS[:B] + [1] * max(0, B - len(LENGTHS)))[:B]
        T = int(lengths.max())
        batch_sizes = torch.tensor([int((lengths > t).sum()) for t in range(T)], dtype=torch.int64)
        x = rand(int(lengths.sum()), I)
    else:
        x = rand(T, B, I)
    states = [rand(B, state)] + ([rand(B, H)] if cell.startswith("lstm") else [])
    weights = [rand(gh, I), rand(gh, state), rand(gh) if bias else None, rand(gh) if bias else None]
    if cell.startswith("lstm"):
        weights.append(rand(P, H) if cell == "lstm_proj" else None)
    return Case(cell, x, batch_sizes, states, weights, reverse)


def grads(case, outputs, grad_outputs):
    leaves = case.leaves()
    return torch.autograd.grad(outputs, leaves, grad_outputs)


def compare(case):
    """Forward outputs and every gradient of the fused op and of the float64 CPU reference,
    as two lists of (fused, reference) pairs."""
    def as_ref(t):
        return None if t is None else t.detach().cpu().double().requires_grad_()

    ref_case = Case(case.cell, as_ref(case.input), case.batch_sizes, [as_ref(s) for s in case.states],
                    [as_ref(w) for w in case.weights], case.reverse)
    fused_out = case.run(functional)
    ref_out = ref_case.run(reference)
    g = torch.Generator().manual_seed(1)
    grad_out = [torch.randn(o.shape, generator=g, dtype=torch.float64) for o in ref_out]
    fused_grads = grads(case, fused_out, [go.to(o) for go, o in zip(grad_out, fused_out)])
    ref_grads = grads(ref_case, ref_out, grad_out)
    return list(zip(fused_out, ref_out)), list(zip(fused_grads, ref_grads))


def rel_error(a, b):
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def nn_scaled(case):
    """Weights scaled to torch.nn's init size (std ~ 1/sqrt(H)): the conditioning of a real
    network. make_case's std 0.5 weights saturate the gates for H = 37, and in fp16/bf16 that
    makes the error of a saturated gate's derivative (1 - g^2 from a rounded g) dominate."""
    hidden = case.weights[1].shape[0] // GATES[case.cell]
    scale = 2.0 / math.sqrt(hidden)
    weights = [None if w is None else (w.detach() * scale).requires_grad_() for w in case.weights]
    return Case(case.cell, case.input, case.batch_sizes, case.states, weights, case.reverse)


def check_against_reference(case, dtype, check_grads=True):
    """Outputs and every gradient of the case (on its device, in `dtype`) within TOLERANCE of
    the float64 reference; gradients not checked are still required to be finite."""
    outputs, gradients = compare(case)
    tol = TOLERANCE[dtype]
    device = case.input.device
    for i, (fused, ref) in enumerate(outputs):
        assert fused.device == device and fused.dtype == dtype and fused.shape == ref.shape
        assert rel_error(fused, ref) <= tol, f"output {i}: relative error {rel_error(fused, ref):.3g}"
    for i, (fused, ref) in enumerate(gradients):
        assert fused.device == device and fused.dtype == dtype and fused.shape == ref.shape
        assert torch.isfinite(fused).all(), f"gradient {i} is not finite"
        if check_grads:
            assert rel_error(fused, ref) <= tol, f"gradient {i}: relative error {rel_error(fused, ref):.3g}"
