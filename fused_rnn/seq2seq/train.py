"""A small training loop and exact-match evaluation, shared by the demo and the tests."""
from __future__ import annotations

import random

import torch

from .checks import check_ints
from .model import Seq2Seq
from .tasks import PairDataset


def fit(model: Seq2Seq, data: PairDataset, steps: int, batch_size: int = 64, lr: float = 3e-3,
        clip: float = 1.0, seed: int = 0, device=None, progress: bool = False,
        desc: str = "train", teacher_forcing: float = 1.0) -> list[float]:
    """Adam with gradient-norm clipping over shuffled epochs of ``data`` for ``steps`` updates.

    The learning rate decays linearly to a tenth over the run.  Returns the loss of each step.
    """
    check_ints(0, steps=steps)
    check_ints(batch_size=batch_size)
    # a negative max_norm would flip every gradient's sign; inf is a valid "no clipping"
    if isinstance(clip, bool) or not isinstance(clip, (int, float)) or not clip > 0:
        raise ValueError(f"clip: expected a number > 0 (inf: no clipping), got {clip!r}")
    if len(data) == 0:
        raise ValueError("data: expected at least one pair, got an empty PairDataset")
    model.train()
    optim = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(optim, lambda i: 1.0 - 0.9 * i / max(steps, 1))
    rng = random.Random(seed)
    order: list[int] = []
    losses = []
    bar = None
    if progress:
        try:  # an optional extra; the caller asked for a bar, so say what is missing
            from tqdm.auto import tqdm
        except ImportError:
            raise ImportError("fused_rnn demo needs tqdm: pip install 'fused_rnn[bench]'") from None
        bar = tqdm(total=steps, desc=desc, unit="step", dynamic_ncols=True)
    for step in range(steps):
        if len(order) < batch_size:
            order = list(range(len(data)))
            rng.shuffle(order)
        index, order = order[:batch_size], order[batch_size:]
        src, lengths, tgt = data.batch(index, device)
        loss = model.loss(src, lengths, tgt, teacher_forcing=teacher_forcing)
        optim.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optim.step()
        sched.step()
        losses.append(loss.item())
        if bar is not None:
            bar.update(1)
            if step % 10 == 0 or step == steps - 1:
                bar.set_postfix(loss=f"{sum(losses[-10:]) / len(losses[-10:]):.3f}")
    if bar is not None:
        bar.close()
    model.eval()
    return losses


@torch.no_grad()
def predict(model: Seq2Seq, data: PairDataset, batch_size: int = 256, device=None,
            strategy: str = "greedy", **generate_kwargs) -> list[str]:
    """The best decoded target string of every source, in order."""
    check_ints(batch_size=batch_size)
    model.eval()
    out = []
    for start in range(0, len(data), batch_size):
        src, lengths, _ = data.batch(range(start, min(start + batch_size, len(data))), device)
        gen = model.generate(src, lengths, strategy, **generate_kwargs)
        out += [data.tgt_vocab.decode(ids) for ids in gen.best()]
    return out


def exact_match(model: Seq2Seq, data: PairDataset, **kwargs) -> tuple[float, list[bool]]:
    """Fraction of sources whose decoded target equals the reference exactly, and per row."""
    preds = predict(model, data, **kwargs)
    correct = [p == t for p, (_, t) in zip(preds, data.pairs)]
    return sum(correct) / max(len(correct), 1), correct
