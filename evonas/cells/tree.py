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
    """The canonical form: two cells are one architecture iff their canonical forms are equal.

    Bottom-up, children first. Exact equivalences (the same function class, whatever the weights):
    - `Add` and `Mult` are associative and commutative: nested chains are flattened, their terms sorted by
      canonical text and rebuilt left-leaning (`Add(c,Add(b,a))` -> `Add(Add(a,b),c)`);
    - a sum of linear maps of the same operand is one linear map: repeated `MM(a)` terms of an `Add` chain
      merge (`Add(MM(x),MM(x))` -> `MM(x)`), and `Sub(MM(a),MM(a))` -> `MM(a)`;
    - a linear map of a linear map is one linear map: `MM(MM(a))` -> `MM(a)`;
    - a sigmoid is positive, so `ReLU(Sigmoid(a))` -> `Sigmoid(a)` (the synthetic search re-found the GRU so).
    None of them removes a source or the `Memory`, so the canonical form of a well-formed cell is well formed.
    `Gate3` keeps its argument order.
    """
    if not node.children:
        return node
    kids = tuple(canonical(c) for c in node.children)
    op = node.op
    if op == "MM" and kids[0].op == "MM" or op == "ReLU" and kids[0].op == "Sigmoid":
        return kids[0]
    if op == "Sub" and kids[0] == kids[1] and kids[0].op == "MM":
        return kids[0]
    if op in ("Add", "Mult"):
        terms = [t for k in kids for t in _chain_terms(k, op)]
        if op == "Add":
            seen: set[Node] = set()
            terms = [t for t in terms if t.op != "MM" or not (t in seen or seen.add(t))]
        terms.sort(key=to_text)
        out = terms[0]
        for term in terms[1:]:
            out = Node(op, (out, term))
        return out
    if OPS[op].commutative:
        kids = tuple(sorted(kids, key=to_text))
    return Node(op, kids)


def _chain_terms(node: Node, op: str) -> list[Node]:
    """The terms of a (canonical) chain of `op`, left to right; a node of another operator is one term."""
    if node.op != op:
        return [node]
    return _chain_terms(node.children[0], op) + _chain_terms(node.children[1], op)


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
