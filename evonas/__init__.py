"""evonas: discover recurrent cells by evolution, screened by a learned ranking surrogate.

`import evonas` stays light (no torch) so the CLI starts fast; the torch-backed parts load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from evonas.cells import Node, canonical_text, check, parse, to_text
from evonas.errors import (
    CellError,
    CellSyntaxError,
    CheckpointError,
    ConfigError,
    DataError,
    EvonasError,
    SurrogateFormatError,
)

__version__ = "0.1.0"

# name -> module that defines it; imported on first access (PEP 562).
_LAZY = {
    "compile_cell": "evonas.nn.compiler",
    "TrainConfig": "evonas.training.train",
    "EvalResult": "evonas.training.train",
    "evaluate": "evonas.training.train",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'evonas' has no attribute {name!r}")


__all__ = [
    "CellError", "CellSyntaxError", "CheckpointError", "ConfigError", "DataError", "EvalResult",
    "EvonasError", "Node", "SurrogateFormatError", "TrainConfig", "canonical_text", "check", "compile_cell",
    "evaluate", "parse", "to_text",
]
