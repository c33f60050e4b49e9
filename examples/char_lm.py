"""A character-level language model on the docstrings of Python's standard library.

Data: the docstrings of a fixed list of stdlib modules, their public classes and functions
and those classes' methods, collected with ``inspect`` in a fixed order (the same text on
every machine with the same Python version), each docstring once, each followed by EOS.
Every tenth docstring is held out.  Characters outside printable ASCII and newline are UNK.

Model: embedding + fused LSTM + readout (``fused_rnn.seq2seq.Decoder`` without attention),
trained by truncated backpropagation through time (``fused_rnn.tbptt``): each of the batch's
rows is a contiguous stretch of the text, read in chunks of 32 characters, the state carried
from chunk to chunk.  Reported per epoch: bits per character (EOS counts as one) on
the training text and on the held-out text; the uniform distribution scores log2(V).

Generation: from one prompt, the same number of characters by greedy search, by sampling at
temperatures 0.5 and 1.0, by top-k sampling (k = 5) and by beam search (8 beams) -- all from
``fused_rnn.seq2seq.decode``, the decoding behind ``Seq2Seq.generate`` -- each printed with
its log-probability under the model.

``--quick`` (200k training characters, 3 epochs, a smaller model; about 35 s on this project's
2-core machine) reaches a held-out bpc below 2.6 (2.31-2.33 with seeds 0-2; uniform:
log2(99) = 6.63).  The full run (503k characters, 4 epochs, a 256-unit LSTM; 3.5 minutes
there) reaches 1.96; its outputs are in docs/examples/char_lm/.  Outputs in ``--out``:
char_lm_bpc.png and results.json.
"""
from __future__ import annotations

import importlib
import inspect
import math
import time
import warnings

import torch
from _common import parse_args, pyplot, save_png, save_results, tbptt_epoch

from fused_rnn.seq2seq import DecodeOptions, Decoder, DecoderState, decode

MODULES = (
    "argparse", "ast", "asyncio", "base64", "bisect", "calendar", "cmd", "codecs", "collections",
    "configparser", "contextlib", "copy", "csv", "dataclasses", "datetime", "decimal", "difflib", "dis",
    "email.message", "enum", "fnmatch", "fractions", "ftplib", "functools", "getopt", "gettext", "glob",
    "gzip", "hashlib", "heapq", "hmac", "html.parser", "http.client", "http.cookies", "http.server",
    "imaplib", "inspect", "io", "ipaddress", "itertools", "json", "locale", "logging", "lzma", "mailbox",
    "math", "mimetypes", "multiprocessing.pool", "numbers", "operator", "optparse", "os", "pathlib",
    "pickle", "pickletools", "platform", "plistlib", "poplib", "pprint", "pydoc", "queue", "random", "re",
    "sched", "selectors", "shlex", "shutil", "smtplib", "socket", "socketserver", "sqlite3", "ssl",
    "statistics", "string", "struct", "subprocess", "tarfile", "tempfile", "textwrap", "threading",
    "timeit", "tokenize", "trace", "traceback", "typing", "unittest", "urllib.parse", "urllib.request",
    "uuid", "warnings", "weakref", "xml.dom.minidom", "zipfile", "zoneinfo")

PAD, EOS, UNK = 0, 1, 2
CHARS = "\n" + "".join(chr(c) for c in range(32, 127))
VOCAB = ("<pad>", "<eos>", "<unk>") + tuple(CHARS)
CHAR_ID = {c: i + 3 for i, c in enumerate(CHARS)}

QUICK = dict(train_chars=200_000, heldout_chars=25_000, epochs=3, hidden=128, embed=32, batch=32,
             bptt=32, lr=1e-2, gen_chars=80)
FULL = dict(train_chars=None, heldout_chars=None, epochs=4, hidden=256, embed=64, batch=32, bptt=32,
            lr=4e-3, gen_chars=160)
QUICK_BPC_THRESHOLD = 2.6
PROMPT = "Return the "


# ---- data -----------------------------------------------------------------------------------
def _documented(module):
    """The module, then its public classes and functions (by name), each class followed by its
    public methods and properties (by name)."""
    yield module
    for name, obj in sorted(vars(module).items()):
        if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
            continue
        if inspect.isclass(obj) or inspect.isroutine(obj):
            yield obj
        if inspect.isclass(obj):
            for member_name, member in sorted(vars(obj).items()):
                if not member_name.startswith("_") and (inspect.isroutine(member) or isinstance(member, property)):
                    yield member


