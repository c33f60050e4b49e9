"""What the distributed tests share: launching a script under torchrun with a timeout, and the
training runs that tests/test_modes_distributed.py compares -- small float64 models holding a
fused LSTM or GRU, their data, and the training loop, run the same way in one process
(the truth) and, as this file's main, in each rank under DDP or FSDP2.

    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/distributed_cases.py OUT

trains every SCENARIOS entry in each of the two ranks (gloo, CPU) and rank 0 writes each
trained model's parameters, gathered whole, to OUT/<scenario>.pt.
"""
import os
import signal
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

ROOT = Path(__file__).resolve().parents[1]
if __name__ == "__main__":  # run by torchrun from the repository: fused_rnn comes from there
    sys.path.insert(0, str(ROOT))

import fused_rnn  # noqa: E402

T, GLOBAL_BATCH, I, H = 6, 8, 3, 4
STEPS, LR, SEED = 3, 0.5, 0
# scenario -> (wrapper, model kind)
SCENARIOS = {"ddp-lstm": ("ddp", "lstm"), "ddp-gru": ("ddp", "gru"),
             "fsdp2-lstm": ("fsdp2", "lstm"), "fsdp2-gru": ("fsdp2", "gru")}


def torchrun(script, *args, nproc=2, timeout=120):
    """`python -m torch.distributed.run --standalone --nproc-per-node N script args` from the
    repository root (--standalone: rendezvous on a port the OS picks, so runs never collide);
    the finished process, whose exit code and output the caller checks. Past `timeout` seconds
    the whole process group (launcher and ranks) is killed and the call fails: a hung collective
    fails the test instead of hanging it."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               str(script), *map(str, args)]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        raise AssertionError(f"torchrun {script} hung for {timeout} s:\n{output[-3000:]}") from None
    return subprocess.CompletedProcess(command, proc.returncode, output)


class Net(nn.Module):
    """A fused recurrent layer and a linear head on its last state(s): "lstm" is a 2-layer
    time-major LSTM on padded input, "gru" a bidirectional batch-first GRU on packed input of
    varied lengths."""

    def __init__(self, kind):
        super().__init__()
        if kind == "lstm":
            self.rnn = fused_rnn.LSTM(I, H, num_layers=2)
        else:
            self.rnn = fused_rnn.GRU(I, H, bidirectional=True, batch_first=True)
        self.directions = 2 if self.rnn.bidirectional else 1
        self.head = nn.Linear(H * self.directions, 1)

    def forward(self, x, lengths):
        if self.rnn.mode == "LSTM":
            _, (h_n, _) = self.rnn(x.transpose(0, 1))
        else:
            _, h_n = self.rnn(pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False))
        return self.head(torch.cat(list(h_n[-self.directions:]), dim=-1)).squeeze(-1)


def make_model(kind):
    """The model in float64 with the weights every process draws alike from SEED."""
    torch.manual_seed(SEED)
    return Net(kind).double()


def batches():
    """STEPS global batches (x [B, T, I], lengths [B], targets [B]), the same in every process."""
    generator = torch.Generator().manual_seed(SEED + 1)
    return [(torch.randn(GLOBAL_BATCH, T, I, generator=generator, dtype=torch.float64),
             torch.randint(1, T + 1, (GLOBAL_BATCH,), generator=generator),
             torch.randn(GLOBAL_BATCH, generator=generator, dtype=torch.float64)) for _ in range(STEPS)]


def train(model, rank=0, world_size=1):
    """SGD for STEPS steps, each on this rank's contiguous share of the global batch. The loss is
    a mean, so averaging the ranks' gradients (as DDP and FSDP2 do) gives the full batch's."""
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    share = GLOBAL_BATCH // world_size
    rows = slice(rank * share, (rank + 1) * share)
    for x, lengths, targets in batches():
        loss = F.mse_loss(model(x[rows], lengths[rows]), targets[rows])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model


def trained_alone(kind):
    """The truth: the parameters after training on whole batches in this one process."""
    return {name: p.detach() for name, p in train(make_model(kind)).named_parameters()}


def trained_distributed(wrapper, kind, rank, world_size):
    """The parameters, whole on every rank, after training under DDP or FSDP2 (each layer and
    the model sharded) on this rank's share of the batches."""
    from torch.distributed.fsdp import fully_shard
    from torch.nn.parallel import DistributedDataParallel

    model = make_model(kind)
    if wrapper == "ddp":
        train(DistributedDataParallel(model), rank, world_size)
        return {name: p.detach() for name, p in model.named_parameters()}
    fully_shard(model.rnn)
    fully_shard(model)
    train(model, rank, world_size)
    return {name: p.full_tensor().detach() for name, p in model.named_parameters()}  # a collective


def main(out_dir):
    import torch.distributed as dist

    torch.set_num_threads(1)  # one rank per core
    # Before init_process_group, as examples/ddp_train.py explains: imported later (by the first
    # optimizer, through torch._dynamo) it binds the process group for good, and gloo's threads
    # then outlive destroy_process_group and can abort the interpreter's exit.
    import torch.distributed.nn as _  # noqa: F401
    dist.init_process_group("gloo", timeout=timedelta(seconds=60))  # a hung collective raises
    rank, world_size = dist.get_rank(), dist.get_world_size()
    for scenario, (wrapper, kind) in SCENARIOS.items():
        params = trained_distributed(wrapper, kind, rank, world_size)
        if rank == 0:
            torch.save(params, Path(out_dir) / f"{scenario}.pt")
    dist.barrier()  # every rank's results are written
    dist.destroy_process_group()
    # No interpreter teardown: after FSDP2 runs, a gloo worker thread can still be releasing a
    # tensor while Python exits, and aborts the process ("terminate called without an active
    # exception", 1 run in 10 or so under load, torch 2.13). The results are on disk.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1])
