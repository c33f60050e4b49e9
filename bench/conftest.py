"""pytest-benchmark suite over the cases of ``python -m fused_rnn bench`` (not part of make test).

    pytest bench/                                   # the default short sweep
    pytest bench/ --bench-args="--quick"            # any option of the bench CLI
    pytest bench/ --bench-args="--sweep full --cells lstm --device cuda --tf32 both"
    pytest bench/ -q --benchmark-disable            # run each once: a smoke check

The case list comes from ``fused_rnn.bench.build_cases``; the environment variable
FUSED_RNN_BENCH_ARGS is the default of --bench-args.
"""
import importlib.util
import os
import shlex
import sys
from pathlib import Path

import pytest

if importlib.util.find_spec("fused_rnn") is None:  # run from a checkout that is not installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def pytest_addoption(parser):
    group = parser.getgroup("fused_rnn bench")
    group.addoption("--bench-args", default=os.environ.get("FUSED_RNN_BENCH_ARGS", ""),
                    help="options of `python -m fused_rnn bench` that pick the cases, device, "
                         "dtype and repeats (quote them as one argument)")


class BenchContext:
    """The parsed options, the cases, and the one case whose modules and inputs are live."""

    def __init__(self, argv):
        import torch

        from fused_rnn import bench

        self.bench = bench
        self.args = bench.parse_args(argv)
        if self.args.threads:
            torch.set_num_threads(self.args.threads)
        self.device = bench.resolve_device(self.args.device)
        self.cases = bench.build_cases(self.args, self.device)
        self.timing = bench.timing_from_args(self.args, self.device)
        self.candidate = bench.torch_classes() if self.args.null else None
        self._pair = None
        self._checks = {}

    def pair(self, case):
        if self._pair is None or self._pair.case != case:
            self._pair = None  # free the previous case first
            if case.tf32 is not None:
                self.bench.set_tf32(case.tf32)
            self._pair = self.bench.Pair(case, self.device, candidate=self.candidate,
                                         n_sets=self.args.input_sets, seed=self.args.seed)
        return self._pair

    def check(self, case, mode):
        key = (case, mode)
        if key not in self._checks:
            self._checks[key] = self.pair(case).check(mode)
        return self._checks[key]


_CONTEXT = None


def _context(config):
    global _CONTEXT
    if _CONTEXT is None:
        try:
            _CONTEXT = BenchContext(shlex.split(config.getoption("--bench-args")))
        except SystemExit as e:  # argparse error in --bench-args
            raise pytest.UsageError(f"bad --bench-args: exit {e.code}") from None
    return _CONTEXT


def pytest_generate_tests(metafunc):
    if "case" not in metafunc.fixturenames:
        return
    ctx = _context(metafunc.config)
    # Order: case, then mode, then side, so the two sides of one (case, mode) run back to back
    # and each case's modules are built once.
    metafunc.parametrize("case", ctx.cases, ids=[c.id for c in ctx.cases])
    metafunc.parametrize("mode", ctx.args.modes)
    metafunc.parametrize("side", ["torch.nn", "fused_rnn"])


@pytest.fixture(scope="session")
def bench_context(pytestconfig):
    return _context(pytestconfig)
