"""What the sections with more sides than torch.nn and fused_rnn share (variants.py, regularizers.py):
``Section``, what the report, the plot and the options need to know of one (its sides, ratios,
targets, texts), and ``MultiSidePair``, ``Pair``'s interface over the sides of one case with
the agreement check that runs before a mode is timed.

Every side runs on the same weights and input sets. Before a mode is timed, the ``compared``
sides must agree with the ``reference`` side on the first CHECK_STEPS steps of input set 0
(outputs, and in fwd+bwd every gradient) within the dtype's tolerance; if they do not, the row
is an error and nothing is timed, so the ratios never compare a fast wrong result. The other
sides (``plain``: fused_rnn's module without the option) compute other equations: timed, not
compared.
"""
from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass
from typing import Callable, Dict, List, Tuple

import torch

from .cases import MODE_LABEL, MODES, SUSPECT_REL_DIFF
from .checks import _grad_diff, _train_step, dtype_fields, flat_outputs, rel_diff
from .pairing import Pair

# The sides are compared on the first CHECK_STEPS steps of input set 0. A layer-normalized
# recurrence amplifies float32 rounding with time: over T = 100 the float32 Python loop's own
# error against float64 grows from 2e-7 at step 0 to 3e-4 at step 99 (fused_rnn's, with other
# roundings, from 3e-7 to 8e-4), so over a whole sequence two correct float32 implementations
# differ by more than a tolerance that still catches a wrong one.
CHECK_STEPS = 10


def targets_text(ratio_label, targets, mode, batches):
    """"fwd+bwd at T100 I=H=512 fp32, B 64 and 8: TS/fused >= 5, fused/plain <= 1.35"."""
    return (f"{MODE_LABEL[mode]} at T100 I=H=512 fp32, B {' and '.join(map(str, batches))}: "
            + ", ".join(f"{ratio_label[k]} {op} {bound:g}" for k, (op, bound) in targets.items()))


@dataclass(frozen=True)
class Section:
    """One multi-side section, as the options, the report and the plot see it."""
    name: str  # --section NAME
    kind: str  # its cases' Case.kind (and its rows' "kind")
    scope: str  # "times ...": what the options that do not apply are measured against
    against: str  # the start line's "fused_rnn vs ..."
    sides: Tuple[str, ...]  # every side a case may have, in the table's column order
    side_label: Dict[str, str]
    ratios: Dict[str, Tuple[str, str]]  # row key -> (numerator, denominator) side, as the JSON states it
    ratio_label: Dict[str, str]
    ratio_colors: Dict[str, str]  # the plot's colour per ratio
    targets: Dict[str, Tuple[str, float]]  # ratio key -> (">=" or "<=", bound): reported, never asserted
    config: Dict[str, object]  # the JSON config's definitions, in place of torch.nn's
    legend: Callable[["Section", str, str], List[str]]  # (section, timing line, memory text) -> lines
    reading: str  # the plot's "(> 1: ...)"
    target_mode: str = "fwdbwd"
    target_batches: Tuple[int, ...] = (64, 8)  # at T100 I=H=512 fp32
    modes: Tuple[str, ...] = MODES  # the modes its cases run in

    @property
    def head(self):
        return (["case", "mode"] + [f"{self.side_label[s]} ms" for s in self.sides]
                + list(self.ratio_label.values()) + ["rel diff"])

    @property
    def targets_text(self):
        return targets_text(self.ratio_label, self.targets, self.target_mode, self.target_batches)

    def legend_lines(self, timing_line, mem):
        return self.legend(self, timing_line, mem)


def first_steps(s, steps):
    """Input set s cut to its first `steps` time steps, with leaves of its own."""
    cut = copy.copy(s)
    cut.x = s.x.detach()[:steps].clone().requires_grad_()
    states = [t.detach().clone().requires_grad_() for t in s.leaves[1:]]
    cut.hx = tuple(states) if len(states) == 2 else states[0]
    cut.leaves = [cut.x, *states]
    cut.grads = [s.grads[0][:steps], *s.grads[1:]]
    return cut


class SidesDisagree(Exception):
    """A compared side does not compute the reference side's result."""


class MultiSidePair(Pair):
    """Pair's interface (runner, clear_grads, set_mode, cuda_peak_bytes) over the sides of one
    case of a multi-side section, and its agreement check. A subclass sets ``section``, the
    sides, the ratios (their keys the section's, plus "ratio": the headline), ``reference``,
    ``compared``, ``reference_text`` and builds the modules (one per side)."""

    section: Section
    reference: str  # the side the compared ones must agree with
    compared: Tuple[str, ...]
    reference_text: str  # "against <reference_text>, fused 1e-1" in SidesDisagree's message
    check_steps = CHECK_STEPS

    def _param_name(self, side, name):
        """A parameter's name on ``side`` -> the name its gradient is compared under."""
        return name

    def _side_call(self, side):
        """A context around each of the check's calls of ``side`` (e.g. a seed: the same draws)."""
        return contextlib.nullcontext()

    def _results(self, mode, s):
        """{side: (outputs, {name: gradient} or None, saved bytes or None)} on input set s."""
        results = {}
        for side in self.sides:
            if mode == "fwd":
                with self._side_call(side), torch.no_grad():
                    results[side] = (flat_outputs(self.forward(side, s)), None, None)
                continue
            with self._side_call(side):
                outs, grads, saved = _train_step(self, side, s)
            names = [f"leaf{i}" for i in range(len(s.leaves))]
            names += [self._param_name(side, n) for n, _ in sorted(self.modules[side].named_parameters())]
            results[side] = (outs, dict(zip(names, grads)), saved)
            self.clear_grads(side, s)
        return results

    def check(self, mode):
        """Each side once on the first check_steps steps of input set 0 in the code path ``mode``
        times; the compared sides against the reference (SidesDisagree above the tolerance).
        The bytes saved for backward are those of the whole input set 0."""
        self.set_mode(mode)
        results = self._results(mode, first_steps(self.sets[0], self.check_steps))
        ref_outs, ref_grads, _ = results[self.reference]
        info = dtype_fields(results["fused"][0], ref_outs)
        for side in self.compared:
            outs, grads, _ = results[side]
            out = max(rel_diff(a, b) for a, b in zip(outs, ref_outs))
            grad = None if grads is None else max(_grad_diff(grads.get(k), ref_grads.get(k))
                                                  for k in {*grads, *ref_grads})
            info[f"rel_diff_{side}"] = out if grad is None else max(out, grad)
            info["rel_diff_out"] = max(info.get("rel_diff_out", 0.0), out)
            if grad is not None:
                info["rel_diff_grad"] = max(info.get("rel_diff_grad", 0.0), grad)
        info["rel_diff"] = max(info[f"rel_diff_{side}"] for side in self.compared)
        if mode == "fwdbwd":
            for side in self.sides:
                info[f"{side}_saved_bytes"] = _train_step(self, side, self.sets[0])[2]
                self.clear_grads(side, self.sets[0])
        limit = SUSPECT_REL_DIFF.get(self.case.precision, 1e-4)
        if not info["rel_diff"] <= limit or "dtype_mismatch" in info:
            label = self.section.side_label
            raise SidesDisagree(
                f"not timed: against {self.reference_text}, "
                + ", ".join(f"{label[side]} {info[f'rel_diff_{side}']:.1e}" for side in self.compared)
                + f" (tolerance {limit:g})" + (f"; {info['dtype_mismatch']}" if "dtype_mismatch" in info else ""))
        return info

