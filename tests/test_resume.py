"""`evonas evolve` / `evonas resume` in fresh processes with real (tiny) training, including a real SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from evonas.cli.main import cli

TINY = """\
task: synthetic
generations: 2
population: 4
offspring: 3
workers: 1
device: cpu
seed: 5
seed_cells: [tanh_rnn, gru]
train: {hidden: 8, steps: 20, threads: 1}
"""
CMD = [sys.executable, "-c", "from evonas.cli.main import main; main()"]


def evonas(*args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([*CMD, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, **kw)


def finish(p: subprocess.Popen, timeout: float = 240) -> tuple[str, str]:
    out, err = p.communicate(timeout=timeout)
    assert p.returncode == 0, err[-3000:]
    return out, err


def rows(run: Path) -> list[dict]:
    """Archive rows (committed ones only), read without the evonas API."""
    if not (run / "archive.sqlite").exists():
        return []
    db = sqlite3.connect(str(run / "archive.sqlite"))
    try:
        cur = db.execute("SELECT id, key, generation, status, valid_loss, params, metrics, finished_at"
                         " FROM evaluations")
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
    except sqlite3.OperationalError:  # not created yet
        return []
    finally:
        db.close()


def comparable(rs: list[dict]) -> list[tuple]:
    """What must match between two runs: cell, generation and metrics (not timings)."""
    out = []
    for r in rs:
        m = json.loads(r["metrics"])
        out.append((r["key"], r["generation"], r["status"], r["valid_loss"], r["params"], m.get("steps"),
                    m.get("valid_ppl")))
    return sorted(out)


@pytest.mark.timeout(400)
def test_sigkill_mid_generation_then_resume_matches_uninterrupted_run(tmp_path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY)
    a, b = tmp_path / "a", tmp_path / "b"
    run_a = evonas("evolve", "--config", str(cfg), "--out", str(a))
    run_b = evonas("evolve", "--config", str(cfg), "--out", str(b), start_new_session=True)
    # Kill B (its whole process group: the CLI and its training worker) once generation 2 has begun.
    deadline = time.monotonic() + 240
    while not any(r["generation"] == 2 for r in rows(b)):
        assert run_b.poll() is None, run_b.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "generation 2 never started"
        time.sleep(0.02)
    os.killpg(run_b.pid, signal.SIGKILL)
    run_b.wait(30)
    assert run_b.returncode == -signal.SIGKILL
    before = rows(b)
    ckpt = json.loads((b / "checkpoint.json").read_text())
    assert ckpt["next_gen"] == 2, "the kill came after generation 2 had finished"
    done_in_gen2 = [r for r in before if r["generation"] == 2]
    assert 1 <= len(done_in_gen2) <= 3  # (3 only if the kill beat the checkpoint of generation 2)

    out, err = finish(evonas("resume", "--json", str(b)))
    out_a, _ = finish(run_a)
    assert out_a == ""  # without --json the logbook goes to its file only
    after = rows(b)
    # Nothing completed before the kill was lost or trained again (same row, same id, same finish time) ...
    by_id = {r["id"]: r for r in after}
    assert all(by_id[r["id"]] == r for r in before)
    assert len({r["key"] for r in after}) == len(after)
    log = [json.loads(line) for line in (b / "logbook.jsonl").read_text().splitlines()]
    assert [e["gen"] for e in log] == [0, 1, 2]
    assert log[2]["reused"] == len(done_in_gen2)
    assert [json.loads(line)["gen"] for line in out.splitlines()] == [2]  # --json: the logbook line on stdout
    assert [ln.split("  ")[0] for ln in err.splitlines() if "best ever" in ln] == ["gen 2"]  # and the summary
    # ... and the resumed run ends with exactly the archive of the uninterrupted one.
    assert comparable(after) == comparable(rows(a))
    assert len(after) == 2 + 4 + 2 * 3
    assert {"archive.sqlite", "checkpoint.json", "logbook.jsonl", "best_cells.json", "config.yaml"} <= {
        p.name for p in b.iterdir()}
    best = json.loads((b / "best_cells.json").read_text())
    assert {x["seed"] for x in best["baselines"]} == {"tanh_rnn", "gru"}
    assert best["best"][0]["valid_loss"] == min(r["valid_loss"] for r in after if r["status"] == "ok")

    # The archive commands read the finished run.
    res = CliRunner().invoke(cli, ["archive", "show", str(b), "-n", "3"])
    assert res.exit_code == 0 and "12 evaluations" in res.output and len(res.output.splitlines()) == 5
    csv_file = tmp_path / "b.csv"
    res = CliRunner().invoke(cli, ["archive", "export", str(b), "--csv", str(csv_file)])
    assert res.exit_code == 0 and len(csv_file.read_text().splitlines()) == 13


def test_cli_errors_name_the_problem(tmp_path):
    runner = CliRunner()
    bad = tmp_path / "bad.yaml"
    bad.write_text("generations: 2\npopulaton: 3\n")
    res = runner.invoke(cli, ["evolve", "--config", str(bad), "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and "unknown key 'populaton'" in res.output
    res = runner.invoke(cli, ["evolve", "--population", "0", "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and "population must be an integer >= 1, got 0" in res.output
    res = runner.invoke(cli, ["evolve", "--seed-cells", "lstm,nosuchcell", "--generations", "0",
                              "--out", str(tmp_path / "r2")])
    assert res.exit_code == 2 and "nosuchcell" in res.output
    res = runner.invoke(cli, ["resume", str(tmp_path / "nothing")])
    assert res.exit_code == 2 and "no run folder" in res.output
    (tmp_path / "r3").mkdir()
    (tmp_path / "r3" / "checkpoint.json").write_text("{}")
    res = runner.invoke(cli, ["evolve", "--out", str(tmp_path / "r3")])
    assert res.exit_code == 2 and "evonas resume" in res.output
    res = runner.invoke(cli, ["archive", "show", str(tmp_path / "nothing")])
    assert res.exit_code == 2 and "no archive" in res.output
