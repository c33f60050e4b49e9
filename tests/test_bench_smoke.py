"""The benchmark harness runs end to end at tiny sizes and writes what it promises.

Speed is never asserted here (docs/DESIGN.md §4): only that every row has finite times, a finite
ratio and a finite relative difference, and that the JSON states the environment.
"""
import json
import math

import pytest

from fused_rnn import bench

ENV_FIELDS = ("device", "device_name", "torch", "cuda", "cpu_model", "threads", "git_sha",
              "csrc_sha256", "date_utc")
ROW_FIELDS = ("case", "mode", "cell", "batch", "dtype", "tf32", "torch_ms", "fused_ms", "ratio",
              "rel_diff", "repeats")
# The variants section's variants, (cell, name) in VARIANTS' order -> the parameters each adds to
# the plain module.
_LN = ("ln_weight_ih_l0", "ln_weight_hh_l0")
VARIANTS = {("lstm", "peephole"): ("weight_ch_l0",),
            ("lstm", "layer_norm"): (*_LN, "ln_weight_c_l0", "ln_bias_c_l0"),
            ("lstm", "peephole+layer_norm"): ("weight_ch_l0", *_LN, "ln_weight_c_l0", "ln_bias_c_l0"),
            ("gru", "layer_norm"): _LN}


def test_bench_quick_writes_json_plot_and_table(tmp_path, capsys):
    pytest.importorskip("matplotlib")  # the plot needs the optional extra fused_rnn[bench]
    out = tmp_path / "result.json"
    rc = bench.main(["--quick", "--device", "cpu", "--batch", "2", "--threads", "1",
                     "--no-progress", "--out", str(out)])
    assert rc == 0
    data = json.loads(out.read_text())
    assert data["format"] == bench.FORMAT and data["complete"]
    for key in ENV_FIELDS:
        assert key in data["env"], key
    assert data["env"]["device"] == "cpu" and data["env"]["csrc_sha256"]
    rows = data["results"]
    cells = {r["cell"] for r in rows}
    assert cells == {"lstm", "gru", "rnn"}
    assert {r["mode"] for r in rows} == {"fwd", "fwdbwd"}
    assert any(r["packed"] for r in rows) and any(r["bidirectional"] for r in rows)
    assert {r["dtype"] for r in rows} == {"fp32", "bf16"}  # the CPU runs bf16 too
    for r in rows:
        assert "error" not in r, r.get("error")
        for key in ROW_FIELDS:
            assert key in r, key
        for key in ("torch_ms", "fused_ms", "ratio", "rel_diff"):
            assert r[key] is not None and math.isfinite(r[key]) and r[key] >= 0, (key, r)
        assert r["torch_ms"] > 0 and r["fused_ms"] > 0
        if r["mode"] == "fwdbwd":
            assert r["torch_mem_bytes"] > 0 and r["fused_mem_bytes"] > 0
            assert r["rel_diff_grad"] is not None
    assert out.with_suffix(".png").stat().st_size > 0
    assert "| case |" in out.with_suffix(".md").read_text()
    printed = capsys.readouterr().out
    assert "torch.nn ms" in printed and "fused_rnn ms" in printed


def test_bench_cases_and_options():
    args = bench.parse_args([])
    device = bench.resolve_device("cpu")
    cases = bench.build_cases(args, device)
    assert [c.batch for c in cases if c.cell == "lstm"] == list(bench.SHORT_BATCHES)
    std = [c for c in cases if c.batch == 64]
    assert {(c.seq_len, c.input_size, c.hidden, c.layers, c.dtype) for c in std} == {
        (100, 512, 512, 1, "fp32")}
    full = bench.build_cases(bench.parse_args(["--sweep", "full", "--cells", "gru"]), device)
    assert any(c.packed for c in full) and any(c.layers == 4 for c in full)
    assert any(c.seq_len == 1000 for c in full) and all(c.cell == "gru" for c in full)
    assert {c.dtype for c in full} == {"fp32", "bf16", "fp16"}  # low precision on the CPU too
    picked = bench.build_cases(bench.parse_args(["-B", "3,5", "-H", "16", "--cells", "rnn"]),
                               device)
    assert [(c.batch, c.hidden, c.input_size) for c in picked] == [(3, 16, 16), (5, 16, 16)]
    lengths = bench.packed_lengths(100, 64, seed=1)
    assert lengths == sorted(lengths, reverse=True) and lengths[0] == 100 and min(lengths) >= 30


