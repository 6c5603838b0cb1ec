"""The cell tree: an immutable `Node`, its text form, canonical form, size and height."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

from evonas.cells.ops import OPS, SOURCES


@dataclass(frozen=True)
class Node:
    """One node of a cell: an operator with children, or a source (`x`, `x_prev`, `h_prev`, `c_prev`)."""

    op: str
    children: tuple[Node, ...] = ()

    @property
    def is_source(self) -> bool:
        return self.op in SOURCES

    def __str__(self) -> str:
        return to_text(self)


def to_text(node: Node) -> str:
    """Print a cell without spaces, e.g. `Tanh(Add(MM(x),MM(h_prev)))`."""
    if not node.children:
        return node.op
    return f"{node.op}({','.join(to_text(c) for c in node.children)})"


def canonical(node: Node) -> Node:
    """Children canonicalised first; arguments of commutative operators sorted by their canonical text."""
    if not node.children:
        return node
    kids = tuple(canonical(c) for c in node.children)
    if OPS[node.op].commutative:
        kids = tuple(sorted(kids, key=to_text))
    return Node(node.op, kids)


def canonical_text(node: Node) -> str:
    """The identity of an architecture: two cells are the same iff their canonical texts are equal."""
    return to_text(canonical(node))


def preorder(node: Node) -> Iterator[Node]:
    """All nodes, parent before children, left to right (the order of `module.mm`)."""
    stack = [node]
    while stack:
        n = stack.pop()
        yield n
        stack.extend(reversed(n.children))


def node_count(node: Node) -> int:
    """Number of nodes, sources included."""
    return sum(1 for _ in preorder(node))


def height(node: Node) -> int:
    """Edges on the longest root-to-leaf path (a lone source has height 0, as in DEAP)."""
    if not node.children:
        return 0
    return 1 + max(height(c) for c in node.children)


def op_counts(node: Node) -> Counter[str]:
    """How often each operator and source occurs."""
    return Counter(n.op for n in preorder(node))


def find(node: Node, op: str) -> Node | None:
    """The first node (pre-order) with this operator, or None."""
    return next((n for n in preorder(node) if n.op == op), None)


def uses(node: Node, op: str) -> bool:
    """Whether the operator or source occurs anywhere in the cell."""
    return find(node, op) is not None
