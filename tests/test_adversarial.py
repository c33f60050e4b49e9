"""The adversarial suite: random valid and invalid calls of every public entry point
(tests/fuzz_cases.py), each run in a child process (tests/fuzz_worker.py) so that a crash or a
hang fails its case, not the run.

In CI each family runs a fixed list of seeds (the same cases every run). FUSED_RNN_FUZZ_SECONDS=N
runs each family for N seconds instead, over fresh seeds, and prints the case counts:

    FUSED_RNN_FUZZ_SECONDS=600 .venv/bin/python -m pytest tests/test_adversarial.py -s

A failing case names its family and seed; `python tests/fuzz_worker.py FAMILY SEED` reruns it.
"""
import collections
import json
import os
import selectors
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

import fused_rnn

import fuzz_cases

WORKER = Path(__file__).with_name("fuzz_worker.py")
CI_CASES = {"ops": 160, "ops_invalid": 300, "backward_ops": 200, "modules": 250, "cells": 300, "convert": 40,
            "seq2seq": 150}
CASE_TIMEOUT_S = 60  # far above any case's time: past it the case hangs
SECONDS = float(os.environ.get("FUSED_RNN_FUZZ_SECONDS", 0))


class Worker:
    """A child process running cases; restarted after a crash or a hang."""

    def __init__(self):
        self.proc = None
        # A file, not a pipe: a child writing more than a pipe holds would block, and look hung.
        self.stderr = tempfile.TemporaryFile("w+")

    def run(self, family, seed):
        """(reply dict) for one case; a crash or a hang becomes a finding."""
        if self.proc is None:
            # The child imports the fused_rnn this process imported (the sanitized one, say).
            package_root = str(Path(fused_rnn.__file__).resolve().parents[1])
            env = dict(os.environ, PYTHONPATH=os.pathsep.join([package_root, os.environ.get("PYTHONPATH", "")]))
            self.proc = subprocess.Popen([sys.executable, str(WORKER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=self.stderr, text=True, bufsize=1, env=env)
        self.proc.stdin.write(json.dumps({"family": family, "seed": seed}) + "\n")
        self.proc.stdin.flush()
        line = self._read_line(CASE_TIMEOUT_S)
        if line is None:
            return {"seed": seed, "finding": self._restart("hung (no answer in %d s)" % CASE_TIMEOUT_S)}
        if not line:
            return {"seed": seed, "finding": self._restart("crashed")}
        return json.loads(line)

    def _read_line(self, timeout):
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            if not sel.select(timeout):
                return None
        return self.proc.stdout.readline()

    def _restart(self, what):
        self.proc.kill()
        code = self.proc.wait()
        self.proc = None
        self.stderr.seek(0)
        err = self.stderr.read()
        self.stderr.seek(0)
        self.stderr.truncate()
        return f"the process {what}, exit code {code}: {err[-1500:]}"

    def close(self):
        if self.proc is not None:
            self.proc.stdin.close()
            self.proc.wait(timeout=30)
        self.stderr.close()


def seeds(family):
    """The CI's fixed seeds, or fresh ones (from the clock) for FUSED_RNN_FUZZ_SECONDS."""
    if not SECONDS:
        yield from range(CI_CASES[family])
        return
    start, deadline = time.time_ns() % 10**9, time.monotonic() + SECONDS
    n = 0
    while time.monotonic() < deadline:
        yield start + n
        n += 1


@pytest.mark.parametrize("family", sorted(fuzz_cases.FAMILIES))
def test_adversarial(family):
    worker = Worker()
    findings, labels = [], collections.Counter()
    try:
        for seed in seeds(family):
            reply = worker.run(family, seed)
            if "finding" in reply:
                findings.append(f"python tests/fuzz_worker.py {family} {seed}\n    {reply['finding']}")
            else:
                labels[reply["label"].split("-bad-")[0]] += 1
    finally:
        worker.close()
    total = len(findings) + sum(labels.values())
    print(f"\n{family}: {total} cases, {len(findings)} findings; {dict(labels)}")
    assert not findings, f"{len(findings)} of {total} cases failed:\n" + "\n".join(findings[:20])
