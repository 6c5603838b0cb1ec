"""Well-formedness: sizes, the Memory rules and the state rule of DESIGN.md.

A well-formed cell can be compiled and trained; the structural filters (filters.py) are a
further, search-only restriction.
"""

from __future__ import annotations

from evonas.cells.ops import INPUT_SOURCES, OPS
from evonas.cells.parse import MAX_DEPTH, parse
from evonas.cells.tree import Node, preorder, to_text, uses
from evonas.errors import CellError

INPUT, HIDDEN = "input", "hidden"


def _short(node: Node, limit: int = 60) -> str:
    text = to_text(node)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _size(node: Node, same_size: bool) -> str:
    """The size class of a node's value; raises CellError on a mismatch."""
    if node.is_source:
        return INPUT if node.op in INPUT_SOURCES and not same_size else HIDDEN
    kids = [_size(c, same_size) for c in node.children]
    if node.op == "MM":
        return HIDDEN
    if node.op == "Memory" and kids[0] != HIDDEN:
        raise CellError(
            f"Memory needs a hidden-size argument, got an input-size one in {_short(node)}", _short(node), "sizes"
        )
    if len(set(kids)) > 1:
        raise CellError(
            f"{node.op} mixes input-size and hidden-size arguments in {_short(node)} (wrap the input in MM)",
            _short(node),
            "sizes",
        )
    return kids[0]


def check(cell: Node | str, input_size: int | None = None, hidden_size: int | None = None) -> Node:
    """Return the cell if it is well-formed, else raise CellError naming the node and the rule.

    Sizes are checked symbolically (input size != hidden size) unless both sizes are given and equal,
    in which case every value type-checks.
    """
    node = parse(cell) if isinstance(cell, str) else cell
    stack = [(node, 0)]  # iterative, so that a deep hand-built Node gets a CellError, not a RecursionError
    while stack:
        n, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise CellError(f"cell nested deeper than {MAX_DEPTH} levels", node.op, "depth")
        stack.extend((c, depth + 1) for c in n.children)
    for n in preorder(node):
        if n.is_source and n.children:  # only a hand-built Node can do this; canonical() would crash on it
            raise CellError(f"source {n.op} takes no arguments in {_short(n)}", _short(n), "arity")
        if not n.is_source and n.op not in OPS:
            raise CellError(f"unknown operator {n.op!r}", n.op, "operators")
        if n.op in OPS and len(n.children) != OPS[n.op].arity:
            raise CellError(f"{n.op} takes {OPS[n.op].arity} argument(s) in {_short(n)}", _short(n), "arity")
    same = input_size is not None and input_size == hidden_size
    if _size(node, same) != HIDDEN:
        raise CellError(f"the root {_short(node)} has the input size; the output must have the hidden size",
                        _short(node), "sizes")
    memories = [n for n in preorder(node) if n.op == "Memory"]
    if len(memories) > 1:
        raise CellError(f"a cell has at most one Memory, found {len(memories)}", "Memory", "memory")
    if uses(node, "c_prev") and not memories:
        raise CellError("c_prev appears but the cell has no Memory to define c_t", "c_prev", "memory")
    if not (uses(node, "h_prev") or uses(node, "c_prev")):
        raise CellError("the cell has no state: neither h_prev nor c_prev appears", _short(node), "state")
    return node


def is_well_formed(cell: Node | str) -> bool:
    """True when `check` accepts the cell (sizes checked symbolically)."""
    try:
        check(cell)
    except CellError:
        return False
    return True
