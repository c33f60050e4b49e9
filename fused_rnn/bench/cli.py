"""``python -m fused_rnn bench [options]``: the options, and a run from options to files."""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import torch

from .cases import CELLS, DTYPE_NAME, DTYPES, MODES, SHORT_BATCHES, build_cases
from .environment import device_slug, environment, repo_root
from .pairing import fused_classes, torch_classes
from .plotting import require_matplotlib
from .report import SECTIONS_BY_NAME, ResultFiles, legend_text, print_report
from .timing import TIMING_DEFAULTS, run


def _int_list(text):
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _name_list(choices):
    def parse(text):
        names = [v.strip().lower() for v in text.split(",") if v.strip()]
        bad = [n for n in names if n not in choices]
        if bad or not names:
            raise argparse.ArgumentTypeError(
                f"expected a comma-separated subset of {', '.join(choices)}, got {text!r}")
        return list(dict.fromkeys(names))
    return parse


def _dtype_list(text):
    names = _name_list(tuple(DTYPES))(text)
    return list(dict.fromkeys(DTYPE_NAME[DTYPES[n]] for n in names))


def _yes_no_both(text):
    choices = {"no": [False], "yes": [True], "both": [False, True]}
    if text not in choices:
        raise argparse.ArgumentTypeError(f"expected no, yes or both, got {text!r}")
    return choices[text]


def _what_to_run(g):
    g.add_argument("--section", choices=("layers", "cells", "decoder", "variants", "regularizers"), default="layers",
                   help="layers: the modules over sequences (the sweeps below); cells: one step "
                        "of LSTMCell/GRUCell/RNNCell, fp64 B97 H51 (time_sequence_prediction), "
                        "fp32 B1 H256 and B64 H512, timed per call; decoder: a seq2seq model on "
                        "fused_rnn against the same model on torch.nn's modules (Luong with input "
                        "feeding, Bahdanau): training step, greedy and beam-5 decoding; variants: "
                        "each variant (LSTM peephole, layer_norm, both; GRU layer_norm) against "
                        "the same equations as a TorchScript cell loop and a plain Python loop, "
                        "and against our plain module of the same shape, T100 I=H=512 fp32, "
                        "B 64/8/1, one layer; regularizers: training (fwd+bwd) only, LSTM "
                        "weight_drop=0.5 against AWD-LSTM's WeightDrop wrapper around torch.nn.LSTM "
                        "(one layer), residual=True against three torch.nn.LSTM layers with "
                        "x + layer(x) (three layers), zoneout=0.1 and recurrent_dropout=0.25 "
                        "against a Python loop over torch.nn.LSTMCell (one layer), and each "
                        "against our plain module, T100 I=H=512 fp32, B 64/8")
    g.add_argument("--sweep", choices=("standard", "short", "full"), default="short",
                   help="standard: T100 B64 I=H=512 L1 fp32 only; short: that with "
                        f"B in {list(SHORT_BATCHES)}; full: the docs/DESIGN.md §5 grid "
                        "(H 256/1024, T 1000, 4 layers, bidirectional, packed, bf16, fp16, "
                        "each against the B sweep)")
    g.add_argument("--quick", action="store_true",
                   help="tiny sizes (T10 I=H=32, B 1/4, 1-2 layers, packed, bf16), few repeats: "
                        "a smoke run in seconds; written to the temp dir unless --out is given")
    g.add_argument("--cells", type=_name_list(CELLS), default=list(CELLS),
                   help="comma-separated subset of lstm,gru,rnn")
    g.add_argument("--modes", type=_name_list(MODES), default=list(MODES),
                   help="fwd (inference) and/or fwdbwd (training step)")
    g.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    g.add_argument("--dtype", type=_dtype_list, default=None,
                   help="comma-separated fp32,fp64,bf16,fp16; default fp32, plus bf16/fp16 in "
                        "the full sweep")
    g.add_argument("--autocast", choices=("off", "bf16", "fp16"), default="off",
                   help="run both sides (fp32 modules and inputs) under torch.autocast with "
                        "this dtype, backward outside the region as in training; on CUDA both "
                        "run in fp16 whatever the dtype, as cuDNN does")
    g.add_argument("--tf32", choices=("off", "on", "both"), default="off",
                   help="CUDA fp32: TF32 for both sides together (cuBLAS and cuDNN flags)")
    g.add_argument("--filter", metavar="REGEX", help="keep the cases whose name matches")
    g.add_argument("--list", action="store_true", help="print the cases and exit")
    g.add_argument("--null", action="store_true",
                   help="torch.nn on both sides: shows the noise floor of the harness "
                        "(ratio should be ~1)")


