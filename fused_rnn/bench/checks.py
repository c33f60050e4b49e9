"""Is the fused result right, and what does each side keep alive for backward?

The relative difference of fused_rnn against torch.nn (outputs, and in fwd+bwd every
gradient), the dtypes of the results (under autocast they differ per module, see
fused_rnn/_autocast.py: both sides should agree), the bytes autograd saves for backward,
torch.nn's kernel family, and whether torch.nn runs the case at all under autocast.
"""
from __future__ import annotations

import math

import torch
from torch.nn.utils.rnn import PackedSequence

from .cases import DTYPE_NAME

SIDES = ("torch", "fused")


class TorchUnsupported(Exception):
    """torch.nn itself cannot run the case (under autocast: e.g. oneDNN's LSTM has no fp16
    primitive on some CPUs): its rows are skipped, not failed."""


def probe_torch(pair, mode):
    """Run torch.nn once in the code path that ``mode`` times; its error becomes a skip."""
    prepare, run = pair.runner("torch", mode)
    prepare(0)
    try:
        run(0)
    except RuntimeError as e:
        raise TorchUnsupported(f"torch.nn under autocast {pair.case.autocast}: {e}") from e
    finally:
        prepare(0)


def flat_outputs(result):
    """[output, h_n] or [output, h_n, c_n] of a module call; a packed output as its data; a
    cell's [h] or [h, c]."""
    if isinstance(result, torch.Tensor):
        return [result]
    out, h = result
    out = out.data if isinstance(out, PackedSequence) else out
    return [out, *h] if isinstance(h, tuple) else [out, h]


def rel_diff(a, b):
    """‖a − b‖₂ / ‖b‖₂ in float64 (b = torch.nn); NaN/inf in either gives inf."""
    a, b = a.detach().double(), b.detach().double()
    if a.shape != b.shape:
        return math.inf
    num, den = torch.linalg.vector_norm(a - b).item(), torch.linalg.vector_norm(b).item()
    value = num / den if den > 0 else num
    return value if math.isfinite(value) else math.inf


def _dtype_names(results):
    return ",".join(DTYPE_NAME.get(r.dtype, str(r.dtype)) for r in results)


def dtype_fields(fused, ref):
    """The dtypes of torch.nn's results and, where fused_rnn's differ (under autocast each
    module has its own, see fused_rnn/_autocast.py), a note that flags the row."""
    t, f = _dtype_names(ref), _dtype_names(fused)
    info = {"out_dtypes": t}
    if f != t:
        info["dtype_mismatch"] = f"result dtypes: fused_rnn {f}, torch.nn {t}"
    return info


def _grad_diff(a, b):
    """A gradient that one side produces and the other does not is infinitely wrong."""
    if (a is None) != (b is None):
        return math.inf
    return 0.0 if a is None else rel_diff(a, b)


class SavedBytes:
    """saved_tensors_hooks that sum the bytes autograd keeps for backward: unique storages,
    leaving out those of the parameters and the inputs (they exist anyway)."""

    def __init__(self, exclude):
        self.exclude = {self._key(t) for t in exclude}
        self.seen = {}

    @staticmethod
    def _key(t):
        try:
            return ("s", t.untyped_storage().data_ptr())
        except NotImplementedError:  # opaque tensors (e.g. oneDNN's) have no storage to share
            return ("t", id(t))

    def pack(self, t):
        key = self._key(t)
        if key not in self.exclude and key not in self.seen:
            try:
                self.seen[key] = t.untyped_storage().nbytes()
            except NotImplementedError:  # opaque again: count the tensor's own elements
                self.seen[key] = t.numel() * t.element_size()
        return t

    @staticmethod
    def unpack(t):
        return t

    @property
    def total(self):
        return sum(self.seen.values())


def backend_of(result):
    """Name the torch.nn kernel family from the autograd graph of an output."""
    names, todo, seen = [], [flat_outputs(result)[0].grad_fn], set()
    while todo and len(seen) < 64:  # the RNN node sits near the output; don't walk it all
        fn = todo.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        names.append(type(fn).__name__)
        todo.extend(f for f, _ in fn.next_functions)
    joined = " ".join(names)
    for key, label in (("Cudnn", "cuDNN"), ("Miopen", "MIOpen"), ("Mkldnn", "oneDNN")):
        if key in joined:
            return label
    return "ATen"


def compare_forward(pair):
    """rel diff of the outputs under no_grad, on input set 0."""
    s = pair.sets[0]
    with torch.no_grad():
        outs = {side: flat_outputs(pair.forward(side, s)) for side in SIDES}
    diff = max(rel_diff(a, b) for a, b in zip(outs["fused"], outs["torch"]))
    return {**dtype_fields(outs["fused"], outs["torch"]), "rel_diff_out": diff, "rel_diff": diff}


def _train_step(pair, side, s):
    """One fwd+bwd of one side on input set s: (outputs, gradients, bytes saved for backward)."""
    module = pair.modules[side]
    pair.clear_grads(side, s)
    hook = SavedBytes(list(module.parameters()) + s.leaves)
    with torch.autograd.graph.saved_tensors_hooks(hook.pack, hook.unpack):
        result = pair.forward(side, s)
    outs = [t.detach().clone() for t in flat_outputs(result)]
    torch.autograd.backward(flat_outputs(result), s.grads)
    # Sorted by name: both sides have the same parameter names (state_dict compatible).
    grads = [t.grad for t in s.leaves] + [p.grad for _, p in sorted(module.named_parameters())]
    return outs, [None if g is None else g.detach().clone() for g in grads], hook.total


def compare_training(pair):
    """rel diff of the outputs and of every gradient, and the bytes saved, on input set 0."""
    s = pair.sets[0]
    steps = {side: _train_step(pair, side, s) for side in SIDES}
    (t_outs, t_grads, t_saved), (f_outs, f_grads, f_saved) = steps["torch"], steps["fused"]
    info = {**dtype_fields(f_outs, t_outs),
            "rel_diff_out": max(rel_diff(a, b) for a, b in zip(f_outs, t_outs)),
            "rel_diff_grad": max(_grad_diff(a, b) for a, b in zip(f_grads, t_grads))}
    info["rel_diff"] = max(info["rel_diff_out"], info["rel_diff_grad"])
    info["torch_saved_bytes"], info["fused_saved_bytes"] = t_saved, f_saved
    for side in SIDES:
        pair.clear_grads(side, s)
    return info
