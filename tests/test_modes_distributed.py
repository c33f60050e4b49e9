"""Data-parallel training of fused modules over two CPU processes (gloo), under DDP and under
FSDP2 (`torch.distributed.fsdp.fully_shard`): a 2-layer LSTM on padded input and a
bidirectional GRU on packed input, each inside a small model, end a few SGD steps with the same
parameters (float64, 1e-10) as one process training on the whole batches from the same
initial weights. The ranks run once, under torchrun, for every case (tests/distributed_cases.py)."""
import pytest
import torch

from checks import assert_close
from distributed_cases import SCENARIOS, make_model, torchrun, trained_alone


@pytest.fixture(scope="module")
def trained_by_ranks(tmp_path_factory):
    """scenario -> the parameters rank 0 wrote after training (one torchrun for all scenarios:
    starting the processes is most of the time)."""
    out = tmp_path_factory.mktemp("distributed")
    proc = torchrun("tests/distributed_cases.py", out)
    assert proc.returncode == 0, proc.stdout[-4000:]
    return {scenario: torch.load(out / f"{scenario}.pt", weights_only=True) for scenario in SCENARIOS}


@pytest.mark.slow  # two processes importing torch and training: about 15 s for the whole file
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_data_parallel_equals_one_process(trained_by_ranks, scenario):
    _, kind = SCENARIOS[scenario]
    want = trained_alone(kind)
    got = trained_by_ranks[scenario]
    assert list(got) == list(want)
    for name, value in got.items():
        assert_close(value, want[name], f"{scenario}: {name}")
    # Not vacuous: the training moved the weights further than the tolerance by far.
    initial = dict(make_model(kind).named_parameters())
    assert max((want[n] - initial[n]).abs().max().item() for n in want) > 1e-2
