"""Write a cell as readable equations, one line per intermediate value.

Weights are numbered in pre-order of the canonical cell, the order of `module.mm` in a compiled cell.
"""

from __future__ import annotations

from evonas.cells.ops import OPS
from evonas.cells.tree import Node, canonical, preorder

SOURCE_NAMES = {"x": "x_t", "x_prev": "x_{t-1}", "h_prev": "h_{t-1}", "c_prev": "c_{t-1}"}


def equations(cell: Node) -> list[str]:
    """Lines such as `a1 = W1·x_t + b1`, ending with `c_t = …` (if any) and `h_t = …`."""
    cell = canonical(cell)
    index: dict[int, str] = {}  # id(node) -> weight label for MM/Diag/LayerNorm, numbered in pre-order
    counters = {"MM": 0, "Diag": 0, "LayerNorm": 0}
    for n in preorder(cell):
        if n.op in counters:
            counters[n.op] += 1
            index[id(n)] = str(counters[n.op])
    lines: list[str] = []
    auto = iter(range(1, 1 << 30))

    def visit(n: Node, name: str | None = None) -> str:
        if n.is_source:
            return SOURCE_NAMES[n.op]
        if n.op == "Memory":
            inner = visit(n.children[0], "c_t")
            if inner != "c_t":
                lines.append(f"c_t = {inner}")
            return "c_t"
        args = [visit(c) for c in n.children]
        k = index.get(id(n), "")
        if n.op == "MM":
            rhs = f"W{k}·{args[0]} + b{k}"
        elif n.op == "Diag":
            rhs = f"w{k} ⊙ {args[0]}"
        elif n.op == "LayerNorm":
            rhs = f"LN{k}({args[0]})"
        else:
            rhs = OPS[n.op].formula.format(*args)
        label = name or f"a{next(auto)}"
        lines.append(f"{label} = {rhs}")
        return label

    out = visit(cell, "h_t")
    if out != "h_t":  # root is Memory or a source
        lines.append(f"h_t = {out}")
    return lines
