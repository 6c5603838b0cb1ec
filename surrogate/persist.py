"""Saving and loading surrogates without pickle: a folder with `weights.pt` (a plain torch state dict, read
with `weights_only=True`) and `meta.json` (format version, kind, sizes, vocabulary, normalisation, data digest).

Anything else -- another format version, a truncated or garbled file, a pickle carrying objects -- is a
SurrogateFormatError; no code from the file is ever run.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from evonas.errors import SurrogateFormatError

FORMAT = "evonas-surrogate"
FORMAT_VERSION = 1
WEIGHTS = "weights.pt"
META = "meta.json"


def _atomic_write(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save(folder: str | Path, state_dict: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    """Write weights.pt and meta.json into `folder` (created if needed); each file replaced atomically."""
    out = Path(folder)
    if out.exists() and not out.is_dir():
        raise SurrogateFormatError(f"{out}: exists and is not a folder (a surrogate model is a folder)")
    out.mkdir(parents=True, exist_ok=True)
    full = {"format": FORMAT, "format_version": FORMAT_VERSION, **meta}
    plain = {k: v.detach().cpu().clone() for k, v in state_dict.items()}
    _atomic_write(out / WEIGHTS, lambda p: torch.save(plain, p))
    _atomic_write(out / META, lambda p: Path(p).write_text(json.dumps(full, indent=2, sort_keys=True) + "\n"))
    return out


def load_meta(folder: str | Path) -> dict[str, Any]:
    """Read and check meta.json: right format name and version, a JSON object."""
    path = Path(folder) / META
    if not Path(folder).is_dir():
        raise SurrogateFormatError(f"{folder}: not a surrogate model folder (expected {META} and {WEIGHTS} in it)")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise SurrogateFormatError(f"{path}: missing") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SurrogateFormatError(f"{path}: corrupt metadata (not valid JSON: {e})") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise SurrogateFormatError(f"{path}: not an evonas surrogate (format field is not {FORMAT!r})")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise SurrogateFormatError(
            f"{path}: surrogate format version {version!r}, this evonas reads version {FORMAT_VERSION}")
    return meta


def load_weights(folder: str | Path) -> dict[str, torch.Tensor]:
    """Read weights.pt as a flat dict of tensors with `weights_only=True` (never unpickles objects)."""
    path = Path(folder) / WEIGHTS
    if not path.is_file():
        raise SurrogateFormatError(f"{path}: missing")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - weights_only never runs code; any failure to read = a bad file, named
        # (random bytes reach torch's legacy reader, which fails with IndexError, struct.error, MemoryError, ...)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SurrogateFormatError(f"{path}: corrupt or unsafe weights file, refused ({first[:200]})") from e
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise SurrogateFormatError(f"{path}: not a plain state dict of tensors")
    return state
