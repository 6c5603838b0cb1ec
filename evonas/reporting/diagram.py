"""Draw a cell as a Graphviz graph, as the DARTS and ENAS code bases draw their cells.

Sources appear once each (inputs at the bottom), every operator is its own node, the Memory
node (the new cell state c_t) and the output h_t are marked. `.dot` needs nothing; `.svg`/`.png`
need the Graphviz `dot` program.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from evonas.cells.equations import SOURCE_NAMES
from evonas.cells.tree import Node, canonical
from evonas.errors import EvonasError

FORMATS = (".dot", ".svg", ".png")
_STYLE = {
    "source": 'shape=ellipse, style=filled, fillcolor="#dbe9f6"',
    "MM": 'shape=box, style="rounded,filled", fillcolor="#f6e3c8"',
    "Memory": 'shape=box, peripheries=2, style="rounded,filled", fillcolor="#d5ecd4"',
    "op": 'shape=box, style="rounded,filled", fillcolor="#f2f2f2"',
}


def to_dot(cell: Node, title: str = "") -> str:
    """The Graphviz text of a cell: an edge from each argument to its operator, the output on top."""
    cell = canonical(cell)
    lines = ["digraph cell {", "  rankdir=BT;", '  node [fontname="Helvetica", fontsize=11];']
    if title:
        lines.append(f'  label="{_escape(title)}"; labelloc=t;')
    ids: dict[str, str] = {}
    counter = iter(range(1 << 30))

    def visit(n: Node) -> str:
        if n.is_source:
            if n.op not in ids:
                ids[n.op] = n.op
                lines.append(f'  {n.op} [label="{SOURCE_NAMES[n.op]}", {_STYLE["source"]}];')
            return ids[n.op]
        child_ids = [visit(c) for c in n.children]
        me = f"n{next(counter)}"
        if n.op == "Memory":
            lines.append(f'  {me} [label="Memory\\n(c_t)", {_STYLE["Memory"]}];')
        else:
            lines.append(f'  {me} [label="{n.op}", {_STYLE.get(n.op, _STYLE["op"])}];')
        slots = len(n.children) > 1 and n.op in ("Gate3", "Sub", "Div")
        for i, cid in enumerate(child_ids):
            label = f' [label="{"abg"[i] if n.op == "Gate3" else i}"]' if slots else ""
            lines.append(f"  {cid} -> {me}{label};")
        return me

    root = visit(cell)
    lines.append('  h_t [label="h_t", shape=doubleoctagon, style=filled, fillcolor="#f6d5d5"];')
    lines.append(f"  {root} -> h_t;")
    lines.append('  { rank=min; ' + " ".join(sorted(ids)) + "; }")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def write_diagram(cell: Node, path: str | Path, title: str = "") -> Path:
    """Write the diagram to `.dot`, `.svg` or `.png` (the latter two via Graphviz `dot`)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise EvonasError(f"diagram format {suffix or '(none)'!r} not supported; use one of {', '.join(FORMATS)}")
    dot_text = to_dot(cell, title)
    if suffix == ".dot":
        path.write_text(dot_text)
        return path
    exe = shutil.which("dot")
    if exe is None:
        raise EvonasError(
            f"cannot write {path.name}: the Graphviz 'dot' program is missing "
            "(install it with 'apt-get install graphviz' or 'brew install graphviz'), or write a .dot file"
        )
    proc = subprocess.run([exe, f"-T{suffix[1:]}", "-o", str(path)], input=dot_text, text=True,
                          capture_output=True, timeout=60, check=False)
    if proc.returncode != 0:
        raise EvonasError(f"Graphviz failed to write {path}: {proc.stderr.strip().splitlines()[-1:]}")
    return path
