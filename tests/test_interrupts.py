"""Ctrl-C and SIGTERM on a real `evonas evolve` / `evonas resume`: the workers stop, what was recorded stays,
one line says where the run stopped, exit code 130 / 143, no traceback, no process left, the lock released,
and `evonas resume` finishes the run."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from test_reliability_crash import group_left
from test_reliability_crash import snapshot as archived

from evonas.store.lock import LOCK_FILE

EVONAS = str(Path(sys.executable).with_name("evonas"))
CONFIG = """
generations: 3
population: 4
offspring: 3
workers: 2
device: cpu
seed: 11
seed_cells: [tanh_rnn, gru]
train: {hidden: 8, steps: 5, threads: 1}
"""


def snapshot(run: Path) -> dict[str, dict]:
    """key -> metrics of the committed archive rows ({} while the archive is being created)."""
    try:
        return archived(run)
    except sqlite3.OperationalError:  # the file exists, its table not yet
        return {}


def interrupt(args: list[str], run: Path, sig: int, tmp_path: Path) -> tuple[int, str, dict]:
    """Start `evonas ARGS`, send `sig` once it has archived a new row, return (exit code, stderr, rows before)."""
    err = tmp_path / f"stderr-{sig}.txt"
    rows = len(snapshot(run))
    with open(err, "w") as stderr:
        proc = subprocess.Popen([EVONAS, *args], stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True,
                                env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
        try:
            deadline = time.monotonic() + 300
            while len(snapshot(run)) <= rows:
                assert proc.poll() is None, f"exited {proc.returncode} before it archived anything new"
                assert time.monotonic() < deadline, "nothing archived within 300 s"
                time.sleep(0.05)
            before = snapshot(run)
            proc.send_signal(sig)
            code = proc.wait(120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    left = group_left(proc.pid)
    assert not left, f"processes outlived the interrupted run: {left}"
    return code, err.read_text(), before


def check_stopped(code: int, stderr: str, want_code: int, run: Path, before: dict) -> None:
    assert code == want_code, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    last = [ln for ln in stderr.splitlines() if ln.strip()][-1]
    m = re.fullmatch(rf"interrupted at generation (\d); continue with: evonas resume {re.escape(str(run))}", last)
    assert m, stderr[-3000:]
    after = snapshot(run)
    assert all(after[k] == v for k, v in before.items()), "recorded evaluations changed or were lost"
    assert not (run / LOCK_FILE).exists()


def test_sigint_and_sigterm_stop_cleanly_and_resume_finishes(tmp_path):
    cfg, run = tmp_path / "tiny.yaml", tmp_path / "run"
    cfg.write_text(CONFIG)
    code, stderr, before = interrupt(["evolve", "--config", str(cfg), "--out", str(run)], run, signal.SIGINT, tmp_path)
    check_stopped(code, stderr, 130, run, before)
    code, stderr, before = interrupt(["resume", str(run)], run, signal.SIGTERM, tmp_path)
    check_stopped(code, stderr, 143, run, before)
    done = subprocess.run([EVONAS, "resume", str(run)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    final = snapshot(run)
    assert all(final[k] == v for k, v in before.items())
    book = [json.loads(line) for line in (run / "logbook.jsonl").read_text().splitlines()]
    assert [e["gen"] for e in book] == [0, 1, 2, 3]
    assert sum(e["trained"] for e in book) == len(final)
