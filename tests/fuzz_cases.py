"""The adversarial cases: each family draws one case from a seed and checks its properties.

A family is ``f(rng) -> str`` where ``rng`` is a ``random.Random`` seeded with the case's seed:
it builds a random call of one public entry point, runs it, and raises ``Finding`` when a
property fails; it returns a short label of what it ran (for the counts). Properties:

- valid input: values and every gradient equal the float64 reference (or torch.nn with the
  same weights), the arguments are unmodified, and no output shares memory with an argument;
- invalid input: a Python exception of the expected type that names the bad argument, or,
  where torch.nn has one, torch.nn's type and message — never a crash, a hang or a result.

Crashes and hangs are caught one level up, by running cases in a child process
(fuzz_worker.py, test_adversarial.py).
"""
import copy
import random

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import fused_rnn
from fused_rnn import _ops, functional, reference

import op_cases
from checks import TOLERANCE

OPS = torch.ops.fused_rnn


class Finding(AssertionError):
    """A property of a case failed: a wrong result, a modified argument, an aliased output, an
    unclear or unexpected error."""


# ---------------------------------------------------------------------------------------------
# Properties shared by the families.
# ---------------------------------------------------------------------------------------------

def tensors_in(obj):
    """Every tensor inside obj (nested tuples, lists, PackedSequence)."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, PackedSequence):
        return [t for t in obj if isinstance(t, torch.Tensor)]
    if isinstance(obj, (tuple, list)):
        return [t for item in obj for t in tensors_in(item)]
    return []


def snapshot(args):
    return [t.detach().clone() for t in tensors_in(args)]


def check_unmodified(args, before, what):
    for i, (t, old) in enumerate(zip(tensors_in(args), before)):
        if t.shape != old.shape or not torch.equal(t.detach().nan_to_num(7.0), old.nan_to_num(7.0)):
            raise Finding(f"{what}: argument tensor {i} was modified in place")


def check_no_alias(outputs, args, what):
    """No output shares storage with an argument (a user writing into an output must not change
    their input); empty tensors share nothing."""
    taken = {t.untyped_storage().data_ptr() for t in tensors_in(args) if t.numel() and t.device.type != "meta"}
    for i, t in enumerate(tensors_in(outputs)):
        if t.numel() and t.untyped_storage().data_ptr() in taken:
            raise Finding(f"{what}: output {i} aliases an argument")


def check_close(got, want, what, tol=None):
    """float64 results against the truth: same shape, NaN where it has NaN, else within TOLERANCE."""
    if got.shape != want.shape:
        raise Finding(f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}")
    if got.dtype != want.dtype:
        raise Finding(f"{what}: dtype {got.dtype} != {want.dtype}")
    g, w = got.detach().double(), want.detach().double()
    if not torch.equal(g.isnan(), w.isnan()):
        raise Finding(f"{what}: NaN at other places than the truth's")
    both = ~w.isnan()
    if not torch.equal(g[both].isinf() & (g[both] > 0), w[both].isinf() & (w[both] > 0)):
        raise Finding(f"{what}: infinities differ from the truth's")
    finite = both & w.isfinite()
    diff = (g[finite] - w[finite]).abs()
    tol = TOLERANCE[got.dtype] if tol is None else tol
    limit = tol * (1 + w[finite].abs())
    if diff.numel() and bool((diff > limit).any()):
        raise Finding(f"{what}: error {float(diff.max()):.3g} beyond {tol:g}")


def expect_error(call, types, names, what):
    """call() must raise one of `types` whose message names one of `names`."""
    try:
        call()
    except types as e:
        message = str(e)
        if names and not any(n in message for n in names):
            raise Finding(f"{what}: {type(e).__name__} names none of {names}: {message[:300]}") from None
        return type(e).__name__
    except Exception as e:  # noqa: BLE001 - any other type is the finding
        raise Finding(f"{what}: {type(e).__name__} instead of {[t.__name__ for t in types]}: {str(e)[:300]}") from e
    raise Finding(f"{what}: accepted (no error)")


# torch.nn errors raised by an op deep inside it rather than by its argument checks (its packed
# LSTM path never checks hx's shape or input's rank, so a wrong one reaches a GEMM, an index, a
# broadcast or the parameter count of its kernel). Copying those would copy a leak of torch.nn's
# internals: there ours must instead name the bad argument.
TORCH_NN_INTERNAL_ERRORS = ("mat1 and mat2 shapes cannot be multiplied", "Dimension out of range",
                            "got an incorrect number of RNN parameters", "must match the size of tensor b",
                            "doesn't match the broadcast shape", "Odd number of params or hiddens")


def same_error_as_torch(ref_call, fused_call, what, names=()):
    """Both raise (same type, same message) or neither does; returns the results when neither.
    Where torch.nn's error is one of TORCH_NN_INTERNAL_ERRORS, ours must name one of `names`."""
    try:
        want = ref_call()
    except Exception as e:  # noqa: BLE001
        try:
            fused_call()
        except Exception as g:  # noqa: BLE001
            if _matches(g, e, names) or _matches(g, _aten_path_error(ref_call), names):
                return None
            raise Finding(f"{what}: {type(g).__name__}({str(g)[:200]!r}) where torch.nn raises "
                          f"{type(e).__name__}({str(e)[:200]!r})") from None
        raise Finding(f"{what}: accepted where torch.nn raises {type(e).__name__}: {str(e)[:200]}") from None
    try:
        got = fused_call()
    except Exception as g:  # noqa: BLE001
        raise Finding(f"{what}: {type(g).__name__} where torch.nn works: {str(g)[:300]}") from g
    return got, want


