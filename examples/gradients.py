"""Vanishing and exploding gradients, measured: the norm of dL/dh_t against the step t for a
fused Elman RNN (tanh), LSTM and GRU on a task whose answer lies at the first step, trained
with and without gradient clipping.

The task: a sequence of T tokens whose first is one of 4 classes and whose other T - 1 are
noise (4 other symbols, drawn at random); the model must name the first token after reading
the last (chance: 25%). All the error signal enters at step T, so everything the model learns
about step 1 has travelled back T - 1 steps: ||dL/dh_t|| shows how much arrives. Training is
SGD with momentum, where a gradient's size is the step's size (Adam would rescale both a
vanished and an exploded gradient), with or without ``clip_grad_norm_(max_norm=1)``; the same
seed gives the clipped and the unclipped run the same initial weights and batches. The LSTM
starts with forget-gate bias 1 (Gers et al. 2000; Jozefowicz et al. 2015; torch's default is
0), the usual choice for long-range memory. ``--quick`` states its threshold: every clipped run
(RNN-tanh, LSTM, GRU) names the first of 10 tokens for 90% of held-out sequences
(``quick_threshold`` in results.json; seeds 0-4 all gave 100%, while 7 of their 15 unclipped
runs stayed below 80%).

    python examples/gradients.py --quick --out /tmp/gradients   # T = 10, ~30 s on 2 cores
    python examples/gradients.py --out docs/examples/gradients   # T = 10, 20 and 30; ~3 min

Writes ``gradients.png`` (||dL/dh_t|| against t before and after training, training loss and
gradient norm per step; with several T, accuracy against T) and ``results.json`` (held-out
accuracy of each run, the measured norms) into ``--out``. ``--epochs N`` trains N times as long.
"""
import os
import time

import torch
import torch.nn.functional as F
from _common import parse_args, progress, save_results
from gradients_plot import plot
from torch import nn

import fused_rnn

CLASSES, NOISE = 4, 4
CELLS = {"rnn_tanh": fused_rnn.RNN, "lstm": fused_rnn.LSTM, "gru": fused_rnn.GRU}
CLIP = 1.0
QUICK_THRESHOLD = 0.9
# lengths: the task's T, each trained from scratch for train_steps SGD steps.
MODES = {
    "quick": dict(lengths=(10,), train_steps=600, hidden=32, batch=64, lr=0.1),
    "full": dict(lengths=(10, 20, 30), train_steps=1000, hidden=32, batch=64, lr=0.1),
}


def make_batch(steps, batch, device):
    """One-hot tokens [steps, batch, CLASSES + NOISE] and the class of each first token."""
    first = torch.randint(0, CLASSES, (batch,))
    tokens = torch.randint(CLASSES, CLASSES + NOISE, (steps, batch))
    tokens[0] = first
    return F.one_hot(tokens, CLASSES + NOISE).float().to(device), first.to(device)


class Recall(nn.Module):
    """A fused recurrent layer and a linear read-out of its last hidden state."""

    def __init__(self, cell, hidden):
        super().__init__()
        self.cell = cell
        self.rnn = CELLS[cell](CLASSES + NOISE, hidden)
        self.head = nn.Linear(hidden, CLASSES)
        if cell == "lstm":   # gates i|f|g|o: the second quarter of each bias is the forget gate's
            with torch.no_grad():
                self.rnn.bias_ih_l0[hidden:2 * hidden].fill_(1.0)
                self.rnn.bias_hh_l0[hidden:2 * hidden].zero_()

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out[-1])


def hidden_grad_norms(model, steps, device, batch=256):
    """||dL/dh_t|| for t = 1..steps (mean over a batch). The recurrence runs one step per call,
    so that each h_t is a tensor of its own whose gradient autograd keeps (retain_grad); a
    whole-sequence call's outputs would only carry the loss's direct gradient, not what
    flows back through the later steps."""
    x, target = make_batch(steps, batch, device)
    state, hidden = None, []
    for t in range(steps):
        _, state = model.rnn(x[t:t + 1], state)
        h = state[0] if model.cell == "lstm" else state
        h.retain_grad()
        hidden.append(h)
    F.cross_entropy(model.head(hidden[-1][0]), target).backward()
    model.zero_grad()
    return [h.grad[0].norm(dim=-1).mean().item() for h in hidden]


