"""The PNG: ratio against batch size, one line per series (a case minus B), one panel per mode;
in a multi-side section one line per series and ratio (variants: TS/fused, Py/fused,
fused/plain; regularizers: baseline/fused, fused/plain).

matplotlib is an optional extra (``pip install 'fused_rnn[bench]'``), imported only here.
"""
from __future__ import annotations

import math

from .cases import MODE_LABEL, MODES
from .report import section_of

MISSING_MATPLOTLIB = "fused_rnn bench needs matplotlib: pip install 'fused_rnn[bench]'"
# Colour = cell; line style and marker = the rest of the series name (the variant).
COLORS = {"lstm": "tab:blue", "gru": "tab:orange", "rnn": "tab:green"}
STYLES = ["-", ":", "-.", (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1)), (0, (1, 2)), (0, (8, 2, 2, 2))]
MARKERS = "osD^v<>ph*"


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


def _draw(ax, ok, mode, labels, variant_of, key="ratio", section=None):
    """One line per series; ``variant_of`` gives a variant the same style in every panel. A
    ratio of a multi-side ``section`` is coloured and labelled by its name."""
    for s, label in labels.items():
        pts = sorted((r["batch"], r[key]) for r in ok if r["series"] == s
                     and r["mode"] == mode and r.get(key))
        if not pts:
            continue
        cell, *variant = s.split()
        # The colour tells the cells apart, or in a multi-side section the ratios: there the
        # style keys on the whole series ("lstm layer_norm" and "gru layer_norm" differ).
        k = variant_of.setdefault(" ".join(variant) if section is None else s, len(variant_of))
        color = COLORS.get(cell, "k") if section is None else section.ratio_colors.get(key, "k")
        if section is not None:
            label = section.ratio_label[key] + (f" {label}" if len(labels) > 1 else "")
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
    section = section_of(ok)
    keys = ["ratio"] if section is None else list(section.ratio_label)
    labels, common = _labels(list(dict.fromkeys(r["series"] for r in ok)))
    fig = Figure(figsize=(6.5 * len(modes) + 2.5, 4.8), layout="constrained")
    FigureCanvasAgg(fig)  # attaches itself to the figure: savefig without pyplot's state
    axes = fig.subplots(1, len(modes), squeeze=False)[0]
    ticks = _ratio_ticks([r[k] for r in ok for k in keys if r.get(k)])
    batches = sorted({r["batch"] for r in ok})
    variant_of = {}
    ylabel = f"torch.nn time / {candidate_label} time" if section is None else "time ratio"
    reading = f"{candidate_label} faster" if section is None else section.reading
    for ax, mode in zip(axes, modes):
        for key in keys:
            _draw(ax, ok, mode, labels, variant_of, key, section)
        _style(ax, batches, ticks, MODE_LABEL[mode], ylabel)
    handles, names = axes[0].get_legend_handles_labels()
    # One panel of a multi-side section (the regularizers' fwd+bwd) is too narrow for the title
    # and the legend side by side: the legend goes below it, the reading on a line of its own.
    narrow = section is not None and len(modes) == 1
    if narrow:
        fig.legend(handles, names, loc="outside lower center", ncols=2, fontsize="small")
    else:
        fig.legend(handles, names, loc="outside right upper", fontsize="small")
    fig.suptitle(f"{' '.join(t for t in common if not t.startswith('B'))}  on "
                 f"{env['device_name']} ({env['device']}, {env['threads']} threads), "
                 f"torch {env['torch']}{chr(10) if narrow else '  '}(> 1: {reading})", fontsize="medium")
    fig.savefig(path, dpi=110)
    return path
