"""torch.compile of a whole model: the model with fused_rnn's LSTM/GRU against the same model
with torch.nn's (compiled with torch._dynamo.config.allow_rnn, which torch.nn needs), both
full-graph inductor, in the same process on the same inputs and weights; eager for reference.

    PYTHONPATH=. .venv/bin/python bench/compile_speed.py [--out bench/results] [--quick]

Times the median of interleaved repeats of inference (no_grad) and of a training step
(forward, backward of an MSE loss); ratio = torch.nn time / fused_rnn time (> 1: fused faster).
Writes <date>-<cpu>-compile.json and .md under --out."""
import argparse
import json
import platform
import re
import statistics
import subprocess
import time
from datetime import date
from pathlib import Path

import torch
import torch._dynamo
from torch import nn

import fused_rnn


class Model(nn.Module):
    """An input projection, a 2-layer recurrent layer (LSTM or GRU) and a linear head on every step."""

    def __init__(self, rnn_class, size):
        super().__init__()
        self.proj = nn.Linear(size, size)
        self.rnn = rnn_class(size, size, num_layers=2)
        self.head = nn.Linear(size, 1)

    def forward(self, x):
        out, _ = self.rnn(torch.tanh(self.proj(x)))
        return self.head(out).squeeze(-1)


def cpu_name():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def run(model, x, y, train):
    if train:
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss
    with torch.no_grad():
        return model(x)


def measure(cell, T, B, size, repeats):
    torch.manual_seed(0)
    torch_cls, fused_cls = {"lstm": (nn.LSTM, fused_rnn.LSTM), "gru": (nn.GRU, fused_rnn.GRU)}[cell]
    ref = Model(torch_cls, size)
    fused = Model(fused_cls, size)
    fused.load_state_dict(ref.state_dict())
    x, y = torch.randn(T, B, size), torch.randn(T, B)
    with torch._dynamo.config.patch(allow_rnn=True):  # torch.nn's RNNs need it; ours do not
        sides = {"torch.nn": torch.compile(ref, fullgraph=True), "fused_rnn": torch.compile(fused, fullgraph=True)}
        rows = []
        for train in (False, True):
            for fn in sides.values():  # compile and warm up
                run(fn, x, y, train)
                run(fn, x, y, train)
            times = {name: [] for name in sides}
            for _ in range(repeats):
                for name, fn in sides.items():
                    start = time.perf_counter()
                    run(fn, x, y, train)
                    times[name].append(time.perf_counter() - start)
            ms = {name: statistics.median(t) * 1e3 for name, t in times.items()}
            rows.append({"cell": cell, "mode": "fwd+bwd" if train else "forward", "T": T, "B": B, "size": size,
                         "torch_nn_ms": ms["torch.nn"], "fused_rnn_ms": ms["fused_rnn"],
                         "ratio": ms["torch.nn"] / ms["fused_rnn"]})
            print(f"{cell} {rows[-1]['mode']}: torch.nn compiled {ms['torch.nn']:.2f} ms, "
                  f"fused_rnn compiled {ms['fused_rnn']:.2f} ms, ratio {rows[-1]['ratio']:.2f}", flush=True)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/results")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, few repeats (a smoke run)")
    args = parser.parse_args()
    T, B, size, repeats = (5, 2, 16, 3) if args.quick else (100, 64, 256, 15)
    rows = [row for cell in ("lstm", "gru") for row in measure(cell, T, B, size, repeats)]
    env = {"cpu": cpu_name(), "threads": torch.get_num_threads(), "torch": torch.__version__}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{date.today()}-cpu-{re.sub('[^a-z0-9]+', '-', env['cpu'].lower()).strip('-')}-{env['threads']}t-compile"
    (out / f"{stem}.json").write_text(json.dumps({"environment": env, "rows": rows}, indent=1) + "\n")
    lines = [f"torch.compile(fullgraph=True, inductor) of Linear -> 2-layer RNN -> Linear, T={T} B={B} size={size}; "
             f"{env['cpu']}, {env['threads']} threads, torch {env['torch']}; ratio = torch.nn / fused_rnn", "",
             "| cell | mode | torch.nn compiled ms | fused_rnn compiled ms | ratio |", "|---|---|---:|---:|---:|"]
    lines += [f"| {r['cell']} | {r['mode']} | {r['torch_nn_ms']:.2f} | {r['fused_rnn_ms']:.2f} | {r['ratio']:.2f} |"
              for r in rows]
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / stem}.json, .md")


if __name__ == "__main__":
    main()
