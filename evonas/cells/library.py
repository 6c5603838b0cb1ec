"""The cell library (configs/cells.yaml): hand-designed cells by name, and `resolve` for a name or a cell text.

The library seeds the search and supplies the baselines; every entry is validated on load so a typo in the
YAML is a one-line ConfigError naming the entry, never a crash later in a run.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from evonas.cells.check import check
from evonas.cells.ops import OPS, SOURCE_ALIASES, SOURCES
from evonas.cells.parse import parse
from evonas.cells.tree import Node, to_text
from evonas.errors import CellError, CellSyntaxError, ConfigError

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
LIBRARY_FILE = CONFIGS / "cells.yaml"

_REQUIRED = ("name", "citation", "text", "description")
_OPTIONAL = ("notes",)
_NAME = re.compile(r"[a-z][a-z0-9_]*\Z")
_IDENTIFIER = re.compile(r"\s*[A-Za-z_][A-Za-z0-9_]*\s*\Z")


@dataclass(frozen=True)
class LibraryCell:
    """One library entry: its name, where it comes from, its cell text and a one-line description."""

    name: str
    citation: str
    text: str  # as parsed and printed without spaces (argument order as written, not canonical)
    description: str
    notes: str = ""

    @property
    def cell(self) -> Node:
        """The parsed cell (checked well-formed when the library was loaded)."""
        return parse(self.text)


def _entry(i: int, raw: object, where: str) -> LibraryCell:
    """Validate one YAML entry; every problem is a ConfigError naming the entry."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: entry {i + 1} must be a mapping, got {type(raw).__name__}")
    label = f"{where}: entry {i + 1}" + (f" ({raw['name']!r})" if isinstance(raw.get("name"), str) else "")
    unknown = sorted(str(k) for k in set(raw) - set(_REQUIRED) - set(_OPTIONAL))
    if unknown:
        raise ConfigError(f"{label}: unknown key(s) {unknown}; expected {list(_REQUIRED + _OPTIONAL)}")
    missing = [k for k in _REQUIRED if k not in raw]
    if missing:
        raise ConfigError(f"{label}: missing key(s) {missing}")
    for key in _REQUIRED + _OPTIONAL:
        if key in raw and not (isinstance(raw[key], str) and raw[key].strip()):
            raise ConfigError(f"{label}: {key} must be a non-empty string")
    name = raw["name"]
    if not _NAME.match(name):
        raise ConfigError(f"{label}: name must be lowercase letters, digits and '_', starting with a letter")
    if name in SOURCES or name in SOURCE_ALIASES:
        raise ConfigError(f"{label}: name {name!r} would shadow a source of the cell language")
    if "\n" in raw["description"].strip():
        raise ConfigError(f"{label}: description must be one line")
    try:
        node = check(raw["text"])
    except (CellSyntaxError, CellError) as e:
        raise ConfigError(f"{label}: bad cell text: {e}") from e
    return LibraryCell(name, raw["citation"].strip(), to_text(node), raw["description"].strip(),
                       raw.get("notes", "").strip())


@functools.lru_cache(maxsize=8)
def _load(path: str, mtime_ns: int) -> dict[str, LibraryCell]:
    """Parse and validate the library file (cached per path and modification time)."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(e).split())}") from e
    if not isinstance(data, dict) or set(data) != {"cells"} or not isinstance(data["cells"], list):
        raise ConfigError(f"{path}: expected a mapping with exactly one key 'cells' holding a list of entries")
    out: dict[str, LibraryCell] = {}
    for i, raw in enumerate(data["cells"]):
        entry = _entry(i, raw, path)
        if entry.name in out:
            raise ConfigError(f"{path}: entry {i + 1}: duplicate name {entry.name!r}")
        out[entry.name] = entry
    return out


def library(path: str | Path | None = None) -> dict[str, LibraryCell]:
    """All library cells by name, in file order (configs/cells.yaml unless another path is given)."""
    p = Path(path) if path is not None else LIBRARY_FILE
    try:
        mtime = p.stat().st_mtime_ns
    except OSError as e:
        raise ConfigError(f"cannot read the cell library {p}: {e.strerror}") from e
    return dict(_load(str(p), mtime))


def lookup(name_or_text: str, path: str | Path | None = None) -> LibraryCell | None:
    """The library entry whose name matches (case-insensitive, surrounding spaces ignored), else None."""
    if not isinstance(name_or_text, str):
        return None
    return library(path).get(name_or_text.strip().lower())


def resolve(name_or_text: str, input_size: int | None = None, hidden_size: int | None = None,
            path: str | Path | None = None) -> Node:
    """A well-formed cell from a library name (case-insensitive) or a cell text.

    Raises CellSyntaxError (with the column) for text that neither names a library cell nor parses,
    and CellError for a cell that parses but is not well-formed.
    """
    if not isinstance(name_or_text, str):
        parse(name_or_text)  # raises CellSyntaxError naming the type
    entry = lookup(name_or_text, path)
    if entry is not None:
        return entry.cell
    if _IDENTIFIER.match(name_or_text):
        word = name_or_text.strip()
        if word not in SOURCES and word not in SOURCE_ALIASES and word not in OPS:  # those get the parser's error
            names = ", ".join(library(path))
            col = len(name_or_text) - len(name_or_text.lstrip()) + 1
            raise CellSyntaxError(f"{word!r} is neither a library cell ({names}) nor a cell text", name_or_text, col)
    return check(name_or_text, input_size, hidden_size)
