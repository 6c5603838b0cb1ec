"""Reading surrogate data: (cell, score, status) records from CSV, JSONL or a run folder, and cell lists.

A record's score is None for a failed or diverged cell. Every problem is a DataError naming the file and line.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from evonas.surrogate.fidelity import top_rung_records

from evonas.cells import check, to_text
from evonas.errors import CellError, CellSyntaxError, DataError

FAILED = ("diverged", "failed")


@dataclass(frozen=True)
class Record:
    """One training example: cell text (canonical when from an archive), score (None = failure), status, and the
    dataset it comes from (`group`: scores are normalised and ranked within a group, e.g. one task's budget)."""

    cell: str
    score: float | None
    status: str = "ok"
    group: str = ""


def _check_cell(text: str, where: str) -> str:
    """The cell's text without spaces if it is well-formed, else DataError naming `where`."""
    try:
        return to_text(check(text))
    except CellSyntaxError as e:
        raise DataError(f"{where}: malformed cell: {e.reason} at column {e.column}") from e
    except CellError as e:
        raise DataError(f"{where}: cell is not well-formed: {e}") from e


def _record(row: dict, where: str) -> Record:
    """Validate one row: `cell` required; empty score allowed only with status diverged/failed."""
    cell = row.get("cell")
    if not isinstance(cell, str) or not cell.strip():
        raise DataError(f"{where}: missing or empty 'cell'")
    status = str(row.get("status") or "ok").strip().lower()
    raw = row.get("score")
    score: float | None
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        if status not in FAILED:
            raise DataError(f"{where}: empty score but status is {status!r} (only diverged/failed may lack a score)")
        score = None
    else:
        try:
            score = float(raw)
        except (TypeError, ValueError) as e:
            raise DataError(f"{where}: score {raw!r} is not a number") from e
        if not math.isfinite(score) or status in FAILED:
            score = None
            status = status if status in FAILED else "diverged"
    group = row.get("group")
    return Record(_check_cell(cell, where), score, status, "" if group is None else str(group))


def _read_csv(path: Path) -> list[Record]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or "cell" not in reader.fieldnames or "score" not in reader.fieldnames:
            raise DataError(f"{path}: a CSV needs the columns 'cell' and 'score' (found {reader.fieldnames})")
        out = []
        for row in reader:
            where = f"{path}:{reader.line_num}"
            _no_extra_fields(row, where)
            out.append(_record(row, where))
        return out


def _no_extra_fields(row: dict, where: str) -> None:
    """csv puts surplus fields under the key None: almost always a cell with commas left unquoted."""
    if None in row:
        raise DataError(f"{where}: more fields than the header (put cells containing commas in double quotes)")


def _read_jsonl(path: Path) -> list[Record]:
    out = []
    with open(path, encoding="utf-8") as f:
        for no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{no}: not valid JSON ({e.msg})") from e
            if not isinstance(row, dict):
                raise DataError(f"{path}:{no}: expected a JSON object with 'cell' and 'score'")
            if "score" not in row and str(row.get("status", "")).lower() not in FAILED:
                raise DataError(f"{path}:{no}: missing 'score'")
            out.append(_record(row, f"{path}:{no}"))
    return out


def _read_run(folder: Path) -> list[Record]:
    db = folder / "archive.sqlite"
    if not db.is_file():
        raise DataError(f"{folder}: a run folder needs an archive.sqlite")
    from evonas.store.archive import Archive  # the core archive; imported only when a run folder is read

    with Archive(db, create=False) as archive:
        rows = top_rung_records(archive.to_records(rungs="all"))
    return [_record(r, f"{db} (cell {r.get('cell')!r})") for r in rows]


def read_records(path: str | Path, group: str | None = None) -> list[Record]:
    """Records from a CSV (.csv), JSON lines (.jsonl/.json) or a run folder (its archive.sqlite); with `group`,
    every record is marked as coming from that dataset."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: no such file or folder")
    if p.is_dir():
        records = _read_run(p)
    elif p.suffix.lower() in (".jsonl", ".json", ".ndjson"):
        records = _read_jsonl(p)
    elif p.suffix.lower() == ".csv":
        records = _read_csv(p)
    else:
        raise DataError(f"{p}: unknown data format (expected .csv, .jsonl or a run folder)")
    if not records:
        raise DataError(f"{p}: no records")
    if group is not None:
        records = [Record(r.cell, r.score, r.status, group) for r in records]
    return records


def read_datasets(paths: Sequence[str | Path]) -> list[Record]:
    """Records of one or more datasets; with several, each file is its own group (normalised and ranked apart)."""
    if len(paths) == 1:
        return read_records(paths[0])
    return [r for p in paths for r in read_records(p, group=Path(p).stem)]


def sort_records(records: Sequence[Record]) -> list[Record]:
    """Records in a fixed order (group, cell, score, status): a fit must not depend on the order results arrived."""
    return sorted(records, key=lambda r: (r.group, r.cell, math.inf if r.score is None else r.score, r.status))


def read_cells(path: str | Path) -> list[str]:
    """Cells to rank: a CSV with a 'cell' column (.csv) or a text file with one cell per line (blank and
    '#' lines skipped). Each cell must be well-formed; otherwise DataError with the line number."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: no such file")
    out: list[str] = []
    if p.suffix.lower() == ".csv":
        with open(p, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None or "cell" not in reader.fieldnames:
                raise DataError(f"{p}: a CSV of cells needs a 'cell' column (found {reader.fieldnames})")
            for row in reader:
                where = f"{p}:{reader.line_num}"
                _no_extra_fields(row, where)
                out.append(_check_cell(row["cell"] or "", where))
    else:
        with open(p, encoding="utf-8") as f:
            for no, line in enumerate(f, 1):
                text = line.strip()
                if text and not text.startswith("#"):
                    out.append(_check_cell(text, f"{p}:{no}"))
    if not out:
        raise DataError(f"{p}: no cells")
    return out


def as_records(items: Iterable[Record | dict]) -> list[Record]:
    """Accept Records or dicts with cell/score/status (e.g. `Archive.to_records()`); dicts of several rungs
    (`Archive.to_records(rungs="all")`) become one top-rung record per cell (`evonas.surrogate.fidelity`)."""
    items = list(items)
    dicts = [i for i in items if isinstance(i, dict)]
    if len({int(d.get("rung") or 0) for d in dicts}) > 1:
        items = [i for i in items if not isinstance(i, dict)] + top_rung_records(dicts)
    out = []
    for i, item in enumerate(items):
        out.append(item if isinstance(item, Record) else _record(dict(item), f"record {i}"))
    return out


def digest(records: Sequence[Record]) -> str:
    """SHA-256 of the records (order-sensitive), stored with a model to identify its training data."""
    h = hashlib.sha256()
    for r in records:
        tail = f"\t{r.group}" if r.group else ""  # records without groups keep the digest they always had
        h.update(f"{r.cell}\t{'' if r.score is None else repr(r.score)}\t{r.status}{tail}\n".encode())
    return h.hexdigest()
