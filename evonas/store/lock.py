"""One writer per run folder: `RUN/lock.json` names the process that writes the run.

Contract:
- `RunLock(run_dir).acquire()` creates `RUN/lock.json` atomically (O_CREAT | O_EXCL) holding host, PID, the
  process's start time (Linux: clock ticks since boot from /proc, to tell a reused PID from its first owner),
  the time the lock was taken and the command line. The folder must exist (CheckpointError otherwise).
- A lock held by a live process raises RunInUseError naming the holder (one line; the CLI exits with 2).
  A lock on another host is always taken as live (its PID cannot be checked from here).
- A stale lock (same host, and the PID is gone, a zombie, or now belongs to a process started at another
  time) is taken over with a warning. The take-over runs under an flock of the run folder, so of two processes
  finding the same stale lock only one removes it; the other then finds the new holder alive.
- Re-entrant within a process: the CLI and `Search.run` both take it; the file goes when the outermost
  holder releases it (normal exit, exceptions, Ctrl-C/SIGTERM turned into exceptions). A SIGKILLed holder
  leaves the file behind: stale, taken over by the next writer.
- Readers (`evonas report`, `evonas archive`) never take it.
"""

from __future__ import annotations

import fcntl
import functools
import json
import os
import socket
import sys
import time
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from evonas.errors import CheckpointError, RunInUseError

LOCK_FILE = "lock.json"
# An unreadable lock file younger than this may be one being written right now (created, not yet filled).
UNREADABLE_GRACE = 10.0

_held: dict[str, list] = {}  # realpath of the run folder -> [token, depth] for locks this process holds
F = TypeVar("F", bound=Callable[..., Any])


def process_start(pid: int) -> int | None:
    """Start time of process `pid` in clock ticks since boot (None when unknown: not Linux, or no such PID)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    try:
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (IndexError, ValueError):
        return None


def pid_alive(pid: int) -> bool:
    """Whether a process with this PID exists on this host and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True  # no /proc: os.kill said it exists
    return state != "Z"


def read_lock(run_dir: str | Path) -> dict | None:
    """The holder recorded in `RUN/lock.json` (None when there is no lock; {} when it is unreadable)."""
    path = Path(run_dir) / LOCK_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def describe_holder(holder: dict) -> str:
    """'PID 123 on host h, since 2026-11-29 17:40:01 UTC, running: evonas resume runs/x'."""
    text = f"PID {holder.get('pid', '?')} on host {holder.get('host', '?')}, since {holder.get('started', '?')}"
    if holder.get("command"):
        text += f", running: {holder['command']}"
    return text


def _stale_reason(holder: dict, path: Path) -> str | None:
    """Why the recorded holder cannot be writing any more (None: it may be alive)."""
    if not holder:
        try:
            age = time.time() - path.stat().st_mtime
        except FileNotFoundError:
            return "it is gone"
        return f"the lock file is unreadable and {age:.0f} s old" if age > UNREADABLE_GRACE else None
    if holder.get("host") != socket.gethostname():
        return None
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return "the lock file names no valid PID"
    if not pid_alive(pid):
        return f"PID {pid} is not running"
    recorded, now = holder.get("process_start"), process_start(pid)
    if recorded is not None and now is not None and recorded != now:
        return f"PID {pid} now belongs to another process (started at another time)"
    return None


class RunLock:
    """The write lock of one run folder (see the module docstring); a context manager."""

    def __init__(self, run_dir: str | Path):
        self.dir = Path(run_dir)
        self.path = self.dir / LOCK_FILE
        self.key = os.path.realpath(self.dir)

    def acquire(self) -> RunLock:
        """Take the lock (or deepen this process's hold on it); RunInUseError when another process holds it."""
        if not self.dir.is_dir():
            raise CheckpointError(f"no run folder at {self.dir}")
        mine = _held.get(self.key)
        if mine is not None and (read_lock(self.dir) or {}).get("token") == mine[0]:
            mine[1] += 1
            return self
        token = uuid.uuid4().hex
        for _ in range(3):
            if self._create(token):
                _held[self.key] = [token, 1]
                return self
            holder = read_lock(self.dir)
            if holder is None:
                continue  # released in between: try again
            reason = _stale_reason(holder, self.path)
            if reason is None:
                raise RunInUseError(
                    f"run folder {self.dir} is in use by another evonas process ({describe_holder(holder)}); "
                    f"wait for it to finish or stop it (delete {self.path} only if that process is gone)")
            self._remove_stale(holder, reason)
        raise RunInUseError(f"run folder {self.dir}: could not take {self.path} (other processes keep taking it)")

    def _create(self, token: str) -> bool:
        """Create the lock file atomically with our record; False when it already exists."""
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        record = {"host": socket.gethostname(), "pid": os.getpid(), "process_start": process_start(os.getpid()),
                  "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                  "command": " ".join(["evonas", *sys.argv[1:]])[:300], "token": token}
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(record, f)
            f.flush()
            os.fsync(f.fileno())
        return True

    def _remove_stale(self, holder: dict, reason: str) -> None:
        """Delete a stale lock file, unless another process replaced it meanwhile (checked under an flock)."""
        fd = os.open(self.dir, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if read_lock(self.dir) == holder:
                self.path.unlink(missing_ok=True)
                what = describe_holder(holder) if holder else "unreadable lock file"
                warnings.warn(f"taking over the lock of run folder {self.dir} from a process that is gone "
                              f"({what}): {reason}", stacklevel=4)
        finally:
            os.close(fd)  # releases the flock

    def release(self) -> None:
        """Give up one level of this process's hold; the file is removed when the outermost holder releases."""
        mine = _held.get(self.key)
        if mine is None:
            return
        mine[1] -= 1
        if mine[1] > 0:
            return
        del _held[self.key]
        if (read_lock(self.dir) or {}).get("token") == mine[0]:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def holding_run_lock(method: F) -> F:
    """Decorator for a method of an object with a run folder in `self.dir`: hold its lock during the call."""

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        with RunLock(self.dir):
            return method(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]
