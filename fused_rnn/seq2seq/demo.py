"""``python -m fused_rnn demo``: seq2seq with attention on the fused LSTM, end to end.

1. Dates: human-written dates ("the 3rd of March 1999", "Wed 3/3/99", ...) to ISO
   (1999-03-03), character level.  Trains, reports exact match on held-out dates, prints a
   few translations and saves the attention of one example as a heatmap.
2. Reversal: the same model with and without attention, trained on strings of every length
   up to ``--max-len`` and scored by exact match at each length -- the finding of Bahdanau
   et al. (2014): without attention accuracy falls as sequences grow, with attention it holds.

Writes ``attention_dates.png``, ``attention_reversal.png``, ``reversal_accuracy.png`` and
``results.json`` (wall time, accuracies, settings) into ``--out``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import asdict, dataclass

import torch

from .model import Seq2Seq
from .tasks import PairDataset, date_vocabs, make_dates, make_reversal, reversal_vocab
from .train import exact_match, fit, predict


@dataclass
class Config:
    date_train: int = 20000
    date_test: int = 1000
    date_steps: int = 600
    date_embed: int = 64
    date_hidden: int = 128
    rev_train: int = 20000
    rev_test_per_len: int = 100
    rev_steps: int = 1200
    rev_embed: int = 32
    rev_hidden: int = 128
    batch_size: int = 128
    lr: float = 3e-3
    clip: float = 1.0
    beam_size: int = 4


QUICK = Config(date_train=1000, date_test=50, date_steps=30, date_embed=16, date_hidden=32,
               rev_train=1000, rev_test_per_len=10, rev_steps=30, rev_embed=16, rev_hidden=32,
               batch_size=64)
DATE_MAX_LEN = 12   # ISO dates have 10 characters; a little room for a wrong guess

EXAMPLES = ["the 3rd of March 1999", "Wed 3/3/99", "March 3rd, 1999", "03.03.1999",
            "saturday the 21st of august, 2027", "1 JAN 00", "Dec. 31st 2049"]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m fused_rnn demo",
        description="Seq2seq with attention on the fused LSTM: human dates -> ISO dates, and "
                    "sequence reversal with and without attention (accuracy against length).")
    p.add_argument("--quick", action="store_true", help="tiny models and data: a smoke test")
    p.add_argument("--out", default="demo_out",
                   help="folder for the PNGs and results.json (default demo_out)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of data, weights and order (default 0)")
    p.add_argument("--max-len", type=int, default=None,
                   help="longest reversal string (default 20; 6 with --quick); training time "
                        "grows with it")
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads for torch (default 1: these small GEMMs gain little from "
                        "more, and on a shared 2-core machine OpenMP oversubscription made a "
                        "training step up to 4x slower; 0: torch's own choice)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    if args.max_len is None:
        args.max_len = 6 if args.quick else 20
    if args.max_len < 2:
        p.error(f"--max-len: expected at least 2, got {args.max_len}")
    return args


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device: expected a present device, got {name!r} (no CUDA here)")
    return device


def heatmap(ax, weights, src_labels, out_labels, title):
    ax.imshow(weights, cmap="viridis", aspect="auto", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(len(src_labels)), labels=src_labels, fontsize=8)
    ax.set_yticks(range(len(out_labels)), labels=out_labels, fontsize=8)
    ax.set_xlabel("source")
    ax.set_ylabel("output")
    ax.set_title(title, fontsize=9)


def plot_attention(model, data: PairDataset, sources, path, device, title, max_len):
    """One heatmap per source string (beam search, best hypothesis)."""
    try:  # an optional extra
        import matplotlib
    except ImportError:
        raise ImportError("fused_rnn demo needs matplotlib: pip install 'fused_rnn[bench]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(sources), figsize=(5.2 * len(sources), 4.2), squeeze=False)
    for ax, text in zip(axes[0], sources):
        ids = torch.tensor([data.src_vocab.encode(text)], device=device)
        gen = model.generate(ids, torch.tensor([ids.shape[1]]), "beam", beam_size=4,
                             max_len=max_len)
        n = int(gen.lengths[0, 0])
        out = [data.tgt_vocab.itos[i] for i in gen.tokens[0, 0, :n].tolist()]
        out[-1] = "</s>"
        weights = gen.attention[0, 0, :n].float().cpu().numpy()
        heatmap(ax, weights, [c if c != " " else "␣" for c in text], out,
                f"{title}: {text!r} -> {data.tgt_vocab.decode(gen.tokens[0, 0].tolist())!r}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_reversal(lengths, with_att, without_att, path, hidden):
    try:  # an optional extra
        import matplotlib
    except ImportError:
        raise ImportError("fused_rnn demo needs matplotlib: pip install 'fused_rnn[bench]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.plot(lengths, [100 * a for a in with_att], "o-", label="with attention (Luong, general)")
    ax.plot(lengths, [100 * a for a in without_att], "s--",
            label="without attention (final state only)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("sequence length")
    ax.set_ylabel("exact match on held-out strings (%)")
    ax.set_ylim(-3, 103)
    ax.set_title(f"Reversal, bi-LSTM encoder + LSTM decoder, hidden {hidden}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_dates(cfg: Config, args, device, progress) -> dict:
    src_vocab, tgt_vocab = date_vocabs()
    train = PairDataset(make_dates(cfg.date_train, seed=args.seed), src_vocab, tgt_vocab)
    test = PairDataset(make_dates(cfg.date_test, seed=args.seed + 10_000,
                                  exclude={s for s, _ in train.pairs}), src_vocab, tgt_vocab)
    model = Seq2Seq(len(src_vocab), len(tgt_vocab), cfg.date_embed, cfg.date_hidden,
                    bidirectional=True, attention="general").to(device)
    print(f"\n== dates -> ISO: {len(train)} training pairs, {len(test)} held out; "
          f"bi-LSTM {cfg.date_hidden} + LSTM decoder with attention "
          f"({sum(p.numel() for p in model.parameters()):,} parameters)")
    t0 = time.perf_counter()
    losses = fit(model, train, cfg.date_steps, cfg.batch_size, cfg.lr, cfg.clip, seed=args.seed,
                 device=device, progress=progress, desc="dates")
    train_s = time.perf_counter() - t0
    greedy, _ = exact_match(model, test, device=device, max_len=DATE_MAX_LEN)
    beam, _ = exact_match(model, test, device=device, strategy="beam", beam_size=cfg.beam_size,
                          max_len=DATE_MAX_LEN)
    print(f"dates: exact match on {len(test)} held-out dates: greedy {100 * greedy:.1f}%, "
          f"beam({cfg.beam_size}) {100 * beam:.1f}%  (training {train_s:.0f} s)")
    examples = EXAMPLES + [s for s, _ in test.pairs[:3]]
    demo_data = PairDataset([(s, "") for s in examples], src_vocab, tgt_vocab)
    gen_out = predict(model, demo_data, device=device, strategy="beam", beam_size=cfg.beam_size,
                      max_len=DATE_MAX_LEN)
    for text, iso in zip(examples, gen_out):
        print(f"  {text!r:>38} -> {iso}")
    plot_attention(model, demo_data, [EXAMPLES[0], EXAMPLES[1]],
                   os.path.join(args.out, "attention_dates.png"), device, "dates", DATE_MAX_LEN)
    return dict(exact_match=greedy, exact_match_beam=beam, n_train=len(train), n_test=len(test),
                steps=cfg.date_steps, final_loss=sum(losses[-20:]) / len(losses[-20:]),
                train_seconds=train_s, examples=dict(zip(examples, gen_out)))


def run_reversal(cfg: Config, args, device, progress) -> dict:
    vocab = reversal_vocab()
    train = PairDataset(make_reversal(cfg.rev_train, 1, args.max_len, seed=args.seed + 1),
                        vocab, vocab)
    seen = {s for s, _ in train.pairs}
    lengths = list(range(1, args.max_len + 1))
    # held out: strings not seen in training, where there are enough of them (length > 3)
    tests = {n: PairDataset(make_reversal(min(cfg.rev_test_per_len, 20 ** n), n, n,
                                          seed=args.seed + 100 + n,
                                          exclude=seen if n > 3 else None), vocab, vocab)
             for n in lengths}
    print(f"\n== reversal of strings of length 1..{args.max_len} over {len(vocab) - 3} symbols: "
          f"{len(train)} training strings, {cfg.rev_test_per_len} held out per length")
    out = {"lengths": lengths}
    for name, attention in (("attention", "general"), ("no_attention", None)):
        torch.manual_seed(args.seed)
        model = Seq2Seq(len(vocab), len(vocab), cfg.rev_embed, cfg.rev_hidden,
                        bidirectional=True, attention=attention).to(device)
        t0 = time.perf_counter()
        fit(model, train, cfg.rev_steps, cfg.batch_size, cfg.lr, cfg.clip, seed=args.seed,
            device=device, progress=progress, desc=f"reversal, {name.replace('_', ' ')}")
        train_s = time.perf_counter() - t0
        acc = [exact_match(model, tests[n], device=device, max_len=n + 2)[0] for n in lengths]
        out[name] = acc
        out[f"{name}_train_seconds"] = train_s
        print(f"reversal {name.replace('_', ' '):>12}: " +
              " ".join(f"{n}:{100 * a:.0f}%" for n, a in zip(lengths, acc)))
        if attention is not None:
            example = make_reversal(1, args.max_len, args.max_len, seed=args.seed + 7)[0][0]
            plot_attention(model, tests[lengths[-1]], [example],
                           os.path.join(args.out, "attention_reversal.png"), device, "reversal",
                           args.max_len + 2)
    plot_reversal(lengths, out["attention"], out["no_attention"],
                  os.path.join(args.out, "reversal_accuracy.png"), cfg.rev_hidden)
    return out


def main(argv=None) -> int:
    """Entry point of ``python -m fused_rnn demo``: run the demo, exit status 0."""
    run_demo(argv)
    return 0


def run_demo(argv=None) -> dict:
    """Run the demo; returns what it writes to ``results.json``."""
    args = parse_args(argv)
    device = resolve_device(args.device)
    threads = torch.get_num_threads()
    if args.threads and device.type == "cpu":
        torch.set_num_threads(args.threads)
    try:
        return _run(args, device)
    finally:
        torch.set_num_threads(threads)


def _run(args, device) -> dict:
    t_start = time.perf_counter()
    torch.manual_seed(args.seed)
    os.makedirs(args.out, exist_ok=True)
    cfg = QUICK if args.quick else Config()
    progress = not args.no_progress
    print(f"fused_rnn seq2seq demo on {device} (torch {torch.__version__}, "
          f"{torch.get_num_threads()} CPU threads){' --quick' if args.quick else ''}")
    results = {"device": str(device), "torch": torch.__version__,
               "threads": torch.get_num_threads(),
               "cpu": platform.processor() or platform.machine(), "quick": args.quick,
               "seed": args.seed, "max_len": args.max_len, "config": asdict(cfg)}
    torch.manual_seed(args.seed)
    results["dates"] = run_dates(cfg, args, device, progress)
    results["reversal"] = run_reversal(cfg, args, device, progress)
    results["wall_seconds"] = time.perf_counter() - t_start
    rev = results["reversal"]
    print(f"\n== summary: wall time {results['wall_seconds']:.0f} s; dates exact match "
          f"{100 * results['dates']['exact_match']:.1f}% (greedy), "
          f"{100 * results['dates']['exact_match_beam']:.1f}% (beam); reversal at length "
          f"{rev['lengths'][-1]}: {100 * rev['attention'][-1]:.0f}% with attention, "
          f"{100 * rev['no_attention'][-1]:.0f}% without")
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    written = [n for n in sorted(os.listdir(args.out)) if n.endswith((".png", ".json"))]
    print(f"wrote {', '.join(written)} to {args.out}/")
    return results


if __name__ == "__main__":
    raise SystemExit(main())