def test_bench_quick_autocast_names_it(tmp_path, capsys):
    out = tmp_path / "autocast.json"
    rc = bench.main(["--quick", "--autocast", "bf16", "--device", "cpu", "--batch", "2",
                     "--threads", "1", "--no-progress", "--no-plot", "--out", str(out)])
    assert rc == 0
    data = json.loads(out.read_text())
    assert data["config"]["autocast"] == "bf16"
    rows = data["results"]
    assert {r["cell"] for r in rows} == {"lstm", "gru", "rnn"}
    # CPU autocast: results in torch.nn's per-module dtypes (fused_rnn/_autocast.py).
    padded = {"lstm": "bf16,bf16,bf16", "gru": "fp32,fp32", "rnn": "bf16,bf16"}
    for r in rows:
        assert r["autocast"] == "bf16" and r["dtype"] == "fp32", r["case"]
        assert "autocast=bf16" in r["case"]
        assert "error" not in r and "skipped" not in r, r
        assert math.isfinite(r["rel_diff"]) and r["torch_ms"] > 0 and r["fused_ms"] > 0
        if not r["packed"]:
            assert r["out_dtypes"] == padded[r["cell"]], r
    printed = capsys.readouterr().out
    assert "autocast=bf16" in printed and "autocast: bf16" in printed
    assert "autocast=bf16" in out.with_suffix(".md").read_text()


def test_bench_autocast_options(capsys):
    device = bench.resolve_device("cpu")
    cases = bench.build_cases(bench.parse_args(["--quick", "--autocast", "fp16"]), device)
    assert cases and {(c.dtype, c.autocast, c.precision) for c in cases} == {
        ("fp32", "fp16", "fp16")}  # the quick sweep's bf16 dtype variant folds into fp32
    assert all(c.autocast is None for c in bench.build_cases(bench.parse_args([]), device))
    with pytest.raises(SystemExit):
        bench.parse_args(["--autocast", "bf16", "--dtype", "bf16"])
    assert "--autocast bf16" in capsys.readouterr().err


def _quick_section_rows(section, tmp_path):
    """The rows of `--section <section> --quick` on the CPU, each measured without error and
    agreeing with torch.nn."""
    out = tmp_path / f"{section}.json"
    rc = bench.main(["--section", section, "--quick", "--device", "cpu", "--threads", "1", "--no-progress",
                     "--no-plot", "--out", str(out)])
    assert rc == 0
    rows = json.loads(out.read_text())["results"]
    for r in rows:
        assert "error" not in r, r.get("error")
        assert r["rel_diff"] is not None and r["rel_diff"] < 1e-4
    return rows


def test_bench_cells_section(tmp_path):
    """--section cells times one step of each cell module against torch.nn's."""
    rows = _quick_section_rows("cells", tmp_path)
    assert {(r["cell"], r["kind"]) for r in rows} == {(c, "cell") for c in ("lstm", "gru", "rnn")}
    assert {r["dtype"] for r in rows} == {"fp32", "fp64"} and {r["mode"] for r in rows} == {"fwd", "fwdbwd"}
    assert all(r["case"].startswith(f"{r['cell']}cell ") for r in rows)
    names = [c.name for c in bench.build_cases(bench.parse_args(["--section", "cells"]), bench.resolve_device("cpu"))]
    assert names[:3] == ["lstmcell B97 I51 H51 fp64", "grucell B97 I51 H51 fp64", "rnncell B97 I51 H51 fp64"]
    assert len(names) == 9


def test_bench_decoder_section(tmp_path):
    """--section decoder: the seq2seq model on fused_rnn against the same on torch.nn's modules."""
    rows = _quick_section_rows("decoder", tmp_path)
    tasks = {(r["style"], r["decode"], r["mode"]) for r in rows}
    assert tasks == {(style, decode, "fwd" if decode else "fwdbwd") for style in ("luong-feed", "bahdanau")
                     for decode in (None, "greedy", "beam5")}


