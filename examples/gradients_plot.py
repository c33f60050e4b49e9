"""The figure of examples/gradients.py: ||dL/dh_t|| against t before training (at the longest T,
where vanishing shows most) and after it, training loss and gradient norm per SGD step (at
the shortest T, where training succeeds), and, with several lengths, held-out accuracy against
T and the training loss at the longest T. Colour: the cell; dashed: no clipping."""
import math
from functools import partial

from _common import pyplot, save_png


def plot(runs, out_dir, clip, classes):
    """``runs``: the dicts of gradients.run. Returns the PNG's path."""
    lengths = sorted({r["steps"] for r in runs})
    shortest, longest = lengths[0], lengths[-1]
    loss = partial(_loss, chance_loss=math.log(classes))
    panels = [[(_before, longest), (_after, shortest)], [(loss, shortest), (partial(_grad_norm, clip=clip), shortest)]]
    if len(lengths) > 1:
        panels[0].append((_accuracy, lengths))
        panels[1].append((loss, longest))
    plt = pyplot()
    fig, axes = plt.subplots(2, len(panels[0]), figsize=(6 * len(panels[0]), 8), squeeze=False)
    colors = {cell: f"C{i}" for i, cell in enumerate(dict.fromkeys(r["cell"] for r in runs))}
    for row, row_panels in enumerate(panels):
        for col, (draw, at) in enumerate(row_panels):
            draw(axes[row, col], runs, at, colors)
            axes[row, col].legend(fontsize=7)
    fig.suptitle("Remember the first token: fused RNN-tanh, LSTM, GRU trained by SGD; dashed: no clipping")
    fig.tight_layout()
    return save_png(fig, out_dir, "gradients.png")


def _style(run, colors):
    return dict(color=colors[run["cell"]], linestyle="-" if run["clip"] else "--")


def _label(run):
    return f"{run['name']} (acc {run['accuracy']:.2f})"


def _at(runs, steps):
    return [r for r in runs if r["steps"] == steps]


def _before(ax, runs, steps, colors):
    for r in _at(runs, steps):
        if r["clip"]:   # before training the clipped and the unclipped run are the same model
            ax.semilogy(range(1, steps + 1), r["grad_h_before"], marker="o", color=colors[r["cell"]], label=r["cell"])
    ax.set(title=f"T={steps}, before training: ||dL/dh_t||", xlabel="step t")


def _after(ax, runs, steps, colors):
    for r in _at(runs, steps):
        ax.semilogy(range(1, steps + 1), r["grad_h_after"], marker="o", label=_label(r), **_style(r, colors))
    ax.set(title=f"T={steps}, after training: ||dL/dh_t||", xlabel="step t")


def _loss(ax, runs, steps, colors, chance_loss):
    for r in _at(runs, steps):
        ax.plot(_smooth(r["loss"]), label=_label(r), **_style(r, colors))
    ax.axhline(chance_loss, color="gray", linestyle=":", label="chance (log of the classes)")
    ax.set(title=f"T={steps}, training loss (mean of 20 steps)", xlabel="SGD step")


def _grad_norm(ax, runs, steps, colors, clip):
    for r in _at(runs, steps):
        ax.semilogy(r["grad_norm"], label=_label(r), alpha=0.7, **_style(r, colors))
    ax.axhline(clip, color="gray", linestyle=":", label=f"clip max_norm {clip:g}")
    ax.set(title=f"T={steps}, gradient norm before clipping", xlabel="SGD step")


def _accuracy(ax, runs, lengths, colors):
    for name in dict.fromkeys(r["name"] for r in runs):
        mine = [r for r in runs if r["name"] == name]
        ax.plot(lengths, [r["accuracy"] for r in mine], marker="o", label=name, **_style(mine[0], colors))
    ax.set(title="held-out accuracy against T", xlabel="T (steps to remember over)", xticks=lengths, ylim=(0, 1.05))


def _smooth(values, width=20):
    """The mean of the last ``width`` values at each step (of fewer at the start)."""
    windows = [values[max(0, i - width + 1):i + 1] for i in range(len(values))]
    return [sum(w) / len(w) for w in windows]
