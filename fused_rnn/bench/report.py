"""What a run reports: the progress lines, the table (plain and Markdown), the summary, the
legend, and the files (JSON, Markdown, plot)."""
from __future__ import annotations

import json
import math
import os
import sys
import time

from .cases import MODE_LABEL, MODES, STANDARD
from .environment import loadavg

FORMAT = "fused_rnn-bench/1"
HEAD = ["case", "mode", "torch.nn via", "torch.nn ms", "fused_rnn ms", "ratio", "rel diff",
        "torch.nn MiB", "fused_rnn MiB"]


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


def progress_line(row):
    head = f"{row['case']:<40} {MODE_LABEL[row['mode']]:<8} "
    note = _unmeasured(row)
    if note:
        return head + note
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


def _markdown(body):
    n = len(HEAD)
    lines = ["| " + " | ".join(HEAD) + " |",
             "|" + "|".join(["---"] * 3 + ["---:"] * (n - 3)) + "|"]
    lines += ["| " + " | ".join(b[:n]) + (f" {b[-1]}" if len(b) > n else "") + " |"
              for b in body]
    return "\n".join(lines)


def _aligned(body):
    """Text columns left-aligned, numbers right-aligned."""
    n = len(HEAD)
    widths = [max(len(HEAD[i]), *(len(b[i]) for b in body)) if body else len(HEAD[i])
              for i in range(n)]

    def line(cells):
        out = [c.ljust(w) for c, w in zip(cells[:3], widths)]
        out += [c.rjust(w) for c, w in zip(cells[3:n], widths[3:])]
        text = "  ".join(out)
        return text + ("  " + cells[-1] if len(cells) > n else "")
    return "\n".join([line(HEAD), "  ".join("-" * w for w in widths)] + [line(b) for b in body])


def table(rows, markdown=False):
    body = [_cells(r) for r in rows]
    return _markdown(body) if markdown else _aligned(body)


def _is_standard(r):
    std = {k: v for k, v in STANDARD.items() if k != "input_size"}
    return (all(r.get(k) == v for k, v in std.items())
            and r.get("input_size") == STANDARD["hidden"] and not r.get("tf32"))


def summary(rows):
    out = {}
    for mode in MODES:
        ratios = [r["ratio"] for r in rows if r["mode"] == mode and r.get("ratio")]
        if ratios:
            out[mode] = {"geomean_ratio": math.exp(sum(map(math.log, ratios)) / len(ratios)),
                         "min_ratio": min(ratios), "max_ratio": max(ratios), "n": len(ratios)}
    for r in rows:
        if r.get("ratio") and _is_standard(r):
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


def legend_text(env, timing, candidate_label, autocast="off"):
    mem = ("CUDA max allocated during one fwd+bwd above the pre-call baseline"
           if env["device"] == "cuda" else
           "bytes autograd saves for backward (unique storages, parameters and inputs excluded)")
    return "\n".join([
        f"device: {env['device_name']} ({env['device']}, {env['threads']} threads), "
        f"torch {env['torch']}" + (f", CUDA {env['cuda']}, cuDNN {env['cudnn']}"
                                   if env["device"] == "cuda" else "")
        + f", git {(env['git_sha'] or 'none')[:10]}{'+dirty' if env['git_dirty'] else ''}",
        (f"ratio = torch.nn ms / {candidate_label} ms (median of repeats; > 1 = "
         f"{candidate_label} faster); forward = inference under no_grad; fwd+bwd includes all "
         "weight gradients"),
        (f"timing: warm-up {timing[0]}, {timing[1]}..{timing[2]} repeats within {timing[3]} s "
         "per case and mode, sides in random order per repeat"),
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
    for mode in MODES:
        if mode in summ:
            s = summ[mode]
            print(f"{MODE_LABEL[mode]}: geomean ratio {s['geomean_ratio']:.2f} "
                  f"(min {s['min_ratio']:.2f}, max {s['max_ratio']:.2f}, {s['n']} cases)")
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