def _sizes(s):
    s.add_argument("--batch", "-B", type=_int_list, default=None)
    s.add_argument("--seq-len", "-T", type=_int_list, default=None)
    s.add_argument("--hidden", "-H", type=_int_list, default=None)
    s.add_argument("--input-size", "-I", type=_int_list, default=None,
                   help="default: equal to the hidden size")
    s.add_argument("--layers", "-L", type=_int_list, default=None)
    s.add_argument("--bidirectional", type=_yes_no_both, default=None, metavar="{no,yes,both}")
    s.add_argument("--packed", type=_yes_no_both, default=None, metavar="{no,yes,both}",
                   help="PackedSequence input, lengths drawn in [0.3 T, T] (30..100 for T100)")


def _timing(t):
    t.add_argument("--warmup", type=int, default=None, help="warm-up runs per side (at least 1)")
    t.add_argument("--min-repeats", type=int, default=None)
    t.add_argument("--repeats", type=int, default=None, help="most timed repeats per side")
    t.add_argument("--budget", type=float, default=None, metavar="SECONDS",
                   help="repeat past --min-repeats until this much time is spent (per case "
                        "and mode), up to --repeats")
    t.add_argument("--input-sets", type=int, default=None,
                   help="input sets to rotate through (default: enough to overflow the cache)")
    t.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    t.add_argument("--seed", type=int, default=0)


def _output(o):
    o.add_argument("--out", type=Path, default=None,
                   help="JSON path; the plot (.png) and table (.md) go next to it. Default "
                        "bench/results/<YYYY-MM-DD>-<device-slug>[-<sweep>].json")
    o.add_argument("--no-save", action="store_true", help="write no files")
    o.add_argument("--no-plot", action="store_true")
    o.add_argument("--no-progress", action="store_true")


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m fused_rnn bench",
        description="Time fused_rnn against torch.nn (cuDNN on CUDA, oneDNN/ATen on CPU) on "
                    "the same inputs and weights. Ratio = torch.nn time / fused_rnn time.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _what_to_run(p.add_argument_group("what to run"))
    _sizes(p.add_argument_group("sizes (each replaces that axis of the sweep; comma lists)"))
    _timing(p.add_argument_group("timing (defaults depend on the device; see bench/README.md)"))
    _output(p.add_argument_group("output"))
    args = p.parse_args(argv)
    section = SECTIONS_BY_NAME.get(args.section)
    if section is not None:  # a multi-side section
        unused = [name for name, given in (("--null", args.null), ("--autocast", args.autocast != "off"),
                                           ("-L", args.layers), ("--bidirectional", args.bidirectional),
                                           ("--packed", args.packed)) if given]
        if unused:
            p.error(f"--section {args.section} {section.scope}: {', '.join(unused)} does not apply")
        modes = [m for m in args.modes if m in section.modes]
        if not modes:
            p.error(f"--section {args.section} runs {', '.join(section.modes)} only, not --modes "
                    f"{','.join(args.modes)}")
        args.modes = modes
    if args.autocast != "off" and args.dtype not in (None, ["fp32"]):
        p.error(f"--autocast {args.autocast} runs float32 modules and inputs under "
                f"torch.autocast: it takes --dtype fp32 (the default), not --dtype "
                f"{','.join(args.dtype)}")
    return args


def resolve_device(name):
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("error: --device cuda but torch sees no CUDA device")
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)
    return device


def timing_from_args(args, device):
    """(warmup, min_repeats, max_repeats, budget_s): the options over the device's defaults."""
    key = "quick" if args.quick else device.type if args.section == "layers" else f"{device.type}-{args.section}"
    warmup, min_repeats, max_repeats, budget = TIMING_DEFAULTS.get(key, TIMING_DEFAULTS["cpu"])
    warmup = args.warmup if args.warmup is not None else warmup
    min_repeats = args.min_repeats if args.min_repeats is not None else min_repeats
    max_repeats = args.repeats if args.repeats is not None else max(max_repeats, min_repeats)
    budget = args.budget if args.budget is not None else budget
    return (max(1, warmup), max(1, min(min_repeats, max_repeats)), max(1, max_repeats), budget)


