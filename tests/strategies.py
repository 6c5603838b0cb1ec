"""Hypothesis strategies for cells, shared by the test modules.

`trees()` draws any tree with correct arities over every operator and source (not necessarily
well-formed); `cells()` draws well-formed cells (sizes, at most one Memory, c_prev only with a Memory,
a state); `texts()` prints either with random whitespace and source aliases, so the parser sees the
spellings a user may type.
"""

from __future__ import annotations

from hypothesis import strategies as st

from evonas.cells import OPS, SOURCES, Node, preorder

ALL_OPS = sorted(OPS)
HIDDEN_OPS = [op for op in ALL_OPS if op != "Memory"]
INPUT_OPS = [op for op in ALL_OPS if op not in ("MM", "Memory")]  # ops that keep the input size
ALIASES = {"x": ["x", "x_t", "x_{t}"], "x_prev": ["x_prev", "x_{t-1}"], "h_prev": ["h_prev", "h_{t-1}"],
           "c_prev": ["c_prev", "c_{t-1}"]}
# Every token of the language, for building near-miss strings.
TOKENS = ALL_OPS + [a for names in ALIASES.values() for a in names] + ["(", ")", ",", " ", "{", "}", "t-1"]


def trees(max_depth: int = 5) -> st.SearchStrategy[Node]:
    """Any tree with the right number of children per operator; sources and operators all appear."""
    leaves = st.sampled_from(SOURCES).map(Node)

    def extend(children: st.SearchStrategy[Node]) -> st.SearchStrategy[Node]:
        return st.sampled_from(ALL_OPS).flatmap(
            lambda op: st.tuples(*[children] * OPS[op].arity).map(lambda kids, op=op: Node(op, kids)))

    return st.recursive(leaves, extend, max_leaves=2 ** max_depth)


@st.composite
def cells(draw: st.DrawFn, max_depth: int = 6) -> Node:
    """A well-formed cell over all operators (checked symbolically: input size != hidden size)."""
    state = {"memory": False}

    def build(size: str, depth: int) -> Node:
        if depth <= 0 or draw(st.integers(0, 3)) == 0:
            if size == "input":
                return Node(draw(st.sampled_from(["x", "x_prev"])))
            leaf = draw(st.sampled_from(["h_prev", "c_prev", "x", "x_prev"]))
            return Node(leaf) if leaf in ("h_prev", "c_prev") else Node("MM", (Node(leaf),))
        if size == "input":
            op = draw(st.sampled_from(INPUT_OPS))
            return Node(op, tuple(build("input", depth - 1) for _ in range(OPS[op].arity)))
        op = draw(st.sampled_from(HIDDEN_OPS + ([] if state["memory"] else ["Memory"])))
        if op == "Memory":
            state["memory"] = True
            return Node(op, (build("hidden", depth - 1),))
        if op == "MM":
            return Node(op, (build(draw(st.sampled_from(["input", "hidden"])), depth - 1),))
        return Node(op, tuple(build("hidden", depth - 1) for _ in range(OPS[op].arity)))

    root = build("hidden", draw(st.integers(1, max_depth)))
    ops = {n.op for n in preorder(root)}
    if "c_prev" in ops and "Memory" not in ops:
        root = Node("Memory", (root,)) if draw(st.booleans()) else _rename(root, "c_prev", "h_prev")
        ops = {n.op for n in preorder(root)}
    if not ops & {"h_prev", "c_prev"}:
        root = Node("Add", (root, Node("MM", (Node("h_prev"),))))
    return root


def _rename(node: Node, old: str, new: str) -> Node:
    """The tree with every `old` source replaced by `new`."""
    if not node.children:
        return Node(new) if node.op == old else node
    return Node(node.op, tuple(_rename(c, old, new) for c in node.children))


def print_with_style(draw: st.DrawFn, node: Node) -> str:
    """Print a cell with random whitespace between tokens and random source aliases."""
    def space() -> str:
        return draw(st.sampled_from(["", "", " ", "  ", "\n", "\t"]))

    if not node.children:
        return space() + draw(st.sampled_from(ALIASES[node.op])) + space()
    args = ",".join(print_with_style(draw, c) for c in node.children)
    return f"{space()}{node.op}{space()}({args}){space()}"


@st.composite
def styled_texts(draw: st.DrawFn, strategy: st.SearchStrategy[Node] | None = None) -> tuple[Node, str]:
    """A tree and one of the many texts that spell it."""
    node = draw(strategy if strategy is not None else cells())
    return node, print_with_style(draw, node)


def token_strings() -> st.SearchStrategy[str]:
    """Strings made of the language's own tokens in random order: mostly near misses."""
    return st.lists(st.sampled_from(TOKENS), max_size=30).map("".join)


@st.composite
def mutated(draw: st.DrawFn, text: str) -> str:
    """`text` with a few characters deleted, inserted or replaced."""
    chars = list(text)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["delete", "insert", "replace"]))
        pos = draw(st.integers(0, len(chars)))
        ch = draw(st.one_of(st.sampled_from(list("(),_{}- xhcMm0")), st.characters()))
        if kind == "insert" or not chars:
            chars.insert(pos, ch)
        elif kind == "delete":
            del chars[min(pos, len(chars) - 1)]
        else:
            chars[min(pos, len(chars) - 1)] = ch
    return "".join(chars)
