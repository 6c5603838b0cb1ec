"""What a person sees of a search, on stderr: a status line while cells train and one summary line per generation.

On a TTY the status line (trained/total, best so far, failures, elapsed, ETA) is rewritten in place and cleared
before any other line (a generation's summary, a warning) is written, so the two never run into each other.
Elsewhere (a log file, CI) the status line is written at most once a minute, as a heartbeat of long generations.
"""

from __future__ import annotations

import math
import shutil
import sys
import time
from typing import IO

HEARTBEAT = 60.0  # seconds between status lines when stderr is not a terminal


def _fmt_time(s: float) -> str:
    s = max(0, int(s))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def _loss(v: object) -> str:
    return f"{v:.4f}" if isinstance(v, int | float) and math.isfinite(v) else "-"


def summary_line(entry: dict) -> str:
    """One generation's logbook entry as a line for people:
    `gen 2  trained 6  failed 1  best 0.5312 (best ever 0.5201)  tau 0.41  12.3 s`, or with rungs
    `gen 2  cells 6  rungs 40 steps: 6, 120: 2, 360: 1  failed 1  best ...` (best: at the highest rung)."""
    reused = entry.get("reused") or 0
    rungs = entry.get("rungs") or []
    if rungs:  # multi-fidelity: cells per rung, e.g. `rungs 40 steps: 6, 120: 2, 360: 1`
        unit = rungs[0].get("unit", "")
        ladder = ", ".join(f"{r.get('budget')}{' ' + unit if i == 0 else ''}: {r.get('trained')}"
                           for i, r in enumerate(rungs))
        parts = [f"gen {entry.get('gen')}", f"cells {entry.get('trained', 0)}", f"rungs {ladder}"]
        if reused:
            parts.append(f"results from archive {reused}")
    else:
        parts = [f"gen {entry.get('gen')}", f"trained {entry.get('trained', 0) - reused}"]
        if reused:
            parts.append(f"from archive {reused}")
    parts.append(f"failed {entry.get('failures', 0)}")
    parts.append(f"best {_loss(entry.get('best'))} (best ever {_loss(entry.get('best_ever'))})")
    tau = entry.get("tau")
    if isinstance(tau, int | float) and math.isfinite(tau):
        parts.append(f"tau {tau:.2f}")
    parts.append(f"{entry.get('seconds', 0):.1f} s")
    return "  ".join(parts)


class Progress:
    """The status line and the per-generation summaries of a search (see the module docstring)."""

    def __init__(self, total: int, stream: IO[str] | None = None, done: int = 0, best: float | None = None,
                 failures: int = 0, elapsed: float = 0.0, heartbeat: float = HEARTBEAT):
        self.total, self.done, self.best, self.failures = total, done, best, failures
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.t0 = time.monotonic() - elapsed
        self.session_start = time.monotonic()
        self.session_done = 0
        self.gen = 0
        self.heartbeat = heartbeat
        self._showing = False  # a status line is on the terminal, without its newline
        self._last = -math.inf  # when the last status line was written (non-TTY heartbeat)

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

    def status(self) -> str:
        """The status line's text."""
        rate = (time.monotonic() - self.session_start) / self.session_done if self.session_done else None
        eta = _fmt_time(rate * max(0, self.total - self.done)) if rate is not None else "?"
        best = f"{self.best:.4f}" if self.best is not None else "-"
        return (f"gen {self.gen}  trained {self.done}/{self.total}  best {best}  failures {self.failures}  "
                f"elapsed {_fmt_time(self.elapsed())}  eta {eta}")

    def show(self) -> None:
        """Rewrite the status line (a TTY), or write it when the last one is a heartbeat old (elsewhere)."""
        if self.tty:
            width = shutil.get_terminal_size().columns - 1  # a wrapped line could not be rewritten in place
            self.stream.write("\r\033[K" + self.status()[:max(width, 20)])
            self._showing = True
        elif time.monotonic() - self._last >= self.heartbeat:
            self.stream.write(self.status() + "\n")
            self._last = time.monotonic()
        else:
            return
        self.stream.flush()

    def _clear(self) -> None:
        if self._showing:
            self.stream.write("\r\033[K")
            self._showing = False

    def note(self, line: str) -> None:
        """Write one line for people (a warning), clearing the status line first and redrawing it after."""
        showing = self._showing
        self._clear()
        self.stream.write(line + "\n")
        if showing:
            self.show()
        self.stream.flush()

    def summary(self, entry: dict) -> None:
        """The generation's summary line (from its logbook entry), with the status line cleared first."""
        self._clear()
        self.stream.write(summary_line(entry) + "\n")
        if entry.get("screen_error"):
            self.stream.write(f"warning: the screen was not refitted: {entry['screen_error']}\n")
        self.stream.flush()
        self._last = time.monotonic()  # the summary says as much as a heartbeat

    def finish(self) -> None:
        """End a status line still on the terminal (an interrupted generation), so what follows starts clean."""
        if self._showing:
            self.stream.write("\n")
            self.stream.flush()
            self._showing = False
