"""The SQLite run archive: rows, deduplication, durability across processes, corrupt files, export."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
import subprocess
import sys
import textwrap

import evaluator_jobs as jobs_mod
import pytest

from evonas.errors import CheckpointError
from evonas.evaluation import Job, failed_result
from evonas.store.archive import ARCHIVE_NAME, COLUMNS, Archive
from evonas.training.config import EvalResult  # = evonas.training.train.EvalResult, without importing torch

CONFIG = {"task": "synthetic", "seed": 0, "steps": 20, "hidden": 16}


def job(key: str, generation: int = 0, **config) -> Job:
    return Job(key=key, cell=f"  {key}  ", config={**CONFIG, **config}, generation=generation)


def ok(key: str, **kw) -> EvalResult:
    return EvalResult.from_dict({**jobs_mod.ok_result(key), **kw})


def test_add_and_read_back(tmp_path):
    with Archive(tmp_path) as a:
        assert a.path == tmp_path / ARCHIVE_NAME
        assert a.add(job("A", generation=2), ok("A"))
        assert a.add(job("B"), failed_result(job("B"), "worker died (exit code -9, SIGKILL)", 1.5))
        assert a.count() == 2 and len(a) == 2 and a.count("ok") == 1
        assert a.has("A") and a.has("B") and not a.has("C") and a.get("C") is None
        assert a.keys() == {"A", "B"}
        row = a.get("A")
        assert set(row) == set(COLUMNS)
        assert row["cell"] == "  A  " and row["task"] == "synthetic" and row["budget"] == CONFIG
        assert row["metrics"] == {**jobs_mod.ok_result("A"), "rung": 0}
        assert row["status"] == "ok" and row["generation"] == 2
        assert row["valid_loss"] == jobs_mod.loss_of("A") and row["params"] == 1 and row["seconds"] == 0.01
        assert row["started_at"] <= row["finished_at"]
        b = a.get("B")
        assert b["status"] == "failed" and b["reason"] == "worker died (exit code -9, SIGKILL)"
        assert b["valid_loss"] is None and b["seconds"] == 1.5
        assert [r["key"] for r in a.rows()] == ["A", "B"] == [r["key"] for r in a]
        assert a.results() == {"A": ok("A"), "B": failed_result(job("B"), "worker died (exit code -9, SIGKILL)", 1.5)}
        recs = a.to_records()
        assert recs[0]["cell"] == "A" and recs[0]["score"] == jobs_mod.loss_of("A") and recs[0]["status"] == "ok"
        assert recs[1]["score"] is None and recs[1]["status"] == "failed"
    assert sqlite3.connect(tmp_path / ARCHIVE_NAME).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_non_finite_losses_are_stored_as_null(tmp_path):
    with Archive(tmp_path) as a:
        a.add(job("N"), ok("N", valid_loss=float("nan"), status="diverged"))
        a.add(job("I"), ok("I", valid_loss=float("inf"), valid_ppl=float("inf"), status="diverged"))
        for k in "NI":
            row = a.get(k)
            assert row["valid_loss"] is None and row["metrics"]["valid_loss"] is None
        assert a.get("I")["metrics"]["valid_ppl"] is None
        a.add(job("K"), ok("K", valid_loss=float("nan")))  # "ok" but no loss: not a usable score
        assert a.to_records()[-1] == {"cell": "K", "score": None, "status": "diverged", "params": 1,
                                      "generation": 0, "rung": 0}
        raw = a._db.execute("SELECT metrics FROM evaluations").fetchall()
        assert all("NaN" not in m and "Infinity" not in m for (m,) in raw)


def test_duplicates_are_ignored_per_key_and_budget(tmp_path):
    with Archive(tmp_path) as a:
        assert a.add(job("A"), ok("A"))
        assert not a.add(job("A"), ok("A", valid_loss=9.0))  # the same evaluation reported again
        assert a.count() == 1 and a.get("A")["valid_loss"] == jobs_mod.loss_of("A")
        assert a.add(job("A", steps=40), ok("A", valid_loss=0.5))  # another budget is another evaluation
        assert a.count() == 2 and a.get("A")["valid_loss"] == 0.5  # latest wins
        assert a.results()["A"].valid_loss == 0.5


def test_rows_survive_a_killed_writer_and_reopen(tmp_path):
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(jobs_mod.__file__.rsplit("/", 1)[0])!r})
        import evaluator_jobs
        from evonas.store.archive import Archive
        from evonas.evaluation import Job
        from evonas.training.config import EvalResult  # = evonas.training.train.EvalResult, without importing torch
        a = Archive({str(tmp_path)!r})
        for k in ("A", "B", "C"):
            a.add(Job(k, k, {{"task": "synthetic"}}), EvalResult.from_dict(evaluator_jobs.ok_result(k)))
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script], timeout=60)
    assert proc.returncode == -9
    with Archive(tmp_path, create=False) as a:
        assert [r["key"] for r in a] == ["A", "B", "C"]
        assert not a.add(Job("B", "B", {"task": "synthetic"}), ok("B"))
        assert a.add(Job("D", "D", {"task": "synthetic"}), ok("D"))
    with Archive(tmp_path / ARCHIVE_NAME) as a:
        assert a.count() == 4


@pytest.mark.parametrize("content", [b"this is not a database at all" * 100, b"SQLite format 3\x00" + b"\x07" * 500])
def test_garbled_file_gives_clear_error(tmp_path, content):
    path = tmp_path / ARCHIVE_NAME
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=str(path)):
        Archive(path)


def test_truncated_archive_gives_clear_error(tmp_path):
    with Archive(tmp_path) as a:
        for i in range(300):
            a.add(job(f"cell{i}"), ok(f"cell{i}", reason="x" * 200))
    path = tmp_path / ARCHIVE_NAME
    data = path.read_bytes()
    assert len(data) > 8192
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=str(path)):
        a = Archive(path)
        a.rows()


def test_foreign_database_and_missing_file(tmp_path):
    other = tmp_path / "other.sqlite"
    db = sqlite3.connect(other)
    db.execute("CREATE TABLE t (x)")
    db.commit()
    db.close()
    with pytest.raises(CheckpointError, match="other.sqlite"):
        Archive(other)
    with pytest.raises(CheckpointError, match="no archive"):
        Archive(tmp_path / "missing.sqlite", create=False)
    with Archive(tmp_path / "v.sqlite") as a:
        a._db.execute("PRAGMA user_version=99")
    with pytest.raises(CheckpointError, match="version 99"):
        Archive(tmp_path / "v.sqlite")


def test_export_csv(tmp_path):
    with Archive(tmp_path) as a:
        a.add(job("A", generation=1), ok("A"))
        a.add(job("B, with comma"), failed_result(job("B, with comma"), 'timed out "after" 3 s', 3.0))
        assert a.export_csv(tmp_path / "out.csv") == 2
    with open(tmp_path / "out.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["key"] for r in rows] == ["A", "B, with comma"]
    assert float(rows[0]["valid_loss"]) == jobs_mod.loss_of("A") and rows[0]["steps"] == "3"
    assert rows[0]["generation"] == "1" and json.loads(rows[0]["budget"]) == CONFIG
    assert rows[1]["valid_loss"] == "" and rows[1]["reason"] == 'timed out "after" 3 s'
    assert "metrics" not in rows[0]
    buf = io.StringIO()
    with Archive(tmp_path, create=False) as a:
        assert a.export_csv(buf) == 2
    assert buf.getvalue() == (tmp_path / "out.csv").read_bytes().decode()


def test_the_light_eval_result_is_the_agreed_one():
    from evonas.training import train

    assert train.EvalResult is EvalResult
