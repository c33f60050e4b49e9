"""What every example shares: its command line, progress bars, and where its outputs go.

Each example runs as ``python examples/NAME.py [--quick] [--out DIR] [--seed N] [--epochs N]
[--device cpu|cuda] [--threads N]``; ``--quick`` is the short run the tests use (under a minute on two
cores), and the outputs (PNGs, ``results.json``) go into ``--out``. matplotlib and tqdm are
the ``bench`` extra (``pip install 'fused_rnn[bench]'``).
"""
import argparse
import json
import os
import random

import torch


def parse_args(description, extra=None):
    """Parses the shared options, plus those ``extra(parser)`` adds; creates ``--out``, seeds
    torch and random with ``--seed`` so that a run is repeatable, and sets torch's threads."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="short run (what the tests use)")
    parser.add_argument("--out", default=".", help="folder for the PNG and results.json (default: .)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--epochs", type=int, default=None, help="override the mode's number of epochs")
    parser.add_argument("--device", default="cpu", help="torch device to train on (default: cpu)")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads for torch (default 1: the examples' small GEMMs gain little from more, "
                             "and on a shared 2-core machine OpenMP threads waiting on each other made steps "
                             "many times slower; 0: torch's own choice)")
    if extra is not None:
        extra(parser)
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    return args


def progress(iterable, **kw):
    """A tqdm progress bar over ``iterable`` (keywords go to tqdm: desc, total, ...)."""
    from tqdm.auto import tqdm
    return tqdm(iterable, dynamic_ncols=True, **kw)


def tbptt_epoch(model, step, inputs, targets, k, optimizer=None, schedule=None, clip=1.0, desc="", show=None):
    """Mean cross-entropy (nats per target) of a language model over ``targets``, read in chunks
    of ``k`` steps of ``inputs`` (token ids in ``model.rnn``'s layout) with the state carried
    from chunk to chunk (fused_rnn.tbptt). ``step(ids, state) -> (logits, new rnn state)``.
    Trains when ``optimizer`` is given: gradients clipped to norm ``clip``, ``schedule`` (if
    any) stepped after each update, ``show(loss)`` (a string) on the progress bar."""
    import torch.nn.functional as F

    from fused_rnn import tbptt

    training = optimizer is not None
    model.train(training)
    state, total, count = None, 0.0, 0
    chunks = list(tbptt.chunks(model.rnn, inputs.unsqueeze(-1), k))  # ids as [.., .., 1]: the layout's rank
    bar = progress(chunks, desc=desc, unit="chunk", leave=False, disable=not training)
    for chunk in bar:
        y = chunk.slice(targets)
        with torch.set_grad_enabled(training):
            logits, new = step(chunk.slice(inputs), chunk.state(state))
            loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
        if training:
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            optimizer.step()
            if schedule is not None:
                schedule.step()
            if show is not None:
                bar.set_postfix_str(show(loss.item()))
        state = chunk.carry(state, new)
        total, count = total + loss.item() * y.numel(), count + y.numel()
    return total / count


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (examples never open a window)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_png(fig, out_dir, name):
    """Saves ``fig`` as ``out_dir/name`` (``.png`` added if missing), closes it, returns the path."""
    path = os.path.join(out_dir, name if name.endswith(".png") else name + ".png")
    fig.savefig(path, dpi=120, bbox_inches="tight")
    pyplot().close(fig)
    return path


def save_results(results, out_dir, name="results.json"):
    """Writes ``results`` (a JSON-able dict) to ``out_dir/name`` and returns the path."""
    path = os.path.join(out_dir, name)
    with open(path, "w") as f:
        json.dump(results, f, indent=2)
    return path
