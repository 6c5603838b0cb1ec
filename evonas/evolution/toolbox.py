"""DEAP glue: the creator types (created here only, once), the primitive set, Node <-> PrimitiveTree, the toolbox.

Every random choice goes through an explicit `random.Random` (never the global `random`), so a run is
reproducible from its seed and resumable from the RNG state saved in its checkpoint.
"""

from __future__ import annotations

import random
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
    """A stand-in callable: cells are compiled by evonas.compiler, never by DEAP's `gp.compile`."""

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


def make_toolbox(config: Any, rng: random.Random, pset: gp.PrimitiveSet | None = None) -> base.Toolbox:
    """The run's DEAP toolbox, built like DEAP's own examples: generators, variation (with limits), selection.

    `config` is a RunConfig; `rng` the run's random source, shared by every registered operator.
    """
    from evonas.evolution import operators as op
    from evonas.evolution import select as sel

    pset = pset or make_pset(config.ops)
    fcfg = config.filter_config()
    tb = base.Toolbox()
    tb.pset = pset
    tb.register("expr", op.gen_half_and_half, pset=pset, rng=rng,
                min_height=config.init_min_height, max_height=config.init_max_height)
    tb.register("population", op.gen_ramped, pset=pset, rng=rng, filters=fcfg,
                min_height=config.init_min_height, max_height=config.init_max_height)
    tb.register("expr_mut", op.gen_half_and_half, pset=pset, rng=rng, min_height=0, max_height=config.mut_max_height)
    tb.register("mate", op.cx_subtree, rng=rng)
    tb.register("mut_uniform", op.mut_uniform, expr=tb.expr_mut, rng=rng)
    tb.register("mut_node_replace", op.mut_node_replace, pset=pset, rng=rng)
    tb.register("mut_insert", op.mut_insert, pset=pset, rng=rng)
    tb.register("mut_shrink", op.mut_shrink, rng=rng)
    tb.register("mut_memory", op.mut_memory, pset=pset, rng=rng)
    for name in ("mate", "mut_uniform", "mut_node_replace", "mut_insert", "mut_shrink", "mut_memory"):
        tb.decorate(name, op.well_formed(pset))
        tb.decorate(name, op.static_limit(len, fcfg.max_nodes))
        tb.decorate(name, op.static_limit(lambda t: t.height, fcfg.max_height))
    tb.register("mutate", op.mut_mixture, rng=rng, weights=config.mutation_weights(),
                ops={name: getattr(tb, f"mut_{name}") for name in config.mutation_weights()})
    cx_prob = 0.0 if config.selection == "aging" else config.cx_prob  # aging evolution mutates only (Real et al.)
    tb.register("vary", op.vary, rng=rng, mate=tb.mate, mutate=tb.mutate, cx_prob=cx_prob)
    tb.register("selector", sel.make_selector, config, rng)
    return tb
