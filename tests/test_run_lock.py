"""One writer per run folder (evonas.store.lock): the holder is named, stale locks are taken over, readers
(`evonas archive`, `evonas report`) never wait for or take the lock."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest
import reliability_jobs as rj

from evonas.errors import CheckpointError, RunInUseError
from evonas.evolution.config import RunConfig
from evonas.evolution.loop import Search
from evonas.store.lock import LOCK_FILE, RunLock, process_start, read_lock

HOLD = "import sys, time; from evonas.store.lock import RunLock; RunLock(sys.argv[1]).acquire(); " \
       "print('held', flush=True); time.sleep(600)"


@pytest.fixture
def holder(tmp_path):
    """holder(run) -> a live process (another PID) holding the lock of `run`; killed at the end."""
    procs: list[subprocess.Popen] = []

    def start(run) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        assert proc.stdout.readline().strip() == "held"
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def small_run(run) -> None:
    """A finished run folder, built in this process without workers."""
    cfg = RunConfig.from_dict({"generations": 1, "population": 4, "offspring": 2, "seed_cells": ["tanh_rnn"],
                               "device": "cpu"})
    Search(cfg, run, evaluator=rj.InlineEvaluator()).run()


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def plant(run, **holder) -> None:
    record = {"host": socket.gethostname(), "started": "2026-01-01 00:00:00 UTC", "command": "evonas evolve",
              "token": "t", **holder}
    (run / LOCK_FILE).write_text(json.dumps(record))


def test_the_lock_file_names_the_holder_and_goes_on_release(tmp_path):
    with RunLock(tmp_path):
        held = read_lock(tmp_path)
        assert held["pid"] == os.getpid() and held["host"] == socket.gethostname()
        assert held["process_start"] == process_start(os.getpid()) and held["started"].endswith("UTC")
        with RunLock(tmp_path):  # re-entrant: the CLI and Search.run both take it
            pass
        assert read_lock(tmp_path) == held
    assert not (tmp_path / LOCK_FILE).exists()
    with pytest.raises(CheckpointError, match="no run folder at"):
        RunLock(tmp_path / "missing").acquire()


def test_a_second_writer_is_refused_and_readers_keep_working(tmp_path, holder):
    run = tmp_path / "run"
    small_run(run)
    proc = holder(run)
    with pytest.raises(RunInUseError, match=f"in use by another evonas process \\(PID {proc.pid} on host"):
        RunLock(run).acquire()
    with pytest.raises(RunInUseError):
        Search.resume(run, evaluator=rj.InlineEvaluator()).run()
    resumed = rj.run_cli("resume", str(run))
    rj.assert_one_line_error(resumed, f"run folder {run} is in use", f"PID {proc.pid}")
    evolved = rj.run_cli("evolve", "--device", "cpu", "--out", str(run))
    rj.assert_one_line_error(evolved, f"PID {proc.pid}", alone=False)
    for args in (["archive", "show", str(run)], ["archive", "export", str(run), "--csv", str(tmp_path / "a.csv")],
                 ["report", str(run)]):
        done = rj.run_cli(*args)
        assert done.returncode == 0, (args, done.stderr[-2000:])
    assert read_lock(run)["pid"] == proc.pid  # readers never touched it
    proc.kill()  # SIGKILL: the lock stays behind, stale
    proc.wait()
    again = rj.run_cli("resume", str(run))
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"taking over the lock of run folder {run}" in again.stderr
    assert f"PID {proc.pid} is not running" in again.stderr
    assert not (run / LOCK_FILE).exists()


def test_stale_locks_are_taken_over_with_a_warning(tmp_path):
    pid = dead_pid()
    plant(tmp_path, pid=pid, process_start=process_start(os.getpid()))
    with pytest.warns(UserWarning, match=f"PID {pid} is not running"), RunLock(tmp_path):
        assert read_lock(tmp_path)["pid"] == os.getpid()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:  # the PID is alive but belongs to a process started at another time: reused
        plant(tmp_path, pid=sleeper.pid, process_start=process_start(sleeper.pid) + 1)
        with pytest.warns(UserWarning, match=f"PID {sleeper.pid} now belongs to another process"), RunLock(tmp_path):
            pass
        plant(tmp_path, pid=sleeper.pid, process_start=process_start(sleeper.pid))  # the same process: alive
        with pytest.raises(RunInUseError, match=f"PID {sleeper.pid}"):
            RunLock(tmp_path).acquire()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_locks_that_cannot_be_checked_are_respected(tmp_path):
    plant(tmp_path, host="another-host.example", pid=dead_pid(), process_start=1)
    with pytest.raises(RunInUseError, match="on host another-host.example"):
        RunLock(tmp_path).acquire()
    (tmp_path / LOCK_FILE).write_text("")  # being written right now by a process that just created it
    with pytest.raises(RunInUseError):
        RunLock(tmp_path).acquire()
    old = time.time() - 600  # ... or left empty by a process killed in that instant, long ago
    os.utime(tmp_path / LOCK_FILE, (old, old))
    with pytest.warns(UserWarning, match="unreadable"), RunLock(tmp_path):
        assert read_lock(tmp_path)["pid"] == os.getpid()
