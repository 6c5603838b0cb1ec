"""The search's live status line on stderr (trained/total, best so far, failures, ETA)."""

from __future__ import annotations

import math
import sys
import time
from typing import IO


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
