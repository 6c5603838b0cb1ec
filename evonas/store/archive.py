"""The run archive: one SQLite row per evaluation, committed as each result arrives.

Contract:
- `Archive(path)` opens (or creates) `path`, or `path/archive.sqlite` when `path` is a folder; WAL journal,
  synchronous=FULL, so a row that `add` returned for survives a SIGKILL of the process right after.
  `Archive(path, create=False)` refuses a missing file. A file that is not an evonas archive (garbled,
  truncated, another program's database, another format version) raises CheckpointError naming the file.
- Rows: id, key (canonical cell), cell (as written), task, budget (JSON of the training config, keys
  sorted), metrics (JSON of EvalResult.to_dict()), status, reason, params, seconds, valid_loss (NULL when
  missing or not finite), generation, started_at, finished_at (ISO 8601 UTC).
- Deduplication: (key, task, budget) is unique. `add` of a duplicate is ignored and returns False (so a
  resumed run can re-report an evaluation without duplicating it); a new row returns True.
- `has(key)` / `get(key)` / `results()` look at the cell only (any budget): an archived cell, whatever its
  status, is never trained again. With several rows for a key, the latest one wins. `get(key, budget)` looks up
  one (cell, budget) pair: multi-fidelity runs store one row per rung (and per learning rate), each with its
  own budget, and `metrics["rung"]` says which rung (0 for rows written before rungs existed).
- A cell's fitness is its row at the highest rung it reached, best loss first (`fitness_rows`, `fitness_order`).
- No pickle: everything stored is JSON text or plain SQL values.
"""

from __future__ import annotations

import csv
import json
import math
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from evonas.errors import CheckpointError

if TYPE_CHECKING:
    from evonas.evaluation import Job
    from evonas.training.config import EvalResult  # = evonas.training.train.EvalResult, without importing torch

ARCHIVE_NAME = "archive.sqlite"
FORMAT_VERSION = 1  # stored as PRAGMA user_version

COLUMNS = (
    "id", "key", "cell", "task", "budget", "metrics", "status", "reason", "params", "seconds", "valid_loss",
    "generation", "started_at", "finished_at",
)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS evaluations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL,
    cell TEXT NOT NULL,
    task TEXT NOT NULL,
    budget TEXT NOT NULL,
    metrics TEXT NOT NULL,
    status TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    params INTEGER NOT NULL DEFAULT 0,
    seconds REAL NOT NULL DEFAULT 0,
    valid_loss REAL,
    generation INTEGER NOT NULL DEFAULT 0,
    started_at TEXT NOT NULL,
    finished_at TEXT NOT NULL,
    UNIQUE (key, task, budget)
);
CREATE INDEX IF NOT EXISTS evaluations_key ON evaluations (key);
"""
# metrics columns flattened into the CSV export, after the row columns
_CSV_METRICS = ("valid_ppl", "test_loss", "test_ppl", "steps", "epochs")


def json_safe(value: Any) -> Any:
    """Copy of `value` with NaN/inf floats replaced by None (strict JSON)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def budget_json(config: dict) -> str:
    """Canonical JSON text of a training config (the archive's budget column)."""
    return json.dumps(json_safe(config), sort_keys=True, separators=(",", ":"), allow_nan=False)


def _finite(x: Any) -> float | None:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def rung(row: dict) -> int:
    """The successive-halving rung of an archive row (0 for rows written before rungs existed)."""
    return int(row["metrics"].get("rung", 0) or 0)


def _order_loss(row: dict) -> float:
    loss = row["valid_loss"]
    return loss if row["status"] == "ok" and loss is not None else math.inf


def fitness_order(row: dict) -> tuple:
    """Sort key, best first: higher rung first, then lower validation loss, fewer parameters, key."""
    return (-rung(row), _order_loss(row), row["params"], row["key"])


def fitness_rows(rows: list[dict]) -> list[dict]:
    """One row per cell: the one its fitness comes from (highest rung reached, best loss there), best first."""
    best: dict[str, dict] = {}
    for r in rows:
        if r["key"] not in best or fitness_order(r) < fitness_order(best[r["key"]]):
            best[r["key"]] = r
    return sorted(best.values(), key=fitness_order)


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat(timespec="milliseconds")