def test_bench_variants_section(tmp_path, capsys):
    """--section variants: each variant against a TorchScript loop, a Python loop and our plain
    module; four times and three ratios per row, in the JSON and the table."""
    rows = _quick_section_rows("variants", tmp_path)  # each variant through the agreement check
    assert {(r["cell"], r["variant"], r["kind"]) for r in rows} == {(cell, name, "variant") for cell, name in VARIANTS}
    assert {r["mode"] for r in rows} == {"fwd", "fwdbwd"}
    for r in rows:
        for side in ("fused", "torchscript", "python", "plain"):
            assert r[f"{side}_ms"] > 0, (side, r)
        assert r["rel_diff_fused"] < 1e-4 and r["rel_diff_torchscript"] < 1e-4
        for key, (a, b) in {"torchscript_over_fused": ("torchscript", "fused"),
                            "python_over_fused": ("python", "fused"), "fused_over_plain": ("fused", "plain")}.items():
            assert math.isclose(r[key], r[f"{a}_ms"] / r[f"{b}_ms"]), key
        assert r["ratio"] == r["torchscript_over_fused"]
    printed = capsys.readouterr().out
    for column in ("TorchScript ms", "Python ms", "plain ms", "TS/fused", "Py/fused", "fused/plain"):
        assert column in printed and column in (tmp_path / "variants.md").read_text()
    # The targets are reported at the standard shape, B 64 and 8 (never asserted).
    standard = [dict(r, seq_len=100, input_size=512, hidden=512, batch=b) for r in rows[:2] for b in (64, 8, 1)]
    targets = bench.summary(standard)["targets"]
    assert [(t["mode"], t["case"]) for t in targets] == [("fwdbwd", rows[0]["case"])] * 2
    assert {t["fused_over_plain"]["target"] for t in targets} == {"<= 1.35"}
    args = bench.parse_args(["--section", "variants"])
    names = [c.name for c in bench.build_cases(args, bench.resolve_device("cpu"))]
    assert names == [f"{cell} {name} T100 B{b} I512 H512 fp32" for cell, name in VARIANTS for b in (64, 8, 1)]
    gru = bench.build_cases(bench.parse_args(["--section", "variants", "--cells", "gru"]), bench.resolve_device("cpu"))
    assert [c.name for c in gru] == [f"gru layer_norm T100 B{b} I512 H512 fp32" for b in (64, 8, 1)]
    with pytest.raises(SystemExit):
        bench.parse_args(["--section", "variants", "--null"])


@pytest.mark.parametrize("cell,name", list(VARIANTS), ids=[f"{c}-{n}" for c, n in VARIANTS])
def test_bench_variant_parameters_matter(cell, name):
    """The pair draws each parameter the variant adds (γ around 1, β and the peepholes around 0):
    a TorchScript cell that ignores any one of them (here: that one put back to its neutral
    value, γ 1, β 0, no peephole) is refused by the agreement check (forward: it shows as well
    there). First fwd+bwd twice, before any forward (as ``--modes fwdbwd`` runs): TorchScript
    runs its optimized graph from the second call on, and its autodiff can break a cell there
    (a chunk with an unused output gets a gradient of the wrong size)."""
    import torch

    from fused_rnn.bench import variants

    # H 16, not smaller: LN over a handful of near-equal c' values amplifies float32 rounding
    # past the tolerance (H 5, peephole+layer_norm: up to 2.8e-4 between the fused and the
    # Python side over 15 draws, each side ~1e-4 off the same run in float64).
    case = bench.Case(cell=cell, seq_len=3, batch=2, input_size=8, hidden=16, kind="variant", variant=name)
    pair = bench.VariantPair(case, "cpu", n_sets=1)
    for mode in ("fwdbwd", "fwdbwd", "fwd"):
        assert pair.check(mode)["rel_diff"] < 1e-4, mode
    own = [n for n, _ in pair.modules["fused"].named_parameters() if n not in pair.modules["plain"].state_dict()]
    assert sorted(own) == sorted(VARIANTS[cell, name])
    cell_ts = pair.modules["torchscript"].cell
    for fused_name in own:
        p = getattr(cell_ts, variants._plain_name(fused_name))
        drawn = p.detach().clone()
        neutral = 1.0 if fused_name.startswith("ln_weight") else 0.0
        assert (drawn - neutral).abs().min() > 0 and drawn.std() > 0, fused_name
        with torch.no_grad():
            p.fill_(neutral)
        with pytest.raises(variants.SidesDisagree, match="TorchScript"):
            pair.check("fwd")
        with torch.no_grad():
            p.copy_(drawn)
    assert pair.check("fwd")["rel_diff"] < 1e-4  # all restored: the sides agree again