def accuracy(model, steps, device, batch=2000):
    x, target = make_batch(steps, batch, device)
    with torch.no_grad():
        return (model(x).argmax(-1) == target).float().mean().item()


def train(model, steps, mode, clip, device, bar):
    """SGD with momentum; returns the loss and the (pre-clipping) gradient norm of each step."""
    optimizer = torch.optim.SGD(model.parameters(), lr=mode["lr"], momentum=0.9)
    losses, grad_norms = [], []
    for _ in range(mode["train_steps"]):
        x, target = make_batch(steps, mode["batch"], device)
        loss = F.cross_entropy(model(x), target)
        optimizer.zero_grad()
        loss.backward()
        # With max_norm = inf it only measures: the total norm, the same number either way.
        norm = nn.utils.clip_grad_norm_(model.parameters(), CLIP if clip else float("inf"))
        optimizer.step()
        losses.append(loss.item())
        grad_norms.append(norm.item())
        bar.update()
    return losses, grad_norms


def run(cell, clip, steps, mode, seed, device, bar):
    """One model trained on the task of length ``steps``: accuracy, ||dL/dh_t|| before and
    after training, and the loss and gradient norm of each training step."""
    torch.manual_seed(seed)   # the clipped and the unclipped run: same weights, same batches
    model = Recall(cell, mode["hidden"]).to(device)
    before = hidden_grad_norms(model, steps, device)
    losses, grad_norms = train(model, steps, mode, clip, device, bar)
    return {"name": f"{cell}_clipped" if clip else cell, "cell": cell, "clip": CLIP if clip else None,
            "steps": steps, "accuracy": accuracy(model, steps, device),
            "grad_h_before": before, "grad_h_after": hidden_grad_norms(model, steps, device),
            "loss": losses, "grad_norm": grad_norms}


def summarize(runs, mode, args):
    """What results.json holds: the settings, and per length T ("T10", ...) each run's held-out
    accuracy, largest gradient norm and ||dL/dh_t|| curves (before training one per cell: the
    clipped and the unclipped run start alike), and ||dL/dh_1|| / ||dL/dh_T|| before training."""
    lengths = {f"T{r['steps']}": [q for q in runs if q["steps"] == r["steps"]] for r in runs}

    def per_length(value, per_cell=False):
        # per_cell: one entry per cell, from its clipped run (the same model before training)
        return {length: {r["cell"] if per_cell else r["name"]: value(r) for r in group if r["clip"] or not per_cell}
                for length, group in lengths.items()}

    return {"mode": "quick" if args.quick else "full", "seed": args.seed, **mode, "clip_max_norm": CLIP,
            "chance": 1 / CLASSES, "quick_threshold": QUICK_THRESHOLD,
            "accuracy": per_length(lambda r: r["accuracy"]),
            "max_grad_norm": per_length(lambda r: max(r["grad_norm"])),
            "grad_h_ratio_first_to_last_before_training": per_length(
                lambda r: r["grad_h_before"][0] / r["grad_h_before"][-1], per_cell=True),
            "grad_h_before_training": per_length(lambda r: r["grad_h_before"], per_cell=True),
            "grad_h_after_training": per_length(lambda r: r["grad_h_after"])}


def main():
    args = parse_args(__doc__.split("\n\n")[0])
    mode = dict(MODES["quick" if args.quick else "full"])
    if args.epochs:   # one "epoch" here is one pass of train_steps fresh batches
        mode["train_steps"] *= args.epochs
    started = time.time()
    bar = progress(range(len(mode["lengths"]) * len(CELLS) * 2 * mode["train_steps"]), desc="training", unit="step")
    runs = [run(cell, clip, steps, mode, args.seed, args.device, bar)
            for steps in mode["lengths"] for cell in CELLS for clip in (False, True)]
    bar.close()
    results = summarize(runs, mode, args)
    results["png"] = os.path.basename(plot(runs, args.out, CLIP, CLASSES))
    results["seconds"] = round(time.time() - started, 1)
    save_results(results, args.out)
    for length, accuracies in results["accuracy"].items():
        print(f"{length} held-out accuracy (chance {1 / CLASSES:.2f}):",
              ", ".join(f"{name} {acc:.3f}" for name, acc in accuracies.items()))
    print(f"{results['seconds']} s")


if __name__ == "__main__":
    main()
