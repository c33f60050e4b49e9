"""One case made concrete: the torch.nn module and the fused one on the same weights, the
input sets both get, and the runners the timing loop calls."""
from __future__ import annotations

import contextlib
import gc
import hashlib
import math
from pathlib import Path

import torch
from torch.nn.utils.rnn import PackedSequence

from .. import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell
from .cases import DTYPES, packed_lengths
from .checks import SIDES, backend_of, compare_forward, compare_training, flat_outputs, probe_torch

MAX_INPUT_SETS = 16


def _stable_seed(*parts):
    """A seed from the case name that does not change between processes (unlike hash())."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:4], "little")


def torch_classes():
    return {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN,
            "lstmcell": torch.nn.LSTMCell, "grucell": torch.nn.GRUCell, "rnncell": torch.nn.RNNCell}


def fused_classes():
    return {"lstm": LSTM, "gru": GRU, "rnn": RNN, "lstmcell": LSTMCell, "grucell": GRUCell, "rnncell": RNNCell}


def _batch_sizes(lengths):
    return torch.tensor([sum(1 for n in lengths if n > t) for t in range(lengths[0])],
                        dtype=torch.int64)


class InputSet:
    """Input, initial states and the fixed output gradients of one run, all random."""

    def __init__(self, case, device, dtype, lengths, gen):
        def randn(*shape):  # drawn in float32 on the CPU: the same values on every device
            return torch.randn(*shape, generator=gen, dtype=torch.float32).to(device, dtype)
        dirs = 2 if case.bidirectional else 1
        state_shape = (case.layers * dirs, case.batch, case.hidden)
        n_states = 2 if case.cell == "lstm" else 1
        if case.kind == "cell":  # one step: x [B, I], states [B, H]; the results are the states
            state_shape = (case.batch, case.hidden)
            data = randn(case.batch, case.input_size).requires_grad_()
            self.x = data
            states = [randn(*state_shape).requires_grad_() for _ in range(n_states)]
            self.hx = tuple(states) if n_states == 2 else states[0]
            self.leaves = [data, *states]
            self.grads = [randn(*state_shape) for _ in range(n_states)]
            self.nbytes = sum(t.numel() * t.element_size() for t in self.leaves + self.grads)
            return
        if lengths is not None:
            batch_sizes = _batch_sizes(lengths)
            data = randn(int(batch_sizes.sum()), case.input_size).requires_grad_()
            self.x = PackedSequence(data, batch_sizes)
            out_shape = (data.shape[0], dirs * case.hidden)
        else:
            data = randn(case.seq_len, case.batch, case.input_size).requires_grad_()
            self.x = data
            out_shape = (case.seq_len, case.batch, dirs * case.hidden)
        states = [randn(*state_shape).requires_grad_() for _ in range(n_states)]
        self.hx = tuple(states) if n_states == 2 else states[0]
        self.leaves = [data, *states]
        self.grads = [randn(*out_shape)] + [randn(*state_shape) for _ in range(n_states)]
        self.nbytes = sum(t.numel() * t.element_size() for t in self.leaves + self.grads)


def _cache_bytes(device):
    """The last-level cache (L2 on CUDA); 32 MiB where the CPU's cannot be read."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).L2_cache_size)
    try:
        text = Path("/sys/devices/system/cpu/cpu0/cache/index3/size").read_text().strip()
        return int(text[:-1]) * {"K": 1 << 10, "M": 1 << 20}[text[-1]]
    except (OSError, ValueError, KeyError):  # not Linux, no L3, or a size we cannot read
        return 32 << 20


