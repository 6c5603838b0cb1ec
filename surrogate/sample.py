"""Random cells and random mutants, for surrogate datasets, benchmarks and tests (seeded, no DEAP needed)."""

from __future__ import annotations

import random
from collections.abc import Iterable

from evonas.cells import CORE, OPS, FilterConfig, Node, canonical_text, check, passes_filters, preorder
from evonas.errors import CellError

_BINARY = ("Add", "Mult", "Sub", "Div")
# Mutants of library cells may be large: their size and height limits are off, the other filters stay on.
MUTANT_FILTERS = FilterConfig(disabled=frozenset({"max_nodes", "max_height"}))


def _leaf(rng: random.Random, under_mm: bool) -> Node:
    if under_mm:
        return Node(rng.choice(("x", "x", "h_prev", "x_prev")))
    r = rng.random()
    if r < 0.45:
        return Node("h_prev")
    if r < 0.9:
        return Node("MM", (Node(rng.choice(("x", "x", "x", "x_prev"))),))
    return Node("MM", (Node("h_prev"),))


def _grow(rng: random.Random, ops: list[str], depth: int, max_depth: int, parent: str) -> Node:
    if depth >= max_depth or (depth >= 2 and rng.random() < 0.3):
        return _leaf(rng, parent == "MM")
    op = rng.choice(ops)
    if op == "MM":
        inner = _grow(rng, [o for o in ops if o != "MM"] or ops, depth + 1, max_depth, "MM")
        return Node("MM", (inner,))
    kids = [_grow(rng, ops, depth + 1, max_depth, op) for _ in range(OPS[op].arity)]
    if op == "Gate3":
        kids[2] = kids[2] if kids[2].op == "Sigmoid" else Node("Sigmoid", (kids[2],))
    return Node(op, tuple(kids))


def _replace(root: Node, target: Node, new: Node) -> Node:
    """Copy of `root` with the node object `target` (by identity) replaced by `new`."""
    if root is target:
        return new
    if not root.children:
        return root
    kids = tuple(_replace(c, target, new) for c in root.children)
    return root if all(a is b for a, b in zip(kids, root.children, strict=True)) else Node(root.op, kids)


def _add_memory(rng: random.Random, cell: Node) -> Node:
    """Wrap a random inner node in Memory after turning one of its leaves into c_prev (a real recurrence)."""
    inner = [n for n in preorder(cell) if n.children and n is not cell and n.op != "MM"]
    if not inner:
        return cell
    target = rng.choice(inner)
    leaves = [n for n in preorder(target) if not n.children]
    with_c = _replace(target, rng.choice(leaves), Node("c_prev"))
    return _replace(cell, target, Node("Memory", (with_c,)))


def random_cell(rng: random.Random, ops: Iterable[str] = CORE, max_depth: int = 5, memory_p: float = 0.35,
                filters: FilterConfig | None = None, tries: int = 1000) -> Node:
    """A random well-formed cell passing the search filters (rejection sampling over grown trees)."""
    pool = sorted(set(ops) - {"Memory"})
    cfg = filters or FilterConfig()
    for _ in range(tries):
        cell = _grow(rng, pool, 0, max_depth, "")
        if "Memory" in ops and rng.random() < memory_p:
            cell = _add_memory(rng, cell)
        try:
            check(cell)
        except CellError:
            continue
        if passes_filters(cell, cfg):
            return cell
    raise RuntimeError(f"no random cell passed the filters in {tries} tries")


def mutate(rng: random.Random, cell: Node, ops: Iterable[str] = CORE) -> Node:
    """One random edit: change an operator, a source, replace/shrink a subtree, or wrap a node in a unary op."""
    pool = sorted(set(ops) - {"Memory"})
    nodes = list(preorder(cell))
    target = rng.choice(nodes)
    kind = rng.choice(("op", "source", "subtree", "shrink", "wrap"))
    if kind == "op" and target.children and target.op != "Memory":
        same = [o for o in pool if OPS[o].arity == OPS[target.op].arity and o != target.op]
        if target.op in _BINARY:
            same = [o for o in same if o in _BINARY or o in pool]
        if same:
            return _replace(cell, target, Node(rng.choice(same), target.children))
    if kind == "source" and not target.children:
        return _replace(cell, target, Node(rng.choice(("x", "x_prev", "h_prev", "c_prev"))))
    if kind == "shrink" and target.children:
        return _replace(cell, target, rng.choice(target.children))
    if kind == "wrap":
        unary = [o for o in pool if OPS[o].arity == 1]
        return _replace(cell, target, Node(rng.choice(unary), (target,)))
    return _replace(cell, target, _grow(rng, pool, 3, 5, ""))


def random_mutant(rng: random.Random, cell: Node, ops: Iterable[str] = CORE, max_edits: int = 2,
                  filters: FilterConfig = MUTANT_FILTERS, tries: int = 1000) -> Node:
    """A well-formed mutant (1..max_edits edits) of `cell` that differs from it and passes `filters`."""
    base = canonical_text(cell)
    for _ in range(tries):
        m = cell
        for _ in range(rng.randint(1, max_edits)):
            m = mutate(rng, m, ops)
        try:
            check(m)
        except CellError:
            continue
        if canonical_text(m) != base and passes_filters(m, filters):
            return m
    raise RuntimeError(f"no valid mutant found in {tries} tries")
