"""A fast deterministic stand-in for training (no torch), shared by the search and report tests.

`fake_train(key)` derives a pseudo-loss from the cell text: one cell in seven diverges; with `timeouts`, one in
eleven also fails with a time-out; `Inline` evaluates jobs in the calling process with it.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path

from evonas.cells import node_count, parse
from evonas.evaluation import Evaluator


@dataclass
class FakeResult:
    cell: str
    status: str = "ok"
    reason: str = ""
    valid_loss: float | None = None
    params: int = 0
    seconds: float = 0.0
    curve: list | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def fake_train(key: str, timeouts: bool = False, steps: int | None = None) -> FakeResult:
    """Deterministic pseudo-loss from the cell text (smaller cells a little better); some cells fail.

    With `steps` (multi-fidelity budgets) the loss falls with the budget, faster for some cells than for others,
    so that the ranking at a low budget is informative but not the same as at a high one."""
    h = int(hashlib.sha256(key.encode()).hexdigest(), 16)
    n = node_count(parse(key))
    if h % 7 == 0:
        return FakeResult(key, "diverged", f"loss is nan at step {h % 97}" if timeouts else "loss is nan")
    if timeouts and h % 11 == 0:
        return FakeResult(key, "failed", f"timed out after {h % 50 + 10} s")
    loss = 1.0 + (h % 1000) / 1000 + 0.01 * n
    curve = None
    if steps is not None:
        slow = ((h >> 12) % 100) / 100  # what is still to be learned: shows in the curve's slope
        loss += slow / steps
        curve = [loss + slow * (7 - i) / 7 / steps for i in range(8)]
    return FakeResult(key, "ok", "", loss, n * 10, curve=curve)


class Inline(Evaluator):
    """Evaluates in the calling process; optionally raises after `crash_after` results (a simulated kill)."""

    def __init__(self, crash_after: int | None = None, timeouts: bool = False):
        self.calls: list[str] = []
        self.jobs: list = []  # every job run, in order (rung, state files, budget)
        self.crash_after = crash_after
        self.timeouts = timeouts

    def run(self, jobs, on_result):
        for job in jobs:
            if self.crash_after is not None and len(self.calls) >= self.crash_after:
                raise KeyboardInterrupt
            self.calls.append(job.key)
            self.jobs.append(job)
            if job.state_out:  # as real training does: leave the state the next rung continues from
                Path(job.state_out).parent.mkdir(parents=True, exist_ok=True)
                Path(job.state_out).write_text(f"{job.key} after rung {job.rung}")
            on_result(job, fake_train(job.key, self.timeouts, job.config.get("steps")))

    def close(self):
        pass
