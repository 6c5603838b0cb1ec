"""Run checkpoints: JSON written atomically, the previous one kept; RNG states to JSON and back.

Contract:
- `save_checkpoint(run_dir, state)` writes `run_dir/checkpoint.json` as {"format_version": 2, **state}:
  temporary file in the same folder, flush + fsync, the current good checkpoint hard-linked (or copied) to
  `checkpoint.prev.json`, the temporary file renamed over `checkpoint.json`, folder fsynced. At every moment
  `checkpoint.json` is a complete checkpoint (the new one or the one before). A garbled current file is not
  kept as `.prev` (the good previous one stays).
- `load_checkpoint(run_dir)` returns the state dict (with "format_version"). A missing, truncated or
  garbled `checkpoint.json` gives a warning naming the file and the previous one is used; both bad (or none
  there) raises CheckpointError naming the files. A checkpoint of another format version raises
  CheckpointError (no fallback: an older checkpoint would silently rewind the run).
- JSON only (no pickle). Non-finite floats round-trip through Python's NaN/Infinity tokens.
- `capture_rng()` / `restore_rng(state)`: Python `random` (global or a given Random), numpy's global
  RandomState and torch's CPU generator as JSON-safe lists, restored exactly.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

from evonas.errors import CheckpointError

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)  # 1: non-finite floats as bare NaN/Infinity tokens
CHECKPOINT = "checkpoint.json"
PREVIOUS = "checkpoint.prev.json"


def _fsync_dir(path: Path) -> None:
    """Make a rename in `path` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on a directory; the rename itself is still atomic
    finally:
        os.close(fd)