def _matches(ours, torch_nn, names):
    """Our error is torch.nn's (type and message), or torch.nn's leaks internals and ours names
    one of `names`."""
    if torch_nn is None:
        return False
    if any(m in str(torch_nn) for m in TORCH_NN_INTERNAL_ERRORS) and names and any(n in str(ours) for n in names):
        return True
    return type(ours) is type(torch_nn) and str(ours) == str(torch_nn)


def _aten_path_error(ref_call):
    """The error of torch.nn's ATen path, or None. torch.nn's LSTM takes oneDNN for padded input
    and for packed input of one length, on CPUs where oneDNN runs (the Xeons here, not the AVX2
    EPYCs); its errors there differ by CPU ("got an incorrect number of RNN parameters",
    "get_mkldnn_dtype: unsupported data type"). The fused modules mirror the ATen path, the same
    on every CPU."""
    try:
        with torch.backends.mkldnn.flags(enabled=False):
            ref_call()
    except Exception as e:  # noqa: BLE001
        return e
    return None


# ---------------------------------------------------------------------------------------------
# The ops: fused_rnn.functional against fused_rnn.reference.
# ---------------------------------------------------------------------------------------------

def random_op_case(rng):
    """A valid op_cases.Case with random sizes (zeros included) and options, float64."""
    cell = rng.choice(op_cases.CELLS)
    packed = rng.random() < 0.35
    sizes = dict(T=rng.randint(1, 6), B=rng.choice([0, 1, 2, 3, 5]), I=rng.choice([0, 1, 2, 4, 7]),
                 H=rng.choice([1, 2, 3, 5, 8]), P=rng.choice([1, 2, 4]))
    if packed:
        sizes["B"] = max(1, sizes["B"])  # packed input has at least one sequence
    return op_cases.make_case(cell, bias=rng.random() < 0.7, packed=packed, reverse=rng.random() < 0.5,
                              seed=rng.randrange(2**31), scale=rng.choice([0.1, 0.5, 2.0]), **sizes)


def odd_layout(t, rng):
    """The same values (detached) in a non-contiguous tensor, now and then."""
    t = t.detach()
    choice = rng.random()
    if t.dim() >= 1 and t.numel() and choice < 0.3:  # every other element of a wider buffer
        wide = torch.zeros(*t.shape[:-1], t.shape[-1] * 2, dtype=t.dtype)
        wide[..., ::2] = t
        return wide[..., ::2]
    if t.dim() == 2 and t.numel() and choice < 0.5:  # transposed storage
        return t.t().contiguous().t()
    return t


def hostile_values(case, rng):
    """NaN or Inf in the input, now and then."""
    if case.input.numel() and rng.random() < 0.15:
        x = case.input.detach().clone()
        x.view(-1)[rng.randrange(x.numel())] = rng.choice([float("nan"), float("inf"), -float("inf")])
        return x
    return case.input.detach()


def vary_valid(case, rng):
    """The case with odd layouts, aliased tensors and hostile values; all of it still valid."""
    x = odd_layout(hostile_values(case, rng), rng)
    states = [odd_layout(s, rng) for s in case.states]
    weights = [None if w is None else odd_layout(w, rng) for w in case.weights]
    if weights[2] is not None and rng.random() < 0.2:  # bias_ih is bias_hh
        weights[3] = weights[2]
    if weights[0].shape == weights[1].shape and rng.random() < 0.3:  # weight_ih is weight_hh
        weights[1] = weights[0]
    if len(states) == 2 and states[0].shape == states[1].shape and rng.random() < 0.2:  # h0 is c0
        states[1] = states[0]
    for t in distinct([x, *states, *[w for w in weights if w is not None]]):
        t.requires_grad_()  # an aliased tensor is one leaf, as a tied weight is
    return op_cases.Case(case.cell, x, case.batch_sizes, states, weights, case.reverse)


