"""What a run reports: the progress lines, the table (plain and Markdown), the summary, the
legend, and the files (JSON, Markdown, plot). The rows of a multi-side section (the variants
section's four sides and three ratios, bench/variants.py; the regularizers section's,
bench/regularizers.py) have their section's columns, summary and legend (multiside.Section)."""
from __future__ import annotations

import json
import math
import os
import sys
import time

from .cases import MODE_LABEL, MODES, STANDARD
from .environment import loadavg
from .regularizers import SECTION as REGULARIZERS_SECTION
from .variants import SECTION as VARIANTS_SECTION

FORMAT = "fused_rnn-bench/1"
HEAD = ["case", "mode", "torch.nn via", "torch.nn ms", "fused_rnn ms", "ratio", "rel diff",
        "torch.nn MiB", "fused_rnn MiB"]
_MET = {True: "met", False: "NOT met", None: "-"}
# The multi-side sections by their rows' kind, and by name (--section).
SECTIONS = {s.kind: s for s in (VARIANTS_SECTION, REGULARIZERS_SECTION)}
SECTIONS_BY_NAME = {s.name: s for s in SECTIONS.values()}
# The variants section's definitions in the JSON's config (in place of torch.nn's).
VARIANTS_CONFIG = VARIANTS_SECTION.config


def _fmt(v, spec):
    return "-" if v is None else format(v, spec)


def _mib(v):
    if v is None:
        return "-"
    v /= 2**20
    return f"{v:.3f}" if v < 1 else f"{v:.1f}"


def _unmeasured(row):
    """'error: ...' or 'skipped: ...' for a row without times, else None."""
    key = next((k for k in ("error", "skipped") if k in row), None)
    return None if key is None else f"{key}: {row[key]}"


def section_of(rows):
    """The multi-side section of the rows (one per run), or None (torch.nn against fused_rnn)."""
    return next((SECTIONS[r["kind"]] for r in rows if r.get("kind") in SECTIONS), None)


def progress_line(row):
    head = f"{row['case']:<40} {MODE_LABEL[row['mode']]:<8} "
    note = _unmeasured(row)
    if note:
        return head + note
    section = section_of([row])
    if section is not None:  # the sides the case has (a regularizer case has one of the baselines)
        return head + "  ".join([f"{section.side_label[s]} {row[f'{s}_ms']:.3f} ms" for s in section.sides
                                 if f"{s}_ms" in row]
                                + [f"{section.ratio_label[k]} {_fmt(row.get(k), '.2f')}" for k in section.ratios]
                                + [f"rel.diff {_fmt(row.get('rel_diff'), '.1e')}"])
    return head + (f"torch.nn {row['torch_ms']:9.3f} ms  fused {row['fused_ms']:9.3f} ms  "
                   f"ratio {_fmt(row.get('ratio'), '.2f')}  rel.diff "
                   f"{_fmt(row.get('rel_diff'), '.1e')}")


def _cells(r):
    """The table cells of one row; an error, skipped or dtype-mismatched row has one more
    cell past the last column: the error, the reason or the dtypes."""
    note = _unmeasured(r)
    if note:
        return [r["case"], MODE_LABEL[r["mode"]], r.get("torch_backend", "-"),
                "-", "-", "-", "-", "-", "-", note[:120]]
    flag = " !" if r.get("suspect") else ""
    return [r["case"], MODE_LABEL[r["mode"]], r.get("torch_backend", "-"),
            f"{r['torch_ms']:.3f}", f"{r['fused_ms']:.3f}", _fmt(r.get("ratio"), ".2f"),
            _fmt(r.get("rel_diff"), ".1e") + flag,
            _mib(r.get("torch_mem_bytes")), _mib(r.get("fused_mem_bytes"))] + (
                [r["dtype_mismatch"]] if "dtype_mismatch" in r else [])


def _section_cells(r, section):
    """A multi-side row's cells (section.head; "-" for a side the case does not have), with the
    same extra cell as _cells."""
    head = [r["case"], MODE_LABEL[r["mode"]]]
    note = _unmeasured(r)
    if note:
        return head + ["-"] * (len(section.head) - 2) + [note[:160]]
    flag = " !" if r.get("suspect") else ""
    return (head + [_fmt(r.get(f"{s}_ms"), ".3f") for s in section.sides]
            + [_fmt(r.get(k), ".2f") for k in section.ratios]
            + [_fmt(r.get("rel_diff"), ".1e") + flag] + ([r["dtype_mismatch"]] if "dtype_mismatch" in r else []))


