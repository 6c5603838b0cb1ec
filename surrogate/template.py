"""Fast path from cell text to the unrolled graph arrays, for scoring many cells per second.

`template(text)` reads a cell into flat pre-order arrays in one pass over its tokens (no `Node` objects) and
computes its canonical text; it accepts exactly what `evonas.cells.parse` accepts and returns None for
anything else, so the caller falls back to `parse` (which raises the proper CellSyntaxError). The
unrolled tree and DAG are then assembled by copying slices of the template (see graph.py for the rules).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from evonas.cells import OPS, Node, to_text
from evonas.cells.ops import SOURCE_ALIASES, SOURCES
from evonas.cells.parse import MAX_DEPTH, MAX_LENGTH

_TOKEN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\{[^{}()\s,]*\})?|[(),]")
_ARITY = {name: spec.arity for name, spec in OPS.items()}
_COMMUTATIVE = frozenset(n for n, s in OPS.items() if s.commutative)
_CHAINS = ("Add", "Mult")  # associative: flattened in the canonical form
_SOURCE_SET = frozenset(SOURCES)


@dataclass
class Template:
    """A cell in pre-order: names (aliases resolved), parent index (-1 = root), argument slot (1-based for the
    non-commutative operators, else 0), subtree end (one past the last pre-order index), canonical key.

    The arrays describe the tree as written; when `key != written_key` the written tree is a re-spelling of
    its canonical form and callers that need the canonical shape rebuild it (`template_of(canonical(...))`)."""

    names: list[str]
    parent: list[int]
    slot: list[int]
    end: list[int]
    key: str
    written_key: str = ""  # the text as written with commutative arguments sorted; differs from `key` when the
    #                        written tree is an equivalent re-spelling (see `evonas.cells.canonical`)


def template(text: str) -> Template | None:
    """Read a cell text in one pass; None when the text is not exactly a cell the parser accepts."""
    if not isinstance(text, str) or len(text) > MAX_LENGTH:
        return None
    toks = _TOKEN.findall(text)
    if "".join(toks) != "".join(text.split()):
        return None  # a character outside the language (or exotic whitespace): let the parser decide
    names: list[str] = []
    parent: list[int] = []
    slot: list[int] = []
    end: list[int] = []
    children: list[list[int]] = []
    stack: list[list] = []  # [node index, name, arguments seen]
    i, ntok = 0, len(toks)
    while True:
        # an operand
        if i >= ntok:
            return None
        tok = SOURCE_ALIASES.get(toks[i], toks[i])
        idx = len(names)
        if stack:
            top = stack[-1]
            p = top[0]
            s = top[2] + 1 if top[1] in ("Gate3", "Sub", "Div") else 0
            children[p].append(idx)
        else:
            p, s = -1, 0
        names.append(tok)
        parent.append(p)
        slot.append(s)
        end.append(idx + 1)
        children.append([])
        if tok in _SOURCE_SET:
            if i + 1 < ntok and toks[i + 1] == "(":
                return None
            i += 1
        elif tok in _ARITY:
            if i + 1 >= ntok or toks[i + 1] != "(" or len(stack) >= MAX_DEPTH:
                return None
            stack.append([idx, tok, 0])
            i += 2
            continue
        else:
            return None
        # after an operand: close finished operators, or move to the next argument
        while stack:
            top = stack[-1]
            top[2] += 1
            if i >= ntok:
                return None
            t = toks[i]
            if t == ",":
                i += 1
                break
            if t != ")" or top[2] != _ARITY[top[1]]:
                return None
            end[top[0]] = len(names)
            stack.pop()
            i += 1
        else:
            if i != ntok:
                return None
            break
        if top[2] >= _ARITY[top[1]]:
            return None  # a comma after the last argument
    written = [""] * len(names)  # the written tree with commutative arguments sorted (its shape as given)
    canon = [""] * len(names)  # canonical text of each subtree (mirrors evonas.cells.canonical)
    canon_op = [""] * len(names)
    terms: list[list[str]] = [[] for _ in names]  # a canonical Add/Mult chain's sorted terms
    for k in range(len(names) - 1, -1, -1):
        kids, name = children[k], names[k]
        if not kids:
            written[k] = canon[k] = canon_op[k] = name
            continue
        parts = [written[c] for c in kids]
        if name in _COMMUTATIVE:
            parts.sort()
        written[k] = f"{name}({','.join(parts)})"
        if name == "MM" and canon_op[kids[0]] == "MM" or (
                name == "Sub" and canon_op[kids[0]] == "MM" and canon[kids[0]] == canon[kids[1]]):
            canon[k], canon_op[k] = canon[kids[0]], "MM"
        elif name == "ReLU" and canon_op[kids[0]] == "Sigmoid":
            canon[k], canon_op[k] = canon[kids[0]], "Sigmoid"
        elif name in _CHAINS:
            ts: list[tuple[str, str]] = []
            for c in kids:
                ts += terms[c] if canon_op[c] == name else [(canon[c], canon_op[c])]
            if name == "Add":
                ts = [tt for i, tt in enumerate(ts) if tt[1] != "MM" or tt not in ts[:i]]
            ts.sort()
            if len(ts) == 1:
                canon[k], canon_op[k] = ts[0]
            else:
                text = ts[0][0]
                for tt in ts[1:]:
                    text = f"{name}({text},{tt[0]})"
                canon[k], canon_op[k], terms[k] = text, name, ts
        else:
            canon[k], canon_op[k] = f"{name}({','.join(canon[c] for c in kids)})", name
    return Template(names, parent, slot, end, canon[0], written[0])


def template_of(cell: Node) -> Template:
    """The template of an already parsed cell (same arrays as `template(to_text(cell))`)."""
    t = template(to_text(cell))
    if t is None:  # pragma: no cover - to_text always prints a parsable cell
        raise ValueError(f"cannot read {to_text(cell)!r}")
    return t


def _labels(tp: Template, op_index: dict[str, int]) -> tuple[list[int], list[int], list[int]]:
    """Operator index at t (x_prev at t is x at t-1), its step, and the operator index at t-1 (do not mutate)."""
    names = tp.names
    op1 = list(map(op_index.__getitem__, names))
    if "x_prev" not in names:
        return op1, [0] * len(names), op1
    x = op_index["x"]
    op0 = [x if n == "x_prev" else o for n, o in zip(names, op1, strict=True)]
    step0 = [1 if n == "x_prev" else 0 for n in names]
    return op0, step0, op1


def _heights(tp: Template, leaf: dict[str, int]) -> list[int]:
    """Height of every template node (distance above its deepest leaf); a leaf named in `leaf` gets that height."""
    par = tp.parent
    h = [leaf.get(name, 0) for name in tp.names]
    for i in range(len(par) - 1, 0, -1):  # reverse pre-order: a node's descendants come before it
        p = par[i]
        if h[i] >= h[p]:
            h[p] = h[i] + 1
    return h


def tree_arrays(tp: Template, op_index: dict[str, int]) -> tuple[list[int], ...]:
    """The unrolled tree with the t-1 copy held once: (op, step, slot, height, weight, src, dst); root = node 0.

    Nodes 0..n-1 are the cell at t in pre-order, except that each `h_prev` is a node for the t-1 cell's top
    operator (in the `h_prev`'s slot) and each `c_prev` a t-1 `Memory` node; their children are one shared copy
    of the t-1 cell below its top (nodes n...). `weight` counts occurrences in the full tree
    (`graph.tree_graph`): expanding the shared copy gives it back. `height` is the distance above the deepest
    leaf below the node.
    """
    op0, step0, op1 = _labels(tp, op_index)
    names, par, slot_l = tp.names, tp.parent, tp.slot
    n = len(names)
    mem = names.index("Memory") if "Memory" in names else -1
    ht1 = _heights(tp, {})  # the t-1 copy: its sources stay leaves
    states = {"h_prev": ht1[0]} | ({"c_prev": ht1[mem]} if mem >= 0 else {})
    height = _heights(tp, states)  # at t the state sources are the t-1 copies
    h_sites = [i for i, name in enumerate(names) if name == "h_prev"]
    c_sites = [i for i, name in enumerate(names) if name == "c_prev"] if mem >= 0 else []
    top_op = {i: op1[0] for i in h_sites} | {i: op1[mem] for i in c_sites}
    ops = [top_op.get(i, o) for i, o in enumerate(op0)]
    steps = [1 if i in top_op else s for i, s in enumerate(step0)]
    slots = list(slot_l)
    weight = [1] * n
    src = list(range(1, n))
    dst = list(par[1:])
    if h_sites:
        lo, tops, in_mem = 0, h_sites + (c_sites if mem == 0 else []), c_sites if mem > 0 else []
    elif c_sites:
        lo, tops, in_mem = mem, c_sites, []
    else:
        return ops, steps, slots, height, weight, src, dst
    hi, off = tp.end[lo], n - lo - 1  # the shared copy: template nodes lo+1..hi-1 become nodes i + off
    ops += op1[lo + 1:hi]
    steps += [1] * (hi - lo - 1)
    slots += slot_l[lo + 1:hi]
    height += ht1[lo + 1:hi]
    mem_end = tp.end[mem] if in_mem else -1
    weight += [len(tops) + (len(in_mem) if mem < i < mem_end else 0) for i in range(lo + 1, hi)]
    for i in range(lo + 1, hi):
        p = par[i]
        parents = tops if p == lo else [p + off, *in_mem] if p == mem else [p + off]
        src += [i + off] * len(parents)
        dst += parents
    return ops, steps, slots, height, weight, src, dst


def dag_arrays(tp: Template, op_index: dict[str, int]) -> tuple[list, ...]:
    """(op, step, src, dst, eslot, root, topo) of the shared-node DAG; `topo` lists nodes parents-first."""
    op0, step0, op1 = _labels(tp, op_index)
    names, par, slot_l = tp.names, tp.parent, tp.slot
    mem = names.index("Memory") if "Memory" in names else -1
    ops: list[int] = []
    steps: list[int] = []
    src: list[int] = []
    dst: list[int] = []
    eslot: list[int] = []
    sources: dict[tuple[int, int], int] = {}
    inner_t: list[int] = []
    inner_prev: list[int] = []

    def copy(a: int, b: int, step: int, prev_root: int, prev_mem: int) -> list[int]:
        gmap = [0] * len(names)
        for i in range(a, b):
            name = names[i]
            if step == 0 and name == "h_prev" and prev_root >= 0:
                g = prev_root
            elif step == 0 and name == "c_prev" and prev_mem >= 0:
                g = prev_mem
            elif name in _SOURCE_SET:
                key = (op0[i], step0[i]) if step == 0 else (op1[i], 1)
                g = sources.get(key, -1)
                if g < 0:
                    g = sources[key] = len(ops)
                    ops.append(key[0])
                    steps.append(key[1])
            else:
                g = len(ops)
                ops.append(op1[i])
                steps.append(step)
                (inner_t if step == 0 else inner_prev).append(g)
            gmap[i] = g
            if i != a:
                src.append(g)
                dst.append(gmap[par[i]])
                eslot.append(slot_l[i])
        return gmap

    prev_root = prev_mem = -1
    if "h_prev" in names:
        gm = copy(0, len(names), 1, -1, -1)
        prev_root = gm[0]
        prev_mem = gm[mem] if mem >= 0 else -1
    elif "c_prev" in names and mem >= 0:
        prev_mem = copy(mem, tp.end[mem], 1, -1, -1)[mem]
    root = copy(0, len(names), 0, prev_root, prev_mem)[0]
    topo = inner_t + inner_prev + list(sources.values())
    return ops, steps, src, dst, eslot, root, topo


def dag_depth(n: int, src: list[int], dst: list[int], topo: list[int]) -> list[int]:
    """Longest distance from the root of every DAG node, given a parents-first order."""
    parents: list[list[int]] = [[] for _ in range(n)]
    for s, d in zip(src, dst, strict=True):
        parents[s].append(d)
    depth = [0] * n
    for v in topo:
        ps = parents[v]
        if ps:
            depth[v] = max(depth[p] for p in ps) + 1
    return depth
