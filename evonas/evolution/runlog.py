"""What a run shows and leaves behind besides archive and checkpoint: live progress, logbook, best cells."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import IO, Any

import yaml

from evonas.archive import json_safe

LOGBOOK = "logbook.jsonl"
BEST_CELLS = "best_cells.json"
CONFIG_COPY = "config.yaml"


def _fmt_time(s: float) -> str:
    s = max(0, int(s))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class Progress:
    """One status line on stderr: trained/total, best so far, failures, elapsed and ETA (rewritten on a TTY)."""

    def __init__(self, total: int, stream: IO[str] | None = None, done: int = 0, best: float | None = None,
                 failures: int = 0, elapsed: float = 0.0):
        self.total, self.done, self.best, self.failures = total, done, best, failures
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.t0 = time.monotonic() - elapsed
        self.session_start = time.monotonic()
        self.session_done = 0
        self.gen = 0

    def elapsed(self) -> float:
        """Seconds since the run started (across resumes)."""
        return time.monotonic() - self.t0

    def record(self, metrics: dict, trained: bool) -> None:
        """Count one evaluation (`trained` False when its result was looked up in the archive)."""
        self.done += 1
        self.session_done += int(trained)
        loss = metrics.get("valid_loss")
        if metrics.get("status") != "ok":
            self.failures += 1
        elif loss is not None and math.isfinite(loss) and (self.best is None or loss < self.best):
            self.best = loss
        self.show()

    def show(self) -> None:
        """Write the status line."""
        rate = (time.monotonic() - self.session_start) / self.session_done if self.session_done else None
        eta = _fmt_time(rate * max(0, self.total - self.done)) if rate is not None else "?"
        best = f"{self.best:.4f}" if self.best is not None else "-"
        line = (f"gen {self.gen}  trained {self.done}/{self.total}  best {best}  failures {self.failures}  "
                f"elapsed {_fmt_time(self.elapsed())}  eta {eta}")
        if self.tty:
            self.stream.write("\r\033[K" + line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def finish(self) -> None:
        """End the status line on a TTY."""
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def append_logbook(run_dir: Path, entry: dict, stdout: IO[str] | None = None) -> None:
    """Append one generation's line to logbook.jsonl (fsynced) and print it on stdout."""
    line = json.dumps(json_safe(entry), sort_keys=False)
    with open(run_dir / LOGBOOK, "a", encoding="utf-8") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())
    out = stdout if stdout is not None else sys.stdout
    out.write(line + "\n")
    out.flush()


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
    """The k best trained cells of an archive (by validation loss) and every seed baseline, with metrics."""
    names = {key: name for name, key in seeds.items()}

    def entry(r: dict) -> dict:
        m = r["metrics"]
        return {"cell": r["key"], "written": r["cell"], "seed": names.get(r["key"]), "status": r["status"],
                "valid_loss": r["valid_loss"], "valid_ppl": m.get("valid_ppl"), "test_loss": m.get("test_loss"),
                "params": r["params"], "seconds": r["seconds"], "generation": r["generation"]}

    ok = sorted((r for r in rows if r["status"] == "ok" and r["valid_loss"] is not None),
                key=lambda r: (r["valid_loss"], r["params"], r["key"]))
    latest = {r["key"]: r for r in rows}
    return {"best": [entry(r) for r in ok[:k]],
            "baselines": [{**entry(latest[key]), "seed": name} for name, key in seeds.items() if key in latest]}


def write_best_cells(run_dir: Path, data: dict) -> None:
    """best_cells.json, written atomically."""
    tmp = run_dir / (BEST_CELLS + ".tmp")
    tmp.write_text(json.dumps(json_safe(data), indent=1), encoding="utf-8")
    os.replace(tmp, run_dir / BEST_CELLS)