def _markdown(body, head, n_text):
    n = len(head)
    lines = ["| " + " | ".join(head) + " |",
             "|" + "|".join(["---"] * n_text + ["---:"] * (n - n_text)) + "|"]
    lines += ["| " + " | ".join(b[:n]) + (f" {b[-1]}" if len(b) > n else "") + " |"
              for b in body]
    return "\n".join(lines)


def _aligned(body, head, n_text):
    """Text columns (the first n_text) left-aligned, numbers right-aligned."""
    n = len(head)
    widths = [max(len(head[i]), *(len(b[i]) for b in body)) if body else len(head[i])
              for i in range(n)]

    def line(cells):
        out = [c.ljust(w) for c, w in zip(cells[:n_text], widths)]
        out += [c.rjust(w) for c, w in zip(cells[n_text:n], widths[n_text:])]
        text = "  ".join(out)
        return text + ("  " + cells[-1] if len(cells) > n else "")
    return "\n".join([line(head), "  ".join("-" * w for w in widths)] + [line(b) for b in body])


def table(rows, markdown=False):
    section = section_of(rows)
    if section is None:
        head, n_text, body = HEAD, 3, [_cells(r) for r in rows]
    else:
        head, n_text, body = section.head, 2, [_section_cells(r, section) for r in rows]
    return _markdown(body, head, n_text) if markdown else _aligned(body, head, n_text)


def _is_standard(r, batches=(STANDARD["batch"],), any_layers=False):
    """The standard case (T100 B64 I=H=512 L1 fp32), or its shape at any of ``batches`` (and,
    where ``any_layers``, any number of layers)."""
    skip = ("input_size", "batch") + (("layers",) if any_layers else ())
    std = {k: v for k, v in STANDARD.items() if k not in skip}
    return (all(r.get(k) == v for k, v in std.items()) and r.get("batch") in batches
            and r.get("input_size") == STANDARD["hidden"] and not r.get("tf32"))


def _targets(rows, section):
    """Each case's targets where the issue sets them (reported, never asserted): the ratio, the
    bound, and whether it is met. The cases' layers are their own (a variant's 1, the residual
    regularizer's 3)."""
    out = []
    for r in rows:
        if (r.get("kind") == section.kind and r["mode"] == section.target_mode
                and _is_standard(r, section.target_batches, any_layers=True)):
            entry = {"case": r["case"], "mode": r["mode"]}
            for key, (op, bound) in section.targets.items():
                v = r.get(key)
                entry[key] = {"value": v, "target": f"{op} {bound:g}",
                              "met": None if v is None else (v >= bound if op == ">=" else v <= bound)}
            out.append(entry)
    return out


def summary(rows):
    out = {}
    section = section_of(rows)
    keys = ["ratio"] if section is None else list(section.ratios)
    for mode in MODES:
        for key in keys:
            ratios = [r[key] for r in rows if r["mode"] == mode and r.get(key)]
            if ratios:
                out.setdefault(mode, {}).update({
                    f"geomean_{key}": math.exp(sum(map(math.log, ratios)) / len(ratios)),
                    f"min_{key}": min(ratios), f"max_{key}": max(ratios), "n": len(ratios)})
    if section is not None:
        out["targets"] = _targets(rows, section)
    for r in rows:
        if r.get("ratio") and _is_standard(r) and section is None:
            out.setdefault("standard_case", {}).setdefault(r["cell"], {})[r["mode"]] = r["ratio"]
    out["errors"] = sum("error" in r for r in rows)
    out["skipped"] = sum("skipped" in r for r in rows)
    out["suspect"] = sum(bool(r.get("suspect")) for r in rows)
    return out


def _autocast_line(autocast):
    if autocast == "off":
        return []
    return [f"autocast: {autocast}: both sides' calls (float32 modules and inputs) under "
            f"torch.autocast(dtype={autocast}), backward outside it; rel diff tolerance of "
            f"{autocast}; result dtypes compared with torch.nn's (out_dtypes in the JSON)"]


def legend_text(env, timing, candidate_label, autocast="off", section="layers"):
    mem = ("CUDA max allocated during one fwd+bwd above the pre-call baseline"
           if env["device"] == "cuda" else
           "bytes autograd saves for backward (unique storages, parameters and inputs excluded)")
    device = (f"device: {env['device_name']} ({env['device']}, {env['threads']} threads), "
              f"torch {env['torch']}" + (f", CUDA {env['cuda']}, cuDNN {env['cudnn']}"
                                         if env["device"] == "cuda" else "")
              + f", git {(env['git_sha'] or 'none')[:10]}{'+dirty' if env['git_dirty'] else ''}")
    timing_line = (f"timing: warm-up {timing[0]}, {timing[1]}..{timing[2]} repeats within {timing[3]} s "
                   "per case and mode, sides in random order per repeat")
    if section in SECTIONS_BY_NAME:
        return "\n".join([device] + SECTIONS_BY_NAME[section].legend_lines(timing_line, mem))
    return "\n".join([
        device,
        (f"ratio = torch.nn ms / {candidate_label} ms (median of repeats; > 1 = "
         f"{candidate_label} faster); forward = inference under no_grad; fwd+bwd includes all "
         "weight gradients"),
        timing_line,
        ("rel diff = ||fused - torch.nn|| / ||torch.nn|| (float64, largest over outputs and, "
         "for fwd+bwd, every gradient); '!' = above the tolerance of the dtype, or result "
         "dtypes other than torch.nn's"),
        f"MiB (fwd+bwd): {mem}",
    ] + _autocast_line(autocast))


