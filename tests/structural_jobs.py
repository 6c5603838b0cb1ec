"""A fake training whose loss follows a learnable structural signal (no torch): for the screen's search tests.

loss = f(operator counts) + small deterministic noise; `job` is a module-level job function that worker processes
import (it sleeps a few key-dependent milliseconds so that results of two workers arrive in varying order);
`InlineStructural` evaluates in the calling process.
"""

from __future__ import annotations

import time
import zlib

from evonas.cells import node_count, op_counts, parse
from evonas.evaluation import Evaluator
from evonas.training.config import EvalResult


def structural_loss(key: str) -> float:
    """Lower with more gates (Sigmoid, Mult) and a Memory, higher with ReLU and size; +-0.01 noise from the key."""
    node = parse(key)
    c = op_counts(node)
    signal = (-0.12 * min(c.get("Sigmoid", 0), 3) - 0.08 * min(c.get("Mult", 0), 3) - 0.15 * min(c.get("Memory", 0), 1)
              + 0.1 * c.get("ReLU", 0) + 0.01 * node_count(node))
    noise = (zlib.crc32(key.encode()) % 1000) / 1000 * 0.02 - 0.01
    return 2.0 + signal + noise


def result(key: str) -> dict:
    """An ok EvalResult dict for `key`."""
    return {"cell": key, "status": "ok", "reason": "", "valid_loss": structural_loss(key), "valid_ppl": None,
            "test_loss": None, "test_ppl": None, "params": node_count(parse(key)), "seconds": 0.01, "steps": 1,
            "epochs": 0.0}


def job(j) -> dict:  # noqa: ANN001 - evonas.evaluation.Job
    """Worker job function: the structural loss, after a key-dependent pause of 0-20 ms."""
    time.sleep((zlib.crc32(j.key.encode()) % 21) / 1000)
    return result(j.key)


class InlineStructural(Evaluator):
    """Evaluates jobs in the calling process with the structural loss; counts the jobs."""

    def __init__(self):
        self.calls: list[str] = []

    def run(self, jobs, on_result):  # noqa: ANN001
        for j in jobs:
            self.calls.append(j.key)
            on_result(j, EvalResult.from_dict(result(j.key)))

    def close(self):
        pass