def distinct(tensors):
    seen, out = set(), []
    for t in tensors:
        if id(t) not in seen:
            seen.add(id(t))
            out.append(t)
    return out


def run_with_grads(case, module, grad_outputs, create_graph=False):
    outputs = case.run(module)
    leaves = distinct(case.leaves())
    grads = torch.autograd.grad(outputs, leaves, grad_outputs, allow_unused=True, create_graph=create_graph)
    return list(outputs), [torch.zeros_like(t) if g is None else g for t, g in zip(leaves, grads)]


def as_reference(case):
    copies = {}

    def ref(t):
        if t is None:
            return None
        if id(t) not in copies:
            copies[id(t)] = t.detach().clone().requires_grad_()
        return copies[id(t)]

    return op_cases.Case(case.cell, ref(case.input), case.batch_sizes, [ref(s) for s in case.states],
                         [ref(w) for w in case.weights], case.reverse)


def fuzz_ops(rng):
    case = vary_valid(random_op_case(rng), rng)
    what = f"functional.{op_cases.OP[case.cell]} ({case.cell})"
    args = [case.input, case.batch_sizes, *case.states, *case.weights]
    before = snapshot(args)
    ref_case = as_reference(case)
    ref_out = ref_case.run(reference)
    g = torch.Generator().manual_seed(rng.randrange(2**31))
    grad_outputs = [torch.randn(o.shape, generator=g, dtype=torch.float64) for o in ref_out]
    double = rng.random() < 0.15
    out, grads = run_with_grads(case, functional, grad_outputs, create_graph=double)
    ref_out, ref_grads = run_with_grads(ref_case, reference, grad_outputs, create_graph=double)
    for i, (a, b) in enumerate(zip(out, ref_out)):
        check_close(a, b, f"{what}: output {i}")
    for i, (a, b) in enumerate(zip(grads, ref_grads)):
        check_close(a, b, f"{what}: gradient {i}")
    check_unmodified(args, before, what)
    check_no_alias(out + grads, args, what)
    if double:
        check_double_backward(case, ref_case, grads, ref_grads, g, what)
    return f"{case.cell}{'-double' if double else ''}"


def check_double_backward(case, ref_case, grads, ref_grads, g, what):
    """Gradients of <gradients, v> with respect to every leaf equal the reference's."""
    usable = [(a, b) for a, b in zip(grads, ref_grads) if a.requires_grad and b.requires_grad]
    if not usable:
        return
    v = [torch.randn(a.shape, generator=g, dtype=torch.float64) for a, _ in usable]
    leaves, ref_leaves = distinct(case.leaves()), distinct(ref_case.leaves())
    second = torch.autograd.grad([a for a, _ in usable], leaves, v, allow_unused=True)
    ref_second = torch.autograd.grad([b for _, b in usable], ref_leaves, v, allow_unused=True)
    for i, (a, b, t) in enumerate(zip(second, ref_second, leaves)):
        check_close(torch.zeros_like(t) if a is None else a, torch.zeros_like(t) if b is None else b,
                    f"{what}: second-order gradient {i}", tol=1e-8)


# Bad arguments of the ops: (argument, how it is broken) -> a function of the valid case's
# arguments (a dict) that breaks them. Each must raise naming the argument (or its alias).
ARG_ALIASES = {"hx": ["hx", "h0", "c0"], "h0": ["h0", "hx"], "c0": ["c0", "hx"]}


def _bad_dtype(t, rng):
    return t.detach().to(rng.choice([torch.float32, torch.int64, torch.bool, torch.complex128, torch.float16]))


def _bad_shape(t, rng, last_only=False):
    if t.dim() == 0:
        return t.reshape(1, 1)
    shape = list(t.shape)
    d = len(shape) - 1 if last_only else rng.randrange(len(shape))
    shape[d] += rng.choice([1, 2]) if shape[d] == 0 or rng.random() < 0.5 else -1
    return torch.randn(shape, dtype=t.dtype)


def _bad_rank(t, rng):
    return t.detach().reshape(-1) if t.dim() > 1 and rng.random() < 0.5 else t.detach().unsqueeze(0)


def _meta(t, rng):
    return t.detach().to("meta")