def default_out(env, args):
    date = env["date_utc"][:10]
    suffix = "".join([f"-{args.section}" if args.section != "layers" else "",
                      f"-{args.sweep}" if args.sweep != "short" and args.section == "layers" else "",
                      f"-tf32{args.tf32}" if env["device"] == "cuda" and args.tf32 != "off"
                      else "",
                      f"-autocast{args.autocast}" if args.autocast != "off" else "",
                      f"-{'-'.join(args.dtype)}" if args.dtype not in (None, ["fp32"]) else "",
                      "-null" if args.null else ""])
    name = f"{date}-{device_slug(env)}{suffix}.json"
    if args.quick:  # a smoke run: nothing to keep in the repository
        return Path(tempfile.gettempdir()) / "fused_rnn-bench" / name.replace(".json",
                                                                              "-quick.json")
    root = repo_root()
    return (root if root is not None else Path.cwd()) / "bench" / "results" / name


def _run_config(args, device, timing):
    config = {"section": args.section, "sweep": "quick" if args.quick else args.sweep, "modes": args.modes,
              "tf32": args.tf32 if device.type == "cuda" else None, "autocast": args.autocast,
              "timing": dict(zip(("warmup", "min_repeats", "max_repeats", "budget_s"), timing)),
              "input_sets": args.input_sets, "seed": args.seed,
              "rel_diff": "||fused - torch.nn||_2 / ||torch.nn||_2 in float64, max over outputs "
                          "(fwd) and outputs + all gradients (fwdbwd)",
              "ratio": "torch.nn median ms / fused median ms",
              "memory": "cuda: max_memory_allocated during one fwd+bwd minus memory_allocated "
                        "before it; *_saved_bytes (all devices): unique storages saved by "
                        "autograd (saved_tensors_hooks), parameters and inputs excluded"}
    section = SECTIONS_BY_NAME.get(args.section)
    return config if section is None else {**config, **section.config}


def _plot_wanted(args):
    """Say at the start, not after a long run, that there will be no plot."""
    if args.no_save or args.no_plot:
        return False
    try:
        require_matplotlib()
    except ImportError as e:
        print(f"warning: no plot: {e}", file=sys.stderr)
        return False
    return True


def _announce(cases, args, env, device, label):
    section = SECTIONS_BY_NAME.get(args.section)
    against = "torch.nn" if section is None else section.against
    print(f"{len(cases)} case(s) x {len(args.modes)} mode(s) on {env['device_name']} "
          f"({device}); {label} vs {against}", file=sys.stderr)
    load = env["loadavg_at_start"]
    if load and load[0] > 0.5 * (os.cpu_count() or 1):
        print(f"warning: load average {load[0]} on {os.cpu_count()} CPUs: other work is running "
              "and the timings will be noisy", file=sys.stderr)


def _measure(cases, device, timing, args, candidate, files):
    """The rows, and whether Ctrl-C cut the run short (the rows so far are kept)."""
    rows = []
    try:
        run(cases, device, timing, modes=args.modes, candidate=candidate, seed=args.seed,
            n_sets=args.input_sets, progress=not args.no_progress,
            on_rows=files.save if files else None, rows=rows)
    except KeyboardInterrupt:
        print("interrupted: reporting the cases measured so far", file=sys.stderr)
        return rows, True
    return rows, False


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    threads_before = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return _main(args, argv)
    finally:
        torch.set_num_threads(threads_before)


def _main(args, argv):
    device = resolve_device(args.device)
    cases = build_cases(args, device)
    if args.list:
        for c in cases:
            print(c.name)
        print(f"{len(cases)} case(s) x {len(args.modes)} mode(s)", file=sys.stderr)
        return 0
    if not cases:
        print("error: no case selected", file=sys.stderr)
        return 2
    timing = timing_from_args(args, device)
    candidate, label = (torch_classes(), "torch.nn(null)") if args.null else (fused_classes(),
                                                                              "fused_rnn")
    with_plot = _plot_wanted(args)
    env = environment(device, argv, candidate_label=label)
    out = None if args.no_save else (args.out or default_out(env, args))
    files = ResultFiles(out, env, _run_config(args, device, timing)) if out else None
    _announce(cases, args, env, device, label)
    rows, interrupted = _measure(cases, device, timing, args, candidate, files)
    legend = legend_text(env, timing, label, autocast=args.autocast, section=args.section)
    summ = print_report(rows, legend)
    if files:
        files.finish(rows, not interrupted, legend, label, with_plot)
    if interrupted:
        return 130
    return 1 if summ["errors"] else 0
