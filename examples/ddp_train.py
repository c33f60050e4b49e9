"""Data-parallel training of a fused LSTM with DistributedDataParallel: one process per CPU core
(gloo), each training on its own share of every epoch (DistributedSampler), the gradients
averaged across the processes in every step.

The task (generated here, so it runs anywhere): the adding problem (Hochreiter & Schmidhuber
1997). Each sequence holds T pairs (value, marker): values uniform in [0, 1], and the marker 1
at two steps, one in each half of the sequence, 0 elsewhere. The target is the sum of the two
marked values. Predicting the mean (1) scores a mean squared error of 1/6 = 0.167; the model
has to remember the first marked value over up to T steps to do better. A fused LSTM reads the
sequence, a linear head maps its last output to the sum. ``--quick`` states its threshold: a
held-out error of at most 0.02 (``QUICK_THRESHOLD``; seeds 0-3 all gave 0.0007-0.0017), where the
loss first sits near 1/6 and then drops.

    PYTHONPATH=. torchrun --nproc-per-node 2 examples/ddp_train.py --quick   # T = 10, ~7 s on 2 cores
    PYTHONPATH=. torchrun --nproc-per-node 2 examples/ddp_train.py           # T = 50, ~20 s: mse 0.0002

Rank 0 prints the training loss (the mean over all ranks since the last print) every
``--log-every`` steps, then the held-out error and whether every rank ends with the same
weights (DDP keeps the replicas identical), and writes ``results.json`` into ``--out``.
"""
import os
import sys
import time
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.nn.functional as F
from _common import parse_args, progress, save_results
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import fused_rnn

MEAN_BASELINE = 1 / 6  # the variance of the sum of two uniform values: the error of predicting 1
QUICK_THRESHOLD = 0.02  # the held-out mean squared error --quick reaches
# quick: what the test runs (a few seconds on 2 cores); full: longer sequences, more data.
MODES = {
    "quick": dict(T=10, train=8192, test=1024, hidden=32, epochs=4, batch=32),
    "full": dict(T=50, train=16384, test=2048, hidden=64, epochs=10, batch=32),
}


def adding_problem(n, T, seed):
    """x [n, T, 2] (value, marker) and targets [n]: the sum of the two marked values. The same
    for the same seed in every process."""
    generator = torch.Generator().manual_seed(seed)
    values = torch.rand(n, T, generator=generator)
    first = torch.randint(0, T // 2, (n,), generator=generator)
    second = torch.randint(T // 2, T, (n,), generator=generator)
    markers = torch.zeros(n, T)
    rows = torch.arange(n)
    markers[rows, first] = 1
    markers[rows, second] = 1
    return torch.stack([values, markers], dim=-1), (values * markers).sum(1)


class Adder(nn.Module):
    """A fused LSTM over the sequence, a linear head on its last output."""

    def __init__(self, hidden):
        super().__init__()
        self.lstm = fused_rnn.LSTM(2, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        out, _ = self.lstm(x)
        return self.head(out[:, -1]).squeeze(-1)


def mean_over_ranks(value):
    """The mean of a float over all ranks (a collective: every rank calls it)."""
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return t.item() / dist.get_world_size()


def replicas_identical(model):
    """Whether every rank holds exactly the same parameters (a collective)."""
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    low, high = flat.clone(), flat.clone()
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    return torch.equal(low, high)


def train(args, rank, world_size):
    """Trains on this rank's share of every epoch; rank 0 prints and writes results.json."""
    mode_name = "quick" if args.quick else "full"
    mode = MODES[mode_name]
    epochs = args.epochs or mode["epochs"]
    started = time.time()

    train_set = TensorDataset(*adding_problem(mode["train"], mode["T"], seed=args.seed))
    test_x, test_y = adding_problem(mode["test"], mode["T"], seed=args.seed + 1)
    # Each rank sees its own 1/world_size of every epoch, reshuffled per epoch (set_epoch);
    # mode["batch"] is the batch of one rank: a step averages world_size of them.
    sampler = DistributedSampler(train_set, num_replicas=world_size, rank=rank, shuffle=True, seed=args.seed,
                                 drop_last=True)
    loader = DataLoader(train_set, batch_size=mode["batch"], sampler=sampler, drop_last=True)

    model = DistributedDataParallel(Adder(mode["hidden"]))  # rank 0's initial weights go to all
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    steps = epochs * len(loader)
    if rank == 0:
        print(f"{world_size} ranks, {len(loader)} steps per epoch of {mode['batch']} sequences per rank, "
              f"T = {mode['T']}, {epochs} epochs", flush=True)
    bar = progress(range(steps), desc=f"DDP x{world_size}", unit="step", disable=rank != 0)
    losses, since_print, step = [], [], 0
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        for x, y in loader:
            loss = F.mse_loss(model(x), y)
            optimizer.zero_grad()
            loss.backward()  # DDP averages the gradients over the ranks here
            optimizer.step()
            since_print.append(loss.item())
            step += 1
            bar.update()
            if step % args.log_every == 0 or step == steps:
                mean = mean_over_ranks(sum(since_print) / len(since_print))
                since_print = []
                losses.append((step, mean))
                if rank == 0:
                    bar.write(f"step {step:5d}/{steps} loss {mean:.4f}")
    bar.close()

    identical = replicas_identical(model.module)
    if rank == 0:
        model.module.eval()
        with torch.no_grad():
            test_mse = F.mse_loss(model.module(test_x), test_y).item()
        seconds = round(time.time() - started, 1)
        print(f"held-out mse {test_mse:.4f} (predicting the mean: {MEAN_BASELINE:.4f}); "
              f"replicas identical: {identical}; {seconds} s", flush=True)
        save_results({"mode": mode_name, "seed": args.seed, "world_size": world_size, "epochs": epochs,
                      "T": mode["T"], "losses": losses, "test_mse": test_mse, "mean_baseline": MEAN_BASELINE,
                      "replicas_identical": identical, "quick_threshold": QUICK_THRESHOLD, "seconds": seconds},
                     args.out)


def main():
    def extra(parser):
        parser.add_argument("--log-every", type=int, default=32, help="print the loss every N steps (default: 32)")

    args = parse_args(__doc__.split("\n\n")[0], extra)
    if "LOCAL_RANK" not in os.environ:
        sys.exit("run it under torchrun: PYTHONPATH=. torchrun --nproc-per-node 2 examples/ddp_train.py --quick")
    if args.device != "cpu":
        sys.exit("this example trains on the CPU (gloo backend)")
    # Imported before init_process_group on purpose: torch.distributed.nn.functional binds the
    # process group that exists when it is first imported as a default argument (group=group.WORLD),
    # and torch.optim imports it (through torch._dynamo) at the first optimizer. A group bound so is
    # never freed: destroy_process_group then leaves gloo's threads running into the interpreter's
    # exit, where one releasing a Python tensor aborts the process ("terminate called without an
    # active exception").
    import torch.distributed.nn as _  # noqa: F401
    dist.init_process_group("gloo", timeout=timedelta(seconds=60))  # a hung collective raises
    # The DDP model lives in train(), so it (and its hold on the process group) is gone before
    # destroy_process_group, which then stops gloo's threads.
    train(args, dist.get_rank(), dist.get_world_size())
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
