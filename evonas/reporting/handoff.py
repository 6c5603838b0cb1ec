"""Which cell leaves evonas through `evonas export`: a library cell, a cell text, or a run folder's result.

A run folder hands out its confirmed winner when `RUN/winner/meta.json` exists (`{"cell", "input_size",
"hidden_size", ...}`, with the trained state dict `RUN/winner/cell.pt` beside it), else the best cell of
`RUN/best_cells.json` (`{"best": [{"cell", "written", "valid_loss", "test_loss", ...}, ...], "baselines": ...}`),
sized by the run's `config.yaml` (every layer of a search's model has input size = hidden size).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from evonas.cells import Node, parse, to_text
from evonas.cells.library import lookup, resolve
from evonas.errors import CellError, CellSyntaxError, CheckpointError, EvonasError
from evonas.store.runlog import BEST_CELLS, CONFIG_COPY

WINNER = "winner"


@dataclass
class Handoff:
    """A cell to export, with what is known about where it comes from."""

    cell: Node
    written: str
    title: str = "cell"
    input_size: int | None = None
    hidden_size: int | None = None
    weights: Path | None = None
    op_set: Any = None
    source: dict[str, Any] = field(default_factory=dict)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None


def _cell(text: Any, where: Path) -> Node:
    if not isinstance(text, str):
        raise CheckpointError(f"{where}: 'cell' must be a cell text, got {type(text).__name__}")
    try:
        return resolve(text, 1, 1)  # sizes checked when the sizes are known (a search's model has input = hidden)
    except (CellSyntaxError, CellError) as e:
        raise CheckpointError(f"{where}: bad cell {text[:80]!r}: {e}") from None


def _size(meta: dict, key: str, where: Path) -> int:
    v = meta.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise CheckpointError(f"{where}: {key!r} must be a positive integer, got {v!r}")
    return v


def _number(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) else None


def _run_config(run: Path) -> dict:
    path = run / CONFIG_COPY
    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise CheckpointError(f"{path}: not a readable run config ({' '.join(str(e).split())[:200]})") from None
    return data if isinstance(data, dict) else {}


def from_run(run: Path) -> Handoff:
    """The run's confirmed winner (with weights) if there is one, else its best trained cell."""
    config = _run_config(run)
    train = config.get("train") if isinstance(config.get("train"), dict) else {}
    cited = {"kind": "run", "run": str(run.resolve()), "task": config.get("task"), "data": config.get("data")}
    meta_path = run / WINNER / "meta.json"
    if meta_path.is_file():
        meta = _read_json(meta_path)
        if not isinstance(meta, dict):
            raise CheckpointError(f"{meta_path}: expected a JSON object")
        cell = _cell(meta.get("cell"), meta_path)
        weights = run / WINNER / "cell.pt"
        extra = {k: meta[k] for k in ("task", "data", "seeds", "params", "epochs") if k in meta}
        return Handoff(cell, to_text(cell), input_size=_size(meta, "input_size", meta_path),
                       hidden_size=_size(meta, "hidden_size", meta_path),
                       weights=weights if weights.is_file() else None, op_set=config.get("ops"),
                       source={**cited, **extra, "choice": "confirmed winner (winner/meta.json)",
                               "valid_loss": _number(meta.get("valid_loss")),
                               "test_loss": _number(meta.get("test_loss")),
                               "weights": "winner/cell.pt" if weights.is_file() else None})
    best_path = run / BEST_CELLS
    if not best_path.is_file():
        raise EvonasError(f"{run}: neither {WINNER}/meta.json nor {BEST_CELLS} found (not a run folder?)")
    data = _read_json(best_path)
    best = data.get("best") if isinstance(data, dict) else None
    if not isinstance(best, list) or not best or not isinstance(best[0], dict):
        raise EvonasError(f"{best_path}: lists no trained cell (the run has no result yet)")
    entry = best[0]
    cell = _cell(entry.get("cell"), best_path)
    written = entry.get("written") if isinstance(entry.get("written"), str) else to_text(cell)
    try:
        written = to_text(parse(written))
    except CellSyntaxError:
        written = to_text(cell)
    hidden = train.get("hidden") if isinstance(train.get("hidden"), int) and train.get("hidden") > 0 else None
    return Handoff(cell, written, input_size=hidden, hidden_size=hidden, op_set=config.get("ops"),
                   source={**cited, "choice": "best cell of best_cells.json (no confirmed winner; no weights)",
                           "valid_loss": _number(entry.get("valid_loss")), "test_loss": _number(entry.get("test_loss")),
                           "params": entry.get("params"), "generation": entry.get("generation"),
                           "seed": entry.get("seed")})


def handoff(cell_or_run: str) -> Handoff:
    """A library cell name, a cell text, or a run folder (an existing directory) as a `Handoff`."""
    path = Path(cell_or_run).expanduser()
    if path.is_dir():
        return from_run(path)
    entry = lookup(cell_or_run)
    if entry is not None:
        return Handoff(entry.cell, entry.text, title=entry.name,
                       source={"kind": "library", "name": entry.name, "citation": entry.citation})
    cell = resolve(cell_or_run, 1, 1)  # CellSyntaxError / CellError; sizes are checked once they are chosen
    return Handoff(cell, to_text(cell), source={"kind": "text"})