def print_report(rows, legend):
    """The table, the legend and the summary lines on stdout; returns the summary."""
    print()
    print(table(rows))
    print()
    print(legend)
    summ = summary(rows)
    section = section_of(rows)
    for mode in MODES:
        if mode in summ and section is not None:
            s = summ[mode]
            print(f"{MODE_LABEL[mode]}: geomean " + ", ".join(
                f"{section.ratio_label[k]} {s[f'geomean_{k}']:.2f}" for k in section.ratios if f"geomean_{k}" in s)
                + f" ({s['n']} cases)")
        elif mode in summ:
            s = summ[mode]
            print(f"{MODE_LABEL[mode]}: geomean ratio {s['geomean_ratio']:.2f} "
                  f"(min {s['min_ratio']:.2f}, max {s['max_ratio']:.2f}, {s['n']} cases)")
    for t in summ.get("targets", []):
        print(f"target {t['case']} {MODE_LABEL[t['mode']]}: " + ", ".join(
            f"{section.ratio_label[k]} {_fmt(t[k]['value'], '.2f')} ({t[k]['target']}: "
            f"{_MET[t[k]['met']]})" for k in section.targets))
    if "standard_case" in summ:
        print("standard case (T100 B64 I=H=512 L1 fp32) ratio: " + ", ".join(
            f"{cell} " + " / ".join(f"{MODE_LABEL[m]} {r:.2f}" for m, r in modes.items())
            for cell, modes in summ["standard_case"].items()))
    if summ["errors"] or summ["suspect"]:
        print(f"{summ['errors']} error(s), {summ['suspect']} row(s) above the rel diff tolerance "
              "or with result dtypes other than torch.nn's")
    if summ["skipped"]:
        print(f"{summ['skipped']} row(s) skipped: torch.nn cannot run them (reason in the row)")
    return summ


def write_json(path, payload):
    """Through a temporary file, so that a reader (or Ctrl-C) never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1, allow_nan=False) + "\n")
    os.replace(tmp, path)


def markdown_report(rows, env, legend, png_name=None):
    return "\n".join(
        [f"# fused_rnn benchmark: {env['date_utc'][:10]}, {env['device_name']}", ""]
        + [f"    {ln}" for ln in legend.splitlines()] + ["", table(rows, markdown=True), ""]
        + ([f"![ratio against batch size]({png_name})", ""] if png_name else []))


def plot_or_warn(rows, png, env, candidate_label):
    """The plot's path, or None with a warning: the measurement is saved either way."""
    from .plotting import plot
    try:
        return plot(rows, png, env, candidate_label=candidate_label)
    except Exception as e:  # noqa: BLE001
        print(f"warning: plot failed: {type(e).__name__}: {e}", file=sys.stderr)
        return None


class ResultFiles:
    """The JSON at ``path``, rewritten after every case so that an interrupted run keeps what
    it measured, and at the end the Markdown table and the plot next to it."""

    def __init__(self, path, env, config):
        self.path, self.env, self.config = path, env, config
        self.t_start = time.perf_counter()
        path.parent.mkdir(parents=True, exist_ok=True)

    def payload(self, rows, complete):
        self.env["loadavg_at_end"] = loadavg()
        return {"format": FORMAT, "complete": complete, "env": self.env, "config": self.config,
                "summary": summary(rows), "wall_s": round(time.perf_counter() - self.t_start, 1),
                "results": rows}

    def save(self, rows, complete=False):
        write_json(self.path, self.payload(rows, complete))

    def finish(self, rows, complete, legend, candidate_label, with_plot):
        self.save(rows, complete)
        md, png = self.path.with_suffix(".md"), self.path.with_suffix(".png")
        plotted = plot_or_warn(rows, png, self.env, candidate_label) if with_plot else None
        md.write_text(markdown_report(rows, self.env, legend, png.name if plotted else None))
        print(f"wrote {self.path}" + (f", {png.name}" if plotted else "") + f", {md.name}")
