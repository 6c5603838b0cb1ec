"""Crash-resume loop: a real `evonas evolve` in a subprocess is SIGKILLed again and again, then resumed.

Kills come at random moments from outside (mostly while cells train) and at fixed points from inside
(the process SIGKILLs itself in the middle of a checkpoint write, a surrogate fit or save, right after an
archive commit, ...; see tests/reliability_jobs.py). Some stops are interrupts instead (SIGINT, SIGTERM:
exit 130 / 143 with the one "interrupted at generation G" line), and once a second `evonas resume` is
started while the run is going: it is refused (exit 2, one line naming the holder) and changes nothing.
Every SIGKILL leaves the run's lock behind, which the next resume takes over as stale. After every stop the
archive may only have grown: every (canonical cell -> metrics) seen before is still there, unchanged,
nothing is archived twice, no archived cell is trained again, and at the end the run is complete and
consistent.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
HARNESS = str(TESTS / "reliability_jobs.py")


GENERATIONS = 8
# A tiny real search: 3 seeds + 4 initial + 8 x 3 offspring = 31 cells, each a few training steps, with two
# rungs (4 steps, then 8 for the best third and the seeds, continuing from the saved state), so kills also land
# inside a rung and between rungs. The third seed blows up (h_t = MM(x) + 1000 h_{t-1} overflows, then
# inf - inf = NaN): a real diverged cell.
CONFIG = f"""
generations: {GENERATIONS}
population: 4
offspring: 3
workers: 2
device: cpu
seed: 7
surrogate: treelstm
seed_cells: [tanh_rnn, gru, "Add(MM(x),Div(h_prev,Sub(h_prev,h_prev)))"]
fidelity: {{rungs: [4, 8], eta: 3}}
train: {{hidden: 8}}
"""
# Kills in order: "ext" = SIGKILL from outside at a random moment once the run is under way, "ext-train" =
# from outside at a random moment soon after a new evaluation arrived (workers busy training), "sigint" /
# "sigterm" = that signal (Ctrl-C, a polite kill) soon after a new evaluation arrived, "lock" = a second
# `resume` while the run goes on (refused), then SIGKILL; else a kill point inside the process.
# Every kill that the test requires comes first, in the first nine attempts: training got fast enough that the
# run can finish after ten kills (enough generations that it does not finish earlier).
PLAN = ["archive-add:2", "sigint", "ext-train", "surrogate-fit:1", "lock", "ext", "checkpoint-write:1", "sigterm",
        "surrogate-save:1", "archive-add:1", "ext-train", "archive-add:3", "ext", "checkpoint-rotate:1", "logbook:1",
        "ext-train", "surrogate-fit:2", "archive-add:1", "ext"]
EXTERNAL = ("ext", "ext-train", "sigint", "sigterm", "lock")
INTERRUPTS = {"sigint": (signal.SIGINT, 130), "sigterm": (signal.SIGTERM, 143)}
MAX_ATTEMPTS = 40


def snapshot(run: Path) -> dict[str, dict]:
    """"key@rung" -> metrics of the archive, read-only; asserts one row per (cell, rung)."""
    path = run / "archive.sqlite"
    if not path.exists():
        return {}
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT key, metrics FROM evaluations ORDER BY id").fetchall()
    finally:
        db.close()
    out = {f"{k}@{json.loads(m).get('rung', 0)}": json.loads(m) for k, m in rows}
    assert len(out) == len(rows), f"duplicate archive rows: {len(rows) - len(out)} (cell, rung) pairs twice"
    return out


def group_left(pgid: int, wait: float = 30.0) -> list[str]:
    """Command lines of processes of the group still alive after `wait` s (workers exit when their parent dies;
    one still importing at that moment notices after its imports, hence the generous wait on a busy machine)."""
    deadline = time.monotonic() + wait
    while True:
        left = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
                if int(fields[2]) == pgid and fields[0] != "Z":
                    left.append((stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()[:200])
            except (OSError, IndexError, ValueError):
                continue
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


@pytest.mark.slow
def test_sigkill_again_and_again_loses_nothing(tmp_path):
    seed = int(os.environ.get("EVONAS_REL_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    cfg, run, journal = tmp_path / "tiny.yaml", tmp_path / "run", tmp_path / "journal.txt"
    cfg.write_text(CONFIG)
    env = {**os.environ, "EVONAS_REL_JOURNAL": str(journal), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1",
           "EVONAS_REL_FIT_EPOCHS": "30"}
    seen: dict[str, dict] = {}
    kills: list[str] = []
    where: list[str] = []  # what the run had printed last when it was killed (shown with pytest -s)
    finished = False
    log = tmp_path / "output.txt"
    for attempt in range(MAX_ATTEMPTS):
        arm = PLAN[attempt] if attempt < len(PLAN) else None
        started = (run / "config.yaml").exists()
        args = ["resume", str(run)] if started else ["evolve", "--config", str(cfg), "--out", str(run)]
        point_env = {"EVONAS_REL_KILL": arm} if arm and arm not in EXTERNAL else {}
        with open(log, "a") as out:
            out.write(f"\n=== attempt {attempt}: {' '.join(args)} (kill {arm}) ===\n")
            out.flush()
            proc = subprocess.Popen([sys.executable, HARNESS, *args], env={**env, **point_env}, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
            try:
                if arm == "ext":  # a random moment after the run is under way (mostly: cells are training)
                    size = log.stat().st_size
                    while proc.poll() is None and log.stat().st_size == size:
                        time.sleep(0.05)
                    try:
                        proc.wait(rng.uniform(0.2, 2.0))
                    except subprocess.TimeoutExpired:
                        proc.send_signal(signal.SIGKILL)
                elif arm in ("ext-train", "sigint", "sigterm", "lock"):  # soon after a newly trained cell is
                    rows = len(snapshot(run))                             # archived: the others are training
                    while proc.poll() is None and len(snapshot(run)) == rows:
                        time.sleep(0.1)
                    if arm == "lock" and proc.poll() is None:
                        # The holder is paused while the second writer tries, so that it cannot finish the run
                        # (and release the lock) in the seconds the second process takes to start.
                        os.kill(proc.pid, signal.SIGSTOP)
                        try:
                            second_writer_is_refused(run, proc.pid, env)
                        finally:
                            os.kill(proc.pid, signal.SIGCONT)
                    try:
                        proc.wait(rng.uniform(0.05, 0.5))
                    except subprocess.TimeoutExpired:
                        proc.send_signal(INTERRUPTS[arm][0] if arm in INTERRUPTS else signal.SIGKILL)
                code = proc.wait(240)
            finally:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
        left = group_left(proc.pid)
        assert not left, f"processes outlived the killed run: {left}"
        output = log.read_text()
        allowed = (0, INTERRUPTS[arm][1]) if arm in INTERRUPTS else (0, -signal.SIGKILL)
        assert code in allowed, f"attempt {attempt} ({arm}) exited {code} (seed {seed}):\n{output[-3000:]}"
        if code in (130, 143):
            last = [ln for ln in output.splitlines() if ln.strip()][-1]
            assert re.fullmatch(rf"interrupted at generation \d; continue with: evonas resume {re.escape(str(run))}",
                                last), output[-3000:]
        assert not (run / "lock.json").exists() or code == -signal.SIGKILL, "an ended run kept its lock"
        now = snapshot(run)
        lost = {k for k in seen if k not in now}
        changed = {k for k in seen if k in now and now[k] != seen[k]}
        assert not lost, f"archived evaluations lost after kill {arm} (seed {seed}): {lost}"
        assert not changed, f"archived metrics changed after kill {arm} (seed {seed}): {changed}"
        seen = now
        if code == 0:
            finished = True
            break
        kills.append(arm)
        tail = [ln for ln in output.splitlines() if ln.strip()][-1]
        where.append(f"{arm:<20} last output: {tail[:100]}")
    print(f"\n{len(kills)} kills (seed {seed}):\n" + "\n".join(where))
    assert finished, f"the run did not finish after {MAX_ATTEMPTS} attempts (seed {seed})"
    assert len(kills) >= 10, f"only {len(kills)} kills happened: {kills} (seed {seed})"
    assert {"archive-add:2", "surrogate-fit:1", "checkpoint-write:1", "surrogate-save:1", "sigint", "lock",
            "sigterm"} <= set(kills), kills
    assert output.count("taking over the lock of run folder") >= 5  # each SIGKILL left a stale lock behind

    # A kill leaves no tracebacks behind (e.g. from workers finding their parent gone).
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]

    # No completed evaluation was trained again: every result that reached the archive was new.
    lines = journal.read_text().split("\n")
    dups = [line for line in lines if line.startswith("dup ")]
    assert not dups, f"archived cells trained again (seed {seed}): {dups}"

    # The finished run is complete and consistent.
    from evonas.store.checkpoint import load_checkpoint

    state = load_checkpoint(run)
    assert state["next_gen"] == GENERATIONS + 1
    book = [json.loads(line) for line in (run / "logbook.jsonl").read_text().splitlines()]
    assert [e["gen"] for e in book] == list(range(GENERATIONS + 1))
    assert sum(e["trained"] for e in book) == len({k.rsplit("@", 1)[0] for k in seen})
    assert all(e["rungs"][1]["trained"] >= 1 for e in book)  # every generation promoted cells to rung 1
    # The journal line is written just after the archive commit, so a kill in between may drop it (never more
    # than one per kill); every journalled cell is in the archive.
    journalled = [ln[4:] for ln in lines if ln.startswith("new ")]
    assert set(journalled) <= {k.rsplit("@", 1)[0] for k in seen} and len(seen) - len(journalled) <= len(kills)
    ok = {k for k, m in seen.items() if m["status"] == "ok" and m.get("valid_loss") is not None}
    for ind in state["population"] + state["hall_of_fame"]:  # fitness = the result at the highest rung reached
        at = f"{ind['key']}@{ind['rung']}"
        assert at in ok and ind["fitness"][0] == seen[at]["valid_loss"]
    top = [k for k in ok if k.endswith("@1")]
    assert state["hall_of_fame"][0]["fitness"][0] == min(seen[k]["valid_loss"] for k in top)
    diverged = [m for m in seen.values() if m["status"] != "ok"]
    assert diverged and all(m["reason"] for m in diverged)
    best = json.loads((run / "best_cells.json").read_text())
    assert all(f"{e['cell']}@{e['rung']}" in ok for e in best["best"])


def second_writer_is_refused(run: Path, holder: int, env: dict) -> None:
    """A second `evonas resume` of a run in progress: one line naming the holder, exit 2, and it wrote nothing
    (a resume writes the run's config.yaml first; the holder writes it only when it starts)."""
    before = {p.name: p.stat().st_mtime_ns for p in run.iterdir() if p.name == "config.yaml"}
    proc = subprocess.run([sys.executable, HARNESS, "resume", str(run)], env=env, capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: run folder {run} is in use") \
        and f"PID {holder} on host" in lines[0], proc.stderr[-3000:]
    assert before == {p.name: p.stat().st_mtime_ns for p in run.iterdir() if p.name in before}


def test_kill_right_after_the_archive_is_created_can_still_be_resumed(tmp_path):
    """The smallest window: the run folder holds an (empty) archive and the config copy; `resume` must finish it
    (`evolve` refuses a folder that holds an archive, so resume is the only way on)."""
    cfg, run = tmp_path / "tiny.yaml", tmp_path / "run"
    cfg.write_text(CONFIG.replace(f"generations: {GENERATIONS}", "generations: 0").replace("treelstm", "none"))
    env = {**os.environ, "EVONAS_REL_KILL": "archive-open:1"}
    first = subprocess.run([sys.executable, HARNESS, "evolve", "--config", str(cfg), "--out", str(run)], env=env,
                           capture_output=True, text=True, timeout=120)
    assert first.returncode == -signal.SIGKILL
    assert (run / "archive.sqlite").exists()
    again = subprocess.run([sys.executable, HARNESS, "resume", str(run)], capture_output=True, text=True,
                           timeout=120)
    assert again.returncode == 0, again.stderr[-2000:]
    assert len({k.rsplit("@", 1)[0] for k in snapshot(run)}) == 3 + 4
