"""Helpers of the reliability suite: a faulty job function and a test harness around the real CLI.

`faulty(job)` (module-level, so worker processes can import it) does what `FAULTS` says for a cell key
or, for any other cell, what the crc of its key says, and returns a fake (deterministic) result otherwise.

`python tests/reliability_jobs.py ARGS...` runs exactly `evonas ARGS...` (the real CLI), with two test-only
additions read from the environment:
- EVONAS_REL_JOURNAL=FILE: every `Archive.add` in this process appends "new KEY" (row written) or "dup KEY"
  (the cell was already archived: a completed evaluation was trained again) to FILE, fsynced.
- EVONAS_REL_KILL=POINT:N: the process SIGKILLs itself at the Nth time it reaches POINT (see `KILL_POINTS`).
- EVONAS_REL_FIT_EPOCHS=N: surrogate fits run at most N epochs (a budget only, to keep the test short).
Nothing here is imported by evonas itself; the hooks wrap evonas functions from the outside.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

# --------------------------------------------------------------------------- fault injection into evaluation

# What `faulty` does per action; "ok" returns a normal result.
ACTIONS = ("raise", "nan", "exit", "kill", "hang", "diverged", "ok_nan", "ok_inf", "ok_neg_inf", "ok_none",
           "failed_with_loss")


def fake_loss(key: str) -> float:
    """Deterministic fake validation loss in [1, 2) for a key."""
    return 1.0 + (zlib.crc32(key.encode()) % 1000) / 1000


def _result(key: str, status: str = "ok", reason: str = "", loss: float | None = None) -> dict:
    return {"cell": key, "status": status, "reason": reason, "valid_loss": loss, "valid_ppl": None,
            "test_loss": None, "test_ppl": None, "params": len(key), "seconds": 0.01, "steps": 3, "epochs": 0.5}


def action_for(job) -> str:  # noqa: ANN001 - evonas.evaluation.Job
    """The fault assigned to a job: `config["faults"][key]`, else every `config["every"]`-th crc gets one."""
    faults = job.config.get("faults", {})
    if job.key in faults:
        return faults[job.key]
    every = int(job.config.get("every", 0))
    if every:
        h = zlib.crc32(job.key.encode())
        if h % every == 0:
            return ACTIONS[(h // every) % len(ACTIONS)]
    return "ok"


def faulty(job) -> dict:  # noqa: ANN001 - evonas.evaluation.Job
    """Evaluate a job, misbehaving as `action_for(job)` says (results as EvalResult dicts)."""
    action = action_for(job)
    if action == "raise":
        raise RuntimeError(f"injected failure in {job.key}")
    if action == "nan":  # a training loop that saw a NaN loss and said so
        return _result(job.key, "diverged", "loss is nan at step 2", math.nan)
    if action == "exit":
        os._exit(3)
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(30)
    if action == "hang":
        time.sleep(3600)
    if action == "diverged":
        return _result(job.key, "diverged", "loss exploded", 0.001)  # a finite (tempting) loss, but diverged
    if action == "ok_nan":  # the job function lies: "ok" without a finite loss
        return _result(job.key, "ok", "", math.nan)
    if action == "ok_inf":
        return _result(job.key, "ok", "", math.inf)
    if action == "ok_neg_inf":
        return _result(job.key, "ok", "", -math.inf)
    if action == "ok_none":
        return _result(job.key, "ok", "", None)
    if action == "failed_with_loss":
        return _result(job.key, "failed", "injected", 0.0)
    return _result(job.key, "ok", "", fake_loss(job.key))


# --------------------------------------------------------------------------- kill points in the real CLI

KILL_POINTS = {
    "checkpoint-write": "in save_checkpoint, after the temporary file is written, before any rename",
    "checkpoint-rotate": "in save_checkpoint, after the current checkpoint became checkpoint.prev.json",
    "surrogate-fit": "in the middle of a surrogate fit (a timer fires during training, or at its end)",
    "surrogate-save": "in Surrogate.save, after weights.pt is written, before meta.json",
    "archive-add": "right after an evaluation is committed to the archive",
    "logbook": "after the checkpoint of a generation, before its logbook line",
    "archive-open": "right after the archive file is created, before anything else of the run is written",
}


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(30)


class _Counter:
    def __init__(self, point: str, n: int):
        self.point, self.n, self.seen = point, n, 0

    def hit(self, point: str) -> bool:
        """Count a visit of `point`; True when this is the visit to die at."""
        if point != self.point:
            return False
        self.seen += 1
        return self.seen == self.n


def install_hooks() -> None:
    """Wrap evonas functions as the environment asks (see the module docstring)."""
    journal = os.environ.get("EVONAS_REL_JOURNAL")
    spec = os.environ.get("EVONAS_REL_KILL", "")
    counter = None
    if spec:
        point, n = spec.rsplit(":", 1)
        if point not in KILL_POINTS:
            raise SystemExit(f"unknown kill point {point!r}")
        counter = _Counter(point, int(n))

    def maybe_die(point: str) -> None:
        if counter is not None and counter.hit(point):
            _die()

    from evonas.evolution import loop as loop_mod
    from evonas.store import archive as archive_mod
    from evonas.store import checkpoint as ckpt_mod

    real_add, real_init = archive_mod.Archive.add, archive_mod.Archive.__init__

    def add(self, job, result, started_at=None):  # noqa: ANN001
        new = real_add(self, job, result, started_at)
        if journal:
            with open(journal, "a", encoding="utf-8") as f:
                f.write(f"{'new' if new else 'dup'} {job.key}\n")
                f.flush()
                os.fsync(f.fileno())
        maybe_die("archive-add")
        return new

    def init(self, *a, **kw):  # noqa: ANN001
        real_init(self, *a, **kw)
        maybe_die("archive-open")

    archive_mod.Archive.add, archive_mod.Archive.__init__ = add, init

    class _Os:
        """The os module as evonas.store.checkpoint sees it, with kill points around fsync and replace."""

        def __getattr__(self, name: str):
            return getattr(os, name)

        @staticmethod
        def replace(src, dst):  # noqa: ANN001
            if Path(src).name.startswith(".checkpoint."):
                maybe_die("checkpoint-write")
            os.replace(src, dst)
            if Path(dst).name == ckpt_mod.PREVIOUS:
                maybe_die("checkpoint-rotate")

    ckpt_mod.os = _Os()

    real_append = loop_mod.append_logbook

    def append_logbook(*a, **kw):  # noqa: ANN001
        maybe_die("logbook")
        return real_append(*a, **kw)

    loop_mod.append_logbook = append_logbook

    fit_epochs = os.environ.get("EVONAS_REL_FIT_EPOCHS")
    if fit_epochs:
        import dataclasses

        from evonas.surrogate import api as api_mod

        api_mod.FitConfig = dataclasses.make_dataclass(
            "FitConfig", [("epochs", int, dataclasses.field(default=int(fit_epochs)))], bases=(api_mod.FitConfig,))
        api_mod.WARM_EPOCHS = int(fit_epochs)
    if counter is not None and counter.point.startswith("surrogate"):
        from evonas.surrogate import api as api_mod
        from evonas.surrogate import persist as persist_mod

        real_fit, real_write = api_mod.fit_model, persist_mod._atomic_write

        def fit_model(*a, **kw):  # noqa: ANN001
            if counter.hit("surrogate-fit"):
                timer = threading.Timer(float(os.environ.get("EVONAS_REL_FIT_DELAY", "0.5")), _die)
                timer.daemon = True
                timer.start()
                real_fit(*a, **kw)
                _die()  # the fit was quicker than the timer: die at its end, still inside the fit
            return real_fit(*a, **kw)

        def atomic_write(path, write):  # noqa: ANN001
            if Path(path).name == persist_mod.META:
                maybe_die("surrogate-save")
            return real_write(path, write)

        api_mod.fit_model, persist_mod._atomic_write = fit_model, atomic_write


def main() -> None:
    """`evonas` with the test hooks installed (SIGUSR1 dumps every thread's stack: for diagnosing a hang)."""
    import faulthandler

    faulthandler.register(signal.SIGUSR1, all_threads=True)
    install_hooks()
    from evonas.cli.main import main as evonas_main

    sys.argv[0] = "evonas"
    evonas_main()


if __name__ == "__main__":
    main()


# --------------------------------------------------------------------------- helpers for the test modules


class InlineEvaluator:
    """Evaluates `faulty` jobs in the calling process (no workers): for building run folders quickly."""

    def __init__(self):
        self.calls: list[str] = []

    def run(self, jobs, on_result) -> None:  # noqa: ANN001
        from evonas.training.train import EvalResult

        for job in jobs:
            self.calls.append(job.key)
            on_result(job, EvalResult.from_dict(faulty(job)))

    def close(self) -> None:
        """Nothing to release."""


def run_cli(*args: str, cwd: str | Path | None = None, env: dict | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """`evonas ARGS...` in a fresh process (the installed console script), output captured as text."""
    exe = Path(sys.executable).with_name("evonas")
    return subprocess.run([str(exe), *args], capture_output=True, text=True, cwd=cwd, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def assert_one_line_error(proc, *fragments: str, alone: bool = True) -> str:  # noqa: ANN001
    """Exit code 2, no traceback, and exactly one stderr line `error: ...` holding every fragment
    (`alone`: and nothing else on stderr)."""
    err = proc.stderr
    assert proc.returncode == 2, f"exit code {proc.returncode}\nstdout: {proc.stdout[-1500:]}\nstderr: {err[-3000:]}"
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert len(errors) == 1, f"expected one error line, got:\n{err}"
    assert not alone or len(lines) == 1, f"expected only the error line on stderr, got:\n{err}"
    for frag in fragments:
        assert frag in errors[0], f"{frag!r} not in {errors[0]!r}"
    return errors[0]