def _read(path: Path) -> dict:
    """Parse one checkpoint file; raises CheckpointError (bad file) naming it."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} is missing") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"checkpoint {path} is unreadable: {exc}") from None
    try:
        state = json.loads(text, object_hook=_decode_float)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"checkpoint {path} is truncated or garbled: {exc}") from None
    if not isinstance(state, dict) or "format_version" not in state:
        raise CheckpointError(f"checkpoint {path} is not an evonas checkpoint (no format_version)")
    return state


class _VersionError(CheckpointError):
    """A readable checkpoint of another format version."""


def _check_version(path: Path, state: dict) -> dict:
    if state["format_version"] not in READABLE_VERSIONS:
        raise _VersionError(
            f"checkpoint {path} has format version {state['format_version']!r}; "
            f"this evonas reads versions {', '.join(map(str, READABLE_VERSIONS))}"
        )
    return state


_FLOAT_KEY = "__float__"
_NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def encode_floats(value: Any) -> Any:
    """Copy of `value` with every non-finite float as {"__float__": "nan" | "inf" | "-inf"} (strict JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return {_FLOAT_KEY: "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")}
    if isinstance(value, dict):
        return {k: encode_floats(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [encode_floats(v) for v in value]
    return value


def _decode_float(obj: dict) -> Any:
    """json object_hook: {"__float__": "nan"} back to the float; any other object unchanged."""
    if len(obj) == 1 and isinstance(obj.get(_FLOAT_KEY), str) and obj[_FLOAT_KEY] in _NONFINITE:
        return _NONFINITE[obj[_FLOAT_KEY]]
    return obj


def _is_good(path: Path) -> bool:
    """Whether `path` holds a readable checkpoint of this format version (a bad one is not worth keeping)."""
    try:
        _check_version(path, _read(path))
    except CheckpointError:
        return False
    return True


def _keep_as_previous(current: Path, previous: Path) -> None:
    """Make `previous` a copy of `current` while `current` stays in place (a hard link where possible)."""
    staged = current.parent / ".checkpoint.prev.tmp"
    staged.unlink(missing_ok=True)
    try:
        os.link(current, staged)
    except OSError:  # no hard links on this filesystem: copy
        shutil.copyfile(current, staged)
        with open(staged, "rb+") as f:
            os.fsync(f.fileno())
    os.replace(staged, previous)
    # when `previous` already was a hard link to `current` (a save killed between this and its own replace),
    # rename(2) of one link onto another of the same file does nothing and leaves `staged` behind
    staged.unlink(missing_ok=True)


def save_checkpoint(run_dir: str | Path, state: dict) -> Path:
    """Write the run state atomically as `run_dir/checkpoint.json`, keeping the previous one."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if "format_version" in state and state["format_version"] not in READABLE_VERSIONS:
        raise CheckpointError(f"cannot save a checkpoint of format version {state['format_version']!r}")
    text = json.dumps(encode_floats({**state, "format_version": FORMAT_VERSION}), indent=1, allow_nan=False)
    current, previous = run_dir / CHECKPOINT, run_dir / PREVIOUS
    for stale in run_dir.glob(".checkpoint.*.tmp"):  # left by a save that was killed (one writer per run)
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".checkpoint.", suffix=".tmp", dir=run_dir)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if _is_good(current):
            _keep_as_previous(current, previous)
        os.replace(tmp, current)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(run_dir)
    return current


def load_checkpoint(run_dir: str | Path) -> dict:
    """The latest good checkpoint of a run (falls back to the previous one with a warning)."""
    run_dir = Path(run_dir)
    current, previous = run_dir / CHECKPOINT, run_dir / PREVIOUS
    if not current.exists() and not previous.exists():
        raise CheckpointError(f"no checkpoint in {run_dir} (looked for {CHECKPOINT} and {PREVIOUS})")
    try:
        return _check_version(current, _read(current))
    except _VersionError:
        raise
    except CheckpointError as first:
        try:
            state = _check_version(previous, _read(previous))
        except _VersionError:
            raise
        except CheckpointError as second:
            raise CheckpointError(f"no usable checkpoint: {first}; {second}") from None
        warnings.warn(f"{first}; using the previous checkpoint {previous}", stacklevel=2)
        return state


# ---------------------------------------------------------------- random number generator states


def python_rng_to_json(state: tuple) -> list:
    """`random.getstate()` as JSON-safe nested lists."""
    version, internal, gauss = state
    return [version, list(internal), gauss]


def python_rng_from_json(data: list) -> tuple:
    """Inverse of `python_rng_to_json`, ready for `random.setstate`."""
    version, internal, gauss = data
    return (version, tuple(int(x) for x in internal), gauss)


def capture_rng(py: random.Random | None = None, torch: bool | None = None) -> dict:
    """All RNG states as JSON: python (`py` or the global one), numpy global, torch CPU, torch CUDA.

    torch=None captures torch only if it is already imported, and CUDA only if this process has initialised
    it (the state of an unused generator is moot, and asking for it would create a CUDA context per GPU).
    """
    state: dict[str, Any] = {"python": python_rng_to_json((py or random).getstate())}
    try:
        import numpy as np
    except ImportError:  # numpy is a dependency, but the state helpers do not need it
        np = None
    if np is not None:
        name, keys, pos, has_gauss, cached = np.random.get_state()
        state["numpy"] = [name, [int(k) for k in keys], int(pos), int(has_gauss), float(cached)]
    if torch or (torch is None and "torch" in sys.modules):
        import torch as th

        state["torch"] = [int(b) for b in th.get_rng_state().tolist()]
        if th.cuda.is_available() and th.cuda.is_initialized():
            state["cuda"] = [[int(b) for b in s.tolist()] for s in th.cuda.get_rng_state_all()]
    return state


def restore_rng(state: dict, py: random.Random | None = None) -> None:
    """Set every RNG captured by `capture_rng` back to exactly that state."""
    try:
        (py or random).setstate(python_rng_from_json(state["python"]))
        if "numpy" in state:
            import numpy as np

            name, keys, pos, has_gauss, cached = state["numpy"]
            np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
        if "torch" in state:
            import torch as th

            th.set_rng_state(th.tensor(state["torch"], dtype=th.uint8))
        if state.get("cuda"):
            _restore_cuda(state["cuda"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"bad RNG state in checkpoint: {type(exc).__name__}: {exc}") from None


def _restore_cuda(states: list) -> None:
    """Set the CUDA generators saved by `capture_rng` (as many devices as exist here; none without CUDA)."""
    import torch as th

    if not th.cuda.is_available():
        return  # resumed on a machine without CUDA: nothing here draws from those generators
    have = th.cuda.device_count()
    if have < len(states):
        warnings.warn(f"checkpoint holds the RNG states of {len(states)} CUDA devices, this machine has {have}; "
                      f"restoring the first {have}", stacklevel=3)
    th.cuda.set_rng_state_all([th.tensor(s, dtype=th.uint8) for s in states[:have]])
