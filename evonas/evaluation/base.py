"""The evaluator contract: train many cells in parallel and report each result as it arrives.

Contract (every backend; `tests/test_evaluators.py` checks it against each one):
- `Evaluator.run(jobs, on_result)` evaluates every job and calls `on_result(job, result)` exactly once per
  job, in the calling process, as each one finishes (any order). It returns when all are reported.
- It never raises for one job's failure. An exception in the job function, a worker that dies (os._exit,
  SIGKILL, segfault, out of memory) or an evaluation over its time limit gives
  `EvalResult(cell=job.key, status="failed", reason=...)`; the reason says what happened
  ("ValueError: boom (jobs.py:12 in f)", "worker died (exit code -9, SIGKILL)", "timed out after 30 s").
  The backend recovers (replaces the dead worker) and the remaining jobs still run.
- An exception raised by `on_result` itself propagates out of `run` (after in-flight work is stopped).
- `close()` stops all workers; evaluators are context managers. They may be reused for many `run` calls.

The function run per job is `fn(job) -> EvalResult` (or its `to_dict()` form; default `train_job`, which
calls `evonas.training.train.evaluate`). It must be a module-level function so that worker processes can import it.
Results travel from workers as plain dicts; `on_result` always receives an `evonas.training.train.EvalResult`.
Devices: a backend that places jobs on devices hands the job function a job whose `config["device"]` names
the device as the worker sees it (`cpu`, or `cuda:0` for the one GPU a worker is pinned to) and
`on_result` gets the job as submitted.

"""

from __future__ import annotations

import dataclasses
import importlib
import os
import time
import traceback
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from evonas.errors import ConfigError

if TYPE_CHECKING:
    from evonas.training.config import EvalResult  # = evonas.training.train.EvalResult, without importing torch

OnResult = Callable[["Job", "EvalResult"], None]
JobFn = Callable[["Job"], "EvalResult"]



@dataclass(frozen=True)
class Job:
    """One evaluation: a cell (canonical `key`, written `cell`) under a training config dict.

    Multi-fidelity: `rung` is the successive-halving rung the budget belongs to; `state_in` (a file written by
    the same arm's previous rung) makes training continue instead of restarting; `state_out` is where the
    training state is saved at the end for the next rung. Paths never enter the archive's budget key.
    """

    key: str
    cell: str
    config: dict = field(hash=False)
    generation: int = 0
    rung: int = 0
    state_in: str | None = None
    state_out: str | None = None

    def to_dict(self) -> dict:
        """Plain dict (JSON-safe when the config is) for sending to workers."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Job:
        """Inverse of `to_dict`."""
        return cls(key=d["key"], cell=d["cell"], config=dict(d["config"]), generation=int(d.get("generation", 0)),
                   rung=int(d.get("rung", 0)), state_in=d.get("state_in"), state_out=d.get("state_out"))

    def on_device(self, device: str | None) -> Job:
        """This job with its config's device set to `device` as the worker sees it (None: unchanged)."""
        if device is None:
            return self
        return dataclasses.replace(self, config={**self.config, "device": device})


def train_job(job: Job) -> EvalResult:
    """Default job function: train the cell with `evonas.training.train.evaluate` under the job's config."""
    from evonas.training.train import TrainConfig, evaluate

    return evaluate(job.cell, TrainConfig.from_dict(job.config), state_in=job.state_in, state_out=job.state_out)


def failed_result(job: Job, reason: str, seconds: float = 0.0) -> EvalResult:
    """The EvalResult recorded for a job that could not be evaluated."""
    from evonas.training.config import EvalResult  # = evonas.training.train.EvalResult, without importing torch

    return EvalResult(cell=job.key, status="failed", reason=reason, seconds=float(seconds))


class Evaluator(ABC):
    """Runs jobs in parallel; see the module docstring for the contract."""

    @abstractmethod
    def run(self, jobs: Sequence[Job], on_result: OnResult) -> None:
        """Evaluate all jobs, calling `on_result(job, result)` in this process as each finishes."""

    @abstractmethod
    def close(self) -> None:
        """Release workers (idempotent)."""

    def __enter__(self) -> Evaluator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------- shared helpers (also used by Ray tasks)


def describe_exception(exc: BaseException) -> str:
    """One line: `Type: message (file.py:line in func)` for the innermost frame."""
    msg = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {msg[0]}" if msg else type(exc).__name__
    frames = traceback.extract_tb(exc.__traceback__)
    if frames:
        last = frames[-1]
        text += f" ({os.path.basename(last.filename)}:{last.lineno} in {last.name})"
    return text


def call_job(fn: JobFn, job: Job) -> tuple:
    """Run one job in a worker; returns ("result", result dict) or ("failed", reason, seconds)."""
    t0 = time.perf_counter()
    try:
        res = fn(job)
        if isinstance(res, dict):
            return ("result", dict(res))
        to_dict = getattr(res, "to_dict", None)
        if callable(to_dict):
            return ("result", to_dict())
    except Exception as exc:  # recorded as a failed evaluation, with the message
        return ("failed", describe_exception(exc), time.perf_counter() - t0)
    return ("failed", f"job function returned {type(res).__name__}, not EvalResult", time.perf_counter() - t0)


def result_from_message(job: Job, msg: tuple) -> EvalResult:
    """Turn a worker's ("result", dict) / ("failed", reason, seconds) message into an EvalResult."""
    from evonas.training.config import EvalResult  # = evonas.training.train.EvalResult, without importing torch

    if msg[0] == "failed":
        return failed_result(job, msg[1], msg[2])
    try:
        return EvalResult.from_dict(msg[1])
    except Exception as exc:  # a malformed result is a failed evaluation, not a crash of the run
        return failed_result(job, f"bad result from job function: {describe_exception(exc)}")


def fn_reference(fn: JobFn) -> tuple[str, str] | JobFn:
    """("module", "qualname") for a module-level function, so workers import it after their setup."""
    module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", None)
    if not module or not qualname or "<" in qualname:
        raise ConfigError(f"evaluator fn must be a module-level function, not {fn!r}")
    if module == "__main__":
        return fn  # re-imported by the spawn machinery as __mp_main__
    return (module, qualname)


def resolve_fn(ref: tuple[str, str] | JobFn) -> JobFn:
    """Inverse of `fn_reference`."""
    if callable(ref):
        return ref
    obj: Any = importlib.import_module(ref[0])
    for part in ref[1].split("."):
        obj = getattr(obj, part)
    return obj