BAD_TENSOR = {"dtype": _bad_dtype, "shape": _bad_shape, "rank": _bad_rank, "device": _meta}


def _bad_batch_sizes(bs, rng):
    kind = rng.choice(["negative", "zero", "increasing", "sum", "overflow", "int32", "2d", "float", "list",
                       "empty"])
    if kind == "list":
        return kind, bs.tolist()
    if kind == "int32":
        return kind, bs.int()
    if kind == "2d":
        return kind, bs.unsqueeze(0)
    if kind == "float":
        return kind, bs.double()
    if kind == "empty":
        return kind, bs[:0]
    bs = bs.clone()
    if kind == "negative":
        bs[-1] = -1
    elif kind == "zero":
        bs[-1] = 0
    elif kind == "increasing":
        bs = torch.cat([bs[-1:], bs]) if len(bs) == 1 or bs[0] == bs[-1] else bs.flip(0)
        if len(bs) > 1 and bs[0] == bs[-1]:
            bs[-1] += 1
    elif kind == "sum":
        bs[0] += 1
    else:  # overflow: a sum past int64
        bs = torch.tensor([2**62, 2**62, 2**62, 2**62][:max(2, len(bs))], dtype=torch.int64)
    return kind, bs


def fuzz_ops_invalid(rng):
    case = random_op_case(rng)
    op = op_cases.OP[case.cell]
    names = ["input", "h0"] + (["c0"] if op == "lstm" else []) + list(_ops.SPECS[op].weight_names)
    values = dict(zip(names, [case.input, *case.states, *case.weights]))
    choices = [n for n in names if values[n] is not None] + (["batch_sizes"] if case.batch_sizes is not None else [])
    arg = rng.choice(choices + ["hx"])
    kwargs = dict(batch_sizes=case.batch_sizes, reverse=case.reverse)
    if arg == "batch_sizes":
        how, kwargs["batch_sizes"] = _bad_batch_sizes(case.batch_sizes, rng)
    elif arg == "hx":
        how, values = _bad_hx(case, values, rng)
    else:
        how = rng.choice(sorted(BAD_TENSOR))
        if arg == "input" and how == "shape":  # any T and batch is valid: input_size is not
            values[arg] = _bad_shape(values[arg], rng, last_only=True)
        else:
            values[arg] = BAD_TENSOR[how](values[arg], rng)
    if how is None:
        return "skipped"
    weights = [values.get(n) for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
    more = {n: values.get(n) for n in _ops.SPECS[op].weight_names[4:]}  # weight_hr, the variants'
    fn = getattr(functional, op)
    hx = values["hx"] if "hx" in values else (values["h0"], values["c0"]) if op == "lstm" else values["h0"]
    extra = {"nonlinearity": case.cell[4:]} if op == "rnn" else {}
    call = lambda: fn(values["input"], hx, *weights, **more, **kwargs, **extra)  # noqa: E731
    what = f"functional.{op} ({case.cell}) with a bad {arg} ({how})"
    expect_error(call, (RuntimeError, ValueError, TypeError), ARG_ALIASES.get(arg, [arg]), what)
    return f"{arg}-{how}"


def _bad_hx(case, values, rng):
    """A hx of the wrong structure: a tuple of the wrong length, a list, a non-tensor."""
    h0 = case.states[0]
    lstm = len(case.states) == 2
    kind = rng.choice(["short", "long", "scalar", "string"] + (["single"] if lstm else []))
    bad = {"short": (h0,), "long": (h0, h0, h0), "single": h0, "scalar": 3.0, "string": "h0"}[kind]
    return kind, {**values, "hx": bad}


# ---------------------------------------------------------------------------------------------
# The backward ops, called directly with broken gradients or workspace.
# ---------------------------------------------------------------------------------------------

def fuzz_backward_ops(rng):
    case = random_op_case(rng)
    op = op_cases.OP[case.cell]
    name, args = case.op_args(need_workspace=True)
    detached = [a.detach() if isinstance(a, torch.Tensor) else a for a in args]
    outputs = getattr(OPS, name)(*detached)
    forward_args = detached[:-1]  # without need_workspace
    n_grads = 3 if op == "lstm" else 2
    grads = {n: torch.randn_like(o) for n, o in zip(["grad_output", "grad_h_n", "grad_c_n"], outputs[:n_grads])}
    grads["workspace"] = outputs[-1]
    arg = rng.choice(sorted(grads))
    how = rng.choice(sorted(BAD_TENSOR) + ["strided"])
    if how == "strided":  # valid: the same values in a non-contiguous tensor give the same result
        return _strided_backward(op, grads, forward_args, arg, rng)
    grads[arg] = BAD_TENSOR[how](grads[arg], rng)
    call = lambda: backward_call(op, grads, forward_args)  # noqa: E731
    expect_error(call, (RuntimeError, ValueError, TypeError), [arg], f"{op}_backward with a bad {arg} ({how})")
    return f"{arg}-{how}"


def backward_call(op, grads, forward_args):
    """torch.ops.fused_rnn.<op>_backward(grads..., forward args with the workspace in its slot)."""
    head = [grads["grad_output"], grads["grad_h_n"]] + ([grads["grad_c_n"]] if op == "lstm" else [])
    *inputs, reverse = forward_args
    if op == "rnn":  # the nonlinearity precedes the workspace
        *inputs, nonlinearity = inputs
        return getattr(OPS, f"{op}_backward")(*head, *inputs, nonlinearity, grads["workspace"], reverse)
    return getattr(OPS, f"{op}_backward")(*head, *inputs, grads["workspace"], reverse)


def _strided_backward(op, grads, forward_args, arg, rng):
    want = backward_call(op, grads, forward_args)
    before = snapshot(list(grads.values()))
    strided = dict(grads)
    strided[arg] = odd_layout(grads[arg], random.Random(0))  # the every-other-element layout
    got = backward_call(op, strided, forward_args)
    for i, (a, b) in enumerate(zip(got, want)):
        check_close(a, b, f"{op}_backward with a strided {arg}: result {i}")
    check_unmodified(list(strided.values()), before, f"{op}_backward")
    return f"{arg}-strided"


# ---------------------------------------------------------------------------------------------
# Modules and cells against torch.nn with the same weights.
# ---------------------------------------------------------------------------------------------

MODULE_MODES = {"LSTM": (nn.LSTM, fused_rnn.LSTM), "GRU": (nn.GRU, fused_rnn.GRU), "RNN": (nn.RNN, fused_rnn.RNN)}


def random_module_pair(rng):
    mode = rng.choice(sorted(MODULE_MODES))
    hidden = rng.choice([1, 3, 5])
    kw = dict(num_layers=rng.choice([1, 2]), bias=rng.random() < 0.8, batch_first=rng.random() < 0.5,
              bidirectional=rng.random() < 0.4)
    if mode == "LSTM" and hidden > 1 and rng.random() < 0.3:
        kw["proj_size"] = rng.randrange(1, hidden)
    if mode == "RNN":
        kw["nonlinearity"] = rng.choice(["tanh", "relu"])
    input_size = rng.choice([1, 2, 4])
    torch_cls, fused_cls = MODULE_MODES[mode]
    ref = torch_cls(input_size, hidden, **kw).double()
    fused = fused_cls(input_size, hidden, **kw).double()
    fused.load_state_dict(ref.state_dict())
    return ref, fused


def module_input(module, rng, g):
    """(input, hx, lengths or None) for module: padded, unbatched or packed; hx or None."""
    T, B = rng.randint(1, 5), rng.randint(1, 4)
    layout = rng.choice(["padded", "unbatched", "packed"])
    layers = module.num_layers * (2 if module.bidirectional else 1)
    out_h = module.proj_size if getattr(module, "proj_size", 0) else module.hidden_size
    if layout == "unbatched":
        x = torch.randn(T, module.input_size, generator=g, dtype=torch.float64)
        batch = ()
    else:
        x = torch.randn(*((B, T) if module.batch_first else (T, B)), module.input_size, generator=g,
                        dtype=torch.float64)
        batch = (B,)
    hx = None
    if rng.random() < 0.6:
        h = torch.randn(layers, *batch, out_h, generator=g, dtype=torch.float64)
        hx = (h, torch.randn(layers, *batch, module.hidden_size, generator=g, dtype=torch.float64)) \
            if module.mode == "LSTM" else h
    lengths = [rng.randint(1, T) for _ in range(B)] if layout == "packed" else None
    return x, hx, lengths


MODULE_BREAKS = ["input_size", "input_rank", "input_dtype", "hx_shape", "hx_batch", "hx_dtype", "hx_rank",
                 "hx_structure"]
# What a message about each break may call the argument: torch.nn says "hidden[0]" for hx, the
# op "h0" and "c0".
MODULE_ARG_NAMES = {kind: ("hx", "hidden", "h0", "c0") if kind.startswith("hx") else ("input",)
                    for kind in MODULE_BREAKS}


def break_module_input(x, hx, rng):
    """One thing wrong with a module's arguments (torch.nn raises for each)."""
    kind = rng.choice(MODULE_BREAKS)
    first = hx[0] if isinstance(hx, tuple) else hx
    if kind.startswith("hx") and first is None:
        kind = "input_size"
    if kind == "input_size":
        x = torch.randn(*x.shape[:-1], x.shape[-1] + 1, dtype=x.dtype)
    elif kind == "input_rank":
        x = x.unsqueeze(0) if rng.random() < 0.5 else x.reshape(-1)
    elif kind == "input_dtype":
        x = x.to(rng.choice([torch.float32, torch.int64]))
    else:
        hx = _break_hx(hx, kind, rng)
    return kind, x, hx


def _break_hx(hx, kind, rng):
    def one(h):
        if kind == "hx_shape":
            return torch.randn(*h.shape[:-1], h.shape[-1] + 1, dtype=h.dtype)
        if kind == "hx_batch" and h.dim() == 3:
            return torch.randn(h.shape[0], h.shape[1] + 1, h.shape[2], dtype=h.dtype)
        if kind == "hx_dtype":
            return h.float()
        if kind == "hx_rank":
            return h[0] if h.dim() == 3 else h.unsqueeze(1)
        return h

    if kind == "hx_structure":
        return (hx,) if not isinstance(hx, tuple) else hx[:1]
    if isinstance(hx, tuple):
        which = rng.randrange(2)
        return tuple(one(h) if i == which else h for i, h in enumerate(hx))
    return one(hx)


def module_call(module, x, hx, lengths):
    arg = x if lengths is None else pack_padded_sequence(x, torch.tensor(lengths), batch_first=module.batch_first,
                                                          enforce_sorted=False)
    return module(arg, hx)


def fuzz_modules(rng):
    ref, fused = random_module_pair(rng)
    g = torch.Generator().manual_seed(rng.randrange(2**31))
    x, hx, lengths = module_input(ref, rng, g)
    label = type(fused).__name__
    kind = None
    if rng.random() < 0.4:
        kind, x, hx = break_module_input(x, hx, rng)
        label += f"-bad-{kind}"
    what = f"{label} {ref} lengths={lengths}"
    args = [x, hx]
    before = snapshot(args)
    results = same_error_as_torch(lambda: module_call(ref, x, hx, lengths),
                                  lambda: module_call(fused, x, hx, lengths), what, MODULE_ARG_NAMES.get(kind, ()))
    check_unmodified(args, before, what)
    if results is not None:
        got, want = results
        compare_module_results(fused, ref, got, want, args, g, what)
    return label


def compare_module_results(fused, ref, got, want, args, g, what):
    got_t, want_t = tensors_in(got), tensors_in(want)
    if len(got_t) != len(want_t):
        raise Finding(f"{what}: {len(got_t)} result tensors where torch.nn gives {len(want_t)}")
    for i, (a, b) in enumerate(zip(got_t, want_t)):
        if a.dtype.is_floating_point:
            check_close(a, b, f"{what}: result {i}")
        elif not torch.equal(a, b):
            raise Finding(f"{what}: result {i} (indices) differs")
    check_no_alias(got, args, what)
    floats = [(a, b) for a, b in zip(got_t, want_t) if a.dtype.is_floating_point and a.requires_grad]
    if not floats:
        return
    v = [torch.randn(b.shape, generator=g, dtype=b.dtype) for _, b in floats]
    ga = torch.autograd.grad([a for a, _ in floats], list(fused.parameters()), v, allow_unused=True)
    gb = torch.autograd.grad([b for _, b in floats], list(ref.parameters()), v, allow_unused=True)
    for (name, p), a, b in zip(ref.named_parameters(), ga, gb):
        check_close(torch.zeros_like(p) if a is None else a, torch.zeros_like(p) if b is None else b,
                    f"{what}: grad of {name}")


CELL_CLASSES = [("LSTMCell", {}), ("GRUCell", {}), ("RNNCell", {"nonlinearity": "tanh"}),
                ("RNNCell", {"nonlinearity": "relu"})]


def fuzz_cells(rng):
    name, kw = rng.choice(CELL_CLASSES)
    input_size, hidden = rng.choice([0, 1, 3]), rng.choice([1, 2, 5])
    bias = rng.random() < 0.8
    ref = getattr(nn, name)(input_size, hidden, bias=bias, **kw).double()
    fused = getattr(fused_rnn, name)(input_size, hidden, bias=bias, **kw).double()
    fused.load_state_dict(ref.state_dict())
    g = torch.Generator().manual_seed(rng.randrange(2**31))
    batch = () if rng.random() < 0.25 else (rng.choice([0, 1, 4]),)
    x = torch.randn(*batch, input_size, generator=g, dtype=torch.float64)
    hx = None
    if rng.random() < 0.6:
        hx = torch.randn(*batch, hidden, generator=g, dtype=torch.float64)
        if name == "LSTMCell":
            hx = (hx, torch.randn(*batch, hidden, generator=g, dtype=torch.float64))
    label, kind = name, None
    if rng.random() < 0.4:
        kind, x, hx = break_module_input(x, hx, rng)
        label += f"-bad-{kind}"
    what = f"{label}({input_size}, {hidden}, bias={bias}) x={tuple(x.shape)}"
    args = [x, hx]
    before = snapshot(args)
    if _refused_as_unbatched(fused, x, hx):
        check_unmodified(args, before, what)
        return label
    results = same_error_as_torch(lambda: ref(x, hx), lambda: fused(x, hx), what, MODULE_ARG_NAMES.get(kind, ()))
    check_unmodified(args, before, what)
    if results is not None:
        compare_module_results(fused, ref, *results, args, g, what)
    return label


def _refused_as_unbatched(fused, x, hx):
    """Whether the fused cell refuses a 2-D state given with unbatched input, which torch.nn's
    checks let through when its sizes happen to fit (then torch.nn broadcasts it into a wrongly
    shaped result, or crashes: a segfault in torch 2.13's gru_cell, so it cannot be called).
    Where torch.nn's checks reject the state, ours must give their error instead."""
    states = hx if isinstance(hx, tuple) else () if hx is None else (hx,)
    if x.dim() != 1 or not any(isinstance(s, torch.Tensor) and s.dim() == 2 for s in states):
        return False
    try:
        fused(x, hx)
    except RuntimeError as e:
        return "for unbatched 1-D input" in str(e)
    return False


# ---------------------------------------------------------------------------------------------
# Conversion: to_fused / to_torch keep every weight and every forward.
# ---------------------------------------------------------------------------------------------

def fuzz_convert(rng):
    ref, _ = random_module_pair(rng)
    model = nn.Sequential(copy.deepcopy(ref))
    fused = fused_rnn.to_fused(model)
    back = fused_rnn.to_torch(copy.deepcopy(fused))
    if not isinstance(fused[0], fused_rnn.LSTM | fused_rnn.GRU | fused_rnn.RNN):
        raise Finding(f"to_fused left {type(fused[0]).__name__}")
    if type(back[0]) is not type(ref):
        raise Finding(f"to_torch gave {type(back[0]).__name__}")
    for m in (fused[0], back[0]):
        for (name, a), (_, b) in zip(m.state_dict().items(), ref.state_dict().items()):
            if not torch.equal(a, b):
                raise Finding(f"convert: {name} changed")
    g = torch.Generator().manual_seed(rng.randrange(2**31))
    x, hx, lengths = module_input(ref, rng, g)
    want = module_call(ref, x, hx, lengths)
    for m in (fused[0], back[0]):
        for i, (a, b) in enumerate(zip(tensors_in(module_call(m, x, hx, lengths)), tensors_in(want))):
            if a.dtype.is_floating_point:
                check_close(a, b, f"convert {type(m).__name__}: result {i}")
    return type(ref).__name__


# ---------------------------------------------------------------------------------------------
# seq2seq generation: any options give a well-formed result or a clear error.
# ---------------------------------------------------------------------------------------------

SRC_VOCAB, TGT_VOCAB = 9, 7


def random_seq2seq(rng):
    from fused_rnn.seq2seq import Seq2Seq
    kw = dict(cell=rng.choice(["lstm", "gru"]), attention=rng.choice([None, "dot", "general", "concat", "additive"]),
              style=rng.choice(["luong", "bahdanau"]))
    kw["bidirectional"] = kw["attention"] != "dot" and rng.random() < 0.5  # dot: keys as wide as queries
    kw["input_feeding"] = kw["attention"] is not None and kw["style"] == "luong" and rng.random() < 0.5
    return Seq2Seq(SRC_VOCAB, TGT_VOCAB, embed_size=6, hidden_size=8, num_layers=rng.choice([1, 2]), **kw).double()


def random_generate_args(rng, g, has_attention):
    """(src, src_lengths, keyword options, the argument broken or None)."""
    B, S = rng.choice([0, 1, 3]), rng.randint(1, 5)
    src = torch.randint(3, SRC_VOCAB, (B, S), generator=g)
    lengths = torch.tensor([rng.randint(1, S) for _ in range(B)], dtype=torch.int64)
    strategy = rng.choice(["greedy", "sample", "beam"])
    opts = dict(max_len=rng.choice([None, 1, 4, (1.0, 2)]), min_len=rng.choice([0, 0, 1]))
    if strategy == "beam":
        opts.update(beam_size=rng.randint(1, 4), length_penalty=rng.choice([1.0, 0.0, ("wu", 0.6)]),
                    coverage_penalty=rng.choice([0.0, 0.2]) if has_attention else 0.0)
        opts["n_best"] = rng.randint(1, opts["beam_size"])
    if strategy == "sample":
        opts.update(temperature=rng.choice([0.5, 1.0, 2.0]), top_k=rng.choice([None, 1, 3]),
                    top_p=rng.choice([None, 0.5, 1.0]), n_best=rng.randint(1, 3))
    opts.update(repetition_penalty=rng.choice([1.0, 1.3]), no_repeat_ngram_size=rng.choice([0, 0, 2]))
    if opts["min_len"] and opts["max_len"] == 1:
        opts["max_len"] = 4
    broken = None
    if rng.random() < 0.4:
        broken = rng.choice(["src", "src_lengths", "max_len", "min_len", "beam_size", "top_k", "top_p",
                             "temperature", "n_best", "strategy"])
        # an empty batch has no id to put outside the vocabulary; nor, without an int max_len,
        # a source whose max_len a huge min_len would exceed
        bad = {"src": src.reshape(-1) if rng.random() < 0.5 or B == 0 else src + SRC_VOCAB,
               "src_lengths": lengths + S if B else torch.tensor([1, 2]),
               "max_len": rng.choice([-1, True, 2.5]), "min_len": rng.choice([-1, 10**6, True]),
               "beam_size": rng.choice([0, True]), "top_k": rng.choice([0, True, -2]), "top_p": rng.choice([0.0, 1.5]),
               "temperature": rng.choice([0.0, -1.0, float("nan")]), "n_best": rng.choice([0, True]),
               "strategy": "nucleus"}[broken]
        if broken == "min_len" and bad == 10**6 and B == 0 and not isinstance(opts["max_len"], int):
            bad = -1
        if broken == "src":
            src = bad
        elif broken == "src_lengths":
            lengths = bad
        elif broken == "strategy":
            strategy = bad
        else:
            opts[broken] = bad
            if broken in ("beam_size",) and strategy != "beam":
                strategy = "beam"
    return src, lengths, strategy, opts, broken


def fuzz_seq2seq(rng):
    model = random_seq2seq(rng)
    g = torch.Generator().manual_seed(rng.randrange(2**31))
    src, lengths, strategy, opts, broken = random_generate_args(rng, g, model.decoder.attention is not None)
    what = f"Seq2Seq.generate({strategy}, B={src.shape[0] if src.dim() else 0}, {opts}) broken={broken}"
    before = snapshot([src, lengths])
    call = lambda: model.generate(src, lengths, strategy, generator=g, **opts)  # noqa: E731
    if broken is not None:
        names = [broken, "num_return_sequences"] if broken == "n_best" else [broken]
        expect_error(call, (ValueError, TypeError), names, what)
        return f"{strategy}-bad-{broken}"
    out = call()
    check_unmodified([src, lengths], before, what)
    n = opts.get("n_best", 1)
    if out.tokens.dim() != 3 or out.tokens.shape[:2] != (src.shape[0], n):
        raise Finding(f"{what}: tokens of shape {tuple(out.tokens.shape)}")
    if out.tokens.numel() and not bool(((out.tokens >= 0) & (out.tokens < TGT_VOCAB)).all()):
        raise Finding(f"{what}: token ids outside the vocabulary")
    if bool((out.lengths > out.tokens.shape[2]).any()) or bool((out.lengths < opts["min_len"] + 1).any()):
        raise Finding(f"{what}: lengths {out.lengths.tolist()} outside [min_len + 1, L]")
    if bool(out.scores.isnan().any()) or bool((out.scores > 1e-9).any()):
        raise Finding(f"{what}: scores {out.scores.tolist()} are not log-probabilities")
    return strategy


FAMILIES = {
    "ops": fuzz_ops,
    "ops_invalid": fuzz_ops_invalid,
    "backward_ops": fuzz_backward_ops,
    "modules": fuzz_modules,
    "cells": fuzz_cells,
    "convert": fuzz_convert,
    "seq2seq": fuzz_seq2seq,
}


def run_case(family, seed):
    """Runs one case; returns its label, raises Finding when a property fails."""
    torch.manual_seed(seed)
    return FAMILIES[family](random.Random(f"{family}-{seed}"))
