"""The PNG: ratio against batch size, one line per series (a case minus B), one panel per mode;
in the variants section one line per series and ratio (TS/fused, Py/fused, fused/plain).

matplotlib is an optional extra (``pip install 'fused_rnn[bench]'``), imported only here.
"""
from __future__ import annotations

import math

from .cases import MODE_LABEL, MODES
from .variants import RATIO_LABEL

MISSING_MATPLOTLIB = "fused_rnn bench needs matplotlib: pip install 'fused_rnn[bench]'"
# Colour = cell; line style and marker = the rest of the series name (the variant).
COLORS = {"lstm": "tab:blue", "gru": "tab:orange", "rnn": "tab:green"}
STYLES = ["-", ":", "-.", (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1)), (0, (1, 2)), (0, (8, 2, 2, 2))]
MARKERS = "osD^v<>ph*"
RATIO_COLORS = {"torchscript_over_fused": "tab:red", "python_over_fused": "tab:purple",
                "fused_over_plain": "tab:gray"}


def require_matplotlib():
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ImportError(MISSING_MATPLOTLIB) from None


def _labels(series):
    """Each series labelled by the tokens that set it apart; the tokens all of them share."""
    tokens = {s: s.split() for s in series}
    common = [t for t in tokens[series[0]] if all(t in tokens[s] for s in series)]
    return {s: " ".join(t for t in tokens[s] if t not in common) or s for s in series}, common


def _ratio_ticks(ratios):
    """Powers of two from below the smallest ratio (or 1) to above the largest, at most ~8."""
    lo, hi = min(ratios + [1.0]), max(ratios + [1.0])
    k_lo, k_hi = math.floor(math.log2(lo)), math.ceil(math.log2(hi))
    step = max(1, math.ceil((k_hi - k_lo) / 8))
    return [2.0 ** k for k in range(k_lo, k_hi + step, step)]


def _draw(ax, ok, mode, labels, variant_of, key="ratio"):
    """One line per series; ``variant_of`` gives a variant the same style in every panel. A
    ratio other than "ratio" (the variants section) is coloured and labelled by its name."""
    for s, label in labels.items():
        pts = sorted((r["batch"], r[key]) for r in ok if r["series"] == s
                     and r["mode"] == mode and r.get(key))
        if not pts:
            continue
        cell, *variant = s.split()
        # The colour tells the cells apart, or in the variants section the ratios: there the
        # style keys on the whole series ("lstm layer_norm" and "gru layer_norm" differ).
        k = variant_of.setdefault(" ".join(variant) if key == "ratio" else s, len(variant_of))
        color = COLORS.get(cell, "k") if key == "ratio" else RATIO_COLORS.get(key, "k")
        if key != "ratio":
            label = RATIO_LABEL[key] + (f" {label}" if len(labels) > 1 else "")
        ax.plot([p[0] for p in pts], [p[1] for p in pts], color=color,
                linestyle=STYLES[k % len(STYLES)], marker=MARKERS[k % len(MARKERS)],
                markersize=4, label=label)


def _style(ax, batches, ticks, title, ylabel):
    """log2 axes ticked at the batch sizes and at powers of two, and the line ratio = 1."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    ax.axhline(1.0, color="gray", linestyle="--", linewidth=1)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    for axis, at in ((ax.xaxis, batches), (ax.yaxis, ticks)):
        axis.set_major_locator(FixedLocator(at))
        axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        axis.set_minor_locator(NullLocator())
    ax.set_ylim(ticks[0] / 1.1, ticks[-1] * 1.1)
    ax.set_xlabel("batch size")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="major", alpha=0.3)


def plot(rows, path, env, candidate_label="fused_rnn"):
    """Write the PNG to ``path``; None (nothing written) when no row has a ratio."""
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ok = [r for r in rows if r.get("ratio")]
    modes = [m for m in MODES if any(r["mode"] == m for r in ok)]
    if not modes:
        return None
    variants = any(r.get("kind") == "variant" for r in ok)
    keys = list(RATIO_LABEL) if variants else ["ratio"]
    labels, common = _labels(list(dict.fromkeys(r["series"] for r in ok)))
    fig = Figure(figsize=(6.5 * len(modes) + 2.5, 4.8), layout="constrained")
    FigureCanvasAgg(fig)  # attaches itself to the figure: savefig without pyplot's state
    axes = fig.subplots(1, len(modes), squeeze=False)[0]
    ticks = _ratio_ticks([r[k] for r in ok for k in keys if r.get(k)])
    batches = sorted({r["batch"] for r in ok})
    variant_of = {}
    ylabel = "time ratio" if variants else f"torch.nn time / {candidate_label} time"
    reading = "fused faster; in fused/plain: the variant slower" if variants else f"{candidate_label} faster"
    for ax, mode in zip(axes, modes):
        for key in keys:
            _draw(ax, ok, mode, labels, variant_of, key)
        _style(ax, batches, ticks, MODE_LABEL[mode], ylabel)
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside right upper", fontsize="small")
    fig.suptitle(f"{' '.join(t for t in common if not t.startswith('B'))}  on "
                 f"{env['device_name']} ({env['device']}, {env['threads']} threads), "
                 f"torch {env['torch']}  (> 1: {reading})", fontsize="medium")
    fig.savefig(path, dpi=110)
    return path
