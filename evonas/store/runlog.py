"""What a run leaves behind besides archive and checkpoint: logbook, best cells, the config copy."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import IO, Any

import yaml

from evonas.store.archive import fitness_rows, json_safe, rung

LOGBOOK = "logbook.jsonl"
BEST_CELLS = "best_cells.json"
CONFIG_COPY = "config.yaml"
WORKERS_LOG = "workers.log"  # what the local worker processes print


def append_logbook(run_dir: Path, entry: dict, stdout: IO[str] | None = None) -> None:
    """Append one generation's line to logbook.jsonl (fsynced); also write it to `stdout` when one is given
    (`evonas evolve --json`), without the per-cell predictions (`predicted`), which stay in the file."""
    line = json.dumps(json_safe(entry), sort_keys=False)
    with open(run_dir / LOGBOOK, "a", encoding="utf-8") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())
    if stdout is not None:
        if "predicted" in entry:
            line = json.dumps(json_safe({k: v for k, v in entry.items() if k != "predicted"}), sort_keys=False)
        stdout.write(line + "\n")
        stdout.flush()


def rewrite_logbook(run_dir: Path, entries: list[dict]) -> None:
    """Make logbook.jsonl hold exactly the checkpointed entries (drops a line of an unfinished generation)."""
    tmp = run_dir / (LOGBOOK + ".tmp")
    tmp.write_text("".join(json.dumps(json_safe(e)) + "\n" for e in entries), encoding="utf-8")
    os.replace(tmp, run_dir / LOGBOOK)


def write_config(run_dir: Path, config: dict) -> None:
    """The run's config as YAML (what `evonas resume` and a human read)."""
    tmp = run_dir / (CONFIG_COPY + ".tmp")
    tmp.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    os.replace(tmp, run_dir / CONFIG_COPY)


def best_cells(rows: list[dict], k: int, seeds: dict[str, str]) -> dict[str, Any]:
    """The k best trained cells of an archive and every seed baseline, with metrics.

    A cell is ranked by its fitness row (`fitness_rows`): a cell that reached a higher rung ranks above every
    cell that stopped lower, then by validation loss there.
    """
    names = {key: name for name, key in seeds.items()}

    def entry(r: dict) -> dict:
        m, b = r["metrics"], r["budget"]
        return {"cell": r["key"], "written": r["cell"], "seed": names.get(r["key"]), "status": r["status"],
                "valid_loss": r["valid_loss"], "valid_ppl": m.get("valid_ppl"), "test_loss": m.get("test_loss"),
                "params": r["params"], "seconds": r["seconds"], "generation": r["generation"], "rung": rung(r),
                "budget": {k: b.get(k) for k in ("steps", "epochs") if b.get(k) is not None}, "lr": b.get("lr"),
                "hidden": b.get("hidden")}

    fit = fitness_rows(rows)
    ok = [r for r in fit if r["status"] == "ok" and r["valid_loss"] is not None]
    by_key = {r["key"]: r for r in fit}
    return {"best": [entry(r) for r in ok[:k]],
            "baselines": [{**entry(by_key[key]), "seed": name} for name, key in seeds.items() if key in by_key]}


def write_best_cells(run_dir: Path, data: dict) -> None:
    """best_cells.json, written atomically."""
    tmp = run_dir / (BEST_CELLS + ".tmp")
    tmp.write_text(json.dumps(json_safe(data), indent=1), encoding="utf-8")
    os.replace(tmp, run_dir / BEST_CELLS)