class Pair:
    """Both sides of one case on the same weights and the same input sets.

    ``candidate`` maps cell -> module class for the fused side (default: fused_rnn's).
    """

    sides = SIDES  # the modules the timing loop times, in the rows' order
    ratios = {"ratio": ("torch", "fused")}  # row key -> (numerator, denominator) side of the medians

    def __init__(self, case, device, candidate=None, n_sets=None, seed=0):
        self.case, self.device = case, torch.device(device)
        self.dtype = DTYPES[case.dtype]
        seed = _stable_seed(seed, case.name)
        self.modules = self._build_modules(candidate or fused_classes(), seed)
        self.lengths = packed_lengths(case.seq_len, case.batch, seed) if case.packed else None
        self.sets = self._build_input_sets(n_sets, torch.Generator().manual_seed(seed))
        self._torch_backend = None

    def _build_modules(self, candidate, seed):
        """torch.nn's module initialises the weights; the fused one loads its state_dict."""
        case = self.case
        kwargs = {"num_layers": case.layers, "bidirectional": case.bidirectional}
        name = case.cell
        if case.kind == "cell":
            kwargs, name = {}, f"{case.cell}cell"
        torch.manual_seed(seed)
        ref = torch_classes()[name](case.input_size, case.hidden, **kwargs)
        ref = ref.to(device=self.device, dtype=self.dtype)
        fused = candidate[name](case.input_size, case.hidden, **kwargs)
        fused = fused.to(device=self.device, dtype=self.dtype)
        fused.load_state_dict(ref.state_dict())
        return {"torch": ref, "fused": fused}

    def _build_input_sets(self, n_sets, gen):
        def make():
            return InputSet(self.case, self.device, self.dtype, self.lengths, gen)
        first = make()
        if n_sets is None:  # enough sets that two of them do not fit in the cache together
            n_sets = min(MAX_INPUT_SETS, max(1, math.ceil(2 * _cache_bytes(self.device)
                                                          / max(1, first.nbytes))))
        return [first] + [make() for _ in range(n_sets - 1)]

    def clear_grads(self, side, s):
        for p in self.modules[side].parameters():
            p.grad = None
        for t in s.leaves:
            t.grad = None

    def _autocast(self):
        if self.case.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=DTYPES[self.case.autocast])

    def forward(self, side, s):
        """One side's module on input set s, under the case's autocast (backward runs outside
        it, as in a training loop)."""
        with self._autocast():
            return self.modules[side](s.x, s.hx)

    def runner(self, side, mode):
        """(prepare(i), run(i)) for input set i; prepare is outside the timed region."""
        if mode == "fwd":
            def prepare(i):
                pass

            def run(i):
                with torch.no_grad():
                    self.forward(side, self.sets[i])
        else:
            def prepare(i):
                self.clear_grads(side, self.sets[i])

            def run(i):
                s = self.sets[i]
                torch.autograd.backward(flat_outputs(self.forward(side, s)), s.grads)
        return prepare, run

    def set_mode(self, mode):
        for m in self.modules.values():
            m.train(mode == "fwdbwd")

    def torch_backend(self):
        """The kernel family torch.nn runs in training mode: cuDNN, oneDNN, MIOpen or ATen; "-"
        where it cannot train under the case's autocast (its fwd+bwd rows are skipped)."""
        if self._torch_backend is None:
            module = self.modules["torch"]
            was_training = module.training
            module.train()
            try:
                with torch.enable_grad():
                    self._torch_backend = backend_of(self.forward("torch", self.sets[0]))
            except RuntimeError:
                if self.case.autocast is None:
                    raise
                self._torch_backend = "-"
            finally:
                module.train(was_training)
        return self._torch_backend

    def check(self, mode):
        """Compare the two sides on input set 0 in the code path that ``mode`` times; under
        autocast, first make sure that torch.nn runs it at all (else: TorchUnsupported)."""
        self.set_mode(mode)
        if self.case.autocast is not None:
            probe_torch(self, mode)
        info = {"torch_backend": self.torch_backend()}
        info.update(compare_forward(self) if mode == "fwd" else compare_training(self))
        return info

    def cuda_peak_bytes(self, side):
        """Peak CUDA memory allocated by one fwd+bwd above what was allocated before it."""
        prepare, run = self.runner(side, "fwdbwd")
        prepare(0)
        gc.collect()  # collect now, not in the middle of the measured run
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        base = torch.cuda.memory_allocated(self.device)
        run(0)
        torch.cuda.synchronize(self.device)
        peak = torch.cuda.max_memory_allocated(self.device) - base
        prepare(0)
        return int(peak)
