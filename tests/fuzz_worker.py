"""The child process of the adversarial suite: runs the cases it reads from stdin, one JSON
line each way, so that a case that crashes or hangs the process fails that case alone.

    stdin:  {"family": "ops", "seed": 17}
    stdout: {"seed": 17, "label": "lstm"} or {"seed": 17, "finding": "..."}

Run one case by hand, in this process, to debug it:

    python tests/fuzz_worker.py ops 17
"""
import json
import os
import sys
import traceback
from pathlib import Path

# The tests' helpers; fused_rnn itself comes from PYTHONPATH, which the parent sets to the
# package it imported (the sanitized one under `make sanitize`), else from the repository.
sys.path.insert(0, str(Path(__file__).resolve().parent))
if "PYTHONPATH" not in os.environ:
    sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import fuzz_cases  # noqa: E402


def serve():
    torch.set_num_threads(1)  # the parent runs one worker per core
    for line in sys.stdin:
        request = json.loads(line)
        reply = {"seed": request["seed"]}
        try:
            reply["label"] = fuzz_cases.run_case(request["family"], request["seed"])
        except fuzz_cases.Finding as e:
            reply["finding"] = str(e)
        except Exception:  # noqa: BLE001 - an escaped exception is a finding too
            reply["finding"] = "unexpected exception: " + traceback.format_exc(limit=4)[-1500:]
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    if len(sys.argv) == 3:
        print(fuzz_cases.run_case(sys.argv[1], int(sys.argv[2])))
    else:
        serve()