def test_bench_variant_sides_agree():
    """The four sides of a variant case hold the same weights: with the peepholes zeroed, all
    four compute the plain LSTM; with them, the fused side leaves the plain one, and a side
    that computes something else is refused before it is timed."""
    import torch

    from fused_rnn.bench import variants

    case = bench.Case(cell="lstm", seq_len=4, batch=2, input_size=6, hidden=5, kind="variant", variant="peephole")
    pair = bench.VariantPair(case, "cpu", n_sets=1)
    pair.set_mode("fwd")

    def outputs():
        with torch.no_grad():
            return {side: torch.cat([t.flatten() for t in bench.checks.flat_outputs(pair.forward(side, pair.sets[0]))])
                    for side in variants.SIDES}

    out = outputs()
    assert not torch.allclose(out["fused"], out["plain"], atol=1e-4)
    with torch.no_grad():
        for side in ("fused", "torchscript", "python"):
            for name, p in pair.modules[side].named_parameters():
                if "weight_ch" in name:
                    p.zero_()
    out = outputs()
    for side in ("torchscript", "python", "plain"):
        torch.testing.assert_close(out[side], out["fused"], rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        pair.modules["torchscript"].cell.weight_ch.fill_(0.5)
    with pytest.raises(variants.SidesDisagree, match="TorchScript"):
        pair.check("fwd")


# The regularizers section's cases: (name, layers, baseline side).
REGULARIZERS = (("weight_drop", 1, "awd"), ("residual", 3, "torch"), ("zoneout", 1, "loop"),
                ("recurrent_dropout", 1, "loop"))


def test_bench_regularizers_section(tmp_path, capsys):
    """--section regularizers: weight_drop against AWD-LSTM's WeightDrop, residual against
    torch.nn layers, zoneout and recurrent_dropout against an LSTMCell loop, each against our
    plain module; fwd+bwd only, three times and two ratios per
    row, in the JSON and the table."""
    rows = _quick_section_rows("regularizers", tmp_path)  # each case through the agreement check
    assert [(r["variant"], r["layers"], r["baseline"]) for r in rows[::2]] == list(REGULARIZERS)
    assert {(r["cell"], r["kind"], r["mode"]) for r in rows} == {("lstm", "regularizer", "fwdbwd")}
    for r in rows:
        for side in ("fused", r["baseline"], "plain"):
            assert r[f"{side}_ms"] > 0 and r[f"{side}_mem_bytes"] > 0, (side, r)
        assert r["rel_diff_fused"] < 1e-4 and r["rel_diff_grad"] is not None
        assert math.isclose(r["baseline_over_fused"], r[f"{r['baseline']}_ms"] / r["fused_ms"])
        assert math.isclose(r["fused_over_plain"], r["fused_ms"] / r["plain_ms"])
        assert r["ratio"] == r["baseline_over_fused"]
    printed = capsys.readouterr().out
    for column in ("AWD ms", "torch.nn ms", "LSTMCell loop ms", "plain ms", "baseline/fused", "fused/plain"):
        assert column in printed and column in (tmp_path / "regularizers.md").read_text()
    # The targets are reported at the standard shape, B 64 and 8, whatever the layers (never asserted).
    standard = [dict(r, seq_len=100, input_size=512, hidden=512, batch=b) for r in rows[::2] for b in (64, 8)]
    targets = bench.summary(standard)["targets"]
    assert [t["case"] for t in targets] == [r["case"] for r in rows[::2] for _ in (64, 8)]
    assert {(t["baseline_over_fused"]["target"], t["fused_over_plain"]["target"]) for t in targets} == {
        (">= 3", "<= 1.2")}
    args = bench.parse_args(["--section", "regularizers"])
    assert args.modes == ["fwdbwd"]
    names = [c.name for c in bench.build_cases(args, bench.resolve_device("cpu"))]
    assert names == [f"lstm {name} T100 B{b} I512 H512 L{layers} fp32" for name, layers, _ in REGULARIZERS
                     for b in (64, 8)]
    for wrong in (["-L", "2"], ["--modes", "fwd"], ["--null"]):
        with pytest.raises(SystemExit):
            bench.parse_args(["--section", "regularizers", *wrong])


def test_bench_regularizer_wrong_side_refused():
    """The agreement check compares the same masks (the same seed before each side's call, the
    baseline drawing as fused_rnn does) and refuses a side that computes something else: another
    p, one random draw more before the masks, the LSTMCell loop's own per-step zoneout draws, no
    residual additions."""
    import torch

    from fused_rnn.bench import regularizers

    def pair(name, layers):
        case = bench.Case(cell="lstm", seq_len=5, batch=2, input_size=8, hidden=16, layers=layers,
                          kind="regularizer", variant=name)
        return bench.RegularizerPair(case, "cpu", n_sets=1)

    p = pair("weight_drop", 1)
    assert p.check("fwdbwd")["rel_diff"] < 1e-4
    awd = p.modules["awd"]
    names = sorted(regularizers._unwrap_name(n) for n, _ in awd.named_parameters())
    assert names == sorted(n for n, _ in p.modules["fused"].named_parameters())  # the raw W_hh's gradient too
    with torch.no_grad():  # the masks are on: fused differs from plain in training
        outs = {side: p.forward(side, p.sets[0])[0] for side in ("fused", "plain")}
    assert not torch.allclose(outs["fused"], outs["plain"], atol=1e-3)
    awd.dropout = 0.25
    with pytest.raises(regularizers.SidesDisagree, match="WeightDrop"):
        p.check("fwdbwd")
    awd.dropout = regularizers.WEIGHT_DROP
    setweights = awd._setweights
    awd._setweights = lambda: (torch.rand(1), setweights())  # another draw first: other masks
    with pytest.raises(regularizers.SidesDisagree, match="WeightDrop"):
        p.check("fwdbwd")
    del awd._setweights
    assert p.check("fwdbwd")["rel_diff"] < 1e-4

    p = pair("residual", 3)
    assert p.check("fwdbwd")["rel_diff"] < 1e-4
    p.modules["torch"].residual = False
    with pytest.raises(regularizers.SidesDisagree, match="torch.nn layers"):
        p.check("fwdbwd")

    p = pair("zoneout", 1)
    assert p.check("fwdbwd")["rel_diff"] < 1e-4 and p.check("fwd")["rel_diff"] < 1e-4  # eval: m = p on both
    loop = p.modules["loop"]
    assert sorted(regularizers._uncell_name(n) for n, _ in loop.named_parameters()) == sorted(
        n for n, _ in p.modules["fused"].named_parameters())
    loop.zoneout = 0.5
    with pytest.raises(regularizers.SidesDisagree, match="LSTMCell loop"):
        p.check("fwdbwd")
    loop.zoneout = regularizers.ZONEOUT
    loop._fused_masks = lambda x: (None, loop._zoneout_masks(x))  # the timed calls' per-step draws: other masks
    with pytest.raises(regularizers.SidesDisagree, match="LSTMCell loop"):
        p.check("fwdbwd")
    p = pair("recurrent_dropout", 1)
    assert p.check("fwdbwd")["rel_diff"] < 1e-4
    p.modules["loop"].recurrent_dropout = 0.5
    with pytest.raises(regularizers.SidesDisagree, match="LSTMCell loop"):
        p.check("fwdbwd")


def test_default_file_names_keep_runs_apart():
    """Runs of other dtypes or under autocast get their own result files, never the float32 one's."""
    from argparse import Namespace

    from fused_rnn.bench.cli import default_out
    env = {"date_utc": "2026-12-03T00:00:00", "device": "cpu", "device_name": "Some CPU", "threads": 2}

    def name(**given):
        args = dict(section="layers", sweep="standard", tf32="off", autocast="off", null=False, quick=False,
                    dtype=None)
        return default_out(env, Namespace(**{**args, **given})).name

    names = [name(), name(dtype=["bf16"]), name(dtype=["fp16", "bf16"]), name(autocast="bf16")]
    assert names[0] == "2026-12-03-cpu-some-cpu-2t-standard.json" == name(dtype=["fp32"])
    assert len(set(names)) == len(names), names
