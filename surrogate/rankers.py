"""The ranker kinds by name: importing this module registers the built-in ones (TreeLSTM, GNN).

A new kind is a `Ranker` subclass decorated with `@register` (evonas.surrogate.model) in its own module,
imported here.
"""

from __future__ import annotations

from typing import Any

from evonas.surrogate import gnn, treelstm  # noqa: F401  (they register themselves)
from evonas.surrogate.model import REGISTRY, Ranker


def kinds() -> list[str]:
    """Names of all registered ranker kinds."""
    return sorted(REGISTRY)


def ranker_class(kind: str) -> type[Ranker]:
    """The ranker class registered under `kind`; ValueError naming the known kinds otherwise."""
    if kind not in REGISTRY:
        raise ValueError(f"unknown surrogate model kind {kind!r}; known: {sorted(REGISTRY)}")
    return REGISTRY[kind]


def make_ranker(kind: str, **sizes: Any) -> Ranker:
    """Build a fresh ranker of this kind with these sizes (defaults for the rest)."""
    return ranker_class(kind)(**sizes)
