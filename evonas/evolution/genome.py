"""Cells as DEAP genomes: the creator types (created here only, once), the primitive set, Node <-> PrimitiveTree.

Every random choice goes through an explicit `random.Random` (never the global `random`), so a run is
reproducible from its seed and resumable from the RNG state saved in its checkpoint.
"""

from __future__ import annotations

from typing import Any

from deap import base, creator, gp

from evonas.cells import OPS, SOURCES, Node, canonical_text, op_set, preorder
from evonas.errors import ConfigError

FITNESS = "EvonasFitness"
INDIVIDUAL = "EvonasIndividual"


def _ensure_creator_types() -> None:
    """Create the DEAP types once per process (re-importing or reloading this module must not re-create them)."""
    if not hasattr(creator, FITNESS):
        # Objectives: (validation loss, parameter count), both minimised. Tournament selection compares the
        # weighted tuple lexicographically, so the loss decides and parameters only break ties; NSGA-II uses both.
        creator.create(FITNESS, base.Fitness, weights=(-1.0, -1.0))
    if not hasattr(creator, INDIVIDUAL):
        creator.create(INDIVIDUAL, gp.PrimitiveTree, fitness=getattr(creator, FITNESS))


_ensure_creator_types()
Fitness = getattr(creator, FITNESS)
Individual = getattr(creator, INDIVIDUAL)


def _symbolic(name: str, arity: int):
    """A stand-in callable: cells are compiled by evonas.nn.compiler, never by DEAP's `gp.compile`."""

    def prim(*args: Any) -> str:
        return f"{name}({','.join(map(str, args))})"

    prim.__name__ = name
    return prim


def make_pset(ops: str | list[str] | frozenset[str] = "core") -> gp.PrimitiveSet:
    """The primitive set of a run: its operators as primitives, the four sources as the arguments."""
    names = op_set(ops)
    if not names:
        raise ConfigError("ops: the operator set is empty")
    pset = gp.PrimitiveSet("cell", len(SOURCES))
    pset.renameArguments(**{f"ARG{i}": s for i, s in enumerate(SOURCES)})
    for name in sorted(names):
        pset.addPrimitive(_symbolic(name, OPS[name].arity), OPS[name].arity, name=name)
    return pset


def to_tree(node: Node, pset: gp.PrimitiveSet) -> gp.PrimitiveTree:
    """A cell as a DEAP PrimitiveTree (an `Individual`, fitness unset); ConfigError for an operator not in pset."""
    try:
        items = [pset.mapping[n.op] for n in preorder(node)]
    except KeyError as e:
        raise ConfigError(f"operator {e.args[0]} is not in this run's operator set") from None
    return Individual(items)


def to_node(tree: gp.PrimitiveTree) -> Node:
    """A DEAP PrimitiveTree back into a cell `Node`."""
    pos = 0

    def build() -> Node:
        nonlocal pos
        item = tree[pos]
        pos += 1
        name = item.name if isinstance(item, gp.Primitive) else str(item.value)
        return Node(name, tuple(build() for _ in range(item.arity)))

    node = build()
    if pos != len(tree):
        raise ValueError(f"malformed tree: {len(tree) - pos} trailing item(s)")
    return node


def tree_key(tree: gp.PrimitiveTree) -> str:
    """The canonical text of a tree (the archive's and deduplication's key)."""
    return canonical_text(to_node(tree))


def make_individual(node: Node, pset: gp.PrimitiveSet) -> gp.PrimitiveTree:
    """An Individual for a cell, with its canonical key attached."""
    ind = to_tree(node, pset)
    ind.key = canonical_text(node)
    return ind