class Archive:
    """SQLite archive of every evaluation of a run (see the module contract)."""

    def __init__(self, path: str | Path, create: bool = True):
        path = Path(path)
        if path.is_dir():
            path = path / ARCHIVE_NAME
        self.path = path
        if not path.exists():
            if not create:
                raise CheckpointError(f"no archive at {path}")
            path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(str(path), isolation_level=None)
        except sqlite3.Error as exc:
            raise CheckpointError(f"cannot open archive {path}: {exc}") from None
        try:
            self._setup()
        except sqlite3.OperationalError as exc:  # locked, read-only, I/O error: the file may be fine
            self._db.close()
            raise CheckpointError(f"cannot open archive {path}: {exc}") from None
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise CheckpointError(f"archive {path} is corrupt or not an SQLite file: {exc}") from None

    def _setup(self) -> None:
        db = self._db
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        check = db.execute("PRAGMA quick_check").fetchone()[0]
        if check != "ok":
            raise sqlite3.DatabaseError(f"integrity check failed: {check}")
        version = db.execute("PRAGMA user_version").fetchone()[0]
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if version == 0 and not (tables - {"sqlite_sequence"}):
            db.executescript(_SCHEMA)
            db.execute(f"PRAGMA user_version={FORMAT_VERSION}")
        elif version != FORMAT_VERSION:
            self._db.close()
            raise CheckpointError(
                f"archive {self.path} has format version {version}, this evonas reads version {FORMAT_VERSION}"
            )
        cols = tuple(r[1] for r in db.execute("PRAGMA table_info(evaluations)"))
        if cols != COLUMNS:
            self._db.close()
            raise CheckpointError(f"archive {self.path} has no evonas evaluations table")

    # ------------------------------------------------------------ writing

    def add(self, job: Job, result: EvalResult, started_at: datetime | None = None) -> bool:
        """Record one evaluation and commit it; False (and nothing written) if it is already archived."""
        metrics = {**json_safe(result.to_dict()), "rung": int(job.rung)}
        finished = datetime.now(UTC)
        seconds = _finite(metrics.get("seconds")) or 0.0
        started = started_at or (finished - timedelta(seconds=seconds))
        row = (
            job.key, job.cell, str(job.config.get("task", "")), budget_json(job.config),
            json.dumps(metrics, sort_keys=True, allow_nan=False), str(metrics.get("status", "")),
            str(metrics.get("reason", "") or ""), int(metrics.get("params") or 0), seconds,
            _finite(metrics.get("valid_loss")), int(job.generation), _iso(started), _iso(finished),
        )
        cur = self._db.execute(
            "INSERT OR IGNORE INTO evaluations (key, cell, task, budget, metrics, status, reason, params, seconds,"
            " valid_loss, generation, started_at, finished_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            row,
        )
        return cur.rowcount == 1

    # ------------------------------------------------------------ reading

    def has(self, key: str) -> bool:
        """Whether the cell (canonical text) has been evaluated, whatever the status."""
        return self._db.execute("SELECT 1 FROM evaluations WHERE key=? LIMIT 1", (key,)).fetchone() is not None

    def get(self, key: str, budget: dict | None = None) -> dict | None:
        """The latest row for a cell (for this exact budget when given) as a dict (metrics/budget parsed), or None."""
        if budget is None:
            cur = self._db.execute(
                f"SELECT {','.join(COLUMNS)} FROM evaluations WHERE key=? ORDER BY id DESC LIMIT 1", (key,))
        else:
            cur = self._db.execute(f"SELECT {','.join(COLUMNS)} FROM evaluations WHERE key=? AND budget=? "
                                   "ORDER BY id DESC LIMIT 1", (key, budget_json(budget)))
        row = cur.fetchone()
        return self._row(row) if row else None

    def find(self, key: str, rung_: int = 0, lr: float | None = None) -> dict | None:
        """The latest row of a cell at a rung (and learning rate, when given): how a search looks up a result it
        already has. Other budget fields (device, threads, ...) do not matter, so a resumed run with another
        device still finds its results."""
        rows = [self._row(r) for r in self._db.execute(
            f"SELECT {','.join(COLUMNS)} FROM evaluations WHERE key=? ORDER BY id DESC", (key,))]
        return next((r for r in rows if rung(r) == rung_ and (lr is None or r["budget"].get("lr") == lr)), None)

    def rows(self) -> list[dict]:
        """All rows in insertion order, as dicts with metrics and budget parsed from JSON."""
        return list(self)

    def __iter__(self) -> Iterator[dict]:
        cur = self._db.execute(f"SELECT {','.join(COLUMNS)} FROM evaluations ORDER BY id")
        for row in cur:
            yield self._row(row)

    def __len__(self) -> int:
        return self.count()

    def count(self, status: str | None = None) -> int:
        """Number of rows (of one status when given)."""
        if status is None:
            return self._db.execute("SELECT COUNT(*) FROM evaluations").fetchone()[0]
        return self._db.execute("SELECT COUNT(*) FROM evaluations WHERE status=?", (status,)).fetchone()[0]

    def keys(self) -> set[str]:
        """Canonical texts of every archived cell."""
        return {r[0] for r in self._db.execute("SELECT DISTINCT key FROM evaluations")}

    def results(self) -> dict[str, EvalResult]:
        """Canonical cell -> its latest EvalResult."""
        from evonas.training.config import EvalResult  # = evonas.training.train.EvalResult, without importing torch

        return {r["key"]: EvalResult.from_dict(r["metrics"]) for r in self}

    def to_records(self, rungs: str = "first") -> list[dict]:
        """Training data for the surrogate: dicts with cell (canonical), score (valid_loss or None), status,
        params, generation and rung.

        `rungs="first"`: one record per cell, from its lowest rung (the budget every cell of a multi-fidelity run
        was trained at, so scores are comparable). `rungs="all"`: one record per (cell, rung), for a learner that
        makes the rungs comparable itself (`evonas.surrogate.fidelity`). At several learning rates a rung's
        record is the best of them. A score is None only for a status other than ok: an "ok" row without a
        finite loss counts as diverged.
        """
        if rungs not in ("first", "all"):
            raise ValueError(f"rungs must be 'first' or 'all', got {rungs!r}")
        best: dict[tuple, dict] = {}
        for r in self:
            k = (r["key"],) if rungs == "first" else (r["key"], rung(r))
            if k not in best or (rung(r), _order_loss(r)) < (rung(best[k]), _order_loss(best[k])):
                best[k] = r
        out = []
        for r in sorted(best.values(), key=lambda r: r["id"]):
            status = r["status"]
            if status == "ok" and r["valid_loss"] is None:
                status = "diverged"
            out.append({"cell": r["key"], "score": r["valid_loss"], "status": status, "params": r["params"],
                        "generation": r["generation"], "rung": rung(r)})
        return out

    def export_csv(self, out: str | Path | TextIO) -> int:
        """Write every row as CSV (metrics flattened) to a path or an open text file; returns the row count."""
        if not isinstance(out, str | Path):
            return self._write_csv(out)
        with open(out, "w", newline="", encoding="utf-8") as f:
            return self._write_csv(f)

    def _write_csv(self, f: TextIO) -> int:
        head = [c for c in COLUMNS if c not in ("metrics", "budget")] + list(_CSV_METRICS) + ["budget"]
        w = csv.writer(f)
        w.writerow(head)
        n = 0
        for r in self:
            flat = {**{k: r["metrics"].get(k) for k in _CSV_METRICS}, **r}
            flat["budget"] = budget_json(r["budget"])
            w.writerow(["" if flat[c] is None else flat[c] for c in head])
            n += 1
        return n

    def _row(self, row: tuple) -> dict:
        d = dict(zip(COLUMNS, row, strict=True))
        try:
            d["metrics"] = json.loads(d["metrics"])
            d["budget"] = json.loads(d["budget"])
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"archive {self.path} row {d['id']} holds bad JSON: {exc}") from None
        return d

    def close(self) -> None:
        """Close the database (idempotent)."""
        self._db.close()

    def __enter__(self) -> Archive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