def docstrings(modules=MODULES) -> list[str]:
    """Every distinct docstring of ``modules``, cleaned of indentation, in a fixed order."""
    seen, out = set(), []
    with warnings.catch_warnings():   # typing.io / typing.re warn when touched
        warnings.simplefilter("ignore", DeprecationWarning)
        for name in modules:
            for obj in _documented(importlib.import_module(name)):
                doc = getattr(obj, "__doc__", None)
                if isinstance(doc, str) and doc.strip():
                    doc = inspect.cleandoc(doc)
                    if doc not in seen:
                        seen.add(doc)
                        out.append(doc)
    return out


def encode(text: str) -> list[int]:
    return [CHAR_ID.get(c, UNK) for c in text]


def decode_text(ids) -> str:
    return "".join(VOCAB[i] if i > UNK else "" if i == EOS else "?" for i in ids)


def split(docs: list[str]) -> tuple[list[int], list[int]]:
    """Training and held-out character streams: every tenth docstring held out, each followed by EOS."""
    train, held = [], []
    for i, doc in enumerate(docs):
        (held if i % 10 == 0 else train).extend(encode(doc) + [EOS])
    return train, held


def batchify(ids: list[int], batch: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and next-character targets ``[batch, T]``: each row a contiguous stretch."""
    steps = (len(ids) - 1) // batch
    data = torch.tensor(ids[:batch * steps + 1], device=device)
    return data[:-1].view(batch, steps), data[1:].view(batch, steps)


# ---- training -------------------------------------------------------------------------------
def run_epoch(lm: Decoder, inputs, targets, k: int, optimizer=None, schedule=None, desc: str = "") -> float:
    """Bits per character over ``targets`` (TBPTT in chunks of ``k``, batch-first ids: the
    decoder embeds them itself); trains when ``optimizer`` is given."""
    def step(ids, state):
        logits, _, new = lm(ids, DecoderState(state), None)
        return logits, new.rnn

    nats = tbptt_epoch(lm, step, inputs, targets, k, optimizer, schedule, clip=1.0, desc=desc,
                       show=lambda loss: f"bpc={loss / math.log(2):.2f}")
    return nats / math.log(2)


def train(lm: Decoder, train_ids, held_ids, cfg, epochs: int, device) -> dict:
    train_x, train_y = batchify(train_ids, cfg["batch"], device)
    held_x, held_y = batchify(held_ids, cfg["batch"], device)
    optimizer = torch.optim.Adam(lm.parameters(), lr=cfg["lr"])
    # the learning rate falls linearly to a tenth over the run
    per_epoch = math.ceil(train_x.shape[1] / cfg["bptt"])
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: 1 - 0.9 * i / (epochs * per_epoch))
    history = {"train_bpc": [], "heldout_bpc": []}
    for epoch in range(1, epochs + 1):
        history["train_bpc"].append(run_epoch(lm, train_x, train_y, cfg["bptt"], optimizer, schedule,
                                              desc=f"epoch {epoch}/{epochs}"))
        history["heldout_bpc"].append(run_epoch(lm, held_x, held_y, cfg["bptt"]))
        print(f"epoch {epoch}: train {history['train_bpc'][-1]:.3f} bpc, "
              f"held-out {history['heldout_bpc'][-1]:.3f} bpc", flush=True)
    return history


# ---- generation -----------------------------------------------------------------------------
def strategies(n: int) -> dict[str, DecodeOptions]:
    """Each decoding to compare; min_len = max_len = n makes every text n characters long."""
    return {"greedy": DecodeOptions("greedy", min_len=n),
            "sample T=0.5": DecodeOptions("sample", temperature=0.5, min_len=n),
            "sample T=1.0": DecodeOptions("sample", temperature=1.0, min_len=n),
            "top-k 5": DecodeOptions("sample", top_k=5, min_len=n),
            "beam 8": DecodeOptions("beam", beam_size=8, min_len=n, length_penalty=0)}


@torch.no_grad()
def log_prob(lm: Decoder, prompt: list[int], text: list[int]) -> float:
    """log P(text | prompt) under the model, in nats, by one teacher-forced pass."""
    ids = [EOS] + prompt + text   # EOS: a docstring starts here
    logits, _, _ = lm(torch.tensor([ids[:-1]], device=lm.out.weight.device), DecoderState(None), None)
    picked = torch.log_softmax(logits[0].double(), -1).gather(1, torch.tensor(ids[1:], device=logits.device)[:, None])
    return picked[len(prompt):].sum().item()


@torch.no_grad()
def generate(lm: Decoder, prompt: str, n: int, seed: int) -> list[dict]:
    lm.eval()
    ids = encode(prompt)
    device = lm.out.weight.device
    # the state after EOS and all but the last prompt character; decode() reads that one first
    _, _, state = lm(torch.tensor([[EOS] + ids[:-1]], device=device), DecoderState(None), None)
    rows = []
    for name, options in strategies(n).items():
        gen = decode(lm, state, None, torch.tensor([n], device=device), options, bos_id=ids[-1],
                     eos_id=EOS, pad_id=PAD, blocked_ids=(PAD, UNK),
                     generator=torch.Generator(device=device).manual_seed(seed))
        text = gen.tokens[0, 0, :n].tolist()
        lp = log_prob(lm, ids, text)
        rows.append({"strategy": name, "text": decode_text(text), "log_prob": lp,
                     "bits_per_char": -lp / n / math.log(2)})
    return rows


def print_generations(prompt: str, rows: list[dict]):
    print(f"\nprompt {prompt!r}; log P(text | prompt) in nats:")
    for row in rows:
        print(f"  {row['strategy']:<13} {row['log_prob']:8.2f}  {prompt + row['text']!r}")


# ---- outputs --------------------------------------------------------------------------------
def plot(history: dict, out_dir: str, threshold: float | None) -> str:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    epochs = range(1, len(history["train_bpc"]) + 1)
    ax.plot(epochs, history["train_bpc"], "o-", label="training text (mean over the epoch)")
    ax.plot(epochs, history["heldout_bpc"], "s-", label="held-out text (end of epoch)")
    ax.axhline(math.log2(len(VOCAB)), ls="--", color="gray", label=f"uniform: log2({len(VOCAB)})")
    if threshold is not None:
        ax.axhline(threshold, ls=":", color="red", label=f"--quick threshold {threshold}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("bits per character")
    ax.set_xticks(list(epochs))
    ax.set_title("character LM (fused LSTM, TBPTT) on stdlib docstrings")
    ax.legend()
    return save_png(fig, out_dir, "char_lm_bpc")


def main():
    start = time.time()
    args = parse_args("Character-level LSTM language model on stdlib docstrings (TBPTT, decoding).")
    cfg = QUICK if args.quick else FULL
    epochs = args.epochs or cfg["epochs"]
    train_ids, held_ids = split(docstrings())
    train_ids, held_ids = train_ids[:cfg["train_chars"]], held_ids[:cfg["heldout_chars"]]
    print(f"{len(train_ids):,} training and {len(held_ids):,} held-out characters, vocabulary {len(VOCAB)}")
    lm = Decoder(len(VOCAB), cfg["embed"], cfg["hidden"], attention=None, padding_idx=PAD).to(args.device)
    history = train(lm, train_ids, held_ids, cfg, epochs, args.device)
    rows = generate(lm, PROMPT, cfg["gen_chars"], args.seed)
    print_generations(PROMPT, rows)
    threshold = QUICK_BPC_THRESHOLD if args.quick else None
    png = plot(history, args.out, threshold)
    results = {"quick": args.quick, "seed": args.seed, "config": cfg, "epochs": epochs,
               "train_chars": len(train_ids), "heldout_chars": len(held_ids), "vocabulary": len(VOCAB),
               "uniform_bpc": math.log2(len(VOCAB)), "quick_bpc_threshold": QUICK_BPC_THRESHOLD, **history,
               "prompt": PROMPT, "generations": rows, "threads": torch.get_num_threads(),
               "wall_seconds": time.time() - start}
    save_results(results, args.out)
    print(f"held-out {history['heldout_bpc'][-1]:.3f} bpc; wrote {png} and results.json "
          f"({results['wall_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
